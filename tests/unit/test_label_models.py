"""The label models' pure pieces: leave-one-out centroid similarities and training as served."""

from __future__ import annotations

import numpy as np
import pytest

from batchroute.analyzer.labels import AxisModel, class_sums, loo_centroid_sims


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_loo_centroid_leaves_the_row_itself_out_even_when_the_query_differs_from_it() -> None:
    rng = np.random.default_rng(0)
    vectors = _unit(rng.normal(size=(12, 8)))
    queries = _unit(vectors + 0.3 * rng.normal(size=(12, 8)))   # each row as a (noisier) query
    y = np.array([0, 1, 2] * 4)
    sums, counts = class_sums(vectors, y, 3)
    got = loo_centroid_sims(queries, vectors, y, sums, counts)
    for i in range(12):
        for c in range(3):
            others = [j for j in range(12) if y[j] == c and j != i]
            assert got[i, c] == pytest.approx(np.mean([queries[i] @ vectors[j] for j in others]), abs=1e-12)


def test_fit_with_queries_equal_to_rows_is_the_plain_fit() -> None:
    rng = np.random.default_rng(1)
    centers = _unit(rng.normal(size=(3, 16)))
    y = np.repeat(np.arange(3), 20)
    vectors = _unit(centers[y] + 0.4 * rng.normal(size=(60, 16))).astype(np.float32)
    sims = vectors @ vectors.T
    idx = np.argsort(-sims, axis=1)[:, :10]
    sims = np.take_along_axis(sims, idx, axis=1)
    features = rng.normal(size=(60, 4))
    plain, as_queries = AxisModel(3, 5, 0.05), AxisModel(3, 5, 0.05)
    a = plain.fit(sims, idx, y, vectors, features)
    b = as_queries.fit(sims, idx, y, vectors, features, queries=vectors)
    assert a == b and a["trained"] == 60.0
    assert plain.stacker is not None and as_queries.stacker is not None
    assert plain.stacker.weights is not None and as_queries.stacker.weights is not None
    assert np.array_equal(plain.stacker.weights, as_queries.stacker.weights)
