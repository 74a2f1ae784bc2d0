"""Feedback: observed outcomes of requests, learned by the analyzer from the next decision on.

``record_feedback(request_id, score)`` stores a score in [0, 1] for the model that answered the
request (or a named model). Every analyzer process picks new feedback up before its next chunk
(:func:`sync_feedback`, one indexed query) and learns it twice:

- the request's prompt joins the exemplar index as an outcome row for that model, so prompts like
  it get a predicted quality for that model that moves toward what was observed (see
  ``Analysis.predicted_quality``);
- the model's prior for the request's (domain, complexity) moves toward the mean feedback of that
  cell (:func:`feedback_prior`), so every prompt of the cell feels it, similar or not. The
  analyzer's neighbour-based estimate is shrunk toward this prior (:func:`quality_terms`), the
  same in the analyze stage and in the planner::

    from batchroute.feedback import record_feedback
    record_feedback("job_ab12-42", 0.2)                 # the answer was poor
    record_feedback("job_ab12-42", 0.9, model="sim-gpt-4")
"""

from __future__ import annotations

import logging
import math
import threading
import time
import weakref
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from batchroute.db import get_engine
from batchroute.errors import InputError, NotFoundError
from batchroute.registry import ModelSpec, Registry, get_registry
from batchroute.routing import MIN_CONFIDENCE, PriorTerm
from batchroute.tables import Feedback, Request, utcnow

if TYPE_CHECKING:
    from batchroute.analyzer import Analysis, Analyzer

log = logging.getLogger(__name__)

FEEDBACK = Feedback.__table__  # type: ignore[attr-defined]
REQUESTS = Request.__table__  # type: ignore[attr-defined]
# An analyzer looks for new feedback at most this often (the check is one indexed query).
SYNC_EVERY_S = 2.0
_BATCH = 5_000


def record_feedback(request_id: str, score: float, model: str | None = None) -> dict[str, Any]:
    """Store an outcome for ``request_id`` on ``model`` (default: the model that answered it).

    Raises InputError for a score outside [0, 1], an unknown model or a request that was never
    routed; NotFoundError for an unknown request. Returns the stored row.
    """
    if not isinstance(score, int | float) or math.isnan(score) or not 0.0 <= score <= 1.0:
        raise InputError(f"score must be within [0, 1], got {score!r}", field="score")
    with get_engine().begin() as conn:
        req = conn.execute(select(REQUESTS.c.id, REQUESTS.c.model).where(REQUESTS.c.id == request_id)).first()
        if req is None:
            raise NotFoundError(f"no request {request_id!r} (ids look like <job id>-<line>)")
        name = model or req.model
        if name is None:
            raise InputError(f"request {request_id} has not been routed to a model yet; name one with --model",
                             field="model")
        try:
            get_registry().model(name)
        except NotFoundError as exc:
            raise InputError(str(exc), field="model") from exc
        created = utcnow()
        fid = conn.execute(FEEDBACK.insert().values(request_id=request_id, model=name, score=float(score),
                                                    created_at=created).returning(FEEDBACK.c.id)).scalar_one()
    _sync_loaded_analyzer()
    return {"id": int(fid), "request_id": request_id, "model": name, "score": float(score),
            "created_at": created.isoformat()}


def feedback_prior(registry_prior: float, n: int, score_sum: float, pseudo_count: float) -> float:
    """The prior of a (model, domain, complexity) cell after ``n`` feedback scores summing to ``score_sum``.

    ``(score_sum + k * registry_prior) / (n + k)``: the registry prior counts as ``k`` feedback
    rows, so a few scores nudge it and many scores take over. ``n == 0`` gives the registry prior.
    """
    if n <= 0:
        return registry_prior
    return (score_sum + pseudo_count * registry_prior) / (n + pseudo_count)


@dataclass
class FeedbackPriors:
    """Per-(model, domain, complexity) feedback counts and sums, and the priors they give.

    Built by :func:`sync_feedback` alongside the analyzer's index (one per analyzer); pure
    otherwise. ``pseudo_count`` is ``k`` of :func:`feedback_prior`.
    """

    pseudo_count: float = 10.0
    cells: dict[tuple[str, str, str], tuple[int, float]] = field(default_factory=dict)

    def add(self, model: str, domain: str, complexity: str, score: float) -> None:
        """Count one feedback score for the cell."""
        n, total = self.cells.get((model, domain, complexity), (0, 0.0))
        self.cells[(model, domain, complexity)] = (n + 1, total + score)

    def term(self, model: ModelSpec, domain: str, complexity: str) -> PriorTerm:
        """``model``'s prior for the cell: the registry's, moved toward the cell's feedback."""
        registry_prior = model.prior_quality(domain, complexity)
        n, total = self.cells.get((model.name, domain, complexity), (0, 0.0))
        return PriorTerm(registry=registry_prior,
                         value=feedback_prior(registry_prior, n, total, self.pseudo_count),
                         feedback_n=n, feedback_mean=total / n if n else None)


def quality_terms(analysis: Analysis, registry: Registry,
                  priors: FeedbackPriors | None = None) -> tuple[dict[str, float], dict[str, PriorTerm]]:
    """Per model: predicted quality for the analysed prompt, and the prior it was shrunk toward.

    The prior is the model's (domain, complexity) prior moved by feedback (``priors``; None = the
    registry's alone). A prompt whose domain confidence is below the router's ``MIN_CONFIDENCE``
    takes the *complex* prior whatever its complexity label: the safe route, which favours models
    that hold up on hard prompts. Used by the analyze stage and the planner alike, so both route
    the same way.
    """
    complexity = "complex" if analysis.confidence < MIN_CONFIDENCE else analysis.complexity
    cells = priors if priors is not None else FeedbackPriors()  # no feedback: every term is the registry's
    terms = {m.name: cells.term(m, analysis.domain, complexity) for m in registry.models}
    return {name: analysis.predicted_quality(name, t.value) for name, t in terms.items()}, terms


# One FeedbackPriors per analyzer: they are fed by the same rows as its index (``feedback_seen``).
_priors: weakref.WeakKeyDictionary[Analyzer, FeedbackPriors] = weakref.WeakKeyDictionary()
_priors_lock = threading.Lock()


def feedback_priors(analyzer: Analyzer) -> FeedbackPriors:
    """The feedback priors learned alongside ``analyzer``'s index (up to ``analyzer.feedback_seen``)."""
    from batchroute.settings import get_settings

    with _priors_lock:
        p = _priors.get(analyzer)
        if p is None:
            p = _priors[analyzer] = FeedbackPriors(get_settings().feedback_prior_pseudo_count)
        return p


def sync_feedback(analyzer: Analyzer, force: bool = False) -> int:
    """Add feedback newer than what ``analyzer`` has seen to its index and priors; returns rows added.

    Cheap to call before every chunk: it checks at most every ``SYNC_EVERY_S`` unless ``force``.
    """
    with analyzer.feedback_lock:
        # Under the lock: threads racing here would otherwise both read the same feedback_seen
        # and learn the same rows twice (the index would get duplicates, the priors double counts).
        now = time.monotonic()
        if not force and now - analyzer.feedback_checked_at < SYNC_EVERY_S:
            return 0
        analyzer.feedback_checked_at = now
        return _learn_new_feedback(analyzer, feedback_priors(analyzer))


def _learn_new_feedback(analyzer: Analyzer, priors: FeedbackPriors) -> int:
    """Add every feedback row after ``analyzer.feedback_seen`` to the index and ``priors``."""
    added = 0
    with get_engine().connect() as conn:
        while True:
            rows = conn.execute(
                select(FEEDBACK.c.id, FEEDBACK.c.model, FEEDBACK.c.score, REQUESTS.c.prompt,
                       REQUESTS.c.domain, REQUESTS.c.complexity)
                .join(REQUESTS, REQUESTS.c.id == FEEDBACK.c.request_id)
                .where(FEEDBACK.c.id > analyzer.feedback_seen).order_by(FEEDBACK.c.id).limit(_BATCH)).all()
            if not rows:
                return added
            analyzer.add_exemplars([{"id": f"feedback:{r.id}", "prompt": r.prompt,
                                     "outcomes": {r.model: {"score": float(r.score)}}} for r in rows],
                                   refit=False)
            for r in rows:
                # A request scored before it was analysed has no cell: it teaches the index only.
                if r.domain and r.complexity:
                    priors.add(r.model, r.domain, r.complexity, float(r.score))
            analyzer.feedback_seen = int(rows[-1].id)
            added += len(rows)
            log.info("learned from %d feedback rows (up to id %d)", len(rows), analyzer.feedback_seen)


def _sync_loaded_analyzer() -> None:
    """Let this process's analyzer (if it is loaded) use the new feedback right away."""
    from batchroute.analyzer import loaded_analyzer

    loaded = loaded_analyzer()
    if loaded is not None:
        sync_feedback(loaded, force=True)
