"""Label evaluation analyses each file as the pipeline analyses one job."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

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


def test_script_of() -> None:
    from batchroute.evaluation.labels import script_of

    assert script_of("Write a haiku") == "ascii"
    assert script_of("Écris un poème sur la pluie") == "latin"
    assert script_of("Résumé: “quoted” text") == "latin"
    assert script_of("Напиши стихотворение о весне") == "other"
    assert script_of("请总结这段文字 ok") == "other"
    assert script_of("Summarize 这个 for me please") == "latin"  # 2 of 22 letters


@dataclass
class _Labels:
    domain: str
    complexity: str | None = None
    style: str | None = None


class _FixedAnalyzer:
    """Labels every prompt as math."""

    def analyze(self, prompts: Sequence[str]) -> list[_Labels]:
        return [_Labels("math") for _ in prompts]


def test_eval_labels_reports_accuracy_per_script(tmp_path: Path) -> None:
    import json

    from batchroute.evaluation.labels import eval_labels

    rows = [("What is 2 + 2?", "math"), ("Write a poem", "creative_writing"), ("Calcule 3 × 4, s'il te plaît", "math"),
            ("Вычислите 5 + 7", "math"), ("计算 12 的平方", "math"), ("写一首诗", "creative_writing")]
    path = tmp_path / "labeled.jsonl"
    path.write_text("".join(json.dumps({"prompt": p, "domain": d}, ensure_ascii=False) + "\n" for p, d in rows),
                    encoding="utf-8")
    report = eval_labels(path, _FixedAnalyzer(), chunk=4)  # type: ignore[arg-type]
    assert report["domain_accuracy_by_script"] == {"ascii": {"n": 2, "accuracy": 0.5},
                                                   "latin": {"n": 1, "accuracy": 1.0},
                                                   "other": {"n": 3, "accuracy": 0.6667}}
    assert report["axes"]["domain"]["accuracy"] == pytest.approx(4 / 6, abs=1e-4)
