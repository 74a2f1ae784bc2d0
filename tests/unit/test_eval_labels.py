"""Label evaluation analyses each file as the pipeline analyses one job."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from batchroute.evaluation.labels import analyze_as_jobs


@dataclass
class _Echo:
    prompt: str


class _RecordingAnalyzer:
    """Answers each prompt with itself and remembers the batches it was given."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def analyze(self, prompts: Sequence[str]) -> list[_Echo]:
        self.calls.append(list(prompts))
        return [_Echo(p) for p in prompts]


def test_each_file_is_one_job_in_chunks_and_order_is_kept() -> None:
    rows: list[dict[str, Any]] = ([{"prompt": f"a{i}", "_file": "a.jsonl"} for i in range(5)]
                                  + [{"prompt": f"b{i}", "_file": "b.jsonl"} for i in range(3)])
    fake = _RecordingAnalyzer()
    out = analyze_as_jobs(fake, rows, chunk=2)  # type: ignore[arg-type]
    assert [a.prompt for a in out] == [r["prompt"] for r in rows]
    assert [len(c) for c in fake.calls] == [2, 2, 1, 2, 1]
    for call in fake.calls:  # a batch never mixes two files
        assert len({p[0] for p in call}) == 1
    # Shuffled, not in file order (the seed is fixed, so this is deterministic).
    assert [p for c in fake.calls[:3] for p in c] != [f"a{i}" for i in range(5)]
    assert sorted(p for c in fake.calls[:3] for p in c) == [f"a{i}" for i in range(5)]
