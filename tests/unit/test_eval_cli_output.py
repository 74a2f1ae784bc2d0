"""`batchroute eval labels` output: the confusion matrix of all nine domains fits 80 columns."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from batchroute import eval_cli
from batchroute.evaluation.metrics import classification_report
from batchroute.taxonomy import DOMAINS


def test_short_labels_are_distinct_prefixes() -> None:
    short = eval_cli.short_labels(list(DOMAINS))
    assert short == {"code": "code", "math": "math", "reasoning": "reas", "creative_writing": "crea",
                     "factual_qa": "fact", "summarization": "summ", "extraction": "extr",
                     "classification": "clas", "brainstorming": "brai"}
    assert eval_cli.short_labels(["summary", "summarization"]) == {"summary": "summary", "summarization": "summari"}


def test_print_labels_fits_80_columns_and_explains_the_abbreviations(monkeypatch: pytest.MonkeyPatch) -> None:
    truth = list(DOMAINS) * 3
    pred = truth[1:] + truth[:1]  # every row wrong once in a while: a full 9x9 matrix
    pred[:9] = truth[:9]
    rep = classification_report(truth, pred, DOMAINS)
    buf = io.StringIO()
    monkeypatch.setattr(eval_cli, "out", Console(file=buf, width=80, color_system=None))
    eval_cli.print_labels({"files": ["x.jsonl"], "rows": len(truth), "prompts_per_s": 10.0,
                           "axes": {"domain": rep}})
    text = buf.getvalue()
    assert max(len(line) for line in text.splitlines()) <= 80
    assert "reas = reasoning, crea = creative_writing, fact = factual_qa" in text
    assert "brai = brainstorming" in text
    header = next(line for line in text.splitlines() if line.startswith("domain: n=27"))
    assert f"macro-F1 {rep['macro_f1']:.4f}" in header
