"""How high can domain macro-F1 go on the shared prompts for a classifier that follows TAXONOMY.md?

Run from the repo root (no model, a second)::

    .venv/bin/python bench/label_ceiling.py

The shared prompt files take their ``domain`` from each source's own category (MT-Bench's
"extraction", Vicuna's "generic", Arena-Hard's "math", ...). Where a source's category and
TAXONOMY.md's definitions part ways, a classifier that labels by the taxonomy is scored wrong.
``bench/data/label_audit.jsonl`` lists such rows, one per line::

    {"id", "source_domain", "taxonomy_domain", "why"}

How it was made (2026-12-07), read without the analyzer's predictions:
  * every MT-Bench and Vicuna row with a domain (140) was read;
  * Arena-Hard v2 was sampled: the first 60 rows after ``random.Random(20261207).shuffle``;
  * only clear contradictions of the taxonomy's table are listed (a rating on a 1-5 scale of a
    given review is ``classification``, "Suggest five films" is ``brainstorming``, "explain the
    basics of quantum computing" is ``factual_qa``, a C or Python program is ``code``); a row that
    fits two labels keeps the source's label.

Printed (JSON): ``taxonomy_ceiling_macro_f1`` is the macro-F1 (over the labels in the truth, as
``analyzer_bench.py`` reports it) that a classifier scores when it returns the taxonomy's label on
every audited row and the source's label on every other row, i.e. is right by TAXONOMY.md on
every row read and perfect on every row not read. Rows outside the audit are not known to be
right, so the true ceiling is at or below it. ``arena_sample`` gives the contradiction rate in the
Arena-Hard sample with a 95% Wilson interval.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from batchroute.evaluation.labels import iter_jsonl  # noqa: E402
from batchroute.evaluation.metrics import classification_report  # noqa: E402
from batchroute.taxonomy import DOMAINS  # noqa: E402

AUDIT = ROOT / "bench" / "data" / "label_audit.jsonl"
SHARED_PROMPTS = ROOT.parent / "shared" / "data" / "prompts"
ARENA_FILE = "arena_hard_v2.jsonl"
ARENA_SEED = 20261207
ARENA_SAMPLE = 60
FULLY_READ = ("mt_bench.jsonl", "vicuna_bench.jsonl")


def load_audit(path: Path = AUDIT) -> dict[str, dict[str, Any]]:
    """``{id: audit row}``; a label outside TAXONOMY.md is an error naming the line."""
    audit: dict[str, dict[str, Any]] = {}
    for lineno, row in iter_jsonl(path):
        for key in ("source_domain", "taxonomy_domain"):
            if row.get(key) not in DOMAINS:
                raise ValueError(f"{path}:{lineno}: {key} {row.get(key)!r} is not a TAXONOMY.md domain")
        audit[row["id"]] = row
    return audit


def audited_truth(rows: Sequence[dict[str, Any]], audit: dict[str, dict[str, Any]]) -> list[str]:
    """The rows' domains with each audited row's taxonomy label in place of the source's."""
    out = []
    for r in rows:
        a = audit.get(r.get("id", ""))
        if a is not None and a["source_domain"] != r["domain"]:
            raise ValueError(f"audit row {r['id']}: source_domain {a['source_domain']!r} but the file "
                             f"says {r['domain']!r}; the shared data changed, re-audit")
        out.append(a["taxonomy_domain"] if a else r["domain"])
    return out


def wilson(k: int, n: int, z: float = 1.96) -> list[float]:
    """95% Wilson score interval of a proportion k/n."""
    if n == 0:
        return [0.0, 1.0]
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return [round(centre - half, 4), round(centre + half, 4)]


def labeled_rows(shared: Path) -> list[dict[str, Any]]:
    """The shared prompt rows ``analyzer_bench.py`` scores: ``*_train`` skipped, domain set."""
    rows = []
    for path in sorted(p for p in shared.glob("*.jsonl") if "_train" not in p.name):
        for _, r in iter_jsonl(path):
            if isinstance(r, dict) and isinstance(r.get("prompt"), str) and r.get("domain") in DOMAINS:
                rows.append({**r, "_file": path.name})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared", type=Path, default=SHARED_PROMPTS)
    ap.add_argument("--audit", type=Path, default=AUDIT)
    args = ap.parse_args()

    audit = load_audit(args.audit)
    rows = labeled_rows(args.shared)
    truth = [r["domain"] for r in rows]
    taxonomy = audited_truth(rows, audit)
    report = classification_report(truth, taxonomy)

    arena = [r for r in rows if r["_file"] == ARENA_FILE]
    random.Random(ARENA_SEED).shuffle(arena)
    sample = {r["id"] for r in arena[:ARENA_SAMPLE]}
    in_sample = sum(1 for i in audit if i in sample)
    read = sum(1 for r in rows if r["_file"] in FULLY_READ) + len(sample)
    print(json.dumps({
        "rows": len(rows),
        "rows_read": read,
        "contradictions": len(audit),
        "taxonomy_ceiling_macro_f1": report["macro_f1_true_labels"],
        "taxonomy_ceiling_accuracy": report["accuracy"],
        "per_class_f1": {k: v["f1"] for k, v in report["per_class"].items() if v["support"]},
        "arena_sample": {"rows": len(sample), "contradictions": in_sample,
                         "rate": round(in_sample / max(len(sample), 1), 4),
                         "rate_ci95": wilson(in_sample, len(sample))},
        "target_macro_f1": 0.90,
    }, indent=2))


if __name__ == "__main__":
    main()
