"""The production analyzer's outcome prediction on outcome files: with and without job templates.

Run from the repo root::

    HF_HUB_OFFLINE=1 .venv/bin/python bench/outcome_bench.py            # RouterBench ARC, Winogrande, MBPP

For each RouterBench pair it builds the analyzer as ``batchroute index build --from TRAIN`` does
(bundled exemplars + the train file; cached index, same embedder as production), analyses the
test prompts as the analyze stage does (chunks of ``--chunk``), and scores how well
``Analysis.predicted_quality`` ranks right above wrong answers per model (ROC AUC, mean over
models; 0.5 = no better than one prediction for every prompt). It does this twice: as shipped
(outcome neighbours searched without template lines, :mod:`batchroute.analyzer.templates`) and
with template stripping switched off (the whole-prompt embedding for both labels and outcomes,
as before). Also: the mean cosine of each test prompt's nearest outcome row, and analyze
throughput of both variants (ratio in the same run).

Prints one JSON object. Test rows are never in the index: train rows sharing an id or a prompt with one are dropped
(as ``batchroute eval routing`` does), and that is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from batchroute.analyzer import BUNDLED_EXEMPLARS, Analyzer, Embedder, ExemplarIndex  # noqa: E402
from batchroute.evaluation.metrics import roc_auc  # noqa: E402
from batchroute.settings import DEFAULT_OUTCOME_K, DEFAULT_OUTCOME_STRENGTH  # noqa: E402

SHARED = ROOT.parent / "shared" / "data" / "outcomes"
TASKS = ("routerbench_arc_challenge", "routerbench_winograde", "routerbench_mbpp")


def _rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _plain(index: ExemplarIndex) -> ExemplarIndex:
    """The same index without content vectors or template lines (stripping off)."""
    return ExemplarIndex.from_vectors(index.meta, index.vectors(), index.features, index.config)


def _measure(analyzer: Analyzer, prompts: list[str], truth: list[dict[str, Any]], chunk: int,
             prior: dict[str, float]) -> dict[str, Any]:
    t0 = time.perf_counter()
    analyses = []
    for i in range(0, len(prompts), chunk):
        analyses.extend(analyzer.analyze(prompts[i:i + chunk]))
    elapsed = time.perf_counter() - t0
    aucs: dict[str, float | None] = {}
    for m in analyzer.index.models:
        rows = [(a.predicted_quality(m, prior=prior[m]), t[m]["score"]) for a, t in zip(analyses, truth, strict=True)
                if m in t]
        aucs[m] = roc_auc(np.array([r[0] for r in rows]), np.array([r[1] for r in rows]))
    vals = [v for v in aucs.values() if v is not None]
    # Nearest outcome row, searched on what the analyzer searched with.
    content, stripped = analyzer.content_embeddings(prompts[:chunk], analyzer.embedder.encode(prompts[:chunk]))
    sims, _ = analyzer.index.search_outcomes(content, 1)
    return {"quality_auc_mean": round(float(np.mean(vals)), 4) if vals else None,
            "quality_auc": {m: None if v is None else round(v, 4) for m, v in aucs.items()},
            "distinct_predictions": len({round(a.predicted_quality(analyzer.index.models[0], 0.5), 9)
                                         for a in analyses}),
            "mean_top1_outcome_similarity": round(float(sims[:, 0].mean()), 4),
            "template_lines_stripped_mean": round(float(np.mean(stripped)), 2),
            "analyze_per_s": round(len(prompts) / elapsed, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tasks", nargs="*", default=list(TASKS))
    ap.add_argument("--chunk", type=int, default=200, help="prompts per analyze call (the analyze stage's chunk)")
    ap.add_argument("--outcome-k", type=int, default=DEFAULT_OUTCOME_K)
    ap.add_argument("--outcome-strength", type=float, default=DEFAULT_OUTCOME_STRENGTH)
    args = ap.parse_args()
    embedder = Embedder()
    embedder.encode(["warm up the model before anything is timed"])
    out: dict[str, Any] = {"embedder": embedder.config(), "outcome_k": args.outcome_k,
                           "outcome_strength": args.outcome_strength, "tasks": {}}
    cache = Path(tempfile.gettempdir()) / "batchroute-outcome-bench"
    for task in args.tasks:
        train, test = SHARED / f"{task}_train.jsonl", SHARED / f"{task}_test.jsonl"
        rows = _rows(test)
        prompts = [r["prompt"] for r in rows]
        # As eval routing does: train rows sharing an id or a prompt with a test row are dropped.
        ids, texts = {r["id"] for r in rows}, set(prompts)
        kept = [r for r in _rows(train) if r["id"] not in ids and r["prompt"] not in texts]
        cache.mkdir(parents=True, exist_ok=True)
        clean = cache / train.name
        clean.write_text("".join(json.dumps(r) + "\n" for r in kept), encoding="utf-8")
        index = ExemplarIndex.load_or_build([BUNDLED_EXEMPLARS, clean], embedder, cache)
        if {ex.id for ex in index.meta} & ids:
            raise AssertionError("a test row is in the index")
        kw = {"outcome_k": args.outcome_k, "outcome_strength": args.outcome_strength}
        # Each variant gets its own embedder (same model, its own cold cache) so both are timed cold.
        shipped = Analyzer(index, Embedder(), **kw)
        before = Analyzer(_plain(index), Embedder(), strip_templates=False, **kw)
        # The prior a model's prediction shrinks toward: its mean train score (production uses the
        # registry's figure or learnt per-cell priors; a constant would mix weight sums into the ranking).
        prior = {m: float(np.mean([r["outcomes"][m]["score"] for r in kept if m in r["outcomes"]]))
                 for m in index.models}
        res_before = _measure(before, prompts, [r["outcomes"] for r in rows], args.chunk, prior)
        res_shipped = _measure(shipped, prompts, [r["outcomes"] for r in rows], args.chunk, prior)
        out["tasks"][task] = {
            "train_rows": len(kept), "train_rows_dropped_overlap": len(_rows(train)) - len(kept),
            "test_rows": len(rows),
            "template_lines_learnt": len(index.template_lines),
            "with_templates": res_shipped, "whole_prompt": res_before,
            "throughput_ratio": round(res_shipped["analyze_per_s"] / res_before["analyze_per_s"], 3)}
        print(json.dumps({task: {k: v for k, v in out["tasks"][task].items()}}), file=sys.stderr, flush=True)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
