"""The exemplar index: labeled example prompts, their embeddings, and a FAISS kNN search.

Use::

    emb = Embedder()
    index = ExemplarIndex.load_or_build([BUNDLED_EXEMPLARS, Path("outcomes.jsonl")], emb,
                                        cache_dir=get_settings().data_dir / "index")
    sims, idx = index.search(emb.encode(["Write a haiku"]), k=15)
    index.meta[idx[0, 0]].domain

Inputs are JSONL files (or directories of ``*.jsonl``), one exemplar a line::

    {"id", "prompt", "domain"?, "complexity"?, "style"?, "outcomes"?: {MODEL: {"score", "cost_usd"?}}}

A label that is missing or ``null`` is simply not voted on by that row (the shared outcome
files carry no complexity or style). A malformed line is skipped and reported in
:attr:`ExemplarIndex.problems` (and logged), never fatal.

Rows with outcomes also get a *content* vector: the prompt without the template lines of its
source file (see :mod:`batchroute.analyzer.templates`), which outcome neighbours are searched
on; the lines learnt are kept in :attr:`ExemplarIndex.template_lines` so queries are stripped
the same way.

The built index is cached in ``cache_dir/<key>/`` where the key hashes the content of every
input file, the embedder's :attr:`~batchroute.analyzer.embedder.Embedder.config_key`, the
source of ``features.py`` and ``templates.py`` (features and content vectors are stored with
it) and the schema version; loading a cached index reads a FAISS file, a JSON file and two
``.npy`` files. The :class:`~batchroute.analyzer.Analyzer` keeps its fitted label models in the
same directory (``fit-<key>.npz``, see :func:`~batchroute.analyzer.labels.fit_key`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from batchroute.analyzer.features import FEATURE_NAMES, feature_matrix
from batchroute.analyzer.templates import grouped_template_lines, strip_template
from batchroute.errors import AnalyzerError
from batchroute.taxonomy import COMPLEXITIES, DOMAINS, STYLES

if TYPE_CHECKING:
    from batchroute.analyzer.embedder import Embedder

log = logging.getLogger(__name__)

BUNDLED_EXEMPLARS = Path(__file__).resolve().parent.parent / "data" / "exemplars"
# 2: content vectors and template lines of outcome rows.
SCHEMA_VERSION = 2
AXES: dict[str, tuple[str, ...]] = {"domain": DOMAINS, "complexity": COMPLEXITIES, "style": STYLES}


# Fewer queries than this are a "small" search (a realtime prompt, a short feedback batch).
SMALL_SEARCH = 20
# faiss scores a query batch with one BLAS matrix product once queries x dimension reaches this,
# else with per-query SIMD loops. faiss-cpu 1.15 ships 128,000 (334 queries of 384 dimensions), so
# an analyze chunk of 200-300 prompts never took the BLAS path: 300 queries against 16,800 rows
# took 161 ms, 18 ms with BLAS. Small searches keep the loops: they are as fast there, and BLAS
# threads would compete with ONNX Runtime's for the cores (a single query took 8 ms instead of
# 0.3 ms inside the analyzer). Set once per process, on faiss's first import.
BLAS_THRESHOLD = SMALL_SEARCH * 384


def _faiss() -> Any:
    """faiss, imported on first use (keeps ``import batchroute.analyzer`` light)."""
    try:
        import faiss
    except ImportError as exc:
        raise AnalyzerError("faiss is not installed (pip install faiss-cpu)") from exc
    if faiss.cvar.distance_compute_blas_threshold != BLAS_THRESHOLD:
        faiss.cvar.distance_compute_blas_threshold = BLAS_THRESHOLD
    return faiss


def _knn(index: Any, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``index.search``, on one OpenMP thread for a small search.

    Right after a forward pass ONNX Runtime's threads still spin on both cores, and faiss's two
    OpenMP threads for one query then wait on them: with 16,800 rows a one-prompt decision took
    17 ms, 8 ms with the search on one thread (big batches and index builds keep every thread;
    the setting is per calling thread in OpenMP, so other threads are unaffected).
    """
    if len(queries) >= SMALL_SEARCH:
        return index.search(queries, k)  # type: ignore[no-any-return]
    faiss = _faiss()
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        return index.search(queries, k)  # type: ignore[no-any-return]
    finally:
        faiss.omp_set_num_threads(threads)


@dataclass
class Exemplar:
    """One labeled prompt of the index (labels are None where the source carries none)."""

    id: str
    domain: str | None = None
    complexity: str | None = None
    style: str | None = None
    # model name -> {"score": float in [0, 1], "cost_usd": float (optional)}
    outcomes: dict[str, dict[str, float]] = field(default_factory=dict)
    source: str = ""

    def to_json(self) -> dict[str, Any]:
        """JSON-ready form, as stored in the index metadata."""
        out: dict[str, Any] = {"id": self.id, "domain": self.domain, "complexity": self.complexity,
                               "style": self.style, "source": self.source}
        if self.outcomes:
            out["outcomes"] = self.outcomes
        return out

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Exemplar:
        """Inverse of :meth:`to_json`."""
        return cls(id=d["id"], domain=d.get("domain"), complexity=d.get("complexity"),
                   style=d.get("style"), outcomes=d.get("outcomes") or {}, source=d.get("source", ""))


def expand_paths(paths: Iterable[Path | str]) -> list[Path]:
    """Files to read: each file as given, each directory's ``*.jsonl`` sorted by name."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out.extend(sorted(q for q in p.glob("*.jsonl") if q.is_file()))
        elif p.is_file():
            out.append(p)
        else:
            log.warning("exemplar path %s does not exist; skipped", p)
    return out


def _parse_outcomes(raw: object) -> dict[str, dict[str, float]]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ValueError("'outcomes' must be an object {model: {score, cost_usd?}}")
    out: dict[str, dict[str, float]] = {}
    for model, rec in raw.items():
        if not isinstance(rec, dict) or not isinstance(rec.get("score"), int | float):
            raise ValueError(f"outcomes[{model!r}] needs a numeric 'score'")
        score = float(rec["score"])
        if not 0.0 <= score <= 1.0 or math.isnan(score):
            raise ValueError(f"outcomes[{model!r}].score must be within [0, 1]")
        entry = {"score": score}
        cost = rec.get("cost_usd")
        if isinstance(cost, int | float) and not math.isnan(float(cost)):
            entry["cost_usd"] = float(cost)
        out[str(model)] = entry
    return out


def parse_row(obj: object, default_id: str, source: str) -> tuple[Exemplar, str]:
    """Validate one JSONL object; returns the exemplar and its prompt or raises ValueError."""
    if not isinstance(obj, dict):
        raise ValueError("not a JSON object")
    prompt = obj.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError("'prompt' must be a non-empty string")
    rid = obj.get("id", default_id)
    if not isinstance(rid, str | int) or isinstance(rid, bool):
        raise ValueError("'id' must be a string")
    labels: dict[str, str | None] = {}
    for axis, allowed in AXES.items():
        value = obj.get(axis)
        if value is not None and value not in allowed:
            raise ValueError(f"{axis} {value!r} is not one of {list(allowed)}")
        labels[axis] = value
    ex = Exemplar(id=str(rid), domain=labels["domain"], complexity=labels["complexity"],
                  style=labels["style"], outcomes=_parse_outcomes(obj.get("outcomes")), source=source)
    if ex.domain is None and ex.complexity is None and ex.style is None and not ex.outcomes:
        raise ValueError("carries no label and no outcomes")
    return ex, prompt


def read_files(paths: Sequence[Path]) -> list[tuple[Path, bytes | None]]:
    """Each file's bytes (None when unreadable), read once so key and rows always agree."""
    out: list[tuple[Path, bytes | None]] = []
    for path in paths:
        try:
            out.append((path, path.read_bytes()))
        except OSError:
            out.append((path, None))
    return out


def read_rows(files: Sequence[tuple[Path, bytes | None]]) -> tuple[list[Exemplar], list[str], list[str]]:
    """Parse exemplar files: (exemplars, prompts, problems). Bad lines are skipped and listed."""
    rows: list[Exemplar] = []
    prompts: list[str] = []
    problems: list[str] = []
    for path, data in files:
        try:
            if data is None:
                raise OSError("cannot be read")
            lines = data.decode("utf-8").split("\n")  # not splitlines: prompts hold U+2028, U+0085
        except (OSError, UnicodeDecodeError) as exc:
            problems.append(f"{path}: unreadable: {exc}")
            continue
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                ex, prompt = parse_row(json.loads(line), f"{path.stem}:{n}", path.name)
            except (ValueError, TypeError) as exc:
                problems.append(f"{path}:{n}: {exc}")
                continue
            rows.append(ex)
            prompts.append(prompt)
    return rows, prompts, problems


def content_key(files: Sequence[tuple[Path, bytes | None]], config_key: str) -> str:
    """Cache key: sha256 of every file's bytes (in order), the embedder config, the feature and
    template code and the schema."""
    h = hashlib.sha256(f"v{SCHEMA_VERSION}|{config_key}".encode())
    for module in ("features.py", "templates.py"):
        h.update((Path(__file__).parent / module).read_bytes())
    for path, data in files:
        h.update(b"\x00" + path.name.encode() + b"\x00")
        h.update(hashlib.sha256(data).digest() if data is not None else b"<unreadable>")
    return h.hexdigest()[:24]


class ExemplarIndex:
    """Exemplar metadata plus a FAISS ``IndexFlatIP`` over their unit embeddings.

    ``meta[i]`` describes row ``i`` of the FAISS index. Label arrays (``labels[axis]``: label
    index per row, -1 where the row carries none) and per-model outcome arrays are kept in
    step for vectorised voting. ``content`` holds the content vector of every row (None: the
    same as its FAISS vector for every row); ``template_lines`` the template lines learnt from
    the outcome rows of each source file. ``queries`` holds each row embedded as a query would be
    (None: as stored), when the index is embedded otherwise (see ``Embedder.for_index``): the
    label models train on them, so they learn the similarities queries actually get.
    """

    def __init__(self, index: Any, meta: list[Exemplar], features: np.ndarray,
                 config: dict[str, Any] | None = None, problems: list[str] | None = None,
                 content: np.ndarray | None = None, template_lines: frozenset[str] = frozenset(),
                 queries: np.ndarray | None = None) -> None:
        if index.ntotal != len(meta) or len(features) != len(meta):
            raise AnalyzerError(f"index has {index.ntotal} vectors, {len(features)} feature rows "
                                f"and {len(meta)} metadata rows")
        if content is not None and len(content) != len(meta):
            raise AnalyzerError(f"{len(content)} content vectors for {len(meta)} rows")
        if queries is not None and len(queries) != len(meta):
            raise AnalyzerError(f"{len(queries)} query vectors for {len(meta)} rows")
        self.index = index
        self.meta = meta
        self.features = np.asarray(features, dtype=np.float32).reshape(len(meta), len(FEATURE_NAMES))
        self.content = None if content is None else np.asarray(content, dtype=np.float32)
        self.queries = None if queries is None else np.asarray(queries, dtype=np.float32)
        self.template_lines = frozenset(template_lines)
        self.config = config or {}
        self.problems = problems or []
        self.key = ""
        # The cache directory this index was loaded from or saved to (None: not cached, or
        # changed since by add()); the analyzer keeps its fitted label models there.
        self.directory: Path | None = None
        self._refresh()

    def __len__(self) -> int:
        return len(self.meta)

    @property
    def dim(self) -> int:
        """Embedding dimension."""
        return int(self.index.d)

    def _refresh(self) -> None:
        self.labels: dict[str, np.ndarray] = {}
        for axis, names in AXES.items():
            pos = {n: i for i, n in enumerate(names)}
            self.labels[axis] = np.array([pos.get(getattr(m, axis) or "", -1) for m in self.meta],
                                         dtype=np.int64)
        models = sorted({m for ex in self.meta for m in ex.outcomes})
        self.models: list[str] = models
        self.scores = np.full((len(self.meta), len(models)), np.nan, dtype=np.float32)
        col = {m: j for j, m in enumerate(models)}
        for i, ex in enumerate(self.meta):
            for m, rec in ex.outcomes.items():
                self.scores[i, col[m]] = rec["score"]
        self.outcome_rows = np.flatnonzero(~np.all(np.isnan(self.scores), axis=1)) if models \
            else np.zeros(0, dtype=np.int64)
        self._outcome_index: Any = None

    # ---- building and caching -------------------------------------------------------------

    @classmethod
    def from_vectors(cls, meta: list[Exemplar], vectors: np.ndarray, features: np.ndarray,
                     config: dict[str, Any] | None = None, problems: list[str] | None = None,
                     content: np.ndarray | None = None,
                     template_lines: frozenset[str] = frozenset(),
                     queries: np.ndarray | None = None) -> ExemplarIndex:
        """An index over given unit vectors and feature rows (row ``i`` belongs to ``meta[i]``)."""
        faiss = _faiss()
        vecs = np.ascontiguousarray(vectors, dtype=np.float32)
        # (0, -1) cannot be reshaped: an empty index keeps the given width (384 if none).
        vecs = vecs.reshape(len(meta), -1) if len(meta) else vecs.reshape(0, vecs.shape[-1] if vecs.ndim == 2 else 384)
        index = faiss.IndexFlatIP(vecs.shape[1] or 384)
        if len(meta):
            index.add(vecs)
        return cls(index, meta, features, config, problems, content, template_lines, queries)

    @classmethod
    def build(cls, paths: Sequence[Path | str], embedder: Embedder) -> ExemplarIndex:
        """Read every exemplar file (directories: their ``*.jsonl``) and embed the prompts with
        ``index_embedder(embedder)``, for queries embedded by ``embedder``."""
        return cls._build(read_files(expand_paths(paths)), embedder)

    @classmethod
    def _build(cls, files: Sequence[tuple[Path, bytes | None]], embedder: Embedder) -> ExemplarIndex:
        rows_embedder = index_embedder(embedder)
        meta, prompts, problems = read_rows(files)
        t0 = time.perf_counter()
        if len(prompts) > PROGRESS_CHUNK_ROWS:
            notices.info("building the exemplar index: %d rows from %d files (once per exemplar set, then cached)",
                         len(prompts), len(files))
        vectors = _encode_reporting(rows_embedder, prompts, t0)
        content, lines = content_vectors(meta, prompts, vectors, rows_embedder)
        if rows_embedder is not embedder and len(prompts) > PROGRESS_CHUNK_ROWS:
            notices.info("  exemplar index: embedding the rows as queries see them (shortened)")
        queries = None if rows_embedder is embedder else embedder.encode(prompts)
        if problems:
            # One line for the log, not one per bad line (a large outcome file may have many);
            # every problem stays in ``index.problems`` (``batchroute index build`` prints them).
            log.warning("skipped %d exemplar lines; the first: %s", len(problems), problems[0])
        log.info("embedded %d exemplars from %d files in %.1fs (%d template lines)", len(prompts),
                 len(files), time.perf_counter() - t0, len(lines))
        out = cls.from_vectors(meta, vectors, feature_matrix(prompts), rows_embedder.config(), problems,
                               content, lines, queries)
        out.key = content_key(files, index_config_key(embedder))
        return out

    @classmethod
    def load_or_build(cls, paths: Sequence[Path | str], embedder: Embedder,
                      cache_dir: Path | None) -> ExemplarIndex:
        """The cached index for exactly these inputs, built and saved if absent, for queries
        embedded by ``embedder`` (its rows are embedded by ``index_embedder(embedder)``).

        Any change of an input file's bytes, of the file list or of the index embedder's
        configuration gives another key, so a stale index is never loaded. ``cache_dir=None``
        always builds.
        """
        files = read_files(expand_paths(paths))
        key = content_key(files, index_config_key(embedder))
        if cache_dir is not None:
            target = Path(cache_dir) / key
            if (target / "meta.json").is_file():
                try:
                    out = cls.load(target)
                    out.key, out.directory = key, target
                    return out
                except (AnalyzerError, OSError, ValueError, KeyError) as exc:
                    log.warning("cached index %s unusable (%s); rebuilding", target, exc)
        t0 = time.perf_counter()
        out = cls._build(files, embedder)
        out.key = key
        if cache_dir is not None:
            try:
                out.save(Path(cache_dir) / key)
                out.directory = Path(cache_dir) / key
            except OSError as exc:
                log.warning("cannot cache the exemplar index in %s: %s", cache_dir, exc)
            else:
                if len(out) > PROGRESS_CHUNK_ROWS:
                    notices.info("exemplar index built in %.0f s, cached in %s", time.perf_counter() - t0,
                                 out.directory)
        return out

    def save(self, directory: Path) -> None:
        """Write ``index.faiss`` and ``meta.json`` into ``directory`` (atomically replaced)."""
        faiss = _faiss()
        directory.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=directory.parent))
        faiss.write_index(self.index, str(tmp / "index.faiss"))
        np.save(tmp / "features.npy", self.features)
        if self.content is not None:
            np.save(tmp / "content.npy", self.content)
        if self.queries is not None:
            np.save(tmp / "queries.npy", self.queries)
        meta = {"schema": SCHEMA_VERSION, "config": self.config, "problems": self.problems,
                "template_lines": sorted(self.template_lines), "rows": [m.to_json() for m in self.meta]}
        (tmp / "meta.json").write_text(json.dumps(meta, separators=(",", ":")), encoding="utf-8")
        try:
            os.replace(tmp, directory)
        except OSError:
            # Another process saved the same key first: theirs is identical, keep it.
            for f in tmp.iterdir():
                f.unlink()
            tmp.rmdir()

    @classmethod
    def load(cls, directory: Path) -> ExemplarIndex:
        """Read an index written by :meth:`save`."""
        faiss = _faiss()
        meta = json.loads((directory / "meta.json").read_text(encoding="utf-8"))
        if meta.get("schema") != SCHEMA_VERSION:
            raise AnalyzerError(f"{directory}: index schema {meta.get('schema')} != {SCHEMA_VERSION}")
        index = faiss.read_index(str(directory / "index.faiss"))
        features = np.load(directory / "features.npy")
        content = np.load(directory / "content.npy") if (directory / "content.npy").is_file() else None
        queries = np.load(directory / "queries.npy") if (directory / "queries.npy").is_file() else None
        return cls(index, [Exemplar.from_json(r) for r in meta["rows"]], features,
                   meta.get("config"), meta.get("problems"), content,
                   frozenset(meta.get("template_lines") or ()), queries)

    # ---- use ----------------------------------------------------------------------------------

    def vectors(self) -> np.ndarray:
        """All stored vectors, ``(len(self), dim)`` float32."""
        if not len(self):
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.asarray(self.index.reconstruct_n(0, len(self)), dtype=np.float32)

    def _extended(self, kept: np.ndarray | None, added: np.ndarray | None, vecs: np.ndarray) -> np.ndarray | None:
        """A per-row array (content or query vectors) with ``added`` appended: None while neither
        the index nor the new rows have one (the stored vectors stand in for it), else complete."""
        if kept is None and added is None:
            return None
        old = self.vectors() if kept is None else kept
        return np.vstack([old, vecs if added is None else np.asarray(added, dtype=np.float32)])

    def query_vectors(self) -> np.ndarray:
        """Every row embedded as a query would be (:attr:`queries`, else the stored vectors)."""
        return self.vectors() if self.queries is None else self.queries

    def search(self, embeddings: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` exemplars by cosine: ``(sims, idx)``, each ``(n, k)``; idx -1 pads."""
        q = np.ascontiguousarray(embeddings, dtype=np.float32)
        if q.ndim == 1:
            q = q[None, :]
        k = max(1, k)
        if not len(self):
            return (np.full((len(q), k), -np.inf, dtype=np.float32),
                    np.full((len(q), k), -1, dtype=np.int64))
        sims, idx = _knn(self.index, q, k)
        return sims, idx

    def search_outcomes(self, embeddings: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Like :meth:`search` over the *content* vectors of only the rows that carry outcomes;
        ``embeddings`` should be content embeddings too (see :mod:`~batchroute.analyzer.templates`);
        idx are index rows."""
        q = np.ascontiguousarray(embeddings, dtype=np.float32)
        if not len(self.outcome_rows):
            return (np.zeros((len(q), 0), dtype=np.float32), np.zeros((len(q), 0), dtype=np.int64))
        if len(self.outcome_rows) == len(self) and self.content is None:
            return self.search(q, min(k, len(self)))
        if self._outcome_index is None:
            faiss = _faiss()
            sub = faiss.IndexFlatIP(self.dim)
            source = self.vectors() if self.content is None else self.content
            sub.add(np.ascontiguousarray(source[self.outcome_rows]))
            self._outcome_index = sub
        sims, sub_idx = _knn(self._outcome_index, q, min(k, len(self.outcome_rows)))
        return sims, np.where(sub_idx >= 0, self.outcome_rows[np.maximum(sub_idx, 0)], -1)

    def add(self, rows: Sequence[Exemplar | dict[str, Any]], embeddings: np.ndarray,
            content: np.ndarray | None = None, template_lines: frozenset[str] = frozenset(),
            queries: np.ndarray | None = None) -> None:
        """Append exemplars: JSONL-style dicts (validated like file lines) or :class:`Exemplar`.

        Used for feedback: the caller embeds the prompts as the index's rows were, and passes
        their content embeddings (None: the same), their query embeddings (None: the same; needed
        when the index keeps :attr:`queries`) and any template lines it learnt from them (added
        to :attr:`template_lines`). A dict's ``prompt`` feeds the stored cheap features (zeros
        without it). Not persisted until :meth:`save` is called; a model that uses the index
        (``Analyzer``) must be refitted to learn from new labels, while new outcomes count at once.
        """
        for name, arr in (("content", content), ("query", queries)):
            if arr is not None and len(arr) != len(rows):
                raise AnalyzerError(f"add: {len(rows)} rows but {len(arr)} {name} embeddings")
        if len(rows) != len(embeddings):
            raise AnalyzerError(f"add: {len(rows)} rows but {len(embeddings)} embeddings")
        new: list[Exemplar] = []
        prompts: list[str] = []
        for i, row in enumerate(rows):
            if isinstance(row, Exemplar):
                new.append(row)
                prompts.append("")
                continue
            try:
                ex, prompt = parse_row({"prompt": "-", **row}, f"added:{len(self) + i}", "added")
            except ValueError as exc:
                raise AnalyzerError(f"add: row {i}: {exc}") from exc
            new.append(ex)
            prompts.append("" if prompt == "-" else prompt)
        if not new:
            return
        feats = feature_matrix(prompts)
        feats[[i for i, p in enumerate(prompts) if not p]] = 0.0
        vecs = np.ascontiguousarray(embeddings, dtype=np.float32)
        self.content = self._extended(self.content, content, vecs)
        self.queries = self._extended(self.queries, queries, vecs)
        self.index.add(vecs)
        self.meta.extend(new)
        self.features = np.vstack([self.features, feats])
        self.template_lines |= template_lines
        self.directory = None  # no longer what the cache directory holds
        self._refresh()


def index_config_key(embedder: Embedder) -> str:
    """The embedder configuration an index for ``embedder``'s queries depends on: the rows'
    embedder, and the queries' own when they differ (the index keeps the rows as queries too)."""
    rows_embedder = index_embedder(embedder)
    if rows_embedder is embedder:
        return embedder.config_key
    return f"{rows_embedder.config_key}|queries:{embedder.config_key}"


# Rows per progress notice while an index is built (smaller builds are embedded in one call).
PROGRESS_CHUNK_ROWS = 256
# Messages for the person who started a command: the CLI prints this logger on stderr (elsewhere
# it propagates like any other): a first index build takes a minute or two, and silence looks
# like a hang.
notices = logging.getLogger("batchroute.notice")


def _encode_reporting(embedder: Embedder, prompts: list[str], t0: float) -> np.ndarray:
    """``embedder.encode(prompts)``, in chunks of :data:`PROGRESS_CHUNK_ROWS` with a notice
    after each when there is more than one chunk (``t0``: when the build started)."""
    if len(prompts) <= PROGRESS_CHUNK_ROWS:
        return embedder.encode(prompts)
    parts = []
    for start in range(0, len(prompts), PROGRESS_CHUNK_ROWS):
        parts.append(embedder.encode(prompts[start:start + PROGRESS_CHUNK_ROWS]))
        done = min(start + PROGRESS_CHUNK_ROWS, len(prompts))
        notices.info("  exemplar index: %d/%d rows embedded, %.0f s", done, len(prompts),
                     time.perf_counter() - t0)
    return np.concatenate(parts)


def index_embedder(embedder: Embedder) -> Embedder:
    """What embeds the index rows searched by ``embedder``'s queries: its
    :meth:`~batchroute.analyzer.embedder.Embedder.for_index`, or the embedder itself when it has
    none (a test double)."""
    for_index = getattr(embedder, "for_index", None)
    return for_index() if callable(for_index) else embedder


def strip_and_embed(prompts: Sequence[str], vectors: np.ndarray, lines: frozenset[str], mask: Sequence[bool],
                    embedder: Embedder) -> tuple[np.ndarray | None, list[int]]:
    """Content vectors: ``vectors`` with each masked prompt that loses template ``lines``
    re-embedded without them (None: no prompt lost any), and how many lines each prompt lost."""
    counts = [0] * len(prompts)
    if not lines:
        return None, counts
    texts = {i: strip_template(p, lines) for i, p in enumerate(prompts) if mask[i]}
    changed = [i for i, t in texts.items() if t != prompts[i]]
    if not changed:
        return None, counts
    content = np.array(vectors, dtype=np.float32, copy=True)
    content[changed] = embedder.encode([texts[i] for i in changed])
    for i in changed:
        counts[i] = sum(1 for ln in prompts[i].split("\n") if ln.strip() in lines)
    return content, counts


def content_vectors(meta: Sequence[Exemplar], prompts: Sequence[str], vectors: np.ndarray,
                    embedder: Embedder) -> tuple[np.ndarray | None, frozenset[str]]:
    """Content vectors of an index's rows and the template lines learnt: ``(content, lines)``.

    Template lines are learnt per source file over its rows with outcomes (label-only rows are
    never stripped: their whole text is what labels are voted on). Only the prompts that lose a
    line are embedded again; ``content`` is None when none does.
    """
    by_source: dict[str, list[str]] = {}
    for ex, prompt in zip(meta, prompts, strict=True):
        if ex.outcomes:
            by_source.setdefault(ex.source, []).append(prompt)
    lines = grouped_template_lines(by_source.values())
    content, _ = strip_and_embed(prompts, vectors, lines, [bool(ex.outcomes) for ex in meta], embedder)
    return content, lines
