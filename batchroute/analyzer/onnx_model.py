"""The embedding model as ONNX Runtime graphs: int8 for queries (the analyzer's default precision on
every CPU) and fp32 for the exemplar index (see ``Embedder.for_index``), both served without torch.

The SentenceTransformer's transformer is exported to ONNX (torch's TorchScript exporter, opset
17) and dynamically quantised by onnxruntime: int8 weights with one scale per output channel and
a 7-bit range (``reduce_range``), because CPUs without VNNI (AVX2) saturate u8 x s8 products at
the full 8-bit range. The export runs a copy of the transformer with *eager* attention (plain
MatMul/Softmax ops): the SDPA attention that transformers uses by default exports to a graph
ONNX Runtime cannot fuse, and is ~1.4x slower once quantised. The result is built once and cached
on disk as ``<cache_dir>/minilm-<key>.onnx``; the key hashes the weights, the recipe and the
library versions, and a finished file appears by atomic rename, so processes share it and never
read a half-written one. Loading a cached graph needs only onnxruntime (torch is imported to
build one).

Measured (300-prompt mixed job prepared to 96 tokens, the same batching for all, best of 3;
mean / min cosine to fp32 vectors):

- AMD EPYC with AVX512-VNNI/BF16 (no AMX), 2 cores: this graph 234 prompts/s (0.992 / 0.956);
  the SDPA export 166/s (same vectors); torch bf16 155/s (1.000 / 1.000).
- Intel Xeon with AMX, 2 cores (whole ``Analyzer.analyze``, ``bench/analyzer_bench.py``): this
  graph 314 prompts/s, torch bf16 397/s; bf16 needs torch in the serving process, so it is
  opt-in (``BATCHROUTE_EMBED_PRECISION=bf16``).
- AMD EPYC, AVX2 only, 2 cores, 64 tokens, SDPA export (recipe v1): torch fp32 87/s; torch int8
  dynamic 135/s (0.976 / 0.936); ONNX Runtime fp32 106/s; the int8 graph 152/s (0.991 / 0.975).
  Excluding the feed-forward down-projections from quantisation raised the cosine to 0.996 but
  the speed fell to 121/s.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import threading
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from batchroute.errors import AnalyzerError

log = logging.getLogger(__name__)

# Bump when the export or quantisation recipe changes: old files are then never loaded.
RECIPE = "onnx17-eager-int8pc-rr-v2"
# The same export, not quantised: the reference vectors of the exemplar index.
RECIPE_FP32 = "onnx17-eager-fp32-v1"

# (input_ids, attention_mask) int64 (batch, seq) -> last hidden state float32 (batch, seq, dim)
Forward = Callable[[np.ndarray, np.ndarray], np.ndarray]


def available() -> bool:
    """Whether onnxruntime and onnx (needed to export and quantise) can be imported."""
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in ("onnxruntime", "onnx"))


def model_key(model_path: Path, recipe: str = RECIPE) -> str:
    """A short hash naming the graph of the model at ``model_path`` built by ``recipe``.

    Reads the library versions from package metadata: serving a cached graph never imports torch.
    """
    import importlib.metadata

    versions = "|".join(importlib.metadata.version(m) for m in ("onnxruntime", "torch"))
    h = hashlib.sha256(f"{recipe}|{versions}".encode())
    for f in sorted(model_path.glob("*.safetensors")) + sorted(model_path.glob("*.bin")):
        with f.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:16]


def _export(model: Any, out: Path, quantize: bool = True) -> None:
    """Write the ONNX graph of the SentenceTransformer ``model``'s transformer to ``out``,
    dynamically quantised to int8 unless ``quantize`` is false."""
    import copy

    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic

    class _Hidden(torch.nn.Module):
        def __init__(self, transformer: Any) -> None:
            super().__init__()
            self.transformer = transformer

        def forward(self, input_ids: Any, attention_mask: Any) -> Any:
            return self.transformer(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    # A private copy switched to eager attention: the process's model keeps serving in SDPA.
    transformer = copy.deepcopy(model[0].auto_model)
    transformer.set_attn_implementation("eager")
    example = (torch.ones((2, 8), dtype=torch.long), torch.ones((2, 8), dtype=torch.long))
    axes = {"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"},
            "hidden": {0: "batch", 1: "seq"}}
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        fp32 = Path(tmp) / "fp32.onnx"
        quant = Path(tmp) / "int8.onnx"
        with warnings.catch_warnings(), torch.inference_mode():
            warnings.simplefilter("ignore")  # tracer warnings about shapes turned into constants
            torch.onnx.export(_Hidden(transformer).eval(), example, str(fp32),
                              input_names=["input_ids", "attention_mask"], output_names=["hidden"],
                              dynamic_axes=axes, opset_version=17, dynamo=False)
        if not quantize:
            os.replace(fp32, out)
            return
        # onnxruntime advises "pre-processing" through the root logger on every call; the graph was
        # measured as it is, so that advice is noise to the user who started a worker.
        advice = _DropAdvice()
        logging.getLogger().addFilter(advice)
        try:
            quantize_dynamic(str(fp32), str(quant), weight_type=QuantType.QInt8, per_channel=True,
                             reduce_range=True)
        finally:
            logging.getLogger().removeFilter(advice)
        os.replace(quant, out)


class _DropAdvice(logging.Filter):
    """Drops onnxruntime's "consider pre-processing before quantization" log record."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-processing before quantization" not in record.getMessage()


_BUILD_LOCK = threading.Lock()


def load(model_path: Path, cache_dir: Path, threads: int, export_source: Callable[[], Any],
         quantize: bool = True) -> Forward:
    """The int8 (``quantize``) or fp32 graph of the model at ``model_path`` as a forward function.

    If ``cache_dir`` has no graph for it yet, builds one from ``export_source()`` (the
    SentenceTransformer; only then is torch imported) and caches it.
    ``threads``: intra-op threads of the session (use the cores the process may use).
    Raises AnalyzerError when the graph cannot be built or loaded.
    """
    kind = "int8" if quantize else "fp32"
    try:
        import onnxruntime as ort

        cache_dir.mkdir(parents=True, exist_ok=True)
        path = cache_dir / (f"minilm-{model_key(model_path)}.onnx" if quantize
                            else f"minilm-fp32-{model_key(model_path, RECIPE_FP32)}.onnx")
        with _BUILD_LOCK:
            if not path.exists():
                # "batchroute.notice": the CLI prints it on stderr (see analyzer.index.notices).
                logging.getLogger("batchroute.notice").info(
                    "exporting the embedding model to %s ONNX (once per machine): %s", kind, path)
                _export(export_source(), path, quantize)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = max(1, threads)
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # export, quantisation or session errors all mean: not usable
        raise AnalyzerError(f"cannot build or load the {kind} ONNX embedding model in {cache_dir}: {exc}") from exc

    def forward(input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        hidden: np.ndarray = session.run(None, {"input_ids": input_ids, "attention_mask": attention_mask})[0]
        return hidden

    return forward


__all__ = ["RECIPE", "RECIPE_FP32", "Forward", "available", "load", "model_key"]
