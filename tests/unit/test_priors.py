"""Label-prior adaptation (EM over a batch's probabilities)."""

from __future__ import annotations

import numpy as np
import pytest

from batchroute.analyzer.priors import adapt_priors, reweight


def test_prior_of_confident_batch_is_its_label_mix() -> None:
    # 8 prompts of class 0, 2 of class 1, each 99% sure: the mix is 0.8 / 0.2 (alpha 0).
    probs = np.array([[0.99, 0.01]] * 8 + [[0.01, 0.99]] * 2)
    adjusted, prior = adapt_priors(probs, alpha=0.0)
    assert prior == pytest.approx([0.8, 0.2], abs=0.01)
    assert adjusted.argmax(axis=1).tolist() == [0] * 8 + [1] * 2


def test_ambiguous_prompt_follows_the_batch_majority() -> None:
    # 30 clear class-0 prompts and one that leans 55/45 to class 1: under the batch's prior
    # (~97% class 0) the ambiguous one becomes class 0.
    probs = np.array([[0.95, 0.05]] * 30 + [[0.45, 0.55]])
    adjusted, prior = adapt_priors(probs)
    assert prior[0] > 0.85
    assert int(adjusted[-1].argmax()) == 0
    np.testing.assert_allclose(adjusted.sum(axis=1), 1.0)


def test_pseudo_count_keeps_the_training_prior() -> None:
    probs = np.array([[0.9, 0.1], [0.8, 0.2]])
    adjusted, prior = adapt_priors(probs, alpha=1e9)
    np.testing.assert_allclose(prior, [0.5, 0.5], atol=1e-6)
    np.testing.assert_allclose(adjusted, probs, atol=1e-6)


def test_non_uniform_training_prior_is_divided_out() -> None:
    # Probabilities made under a 0.75/0.25 prior; re-weighting to 0.5/0.5 inverts that ratio.
    out = reweight(np.array([[0.75, 0.25]]), np.array([0.5 / 0.75, 0.5 / 0.25]))
    np.testing.assert_allclose(out, [[0.5, 0.5]])


def test_empty_batch_and_bad_shapes() -> None:
    adjusted, prior = adapt_priors(np.zeros((0, 3)))
    assert adjusted.shape == (0, 3)
    np.testing.assert_allclose(prior, [1 / 3] * 3)
    with pytest.raises(ValueError, match="2-D"):
        adapt_priors(np.array([0.5, 0.5]))
    with pytest.raises(ValueError, match="train_prior"):
        adapt_priors(np.array([[0.5, 0.5]]), np.array([1.0, 0.0]))
