"""Embedder precisions with the real model: the direct path, bf16/int8/ONNX int8 against fp32, config keys."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from batchroute.analyzer import Embedder, PrepConfig, backend, onnx_model
from batchroute.analyzer.backend import encode_direct, load_model, tokenizer_for, torch_forward
from batchroute.errors import AnalyzerError

pytestmark = pytest.mark.model

TEXTS = ["Write a haiku", "What is 2+2?", "Summarize this email: " + "the meeting moved to Thursday. " * 30,
         "def f(x):\n    return x[0]  # fix the bug", "Solve for x: 3x + 7 = 22", "a"]


def test_direct_path_matches_sentence_transformers_encode() -> None:
    emb = Embedder(precision="fp32", cache_size=0)
    model, _ = load_model(emb.model_path, "fp32")
    model.max_seq_length = 64
    stock = model.encode(TEXTS, batch_size=4, convert_to_numpy=True, normalize_embeddings=True,
                         show_progress_bar=False)
    direct = encode_direct(tokenizer_for(emb.model_path), torch_forward(model), TEXTS, 64, 4)
    assert direct.dtype == np.float32 and direct.shape == (len(TEXTS), 384)
    assert np.abs(direct - stock).max() < 1e-5


def test_token_budget_batches_long_texts_smaller_with_the_same_vectors() -> None:
    emb = Embedder(precision="fp32", cache_size=0)
    model, _ = load_model(emb.model_path, "fp32")
    tokenize = tokenizer_for(emb.model_path)
    texts = [*TEXTS, *(f"short {i}" for i in range(9)), "a longer text about budgets " * 12]
    widths = {len(ids) for ids in tokenize(texts, 64)}
    assert max(widths) == 64 and min(widths) <= 4  # the budget has to bite on some batches only
    shapes: list[tuple[int, int]] = []
    plain = torch_forward(model)

    def recording(ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        shapes.append(ids.shape)
        return plain(ids, mask)

    unlimited = encode_direct(tokenize, plain, texts, 64, 8)
    budgeted = encode_direct(tokenize, recording, texts, 64, 8, batch_tokens=100)
    assert np.abs(budgeted - unlimited).max() < 1e-5
    # Every text once; each batch within 8 rows and 100 padded tokens (a lone text may exceed it).
    assert sum(rows for rows, _ in shapes) == len(texts)
    assert all(rows <= 8 and (rows * width <= 100 or rows == 1) for rows, width in shapes)
    # Longest first: the 64- and 62-token texts go one per batch, the short ones 8 at a time.
    assert shapes[:2] == [(1, 64), (1, 62)]
    assert any(rows == 8 for rows, _ in shapes)


@pytest.mark.parametrize("max_length", [8, 64, 256])
def test_tokenizer_ids_equal_the_transformers_tokenizer(max_length: int) -> None:
    path = Embedder().model_path
    hf = load_model(path, "fp32")[0].tokenizer
    texts = [*TEXTS, "如何证明拉格朗日中值定理", "Ünïcödé  naïve café — “quotes” 🙂", "word " * 400, ""]
    want = hf(texts, truncation=True, max_length=max_length)["input_ids"]
    got = tokenizer_for(path)(texts, max_length)
    assert got == want
    assert max(len(ids) for ids in got) == max_length


def test_cached_int8_graph_is_served_without_torch(tmp_path: Path) -> None:
    # Build the graph here, then embed in a fresh process: it must not import torch (the slow,
    # memory-heavy part of an analyze worker's start) and must give the same vectors.
    emb = Embedder(precision="ort-int8", cache_size=0, model_dir=tmp_path)
    backend._FORWARDS.pop((str(emb.model_path), "ort-int8"), None)   # one session per process: build it here
    here = emb.encode(TEXTS)
    assert len(list(tmp_path.glob("minilm-*.onnx"))) == 1
    code = (
        "import json, sys\n"
        "from pathlib import Path\n"
        "from batchroute.analyzer import Embedder\n"
        f"v = Embedder(precision='ort-int8', cache_size=0, model_dir=Path({str(tmp_path)!r})).encode({TEXTS!r})\n"
        "print(json.dumps({'torch': 'torch' in sys.modules, 'st': 'sentence_transformers' in sys.modules,"
        " 'v': v.tolist()}))\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert res.returncode == 0, res.stderr[-2000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert (out["torch"], out["st"]) == (False, False)
    assert np.allclose(np.array(out["v"], dtype=np.float32), here, atol=1e-5)


@pytest.mark.parametrize(("precision", "min_cos"), [("bf16", 0.999), ("int8", 0.9), ("ort-int8", 0.95)])
def test_reduced_precision_vectors_stay_close_to_fp32(precision: str, min_cos: float) -> None:
    ref = Embedder(precision="fp32", cache_size=0).encode(TEXTS)
    vecs = Embedder(precision=precision, cache_size=0).encode(TEXTS)
    assert vecs.dtype == np.float32
    assert np.allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    assert float(np.min(np.sum(vecs * ref, axis=1))) > min_cos


def test_precision_choice_and_config_key() -> None:
    assert Embedder(quantize=False).precision == "fp32"
    assert Embedder().precision == "ort-int8"
    assert Embedder(precision="int8").quantize and not Embedder(precision="fp32").quantize
    keys = {Embedder(precision=p, prep=PrepConfig()).config_key for p in ("fp32", "bf16", "int8", "ort-int8")}
    assert len(keys) == 4
    assert Embedder(precision="int8").config()["precision"] == "int8"
    with pytest.raises(AnalyzerError):
        Embedder(precision="fp16")


def test_config_key_is_built_once(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.metadata

    calls: list[str] = []
    real = importlib.metadata.version

    def counting(name: str) -> str:
        calls.append(name)
        return real(name)

    monkeypatch.setattr(importlib.metadata, "version", counting)
    emb = Embedder(precision="ort-int8")
    first = emb.config_key
    assert first.endswith(emb.prep.key()) and "-ort" + real("onnxruntime") in first
    keys = {emb._key(f"text {i}") for i in range(50)}
    assert len(keys) == 50 and calls == ["onnxruntime"]
    # Another preparation is another key (and the version is looked up again for it).
    emb.prep = PrepConfig(head_words=8, tail_words=4, max_seq_length=32)
    assert emb.config_key != first and emb.config_key.endswith("h8-t4-s32-c6-j") and len(calls) == 2


def test_faiss_scores_query_batches_with_blas() -> None:
    import faiss

    from batchroute.analyzer.index import BLAS_THRESHOLD, ExemplarIndex

    index = ExemplarIndex.from_vectors([], np.zeros((0, 384), dtype=np.float32), np.zeros((0, 0)))
    assert len(index) == 0 and index.dim == 384  # an empty index can be made (it used to fail to reshape)

    # 20 queries of 384 dimensions take the BLAS path, one query the SIMD loops.
    assert faiss.cvar.distance_compute_blas_threshold == BLAS_THRESHOLD == 20 * index.dim


def test_small_searches_run_on_one_openmp_thread() -> None:
    import faiss

    from batchroute.analyzer.index import SMALL_SEARCH, _knn

    seen: list[int] = []

    class Recording:
        def search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
            seen.append(faiss.omp_get_max_threads())
            return np.zeros((len(q), k), dtype=np.float32), np.zeros((len(q), k), dtype=np.int64)

    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(2)
    try:
        _knn(Recording(), np.zeros((1, 4), dtype=np.float32), 3)
        _knn(Recording(), np.zeros((SMALL_SEARCH - 1, 4), dtype=np.float32), 3)
        _knn(Recording(), np.zeros((SMALL_SEARCH, 4), dtype=np.float32), 3)
        assert seen == [1, 1, 2] and faiss.omp_get_max_threads() == 2  # restored after each
    finally:
        faiss.omp_set_num_threads(before)


def test_embedder_from_settings() -> None:
    from batchroute.errors import ConfigError
    from tests.conftest import apply_settings

    try:
        apply_settings()
        auto = Embedder.from_settings()
        assert auto.precision == "ort-int8" and (auto.batch_size, auto.batch_tokens) == (64, 1024)
        apply_settings(BATCHROUTE_EMBED_PRECISION="bf16", BATCHROUTE_EMBED_BATCH_SIZE="16",
                       BATCHROUTE_EMBED_BATCH_TOKENS="0")
        chosen = Embedder.from_settings(cache_size=7)
        assert (chosen.precision, chosen.batch_size, chosen.cache_size) == ("bf16", 16, 7)
        assert chosen.batch_tokens is None  # 0 = no token limit
        # An explicit argument wins over the setting.
        assert Embedder.from_settings(precision="fp32").precision == "fp32"
        apply_settings(BATCHROUTE_EMBED_PRECISION="fp16")
        with pytest.raises(ConfigError) as info:
            Embedder.from_settings()
        assert "BATCHROUTE_EMBED_PRECISION" in " ".join(info.value.problems)
    finally:
        apply_settings()


def test_onnx_graph_is_built_once_and_reused(tmp_path: Path) -> None:
    emb = Embedder(precision="ort-int8", cache_size=0, model_dir=tmp_path)
    backend._FORWARDS.pop((str(emb.model_path), "ort-int8"), None)   # one session per process: start afresh
    first = emb.encode(TEXTS)
    graphs = list(tmp_path.glob("minilm-*.onnx"))
    assert [g.name for g in graphs] == [f"minilm-{onnx_model.model_key(emb.model_path)}.onnx"]
    assert list(tmp_path.iterdir()) == graphs            # no temporary files left behind
    mtime = graphs[0].stat().st_mtime_ns
    # A fresh process would load the file: drop the in-process session and load again.
    backend._FORWARDS.pop((str(emb.model_path), "ort-int8"))
    again = Embedder(precision="ort-int8", cache_size=0, model_dir=tmp_path).encode(TEXTS)
    assert graphs[0].stat().st_mtime_ns == mtime
    assert np.allclose(first, again, atol=1e-6)


def test_unwritable_model_dir_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    backend._FORWARDS.pop((str(Embedder().model_path), "ort-int8"), None)
    with pytest.raises(AnalyzerError, match="int8 ONNX embedding model"):
        Embedder(precision="ort-int8", cache_size=0, model_dir=blocker / "models").encode(["x"])
