"""The analyzer: what a prompt is (TAXONOMY.md labels) and how well each model does on ones like it.

Use the process-wide instance (the model and index load on first use, once per process)::

    from batchroute.analyzer import get_analyzer

    [a] = get_analyzer().analyze(["Write a Python function that reverses a linked list"])
    a.domain, a.complexity, a.style, a.confidence      # "code", "simple", "verbose", 0.97
    a.predicted_quality("gpt-4o-mini", prior=0.8)        # outcome-aware when neighbours have outcomes

or build one over your own exemplar files (JSONL, see :mod:`batchroute.analyzer.index`)::

    analyzer = Analyzer.from_paths([BUNDLED_EXEMPLARS, Path("my_outcomes.jsonl")])

How labels are made: prompts are embedded (:mod:`~batchroute.analyzer.embedder`), the ``k``
nearest exemplars vote, and a small logistic regression stacked on the vote and on cheap text
features (:mod:`~batchroute.analyzer.features`) gives calibrated probabilities
(:mod:`~batchroute.analyzer.labels`). ``analyze`` is batch-first: pass thousands of prompts in
one call. Outcome neighbours (predicted quality) are searched on the prompts without the lines
they share with the batch or with a template the index learnt (few-shot examples, answer-format
boilerplate; :mod:`~batchroute.analyzer.templates`), so the prompts of a templated job are not
all predicted alike. Importing this package loads neither torch nor the model.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from batchroute.analyzer.embedder import FULL_LENGTH, Embedder, PrepConfig, prepare_text
from batchroute.analyzer.features import FEATURE_NAMES, extract_features
from batchroute.analyzer.index import (
    AXES,
    BUNDLED_EXEMPLARS,
    Exemplar,
    ExemplarIndex,
    index_embedder,
    strip_and_embed,
)
from batchroute.analyzer.labels import AxisModel, fit_key, load_fit, save_fit
from batchroute.analyzer.priors import MIN_BATCH, adapt_priors
from batchroute.analyzer.templates import template_lines
from batchroute.errors import AnalyzerError
from batchroute.settings import DEFAULT_OUTCOME_K, DEFAULT_OUTCOME_STRENGTH
from batchroute.taxonomy import COMPLEXITIES, DOMAINS, STYLES

__all__ = [
    "BUNDLED_EXEMPLARS",
    "FULL_LENGTH",
    "Analysis",
    "Analyzer",
    "Embedder",
    "Exemplar",
    "ExemplarIndex",
    "Neighbour",
    "PrepConfig",
    "extract_features",
    "get_analyzer",
    "index_paths",
    "loaded_analyzer",
    "prepare_text",
    "reset_analyzer",
]

log = logging.getLogger(__name__)

N_NEIGHBOURS = 5


@dataclass(frozen=True)
class Neighbour:
    """One nearby exemplar (labels are None where the exemplar carries none)."""

    id: str
    similarity: float
    domain: str | None
    complexity: str | None
    style: str | None


@dataclass
class Analysis:
    """What the analyzer knows about one prompt.

    ``confidence`` is the calibrated probability of ``domain``; ``prior_adapted`` says the domain
    probabilities were re-weighted to the label mix of the batch the prompt came in (see
    :mod:`batchroute.analyzer.priors`); ``outcome_stats`` maps a model
    to ``(similarity-weighted score sum, weight sum, neighbour count)`` over nearby exemplars
    that carry outcomes for it (empty when none do); ``template_lines_stripped`` says how many
    template lines were left out of the prompt to find those neighbours (0: the whole prompt).
    """

    domain: str
    complexity: str
    style: str
    confidence: float
    complexity_confidence: float
    style_confidence: float
    domain_probs: dict[str, float]
    neighbours: list[Neighbour]
    features: dict[str, float]
    outcome_stats: dict[str, tuple[float, float, int]] = field(default_factory=dict)
    prior_adapted: bool = False
    outcome_strength: float = DEFAULT_OUTCOME_STRENGTH
    template_lines_stripped: int = 0

    def predicted_quality(self, model_name: str, prior: float, strength: float | None = None) -> float:
        """Expected score of ``model_name`` on this prompt, in [0, 1].

        ``(sum_w * mean_score + strength * prior) / (sum_w + strength)``: the neighbours'
        observed scores shrunk toward ``prior`` (the registry's static quality), so a model
        with few nearby outcomes stays close to its prior. ``strength`` defaults to the
        analyzer's ``outcome_strength``.
        """
        stats = self.outcome_stats.get(model_name)
        if stats is None or stats[1] <= 0:
            return prior
        score_sum, weight_sum, _ = stats
        k = self.outcome_strength if strength is None else strength
        return (score_sum + k * prior) / (weight_sum + k)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)


class Analyzer:
    """Labels prompts with kNN over an :class:`ExemplarIndex` plus a stacked classifier.

    Args:
        index: the exemplar index (built with ``embedder``).
        embedder: embeds prompts exactly as the index was embedded.
        k: labeled neighbours that vote per axis.
        temperature: softness of the vote weights ``exp((sim - best) / temperature)``.
        outcome_k: neighbours carrying outcomes used for predicted quality.
        outcome_strength: how many neighbours' worth of weight a model's prior has against
            their scores (see :meth:`Analysis.predicted_quality`). ``batchroute eval routing``
            reports the ``k`` and strength that cross-validate best on your outcome files; set
            them with ``BATCHROUTE_ANALYZER_OUTCOME_K`` / ``..._OUTCOME_STRENGTH``.
        min_outcome_sim: outcome neighbours below this similarity are ignored.
        adapt_domain_prior: re-weight the domain probabilities of every ``analyze`` call of at
            least ``MIN_BATCH`` prompts to that batch's own label mix (EM; see
            :mod:`batchroute.analyzer.priors`). A batch of one is never adapted.
        strip_templates: search outcome neighbours on the prompts without their template lines
            (see :mod:`~batchroute.analyzer.templates`); False searches on the whole-prompt
            embedding (the index's rows keep their content vectors either way).
    """

    def __init__(self, index: ExemplarIndex, embedder: Embedder, *, k: int = 15,
                 temperature: float = 0.05, outcome_k: int = DEFAULT_OUTCOME_K,
                 outcome_strength: float = DEFAULT_OUTCOME_STRENGTH,
                 min_outcome_sim: float = 0.3, adapt_domain_prior: bool = True,
                 strip_templates: bool = True) -> None:
        if not len(index):
            raise AnalyzerError(
                "the exemplar index is empty: no usable exemplar lines were found"
                + (f" ({len(index.problems)} skipped)" if index.problems else ""))
        if not np.any(index.labels["domain"] >= 0):
            raise AnalyzerError("no exemplar carries a domain label; cannot label prompts")
        self.index = index
        self.embedder = embedder
        self.k = k
        self.outcome_k = outcome_k
        if outcome_k < 1 or not outcome_strength > 0:
            raise AnalyzerError(f"outcome_k must be >= 1 and outcome_strength > 0, got {outcome_k}, {outcome_strength}")
        self.outcome_strength = outcome_strength
        self.min_outcome_sim = min_outcome_sim
        self.adapt_domain_prior = adapt_domain_prior
        self.strip_templates = strip_templates
        self.axes = {axis: AxisModel(len(names), k, temperature) for axis, names in AXES.items()}
        self.fit_report: dict[str, dict[str, float]] = {}
        self.feedback_seen = 0  # highest feedback row id already added (see batchroute.feedback)
        self.feedback_checked_at = 0.0  # time.monotonic() of the last look for new feedback
        # Held while feedback is read and learned, so two threads never learn the same rows twice.
        self.feedback_lock = threading.Lock()
        # Searches and additions to the index (feedback) may come from different threads.
        self._index_lock = threading.RLock()
        self.temperature = temperature
        self.fit_cached = False  # whether the label models came from the index's cache directory
        self._fit_or_load()

    @classmethod
    def from_paths(cls, paths: Sequence[Path | str] | None = None, *,
                   embedder: Embedder | None = None, cache_dir: Path | None = None,
                   **kwargs: Any) -> Analyzer:
        """An analyzer over exemplar files/directories (default: the bundled exemplars).

        The index is cached under ``cache_dir`` (None: not cached). ``kwargs`` go to
        :class:`Analyzer`.
        """
        emb = embedder or Embedder()
        index = ExemplarIndex.load_or_build(list(paths or [BUNDLED_EXEMPLARS]), emb, cache_dir)
        return cls(index, emb, **kwargs)

    def fit(self) -> dict[str, dict[str, float]]:
        """(Re)train the stacked classifiers from the index; call after adding labeled rows."""
        t0 = time.perf_counter()
        self.fit_cached = False
        vecs = self.index.vectors()
        # Each row searched as a query would be (cut, int8 by default) among the stored rows
        # (whole prompts, fp32 by default): the stacker learns the similarities queries get.
        queries = self.index.query_vectors()
        sims, idx = self.index.search(queries, min(self.k + 8, len(self.index)))
        self.fit_report = {axis: model.fit(sims, idx, self.index.labels[axis], vecs,
                                           self.index.features, queries)
                           for axis, model in self.axes.items()}
        log.info("analyzer fitted on %d exemplars in %.2fs", len(self.index),
                 time.perf_counter() - t0)
        return self.fit_report

    def _fit_or_load(self) -> None:
        """Fit, or load the fit cached beside a cached index (fitting takes ~1.5-3 s for the
        bundled exemplars, loading a few ms); a fresh fit is cached there for the next process."""
        directory = self.index.directory
        if directory is None or not self.index.key:
            self.fit()
            return
        path = directory / f"fit-{fit_key(self.index.key, self.k, self.temperature)}.npz"
        if path.is_file():
            try:
                self.fit_report = load_fit(path, self.axes, len(FEATURE_NAMES))
                self.fit_cached = True
                return
            except (OSError, ValueError, KeyError) as exc:
                log.warning("cached analyzer fit %s unusable (%s); fitting again", path, exc)
        self.fit()
        try:
            save_fit(path, self.axes, self.fit_report)
        except OSError as exc:
            log.warning("cannot cache the analyzer fit in %s: %s", directory, exc)

    def analyze(self, prompts: Sequence[str]) -> list[Analysis]:
        """Label every prompt; one :class:`Analysis` per prompt, in order."""
        if not prompts:
            return []
        # Features first, then the embedding, in this thread. A side thread for the features
        # was slower (0.94s vs 0.78s for 300 prompts): the regexes hold the GIL, which torch
        # needs between its ops, and torch already keeps both cores busy.
        features = [extract_features(p) for p in prompts]
        return self.analyze_embedded(prompts, self.embedder.encode(prompts), features)

    def analyze_embedded(self, prompts: Sequence[str], embeddings: np.ndarray,
                         features: Sequence[dict[str, float]] | None = None) -> list[Analysis]:
        """Like :meth:`analyze` with embeddings (and optionally features) already computed."""
        if len(prompts) != len(embeddings):
            raise AnalyzerError(f"{len(prompts)} prompts but {len(embeddings)} embeddings")
        if not prompts:
            return []
        feats = list(features) if features is not None else [extract_features(p) for p in prompts]
        fmat = np.array([[f[n] for n in FEATURE_NAMES] for f in feats], dtype=np.float64)
        content, stripped = self.content_embeddings(prompts, embeddings)
        with self._index_lock:
            sims, idx = self.index.search(embeddings, min(self.k * 2, len(self.index)))
            probs = {axis: model.predict(sims, idx, self.index.labels[axis], embeddings, fmat)
                     for axis, model in self.axes.items()}
            outcome = self._outcome_stats(content)
            neighbours = [[self._neighbour(int(j), float(sim))
                           for sim, j in zip(sims[i, :N_NEIGHBOURS], idx[i, :N_NEIGHBOURS], strict=True)
                           if j >= 0] for i in range(len(prompts))]
        adapted = self.adapt_domain_prior and len(prompts) >= MIN_BATCH
        if adapted:
            probs["domain"], _ = adapt_priors(probs["domain"])
        out: list[Analysis] = []
        for i in range(len(prompts)):
            d, c, s = (probs[a][i] for a in ("domain", "complexity", "style"))
            di, ci, si = int(d.argmax()), int(c.argmax()), int(s.argmax())
            out.append(Analysis(
                domain=DOMAINS[di], complexity=COMPLEXITIES[ci], style=STYLES[si],
                confidence=float(d[di]), complexity_confidence=float(c[ci]),
                style_confidence=float(s[si]),
                domain_probs={name: float(p) for name, p in zip(DOMAINS, d, strict=True)},
                neighbours=neighbours[i], features=feats[i], outcome_stats=outcome[i],
                prior_adapted=adapted, outcome_strength=self.outcome_strength,
                template_lines_stripped=stripped[i]))
        return out

    def content_embeddings(self, prompts: Sequence[str], embeddings: np.ndarray,
                           batch_templates: bool = True) -> tuple[np.ndarray, list[int]]:
        """Embeddings to search outcome neighbours with, and the template lines left out per prompt.

        A prompt loses the lines it shares with the batch (``batch_templates``; see
        :func:`~batchroute.analyzer.templates.template_lines`) or with a template the index
        learnt, and only prompts that lose a line are embedded again. Nothing is stripped (and
        nothing embedded) while the index holds no outcomes.
        """
        if not self.strip_templates or not len(self.index.outcome_rows):
            return embeddings, [0] * len(prompts)
        lines = self.index.template_lines | (template_lines(prompts) if batch_templates else frozenset())
        content, counts = strip_and_embed(prompts, embeddings, lines, [True] * len(prompts), self.embedder)
        return (embeddings if content is None else content), counts

    def _neighbour(self, row: int, sim: float) -> Neighbour:
        ex = self.index.meta[row]
        return Neighbour(id=ex.id, similarity=sim, domain=ex.domain, complexity=ex.complexity,
                         style=ex.style)

    def _outcome_stats(self, embeddings: np.ndarray) -> list[dict[str, tuple[float, float, int]]]:
        n = len(embeddings)
        if not self.index.models:
            return [{} for _ in range(n)]
        sims, idx = self.index.search_outcomes(embeddings, self.outcome_k)
        scores = self.index.scores
        out: list[dict[str, tuple[float, float, int]]] = []
        for i in range(n):
            keep = (idx[i] >= 0) & (sims[i] >= self.min_outcome_sim)
            rows, w = idx[i][keep], np.clip(sims[i][keep], 0.0, 1.0).astype(np.float64)
            stats: dict[str, tuple[float, float, int]] = {}
            if len(rows):
                sc = scores[rows].astype(np.float64)          # (m, n_models), nan = no outcome
                has = ~np.isnan(sc)
                wsum = (has * w[:, None]).sum(axis=0)
                ssum = (np.where(has, sc, 0.0) * w[:, None]).sum(axis=0)
                cnt = has.sum(axis=0)
                for j in np.flatnonzero(cnt):
                    stats[self.index.models[j]] = (float(ssum[j]), float(wsum[j]), int(cnt[j]))
            out.append(stats)
        return out

    def add_exemplars(self, rows: Sequence[dict[str, Any]], refit: bool = True) -> None:
        """Learn from labeled prompts or outcomes (``{"id", "prompt", labels?, "outcomes"?}``).

        Embeds the prompts, adds them to the in-memory index and, with ``refit``, retrains the
        label models. Not persisted.
        """
        if not rows:
            return
        prompts = [r.get("prompt") for r in rows]
        if not all(isinstance(p, str) and p.strip() for p in prompts):
            raise AnalyzerError("add_exemplars: every row needs a non-empty 'prompt'")
        texts = [str(p) for p in prompts]
        # Index rows, so embedded as the index was (whole prompts, full precision by default).
        row_embedder = index_embedder(self.embedder)
        embeddings = row_embedder.encode(texts)
        # Outcome rows get content vectors as the index's own rows do; the lines the outcome rows
        # of this batch share (a job's template, arriving as feedback) are learnt for later queries.
        has_outcomes = [bool(r.get("outcomes")) for r in rows]
        learnt = template_lines([t for t, h in zip(texts, has_outcomes, strict=True) if h])
        content, _ = strip_and_embed(texts, embeddings, self.index.template_lines | learnt, has_outcomes,
                                     row_embedder)
        queries = None if row_embedder is self.embedder else self.embedder.encode(texts)
        with self._index_lock:
            self.index.add(rows, embeddings, content, learnt, queries)
            if refit:
                self.fit()


_SINGLETON: Analyzer | None = None
_SINGLETON_LOCK = threading.Lock()


def index_paths() -> list[Path]:
    """What the process-wide index is built from: the bundled exemplars, ``BATCHROUTE_EXEMPLAR_PATHS``
    and the files ``batchroute index build --from`` added under ``data_dir/exemplars``."""
    from batchroute.settings import get_settings

    settings = get_settings()
    paths = [BUNDLED_EXEMPLARS, *settings.exemplar_paths]
    if settings.user_exemplar_dir.is_dir():
        paths.append(settings.user_exemplar_dir)
    return paths


def loaded_analyzer() -> Analyzer | None:
    """The process-wide analyzer if it is already built, else None (never builds it)."""
    return _SINGLETON


def reset_analyzer() -> None:
    """Forget the process-wide analyzer (the next :func:`get_analyzer` builds it from the current paths)."""
    global _SINGLETON
    with _SINGLETON_LOCK:
        _SINGLETON = None


def get_analyzer() -> Analyzer:
    """The process-wide analyzer (built on first call) over :func:`index_paths`.

    Its index is cached in ``settings.data_dir / "index"`` by content hash.
    """
    global _SINGLETON
    if _SINGLETON is not None:
        return _SINGLETON
    with _SINGLETON_LOCK:
        if _SINGLETON is None:
            from batchroute.settings import get_settings

            settings = get_settings()
            _SINGLETON = Analyzer.from_paths(
                index_paths(),
                embedder=Embedder.from_settings(),
                cache_dir=settings.data_dir / "index",
                outcome_k=settings.analyzer_outcome_k,
                outcome_strength=settings.analyzer_outcome_strength)
        return _SINGLETON
