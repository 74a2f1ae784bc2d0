"""Labels from neighbours and features: a kNN vote stacked under a tiny logistic regression.

For each axis (domain, complexity, style):

1. **kNN vote.** The ``k`` nearest exemplars that carry a label for the axis vote with weight
   ``exp((sim - best_sim) / temperature)``; the votes, smoothed, are probabilities ``p_knn``.
   Alongside, the mean similarity to each label's exemplars (a nearest-centroid view, steadier
   than the few nearest neighbours on prompts unlike any exemplar).
2. **Stacker.** A multinomial logistic regression over ``[p_knn, log p_knn, best_sim,
   centroid similarities, cheap features]`` gives the final probabilities. It is trained on the exemplars themselves
   with *leave-one-out* votes (each exemplar's vote excludes itself and its near-duplicates),
   so it learns how far to trust the vote and when the features should overrule it
   (e.g. "a pasted text plus 'positive or negative?'" is classification even when the nearest
   exemplars are reviews to summarise).
3. **Calibration.** A temperature on the stacker's logits is fitted on 5-fold out-of-fold
   predictions, so that the reported probability of the chosen label tracks its accuracy.

Everything is numpy; training takes a fraction of a second for thousands of exemplars.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# Weight of the uniform prior added to the kNN votes (in units of one best-neighbour vote).
VOTE_SMOOTHING = 0.25
# Leave-one-out votes ignore neighbours this similar to the held-out exemplar (paraphrases).
NEAR_DUPLICATE = 0.97
# Per class at most this many rows train the stacker (bounds time with big outcome files).
MAX_TRAIN_PER_CLASS = 600
# Centroid similarities are multiplied by this so their spread matches the other inputs.
CENTROID_SCALE = 10.0


def knn_votes(sims: np.ndarray, idx: np.ndarray, row_labels: np.ndarray, n_classes: int,
              temperature: float, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Similarity-weighted vote of the first ``k`` labeled neighbours of each query.

    Args:
        sims, idx: ``(n, K)`` neighbour similarities and index rows (-1 = none), best first.
        row_labels: label index per index row, -1 where the row carries no label.
    Returns:
        ``(probs (n, n_classes), best_sim (n,))``; ``best_sim`` is the similarity of the best
        labeled neighbour (0 when there is none).
    """
    n = len(sims)
    labels = np.where(idx >= 0, row_labels[np.maximum(idx, 0)], -1)
    valid = labels >= 0
    # Keep only the first k labeled neighbours of each row.
    valid &= np.cumsum(valid, axis=1) <= k
    s = np.where(valid, sims, -np.inf)
    best = s.max(axis=1) if s.shape[1] else np.full(n, -np.inf)
    has = np.isfinite(best)
    best_safe = np.where(has, best, 0.0)
    w = np.where(valid, np.exp((np.where(valid, sims, 0.0) - best_safe[:, None]) / temperature), 0.0)
    votes = np.zeros((n, n_classes), dtype=np.float64)
    rows = np.repeat(np.arange(n), labels.shape[1])
    np.add.at(votes, (rows, np.maximum(labels, 0).ravel()), w.ravel())
    probs = (votes + VOTE_SMOOTHING / n_classes) / (votes.sum(axis=1, keepdims=True) + VOTE_SMOOTHING)
    return probs, best_safe.astype(np.float64)


def stack_inputs(probs: np.ndarray, best_sim: np.ndarray, centroid_sims: np.ndarray,
                 features: np.ndarray) -> np.ndarray:
    """The stacker's design matrix ``[p, log p, best_sim, centroid sims, features]``."""
    return np.hstack([probs, np.log(probs), best_sim[:, None], centroid_sims * CENTROID_SCALE,
                      features]).astype(np.float64)


def class_sums(vectors: np.ndarray, row_labels: np.ndarray, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Per class: the sum of its rows' vectors ``(n_classes, dim)`` and its row count."""
    labeled = row_labels >= 0
    sums = np.zeros((n_classes, vectors.shape[1]), dtype=np.float64)
    np.add.at(sums, row_labels[labeled], vectors[labeled])
    return sums, np.bincount(row_labels[labeled], minlength=n_classes).astype(np.float64)


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    out: np.ndarray = e / e.sum(axis=1, keepdims=True)
    return out


@dataclass
class SoftmaxRegression:
    """Multinomial logistic regression with L2, fitted by full-batch Adam (numpy only)."""

    n_classes: int
    l2: float = 1e-3
    iters: int = 400
    lr: float = 0.05
    temperature: float = 1.0
    weights: np.ndarray | None = None

    def fit(self, x: np.ndarray, y: np.ndarray, sample_weight: np.ndarray | None = None) -> None:
        """Fit on rows ``x`` with integer labels ``y``."""
        n, d = x.shape
        xb = np.hstack([x, np.ones((n, 1))])
        sw = np.ones(n) if sample_weight is None else sample_weight
        sw = sw / sw.sum()
        target = np.eye(self.n_classes)[y]
        w = np.zeros((d + 1, self.n_classes))
        m = np.zeros_like(w)
        v = np.zeros_like(w)
        reg = np.full((d + 1, 1), self.l2)
        reg[-1] = 0.0
        for t in range(1, self.iters + 1):
            p = _softmax(xb @ w)
            grad = xb.T @ ((p - target) * sw[:, None]) + reg * w
            m = 0.9 * m + 0.1 * grad
            v = 0.999 * v + 0.001 * grad * grad
            w -= self.lr * (m / (1 - 0.9 ** t)) / (np.sqrt(v / (1 - 0.999 ** t)) + 1e-8)
        self.weights = w

    def logits(self, x: np.ndarray) -> np.ndarray:
        """Uncalibrated logits."""
        if self.weights is None:
            raise RuntimeError("SoftmaxRegression used before fit")
        out: np.ndarray = np.hstack([x, np.ones((len(x), 1))]) @ self.weights
        return out

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """Calibrated class probabilities ``(n, n_classes)``."""
        return _softmax(self.logits(x) / self.temperature)


def fit_temperature(logits: np.ndarray, y: np.ndarray) -> float:
    """The temperature minimising the negative log-likelihood of ``y`` (grid + refinement)."""
    def nll(t: float) -> float:
        p = _softmax(logits / t)
        return float(-np.mean(np.log(p[np.arange(len(y)), y] + 1e-12)))

    grid = np.exp(np.linspace(np.log(0.3), np.log(5.0), 40))
    best = min(grid, key=nll)
    fine = np.linspace(best * 0.9, best * 1.1, 11)
    return float(min(fine, key=nll))


def _balanced_subset(y: np.ndarray, cap: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    keep: list[np.ndarray] = []
    for c in np.unique(y):
        rows = np.flatnonzero(y == c)
        keep.append(rows if len(rows) <= cap else np.sort(rng.choice(rows, cap, replace=False)))
    return np.sort(np.concatenate(keep)) if keep else np.zeros(0, dtype=np.int64)


def loo_centroid_sims(queries: np.ndarray, vectors: np.ndarray, y: np.ndarray, sums: np.ndarray,
                      counts: np.ndarray) -> np.ndarray:
    """Mean cosine of each query to each label's rows, its own row left out.

    ``queries[i]`` is row ``i`` (stored as ``vectors[i]``, labeled ``y[i]``) embedded as a query;
    ``sums``/``counts`` come from :func:`class_sums` over every row.
    """
    q = np.asarray(queries, dtype=np.float64)
    own = np.eye(sums.shape[0])[y]
    self_sim = np.sum(q * np.asarray(vectors, dtype=np.float64), axis=1, keepdims=True)
    out: np.ndarray = (q @ sums.T - own * self_sim) / np.maximum(counts - own, 1.0)
    return out


@dataclass
class AxisModel:
    """kNN vote + stacker for one axis; :meth:`predict` gives calibrated probabilities."""

    n_classes: int
    k: int
    temperature: float
    stacker: SoftmaxRegression | None = None
    sums: np.ndarray | None = None
    counts: np.ndarray | None = None

    def centroid_sims(self, queries: np.ndarray) -> np.ndarray:
        """Mean cosine of each query to each label's exemplars (0 for labels without any)."""
        if self.sums is None or self.counts is None:
            return np.zeros((len(queries), self.n_classes))
        out: np.ndarray = (queries.astype(np.float64) @ self.sums.T) / np.maximum(self.counts, 1.0)
        return out

    def vote(self, sims: np.ndarray, idx: np.ndarray,
             row_labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The smoothed kNN vote (see :func:`knn_votes`)."""
        return knn_votes(sims, idx, row_labels, self.n_classes, self.temperature, self.k)

    def predict(self, sims: np.ndarray, idx: np.ndarray, row_labels: np.ndarray,
                queries: np.ndarray, features: np.ndarray) -> np.ndarray:
        """Final probabilities ``(n, n_classes)``: stacked when trained, else the raw vote."""
        probs, best = self.vote(sims, idx, row_labels)
        if self.stacker is None:
            return probs
        x = stack_inputs(probs, best, self.centroid_sims(queries), features)
        return self.stacker.predict_proba(x)

    def fit(self, sims: np.ndarray, idx: np.ndarray, row_labels: np.ndarray, vectors: np.ndarray,
            features: np.ndarray, queries: np.ndarray | None = None) -> dict[str, float]:
        """Train the stacker from the index's own rows with leave-one-out votes.

        ``vectors`` are the index rows; ``queries`` the same rows embedded as queries are (None:
        ``vectors``). ``sims, idx`` are the neighbours of every row's query vector among the
        rows (searched with ``k`` + a margin); each row's own entry and its near-duplicates are
        dropped before voting, and its own vector is taken out of its label's centroid. Returns
        fit diagnostics (out-of-fold accuracy, fitted temperature).
        """
        self.sums, self.counts = class_sums(vectors, row_labels, self.n_classes)
        rows = np.arange(len(row_labels))
        labeled = row_labels >= 0
        if labeled.sum() < 10 or len(np.unique(row_labels[labeled])) < 2:
            self.stacker = None
            return {"trained": 0.0}
        sel = np.flatnonzero(labeled)
        sel = sel[_balanced_subset(row_labels[sel], MAX_TRAIN_PER_CLASS)]
        y = row_labels[sel]
        s, ix = sims[sel], idx[sel]
        drop = (ix == rows[sel][:, None]) | (s >= NEAR_DUPLICATE)
        ix = np.where(drop, -1, ix)
        probs, best = self.vote(s, ix, row_labels)
        q = vectors[sel] if queries is None else queries[sel]
        centroid = loo_centroid_sims(q, vectors[sel], y, self.sums, self.counts)
        x = stack_inputs(probs, best, centroid, features[sel])
        # Classes are weighted equally whatever their exemplar counts.
        counts = np.bincount(y, minlength=self.n_classes).astype(np.float64)
        sw = 1.0 / np.maximum(counts[y], 1.0)
        folds = np.arange(len(y)) % 5
        oof = np.zeros((len(y), self.n_classes))
        for f in range(5):
            tr, te = folds != f, folds == f
            if len(np.unique(y[tr])) < 2 or not te.any():
                continue
            m = SoftmaxRegression(self.n_classes)
            m.fit(x[tr], y[tr], sw[tr])
            oof[te] = m.logits(x[te])
        final = SoftmaxRegression(self.n_classes)
        final.fit(x, y, sw)
        final.temperature = fit_temperature(oof, y)
        self.stacker = final
        return {"trained": float(len(y)), "oof_accuracy": float(np.mean(oof.argmax(1) == y)),
                "vote_accuracy": float(np.mean(probs.argmax(1) == y)),
                "temperature": final.temperature}


def fit_key(index_key: str, k: int, temperature: float) -> str:
    """Names a fit: the index's content key, the vote's ``k`` and temperature, and this module's
    source (any change to the training recipe gives another key, so a stale fit is never loaded)."""
    h = hashlib.sha256(f"{index_key}|{k}|{temperature!r}".encode())
    h.update(Path(__file__).read_bytes())
    return h.hexdigest()[:24]


def save_fit(path: Path, models: dict[str, AxisModel], report: dict[str, dict[str, float]]) -> None:
    """Write the fitted arrays of every axis and the fit report to ``path`` (atomically replaced)."""
    arrays: dict[str, np.ndarray] = {"report": np.array(json.dumps(report))}
    for axis, m in models.items():
        if m.sums is None or m.counts is None:
            raise ValueError(f"axis {axis} is not fitted")
        arrays[f"{axis}.sums"], arrays[f"{axis}.counts"] = m.sums, m.counts
        if m.stacker is not None and m.stacker.weights is not None:
            arrays[f"{axis}.weights"] = m.stacker.weights
            arrays[f"{axis}.temperature"] = np.array(m.stacker.temperature)
    fd, tmp = tempfile.mkstemp(prefix=".fit-", suffix=".npz", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, **arrays)  # type: ignore[arg-type]  # the stub reads **kwds as allow_pickle
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_fit(path: Path, models: dict[str, AxisModel], n_features: int) -> dict[str, dict[str, float]]:
    """Restore what :func:`save_fit` wrote into ``models`` (same axes, class counts and
    ``n_features`` cheap features); returns the fit report. Raises ValueError (or OSError,
    KeyError) when the file does not fit them, leaving ``models`` unchanged."""
    with np.load(path, allow_pickle=False) as data:
        restored: dict[str, tuple[np.ndarray, np.ndarray, SoftmaxRegression | None]] = {}
        for axis, m in models.items():
            sums, counts = data[f"{axis}.sums"], data[f"{axis}.counts"]
            if sums.shape[0] != m.n_classes or counts.shape != (m.n_classes,):
                raise ValueError(f"{path}: axis {axis} has {sums.shape[0]} classes, expected {m.n_classes}")
            stacker = None
            if f"{axis}.weights" in data:
                weights = data[f"{axis}.weights"]
                # Rows of the design matrix (see stack_inputs) plus the bias.
                if weights.shape != (3 * m.n_classes + 1 + n_features + 1, m.n_classes):
                    raise ValueError(f"{path}: axis {axis} weights have shape {weights.shape}")
                stacker = SoftmaxRegression(m.n_classes, weights=weights,
                                            temperature=float(data[f"{axis}.temperature"]))
            restored[axis] = (sums, counts, stacker)
        report: dict[str, dict[str, float]] = json.loads(str(data["report"]))
    # Only now, so a bad file leaves the models as they were.
    for axis, (sums, counts, stacker) in restored.items():
        models[axis].sums, models[axis].counts, models[axis].stacker = sums, counts, stacker
    return report
