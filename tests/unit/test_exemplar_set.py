"""The bundled exemplar set keeps its contract: valid labels, no duplicates, every domain covered."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from batchroute.analyzer.index import BUNDLED_EXEMPLARS
from batchroute.taxonomy import COMPLEXITIES, DOMAINS, STYLES

SHARED_PROMPTS = Path(__file__).resolve().parents[3] / "shared" / "data" / "prompts"


def _rows() -> list[dict[str, Any]]:
    rows = []
    for path in sorted(BUNDLED_EXEMPLARS.glob("*.jsonl")):
        for n, line in enumerate(path.read_text(encoding="utf-8").split("\n"), 1):
            if line.strip():
                row = json.loads(line)
                row["_where"] = f"{path.name}:{n}"
                rows.append(row)
    return rows


ROWS = _rows()


def _norm(prompt: str) -> str:
    return " ".join(prompt.split()).lower()


def test_every_row_has_valid_labels() -> None:
    bad = [r["_where"] for r in ROWS
           if set(r) - {"_where"} != {"id", "prompt", "domain", "complexity", "style"}
           or r["domain"] not in DOMAINS or r["complexity"] not in COMPLEXITIES or r["style"] not in STYLES
           or not r["prompt"].strip()]
    assert bad == []


def test_ids_and_prompts_are_unique() -> None:
    ids = Counter(r["id"] for r in ROWS)
    prompts = Counter(_norm(r["prompt"]) for r in ROWS)
    assert [i for i, n in ids.items() if n > 1] == []
    assert [p[:60] for p, n in prompts.items() if n > 1] == []


def test_every_domain_has_100_rows_of_both_complexities() -> None:
    per = Counter((r["domain"], r["complexity"]) for r in ROWS)
    for domain in DOMAINS:
        assert per[(domain, "simple")] + per[(domain, "complex")] >= 100, domain
        assert min(per[(domain, "simple")], per[(domain, "complex")]) >= 20, domain


def test_no_evaluation_prompt_is_an_exemplar() -> None:
    # The held-out prompts of ../shared/data measure the analyzer; one of them among the exemplars
    # would make that measurement a lie.
    if not SHARED_PROMPTS.is_dir():
        pytest.skip(f"{SHARED_PROMPTS} not present")
    exemplars = {hashlib.sha256(_norm(r["prompt"]).encode()).digest() for r in ROWS}
    leaked = []
    for path in sorted(SHARED_PROMPTS.glob("*.jsonl")):
        for line in path.read_text(encoding="utf-8").split("\n"):
            if line.strip():
                prompt = json.loads(line).get("prompt")
                if isinstance(prompt, str) and hashlib.sha256(_norm(prompt).encode()).digest() in exemplars:
                    leaked.append(f"{path.name}: {prompt[:60]}")
    assert leaked == []
