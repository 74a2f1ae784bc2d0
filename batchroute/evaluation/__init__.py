"""The router benchmark users run on their own data.

* :func:`eval_labels` — the analyzer's labels against a labeled JSONL file: per axis accuracy,
  macro-F1, per-class precision / recall / F1 and the confusion matrix.
* :func:`eval_routing` — an outcome-aware kNN router built on TRAIN outcome rows, measured on
  TEST rows: its cost-quality curve against every single model, random routing and the oracle;
  RouterBench's AIQ, and RouteLLM's APGR / CPT for two-model files.

The pure metric functions live in :mod:`batchroute.evaluation.metrics`. Command line:
``batchroute eval labels FILE`` and ``batchroute eval routing --train F --test F``
(:mod:`batchroute.eval_cli`). Importing this package loads neither torch nor the model.
"""

from __future__ import annotations

from batchroute.evaluation.labels import LABEL_AXES, eval_labels, prompt_hash
from batchroute.evaluation.metrics import (
    aiq,
    apgr,
    classification_report,
    confusion_matrix,
    cpt,
    nondecreasing_convex_hull,
    threshold_curve,
)
from batchroute.evaluation.routing import (
    DEFAULT_PARAMS,
    PRICE_TABLE,
    ROUTELLM_REFERENCE,
    ROUTERBENCH_REFERENCE,
    KnnParams,
    eval_routing,
)

__all__ = [
    "DEFAULT_PARAMS",
    "LABEL_AXES",
    "PRICE_TABLE",
    "ROUTELLM_REFERENCE",
    "ROUTERBENCH_REFERENCE",
    "KnnParams",
    "aiq",
    "apgr",
    "classification_report",
    "confusion_matrix",
    "cpt",
    "eval_labels",
    "eval_routing",
    "nondecreasing_convex_hull",
    "prompt_hash",
    "threshold_curve",
]
