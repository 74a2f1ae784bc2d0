"""Pure metric functions of the router benchmark (no I/O, no model): easy to test by hand.

Classification (label evaluation):

* :func:`confusion_matrix`, :func:`classification_report` (accuracy, macro-F1, per-class
  precision / recall / F1).

Cost-quality curves (routing evaluation), as RouterBench and RouteLLM define them:

* :func:`nondecreasing_convex_hull` and :func:`aiq` — RouterBench's AIQ: the area under the
  non-decreasing convex hull of (cost, quality) points over a cost range, divided by the range;
* :func:`threshold_curve`, :func:`pgr`, :func:`apgr`, :func:`cpt` — RouteLLM's performance gap
  recovered for a two-model (weak/strong) router traced by a threshold on a routing score.

Prediction diagnostics: :func:`roc_auc` — how well a predicted quality ranks right above wrong
answers (0.5: no better than chance).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

Point = tuple[float, float]
Floats = Sequence[float] | np.ndarray


# ---- classification ---------------------------------------------------------------------------


def _label_order(truth: Sequence[str], pred: Sequence[str], labels: Sequence[str] | None) -> list[str]:
    """``labels`` (kept in its order) restricted to those seen, then any unseen extras sorted."""
    seen = set(truth) | set(pred)
    if labels is None:
        return sorted(seen)
    order = [lab for lab in labels if lab in seen]
    return order + sorted(seen - set(order))


def confusion_matrix(truth: Sequence[str], pred: Sequence[str],
                     labels: Sequence[str] | None = None) -> tuple[list[str], list[list[int]]]:
    """``(labels, matrix)`` where ``matrix[i][j]`` counts rows of true ``labels[i]`` predicted ``labels[j]``.

    ``labels`` gives the order (e.g. the TAXONOMY order); only labels that occur in ``truth`` or
    ``pred`` are kept. Without ``labels`` the occurring labels are sorted.
    """
    if len(truth) != len(pred):
        raise ValueError(f"{len(truth)} true labels but {len(pred)} predictions")
    order = _label_order(truth, pred, labels)
    pos = {lab: i for i, lab in enumerate(order)}
    matrix = [[0] * len(order) for _ in order]
    for t, p in zip(truth, pred, strict=True):
        matrix[pos[t]][pos[p]] += 1
    return order, matrix


def classification_report(truth: Sequence[str], pred: Sequence[str],
                          labels: Sequence[str] | None = None) -> dict[str, Any]:
    """Accuracy, macro-F1 and per-class precision / recall / F1 / support, plus the confusion matrix.

    ``macro_f1`` averages F1 over every label that occurs in the truth *or* the predictions (as
    scikit-learn does by default: predicting a class that never occurs costs a zero F1);
    ``macro_f1_true_labels`` averages over the labels that occur in the truth only;
    ``balanced_accuracy`` is the mean recall over those labels. A class's
    precision is 0 when it is never predicted, its recall 0 when it never occurs.
    """
    order, matrix = confusion_matrix(truth, pred, labels)
    n = len(truth)
    m = np.array(matrix, dtype=np.int64).reshape(len(order), len(order))
    tp = np.diag(m)
    pred_n = m.sum(axis=0)
    true_n = m.sum(axis=1)
    per_class: dict[str, dict[str, float]] = {}
    for i, lab in enumerate(order):
        precision = tp[i] / pred_n[i] if pred_n[i] else 0.0
        recall = tp[i] / true_n[i] if true_n[i] else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[lab] = {"precision": round(float(precision), 4), "recall": round(float(recall), 4),
                          "f1": round(float(f1), 4), "support": int(true_n[i]), "predicted": int(pred_n[i])}
    f1s = [per_class[lab]["f1"] for lab in order]
    true_f1s = [per_class[lab]["f1"] for lab in order if per_class[lab]["support"]]
    recalls = [per_class[lab]["recall"] for lab in order if per_class[lab]["support"]]
    return {
        "n": n,
        "accuracy": round(float(tp.sum()) / n, 4) if n else None,
        "macro_f1": round(sum(f1s) / len(f1s), 4) if f1s else None,
        "macro_f1_true_labels": round(sum(true_f1s) / len(true_f1s), 4) if true_f1s else None,
        "balanced_accuracy": round(sum(recalls) / len(recalls), 4) if recalls else None,
        "per_class": per_class,
        "confusion": {"labels": order, "matrix": matrix},
    }


def top_confusions(report: dict[str, Any], n: int = 10) -> list[dict[str, Any]]:
    """The ``n`` largest off-diagonal cells of a report's confusion matrix, largest first."""
    labels = report["confusion"]["labels"]
    cells = [{"true": labels[i], "predicted": labels[j], "count": c}
             for i, row in enumerate(report["confusion"]["matrix"])
             for j, c in enumerate(row) if i != j and c]
    return sorted(cells, key=lambda d: -d["count"])[:n]


# ---- cost-quality curves (RouterBench AIQ) ------------------------------------------------------


def nondecreasing_convex_hull(points: Sequence[Point]) -> list[Point]:
    """The non-decreasing upper convex hull of (cost, quality) points, sorted by cost.

    First the Pareto frontier (a point stays only if it beats the quality of every cheaper
    point: spending more for less is never needed), then its upper concave hull (any point
    between two others is reachable by randomly mixing them, so only the hull matters). The
    result is increasing in both cost and quality and concave.
    """
    pts = sorted(((float(c), float(q)) for c, q in points if math.isfinite(c) and math.isfinite(q)),
                 key=lambda p: (p[0], -p[1]))
    frontier: list[Point] = []
    for c, q in pts:
        if not frontier or q > frontier[-1][1]:
            if frontier and c == frontier[-1][0]:
                frontier[-1] = (c, q)
            else:
                frontier.append((c, q))
    hull: list[Point] = []
    for p in frontier:
        # Pop the last point while it lies on or below the segment from its predecessor to p.
        while len(hull) >= 2:
            (c0, q0), (c1, q1) = hull[-2], hull[-1]
            if (c1 - c0) * (p[1] - q0) - (q1 - q0) * (p[0] - c0) >= 0:
                hull.pop()
            else:
                break
        hull.append(p)
    return hull


def hull_value(hull: Sequence[Point], cost: float) -> float:
    """Quality the hull reaches at ``cost``: interpolated; flat after its last point.

    Below the hull's cheapest point nothing is reachable: the value is 0 (a conservative choice;
    a router that cannot spend that little gets no credit there).
    """
    if not hull or cost < hull[0][0]:
        return 0.0
    if cost >= hull[-1][0]:
        return hull[-1][1]
    for (c0, q0), (c1, q1) in itertools.pairwise(hull):
        if c0 <= cost <= c1:
            return q0 if c1 == c0 else q0 + (q1 - q0) * (cost - c0) / (c1 - c0)
    return hull[-1][1]  # pragma: no cover - unreachable for a sorted hull


def aiq(points: Sequence[Point], cost_min: float, cost_max: float) -> float:
    """RouterBench's Average Improvement in Quality over ``[cost_min, cost_max]``.

    ``∫ hull(c) dc / (cost_max - cost_min)`` over the non-decreasing convex hull of ``points``
    (see :func:`nondecreasing_convex_hull` and :func:`hull_value`). For the single models the
    range is their own cost range, so their AIQ is the mean height of their hull. With an empty
    range the hull's value at ``cost_min`` is returned.
    """
    hull = nondecreasing_convex_hull(points)
    if not hull:
        return 0.0
    if cost_max <= cost_min:
        return hull_value(hull, cost_min)
    xs = sorted({cost_min, cost_max, *(c for c, _ in hull if cost_min < c < cost_max)})
    area = 0.0
    for a, b in itertools.pairwise(xs):
        if b <= hull[0][0]:
            continue  # nothing reachable below the hull's cheapest point
        area += (hull_value(hull, a) + hull_value(hull, b)) / 2 * (b - a)
    return area / (cost_max - cost_min)


def min_cost_reaching(points: Sequence[Point], quality: float, *, hull: bool = False,
                      tol: float = 1e-12) -> float | None:
    """The least cost at which the points (or, with ``hull``, their hull) reach ``quality``; None if never."""
    if not hull:
        costs = [c for c, q in points if q >= quality - tol]
        return min(costs) if costs else None
    h = nondecreasing_convex_hull(points)
    if not h or h[-1][1] < quality - tol:
        return None
    if h[0][1] >= quality - tol:
        return h[0][0]
    for (c0, q0), (c1, q1) in itertools.pairwise(h):
        if q1 >= quality - tol:
            return c0 + (c1 - c0) * (quality - q0) / (q1 - q0)
    return None  # pragma: no cover


# ---- two-model routers (RouteLLM PGR / APGR / CPT) --------------------------------------------


def threshold_curve(route_score: Floats, weak: Floats, strong: Floats) -> tuple[np.ndarray, np.ndarray]:
    """``(share, quality)`` of a router that sends the prompts with the highest ``route_score`` to the strong model.

    Sweeping the threshold from +inf to -inf sends 0%, ..., 100% of the prompts to the strong
    model. Points are placed only where the threshold passes a distinct score, so prompts with
    tied scores move together; linear interpolation between two points is the expected value of
    breaking the tie at random. ``quality`` is the mean true score of the chosen models.
    """
    s = np.asarray(route_score, dtype=np.float64)
    w = np.asarray(weak, dtype=np.float64)
    st = np.asarray(strong, dtype=np.float64)
    n = len(s)
    if not (len(w) == len(st) == n) or n == 0:
        raise ValueError("route_score, weak and strong need the same non-zero length")
    order = np.argsort(-s, kind="stable")
    gain = (st - w)[order]
    cum = np.concatenate([[0.0], np.cumsum(gain)])
    ss = s[order]
    # Boundaries: after the last prompt of each group of equal scores.
    ends = np.flatnonzero(np.concatenate([ss[1:] != ss[:-1], [True]])) + 1
    k = np.concatenate([[0], ends])
    share = k / n
    quality = (w.sum() + cum[k]) / n
    return share, quality


def pgr(quality: np.ndarray | float, q_weak: float, q_strong: float) -> np.ndarray | float | None:
    """Performance gap recovered: ``(q - q_weak) / (q_strong - q_weak)``; None without a gap."""
    gap = q_strong - q_weak
    if gap <= 0:
        return None
    return (np.asarray(quality, dtype=np.float64) - q_weak) / gap if isinstance(quality, np.ndarray) \
        else (float(quality) - q_weak) / gap


def apgr(share: Floats, quality: Floats, q_weak: float, q_strong: float) -> float | None:
    """Average PGR over the strong-call share from 0 to 1 (trapezoid over the curve's points).

    The curve must start at share 0 and end at share 1 (as :func:`threshold_curve` returns it).
    A random router's curve is the straight line from weak to strong: APGR 0.5.
    """
    x = np.asarray(share, dtype=np.float64)
    g = pgr(np.asarray(quality, dtype=np.float64), q_weak, q_strong)
    if g is None or len(x) < 2:
        return None
    assert isinstance(g, np.ndarray)
    span = x[-1] - x[0]
    if span <= 0:
        return None
    return float(np.sum((g[1:] + g[:-1]) / 2 * np.diff(x)) / span)


def cpt(share: Floats, quality: Floats, q_weak: float, q_strong: float,
        target: float) -> float | None:
    """Call-performance threshold: the least strong-call share at which PGR reaches ``target``.

    Linear interpolation between curve points (random mixing of two thresholds); None when the
    curve never reaches the target or there is no gap between the models.
    """
    x = np.asarray(share, dtype=np.float64)
    g = pgr(np.asarray(quality, dtype=np.float64), q_weak, q_strong)
    if g is None or not len(x):
        return None
    assert isinstance(g, np.ndarray)
    if g[0] >= target:
        return float(x[0])
    for i in range(1, len(x)):
        if g[i] >= target:
            g0, g1 = g[i - 1], g[i]
            return float(x[i - 1] + (x[i] - x[i - 1]) * (target - g0) / (g1 - g0))
    return None


def share_at_strong_fraction(share: Floats, quality: Floats, q_weak: float, q_strong: float,
                             fraction: float = 0.95) -> float | None:
    """The least strong-call share at which quality reaches ``fraction`` of the strong model's.

    RouteLLM's headline form ("95% of GPT-4's performance"): 0 when the weak model alone gets
    there, else :func:`cpt` at the PGR that quality corresponds to; None when never reached.
    """
    target = fraction * q_strong
    if q_weak >= target:
        return 0.0
    g = pgr(target, q_weak, q_strong)
    return None if g is None else cpt(share, quality, q_weak, q_strong, float(g))


def roc_auc(score: Floats, label: Floats) -> float | None:
    """Area under the ROC curve of ``score`` for binary ``label`` (1 = positive), ties counted half.

    The probability that a random positive row scores above a random negative one (the
    Mann-Whitney statistic). None when ``label`` is not all 0/1 or holds only one class.
    """
    s = np.asarray(score, dtype=np.float64)
    y = np.asarray(label, dtype=np.float64)
    if len(s) != len(y):
        raise ValueError(f"{len(s)} scores but {len(y)} labels")
    if not np.isin(y, (0.0, 1.0)).all():
        return None
    pos = y == 1.0
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if not n_pos or not n_neg:
        return None
    # Mid-ranks, so tied scores contribute one half.
    _, inv, counts = np.unique(s, return_inverse=True, return_counts=True)
    upper = np.cumsum(counts)
    ranks = (upper - (counts - 1) / 2.0)[inv]
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def shrunk_quality(score_sum: np.ndarray, weight_sum: np.ndarray, prior: np.ndarray,
                   strength: float) -> np.ndarray:
    """The analyzer's outcome-aware predicted quality, vectorised.

    ``(Σ w·s + strength·prior) / (Σ w + strength)`` — the neighbours' weighted scores shrunk
    toward the model's prior; with no neighbour weight it is the prior (as
    :meth:`batchroute.analyzer.Analysis.predicted_quality`).
    """
    s = np.asarray(score_sum, dtype=np.float64)
    w = np.asarray(weight_sum, dtype=np.float64)
    p = np.broadcast_to(np.asarray(prior, dtype=np.float64), s.shape)
    denom = w + strength
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(denom > 0, (s + strength * p) / np.where(denom > 0, denom, 1.0), p)
    return np.where(w > 0, out, p)


__all__ = [
    "aiq",
    "apgr",
    "classification_report",
    "confusion_matrix",
    "cpt",
    "hull_value",
    "min_cost_reaching",
    "nondecreasing_convex_hull",
    "pgr",
    "roc_auc",
    "shrunk_quality",
    "threshold_curve",
    "top_confusions",
]
