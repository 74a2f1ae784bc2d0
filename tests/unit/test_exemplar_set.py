"""The bundled exemplar set keeps its contract: valid labels, no duplicates, every domain covered."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from batchroute.analyzer.index import BUNDLED_EXEMPLARS
from batchroute.evaluation.labels import iter_jsonl, prompt_hash
from batchroute.taxonomy import COMPLEXITIES, DOMAINS, STYLES

SHARED_PROMPTS = Path(__file__).resolve().parents[3] / "shared" / "data" / "prompts"
ROWS: list[dict[str, Any]] = [{**row, "_where": f"{path.name}:{n}"}
                              for path in sorted(BUNDLED_EXEMPLARS.glob("*.jsonl")) for n, row in iter_jsonl(path)]


def test_every_row_has_valid_labels() -> None:
    bad = [r["_where"] for r in ROWS
           if set(r) - {"_where"} != {"id", "prompt", "domain", "complexity", "style"}
           or r["domain"] not in DOMAINS or r["complexity"] not in COMPLEXITIES or r["style"] not in STYLES
           or not r["prompt"].strip()]
    assert bad == []


def test_ids_and_prompts_are_unique() -> None:
    ids = Counter(r["id"] for r in ROWS)
    prompts = Counter(prompt_hash(r["prompt"].lower()) for r in ROWS)
    assert [i for i, n in ids.items() if n > 1] == []
    assert sum(n - 1 for n in prompts.values()) == 0


def test_every_domain_has_100_rows_of_both_complexities() -> None:
    per = Counter((r["domain"], r["complexity"]) for r in ROWS)
    for domain in DOMAINS:
        assert per[(domain, "simple")] + per[(domain, "complex")] >= 100, domain
        assert min(per[(domain, "simple")], per[(domain, "complex")]) >= 20, domain


def test_no_evaluation_prompt_is_an_exemplar() -> None:
    # The held-out prompts of ../shared/data measure the analyzer; one of them among the exemplars
    # would make that measurement a lie. Same hash as eval labels' ``in_exemplars`` count.
    if not SHARED_PROMPTS.is_dir():
        pytest.skip(f"{SHARED_PROMPTS} not present")
    exemplars = {prompt_hash(r["prompt"]) for r in ROWS}
    leaked = [f"{path.name}:{n}" for path in sorted(SHARED_PROMPTS.glob("*.jsonl")) for n, row in iter_jsonl(path)
              if isinstance(row.get("prompt"), str) and prompt_hash(row["prompt"]) in exemplars]
    assert leaked == []
