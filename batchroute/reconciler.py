"""The reconciler: Postgres is the system of record, so whatever a queue lost is found and re-sent.

One pass (Celery beat every ``reconcile_after_s / 4``, or ``batchroute reconcile``):
- requests ``queued`` longer than ``reconcile_after_s`` go back to the ``analyze`` queue;
- requests ``dispatched``/``running`` longer than that go back to their provider's queue (a killed
  worker, a flushed or restarted Redis); a live worker refreshes its running requests' clock, so
  only abandoned ones look stuck;
- requests of a job past its deadline expire;
- jobs whose requests are all terminal are closed.
Re-sending is safe: both stages skip requests that are no longer in the state they expect.
The timeout must exceed the longest call plus its retries (see README, "Timeouts").
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from sqlalchemy import case, select, true, update

from batchroute.db import get_engine
from batchroute.dispatch import Dispatcher, get_dispatcher
from batchroute.jobs import JOBS, refresh_job_state
from batchroute.ledger import REQUESTS
from batchroute.settings import get_settings
from batchroute.tables import JobState, RequestState, utcnow

log = logging.getLogger(__name__)


@dataclass
class ReconcileReport:
    """What one pass did."""

    requeued_analyze: int = 0
    requeued_provider: dict[str, int] = field(default_factory=dict)
    expired: int = 0
    closed_jobs: list[str] = field(default_factory=list)


def reconcile(older_than_s: float | None = None, dispatcher: Dispatcher | None = None,
              now: datetime | None = None) -> ReconcileReport:
    """Run one reconciler pass; returns what it re-sent, expired and closed."""
    settings = get_settings()
    dispatcher = dispatcher or get_dispatcher()
    now = now or datetime.now(UTC)
    cutoff = now - timedelta(seconds=settings.reconcile_after_s if older_than_s is None else older_than_s)
    report = ReconcileReport()
    engine = get_engine()
    with engine.begin() as conn:
        open_jobs = conn.execute(select(JOBS.c.id, JOBS.c.deadline_at, JOBS.c.state).where(
            JOBS.c.state.not_in(JobState.TERMINAL))).all()
        expired_jobs = [j.id for j in open_jobs
                        if j.deadline_at is not None and j.deadline_at.replace(tzinfo=UTC) < now]
        if expired_jobs:
            res = conn.execute(update(REQUESTS).where(
                REQUESTS.c.job_id.in_(expired_jobs), REQUESTS.c.state.not_in(RequestState.TERMINAL))
                .values(state=RequestState.EXPIRED, error="past the job's deadline", updated_at=utcnow()))
            report.expired = int(res.rowcount or 0)
        paused = [j.id for j in open_jobs if j.state == JobState.PAUSED]
        # One UPDATE picks and takes the stuck requests, so a request a worker claims or finishes
        # meanwhile is never re-sent. ``running`` ones go back to ``dispatched``: their executor is
        # gone (a live one refreshes updated_at), and the re-sent chunk may only claim dispatched
        # or stale requests. The fresh clock keeps the next pass from sending them again at once.
        stuck = conn.execute(update(REQUESTS).where(
            REQUESTS.c.state.in_((RequestState.QUEUED, RequestState.DISPATCHED, RequestState.RUNNING)),
            REQUESTS.c.updated_at < cutoff, REQUESTS.c.job_id.not_in(paused) if paused else true())
            .values(updated_at=utcnow(), state=case((REQUESTS.c.state == RequestState.RUNNING, RequestState.DISPATCHED),
                                                    else_=REQUESTS.c.state))
            .returning(REQUESTS.c.id, REQUESTS.c.state, REQUESTS.c.provider)).all()
    analyze = [r.id for r in stuck if r.state == RequestState.QUEUED]
    by_provider: dict[str, list[str]] = defaultdict(list)
    for r in stuck:
        if r.state != RequestState.QUEUED and r.provider:
            by_provider[r.provider].append(r.id)
    for i in range(0, len(analyze), settings.analyze_chunk_size):
        dispatcher.analyze(analyze[i:i + settings.analyze_chunk_size])
    report.requeued_analyze = len(analyze)
    for provider, ids in by_provider.items():
        for i in range(0, len(ids), settings.provider_chunk_size):
            dispatcher.execute(provider, ids[i:i + settings.provider_chunk_size])
        report.requeued_provider[provider] = len(ids)
    for job in open_jobs:
        if refresh_job_state(job.id) in JobState.TERMINAL:
            report.closed_jobs.append(job.id)
    if stuck or report.expired:
        log.info("reconcile: %s", report)
    return report
