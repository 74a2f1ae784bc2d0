"""The analyze stage: label a chunk of queued requests, route each one, store why, dispatch.

Runs in the ``analyze`` worker (or in-process in the embedded default). Idempotent: only requests
still ``queued`` are taken, so a redelivered chunk does nothing twice. Each chunk routes with the
feedback learned so far (index and priors, :mod:`batchroute.feedback`) and the profiler's live
figures (:mod:`batchroute.profiler`, a snapshot cached a few seconds per process).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy import bindparam, select, update
from sqlmodel import Session, col

from batchroute.budgets import admit_chunk
from batchroute.db import get_engine
from batchroute.dispatch import Dispatcher
from batchroute.feedback import FeedbackPriors, feedback_priors, quality_terms, sync_feedback
from batchroute.ledger import DECISIONS, REQUESTS, insert_ignore
from batchroute.profiler import get_profiler
from batchroute.registry import Registry, get_registry
from batchroute.routing import Decision, RouteInput, RoutePolicy, decide, weights_for
from batchroute.settings import get_settings
from batchroute.tables import Job, JobState, Request, RequestState, utcnow

if TYPE_CHECKING:
    from batchroute.profiler.stats import LiveModel

log = logging.getLogger(__name__)


def policy_for(job: Job, request: Request, tried: frozenset[str] = frozenset(),
               unhealthy: frozenset[str] = frozenset(),
               live: Mapping[str, LiveModel] | None = None) -> RoutePolicy:
    """The routing policy of one request of ``job`` (``live``: the profiler's snapshot, if any)."""
    latency = request.latency_class or job.latency_class
    lam, mu = weights_for(latency, job.objective, job.cost_weight)
    return RoutePolicy(cost_weight=lam, latency_weight=mu,
                       allowed=frozenset(job.allowed_models) if job.allowed_models else None,
                       pinned=request.pinned_model, tried=tried, unhealthy=unhealthy, live=live or {})


def route_input(request: Request, analysis: Any, registry: Registry,
                priors: FeedbackPriors | None = None) -> RouteInput:
    """The router's view of a request given its analysis (labels + outcome-aware quality).

    ``priors``: feedback-moved priors (the analyze stage passes its analyzer's); None = registry priors.
    """
    predicted, terms = quality_terms(analysis, registry, priors)
    return RouteInput(domain=analysis.domain, complexity=analysis.complexity, style=analysis.style,
                      confidence=analysis.confidence, prompt_tokens=request.prompt_tokens_est,
                      latency_class=request.latency_class, max_tokens=request.max_tokens,
                      predicted_quality=predicted, priors=terms)


def decision_detail(analysis: Any, decision: Decision) -> dict[str, Any]:
    """What ``batchroute explain`` shows: labels, confidence, neighbours, template lines left out of
    the outcome search, every candidate."""
    return {
        "labels": {"domain": analysis.domain, "complexity": analysis.complexity, "style": analysis.style},
        "confidence": {"domain": round(analysis.confidence, 4),
                       "complexity": round(analysis.complexity_confidence, 4),
                       "style": round(analysis.style_confidence, 4)},
        "neighbours": [{"id": n.id, "similarity": round(float(n.similarity), 4), "domain": n.domain,
                        "complexity": n.complexity, "style": n.style} for n in analysis.neighbours],
        # How many template lines the outcome-neighbour search left out (batchroute.analyzer.templates).
        "template_lines_stripped": int(getattr(analysis, "template_lines_stripped", 0)),
        **decision.to_dict(),
    }


def analyze_chunk(request_ids: Sequence[str], dispatcher: Dispatcher) -> dict[str, list[str]]:
    """Analyze, route and dispatch the still-queued requests among ``request_ids``.

    Returns the dispatched ids per provider.
    """
    from batchroute.analyzer import get_analyzer

    registry = get_registry()
    engine = get_engine()
    with Session(engine) as session:
        requests = list(session.execute(select(Request).where(
            col(Request.id).in_(list(request_ids)), col(Request.state) == RequestState.QUEUED)).scalars())
        if not requests:
            return {}
        jobs = {j.id: j for j in session.execute(select(Job).where(
            col(Job.id).in_({r.job_id for r in requests}))).scalars()}
    analyzer = get_analyzer()
    sync_feedback(analyzer)
    priors = feedback_priors(analyzer)
    live = get_profiler().snapshot(m.name for m in registry.models)
    analyses = analyzer.analyze([r.prompt for r in requests])

    routed = [(req, analysis, decide(route_input(req, analysis, registry, priors), registry,
                                     policy_for(jobs[req.job_id], req, live=live)))
              for req, analysis in zip(requests, analyses, strict=True)]
    updates: list[dict[str, Any]] = []
    decisions: list[dict[str, Any]] = []
    by_provider: dict[str, list[str]] = defaultdict(list)
    now = utcnow()
    with engine.begin() as conn:
        # Budgets are checked here, before any call is sent: a request that does not fit stays
        # queued (its job pauses with the reason) and is routed afresh when the job resumes.
        held = admit_chunk(conn, jobs, [(req, d.model, a.style) for req, a, d in routed])
        for req, analysis, decision in routed:
            if req.id in held:
                continue
            state = RequestState.DISPATCHED if decision.model else RequestState.FAILED
            updates.append({"b_id": req.id, "domain": analysis.domain, "complexity": analysis.complexity,
                            "style": analysis.style, "confidence": float(analysis.confidence),
                            "model": decision.model, "provider": decision.provider, "state": state,
                            "error": None if decision.model else decision.reason, "updated_at": now})
            decisions.append({"request_id": req.id, "job_id": req.job_id, "seq": 0, "model": decision.model,
                              "provider": decision.provider, "reason": decision.reason,
                              "detail": decision_detail(analysis, decision), "created_at": now})
            if decision.provider:
                by_provider[decision.provider].append(req.id)
        if decisions:
            insert_ignore(conn, DECISIONS, decisions)
            conn.execute(update(REQUESTS).where(REQUESTS.c.id == bindparam("b_id"),
                                                REQUESTS.c.state == RequestState.QUEUED)
                         .values({k: bindparam(k) for k in updates[0] if k != "b_id"}), updates)
        conn.execute(update(Job.__table__).where(  # type: ignore[attr-defined]
            Job.__table__.c.id.in_(list(jobs)), Job.__table__.c.state == JobState.QUEUED)  # type: ignore[attr-defined]
            .values(state=JobState.RUNNING))

    chunk = get_settings().provider_chunk_size
    for provider, ids in by_provider.items():
        for i in range(0, len(ids), chunk):
            dispatcher.execute(provider, ids[i:i + chunk])
    return dict(by_provider)

