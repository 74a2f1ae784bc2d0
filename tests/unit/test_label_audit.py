"""The label audit behind bench/label_ceiling.py: valid, current and applied as documented."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]
SHARED_PROMPTS = ROOT.parent / "shared" / "data" / "prompts"


def _label_ceiling() -> ModuleType:
    spec = importlib.util.spec_from_file_location("label_ceiling", ROOT / "bench" / "label_ceiling.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("label_ceiling", mod)
    spec.loader.exec_module(mod)
    return mod


lc = _label_ceiling()


def test_audit_rows_are_valid_and_change_the_label() -> None:
    audit = lc.load_audit()
    assert len(audit) == 16
    assert all(a["source_domain"] != a["taxonomy_domain"] and a["why"] for a in audit.values())


def test_audited_truth_replaces_only_audited_rows() -> None:
    audit = {"x/1": {"id": "x/1", "source_domain": "extraction", "taxonomy_domain": "classification"}}
    rows = [{"id": "x/1", "domain": "extraction"}, {"id": "x/2", "domain": "extraction"}]
    assert lc.audited_truth(rows, audit) == ["classification", "extraction"]


def test_audited_truth_refuses_a_changed_source_label() -> None:
    audit = {"x/1": {"id": "x/1", "source_domain": "extraction", "taxonomy_domain": "classification"}}
    with pytest.raises(ValueError, match="x/1: source_domain 'extraction' but the file says 'math'"):
        lc.audited_truth([{"id": "x/1", "domain": "math"}], audit)


def test_label_outside_taxonomy_names_the_line(tmp_path: Path) -> None:
    bad = tmp_path / "audit.jsonl"
    bad.write_text('{"id": "a", "source_domain": "code", "taxonomy_domain": "code", "why": "w"}\n'
                   '{"id": "b", "source_domain": "code", "taxonomy_domain": "coding", "why": "w"}\n')
    with pytest.raises(ValueError, match=r"audit.jsonl:2: taxonomy_domain 'coding' is not a TAXONOMY.md domain"):
        lc.load_audit(bad)


def test_wilson_interval() -> None:
    assert lc.wilson(5, 60) == [0.0361, 0.1807]
    assert lc.wilson(0, 0) == [0.0, 1.0]


def test_audit_matches_the_shared_files() -> None:
    if not SHARED_PROMPTS.is_dir():
        pytest.skip(f"{SHARED_PROMPTS} not present")
    rows = lc.labeled_rows(SHARED_PROMPTS)
    audit = lc.load_audit()
    found = {r["id"] for r in rows if r["id"] in audit}
    assert found == set(audit)
    truth = lc.audited_truth(rows, audit)
    assert sum(t != r["domain"] for t, r in zip(truth, rows, strict=True)) == 16
