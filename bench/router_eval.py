"""Router benchmark on the shared public data: analyzer labels and kNN routing, one JSON document.

Run from the repo root::

    HF_HUB_OFFLINE=1 .venv/bin/python bench/router_eval.py                 # everything (~5-10 min cold, ~1 min warm)
    HF_HUB_OFFLINE=1 .venv/bin/python bench/router_eval.py --quick         # <= 2000 train / 500 test rows per task

What it measures (see :mod:`batchroute.evaluation`):

* ``labels``: :func:`eval_labels` on the labeled prompts of ``../shared/data/prompts`` (every file
  with a domain label except ``*_train``: mt_bench, vicuna_bench, arena_hard_v2, gsm8k_test,
  humaneval), together and per file;
* ``routing``: :func:`eval_routing` train -> test on each RouterBench pair, routellm_gsm8k and
  routellm_mmlu (their ``split`` field) and arena_bench_v1 (costs from the approximate price
  table). Parameters are chosen by cross-validation on train rows only; test rows are never indexed.
  Per task the summary also gives ``chance`` (the router with its predictions shuffled over the
  test rows: an AIQ gain no larger than this is noise), ``quality_auc_mean`` and ``upper_bounds``
  (the oracle, and perfect predictions for the cheap models only).

``summary`` holds the headline figures; the rest is detail. Embeddings are cached on disk
(``settings.data_dir / "eval_cache"``), so a second run embeds nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from batchroute.evaluation import eval_labels, eval_routing  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"
ROUTING_TASKS: dict[str, tuple[str, str]] = {
    "routerbench_arc_challenge": ("routerbench_arc_challenge_train.jsonl", "routerbench_arc_challenge_test.jsonl"),
    "routerbench_mbpp": ("routerbench_mbpp_train.jsonl", "routerbench_mbpp_test.jsonl"),
    "routerbench_winograde": ("routerbench_winograde_train.jsonl", "routerbench_winograde_test.jsonl"),
    "routellm_gsm8k": ("routellm_gsm8k.jsonl", "routellm_gsm8k.jsonl"),
    "routellm_mmlu": ("routellm_mmlu.jsonl", "routellm_mmlu.jsonl"),
    "arena_bench_v1": ("arena_bench_v1.jsonl", "arena_bench_v1.jsonl"),
}
HEADLINE = ("n_test", "aiq_router", "aiq_single_hull", "aiq_gain", "aiq_gain_ci95", "router_beats_single_hull",
            "best_single_model", "best_single_quality", "router_max_quality", "cost_ratio_at_best_quality",
            "best_quality_at_half_cost", "apgr", "cpt50", "cpt80", "strong_share_at_95pct",
            "strong_share_at_95pct_random")
# The router against shuffles of its own predictions: a gain shows skill only where p is small.
CHANCE = ("aiq_gain_mean", "aiq_gain_p95", "aiq_gain_p_value", "cost_ratio_at_best_quality_median",
          "cost_ratio_p_value", "apgr_mean", "apgr_p95", "apgr_p_value", "router_beats_chance")


def labeled_files(prompts_dir: Path) -> list[Path]:
    """Prompt files with at least one domain label, ``*_train`` excluded (those are for building)."""
    out = []
    for p in sorted(prompts_dir.glob("*.jsonl")):
        if "_train" in p.name:
            continue
        with p.open(encoding="utf-8") as fh:
            if any(json.loads(line).get("domain") for line in fh if line.strip()):
                out.append(p)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared", type=Path, default=SHARED, help="the shared data directory")
    ap.add_argument("--quick", action="store_true", help="at most 2000 train / 500 test rows per task")
    ap.add_argument("--max-train", type=int, default=None)
    ap.add_argument("--max-test", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-tune", action="store_true", help="default kNN parameters, no cross-validation")
    ap.add_argument("--only", nargs="*", default=None, help="routing tasks to run (default all); 'labels' too")
    ap.add_argument("--curves", action="store_true", help="keep the full router curves in the output")
    args = ap.parse_args()
    max_train = args.max_train or (2000 if args.quick else None)
    max_test = args.max_test or (500 if args.quick else None)
    t_start = time.perf_counter()
    report: dict[str, Any] = {"config": {"max_train": max_train, "max_test": max_test, "seed": args.seed,
                                         "tune": not args.no_tune}}
    summary: dict[str, Any] = {}

    if args.only is None or "labels" in args.only:
        files = labeled_files(args.shared / "prompts")
        lab = eval_labels(files)
        report["labels"] = lab
        dom = lab["axes"].get("domain", {})
        cx = lab["axes"].get("complexity", {})
        summary["labels"] = {
            "files": lab["files"], "rows": lab["rows"], "in_exemplars": lab.get("in_exemplars"),
            "domain_n": dom.get("n"), "domain_accuracy": dom.get("accuracy"), "domain_macro_f1": dom.get("macro_f1"),
            "domain_macro_f1_true_labels": dom.get("macro_f1_true_labels"),
            "domain_balanced_accuracy": dom.get("balanced_accuracy"),
            "domain_per_class_f1": {k: v["f1"] for k, v in dom.get("per_class", {}).items()},
            "domain_top_confusions": dom.get("top_confusions", [])[:8],
            "complexity_n": cx.get("n"), "complexity_accuracy": cx.get("accuracy"),
            "by_file": lab.get("by_file"),
        }

    routing: dict[str, Any] = {}
    for task, (train_name, test_name) in ROUTING_TASKS.items():
        if args.only is not None and task not in args.only:
            continue
        res = eval_routing([args.shared / "outcomes" / train_name], [args.shared / "outcomes" / test_name],
                           seed=args.seed, max_train=max_train, max_test=max_test, tune=not args.no_tune)
        [tres] = res["tests"].values()
        if not args.curves:
            tres.pop("router_curve", None)
        routing[task] = res
        chance = tres.get("chance", {})
        summary.setdefault("routing", {})[task] = {
            **{k: tres.get(k) for k in HEADLINE if k in tres},
            "chance": {k: chance.get(k) for k in CHANCE if k in chance},
            "quality_auc_mean": tres.get("quality_auc", {}).get("mean"),
            "upper_bounds": tres.get("upper_bounds"),
            "oracle_quality": tres["oracle"]["quality"], "cost_mode": res["cost_mode"], "params": res["params"],
            "default_params": tres.get("default_params"), "train_rows": res["train_rows"],
            "seconds": res["timing_s"]["total"]}
        print(f"{task}: done in {res['timing_s']['total']}s", file=sys.stderr)
    report["routing"] = routing
    report["summary"] = summary
    report["seconds"] = round(time.perf_counter() - t_start, 1)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
