"""Label-prior adaptation: correct a batch's probabilities for the label mix of that batch.

The label models are trained class-balanced, so their probabilities assume every domain is
equally likely. A real job is not like that: a document pipeline is mostly summarization and
extraction, a maths benchmark is nearly all maths. Near a decision boundary the balanced prior
sends many prompts of the job's dominant kind to rare classes (e.g. word problems to
``reasoning``), which is costly for the rare classes' precision and for routing.

:func:`adapt_priors` estimates the batch's own label mix by EM and re-weights every prompt's
probabilities to it (Saerens, Latinne & Decaestecker, 2002, "Adjusting the outputs of a
classifier to new a priori probabilities")::

    prior <- (sum_i p_i(c | x) + alpha * train_prior) / (n + alpha)
    p_i(c | x) <- p_i_orig(c | x) * prior[c] / train_prior[c], renormalised

``alpha`` pseudo-prompts of the training prior keep a small batch from collapsing onto one
class. The analyzer applies it per ``analyze`` call of at least :data:`MIN_BATCH` prompts
(one pipeline chunk); a lone prompt keeps the balanced probabilities.
"""

from __future__ import annotations

import numpy as np

# Fewer prompts than this say too little about a batch's label mix: left as they are.
MIN_BATCH = 20
# Pseudo-prompts of the training prior in the estimate (see the module docstring).
PRIOR_PSEUDO_COUNT = 5.0


def adapt_priors(probs: np.ndarray, train_prior: np.ndarray | None = None, *,
                 alpha: float = PRIOR_PSEUDO_COUNT, max_iter: int = 200,
                 tol: float = 1e-7) -> tuple[np.ndarray, np.ndarray]:
    """EM estimate of the batch's label prior and the probabilities re-weighted to it.

    Args:
        probs: ``(n, n_classes)`` calibrated probabilities under ``train_prior``; rows sum to 1.
        train_prior: the prior the probabilities assume (default: uniform, i.e. balanced training).
        alpha: pseudo-count of ``train_prior`` mixed into the estimate (0 = plain EM).
    Returns:
        ``(adjusted (n, n_classes), prior (n_classes,))``. An empty batch returns its input and
        ``train_prior``.
    """
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2:
        raise ValueError(f"probs must be 2-D (n, n_classes), got shape {p.shape}")
    n, c = p.shape
    pi0 = np.full(c, 1.0 / c) if train_prior is None else np.asarray(train_prior, dtype=np.float64)
    if pi0.shape != (c,) or np.any(pi0 <= 0):
        raise ValueError("train_prior must be positive with one entry per class")
    pi0 = pi0 / pi0.sum()
    if n == 0:
        return p.copy(), pi0
    prior = pi0.copy()
    adjusted = p
    for _ in range(max_iter):
        adjusted = reweight(p, prior / pi0)
        new = (adjusted.sum(axis=0) + alpha * pi0) / (n + alpha)
        done = float(np.abs(new - prior).max()) < tol
        prior = new
        if done:
            break
    return reweight(p, prior / pi0), prior


def reweight(probs: np.ndarray, ratio: np.ndarray) -> np.ndarray:
    """``probs * ratio`` per class, each row renormalised to sum to 1."""
    w = probs * ratio[None, :]
    out: np.ndarray = w / np.maximum(w.sum(axis=1, keepdims=True), 1e-300)
    return out
