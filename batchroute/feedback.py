"""Feedback: observed outcomes of requests, learned by the analyzer from the next decision on.

``record_feedback(request_id, score)`` stores a score in [0, 1] for the model that answered the
request (or a named model). Every analyzer process picks new feedback up before its next chunk
(:func:`sync_feedback`, one indexed query): the request's prompt joins the exemplar index as an
outcome row for that model, so prompts like it get a predicted quality for that model that moves
from the registry prior toward what was observed (see ``Analysis.predicted_quality``)::

    from batchroute.feedback import record_feedback
    record_feedback("job_ab12-42", 0.2)                 # the answer was poor
    record_feedback("job_ab12-42", 0.9, model="sim-gpt-4")
"""

from __future__ import annotations

import logging
import math
import time
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from batchroute.db import get_engine
from batchroute.errors import InputError, NotFoundError
from batchroute.registry import get_registry
from batchroute.tables import Feedback, Request, utcnow

if TYPE_CHECKING:
    from batchroute.analyzer import Analyzer

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


def sync_feedback(analyzer: Analyzer, force: bool = False) -> int:
    """Add feedback newer than what ``analyzer`` has seen to its index; returns rows added.

    Cheap to call before every chunk: it checks at most every ``SYNC_EVERY_S`` unless ``force``.
    """
    now = time.monotonic()
    if not force and now - analyzer.feedback_checked_at < SYNC_EVERY_S:
        return 0
    analyzer.feedback_checked_at = now
    added = 0
    with get_engine().connect() as conn:
        while True:
            rows = conn.execute(
                select(FEEDBACK.c.id, FEEDBACK.c.model, FEEDBACK.c.score, REQUESTS.c.prompt)
                .join(REQUESTS, REQUESTS.c.id == FEEDBACK.c.request_id)
                .where(FEEDBACK.c.id > analyzer.feedback_seen).order_by(FEEDBACK.c.id).limit(_BATCH)).all()
            if not rows:
                return added
            analyzer.add_exemplars([{"id": f"feedback:{r.id}", "prompt": r.prompt,
                                     "outcomes": {r.model: {"score": float(r.score)}}} for r in rows],
                                   refit=False)
            analyzer.feedback_seen = int(rows[-1].id)
            added += len(rows)
            log.info("learned from %d feedback rows (up to id %d)", len(rows), analyzer.feedback_seen)


def _sync_loaded_analyzer() -> None:
    """Let this process's analyzer (if it is loaded) use the new feedback right away."""
    from batchroute.analyzer import loaded_analyzer

    loaded = loaded_analyzer()
    if loaded is not None:
        sync_feedback(loaded, force=True)
