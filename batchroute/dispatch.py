"""Moving request ids between stages: Celery queues, or the calling process in the embedded default.

Queues: ``analyze`` carries chunks of new request ids; ``provider.<name>`` carries chunks of routed
request ids for one provider, so workers scale per provider. Messages carry ids only; Postgres
holds the requests, so a lost message costs a reconciler pass, never a request.
"""

from __future__ import annotations

import logging
import threading
from abc import ABC, abstractmethod
from collections.abc import Sequence
from concurrent.futures import Future
from typing import Any

from batchroute.errors import BrokerError
from batchroute.settings import Settings, get_settings

log = logging.getLogger(__name__)

ANALYZE_QUEUE = "analyze"
ANALYZE_TASK = "batchroute.analyze"
EXECUTE_TASK = "batchroute.execute"
RECONCILE_TASK = "batchroute.reconcile"


def provider_queue(provider: str) -> str:
    """The Celery queue of one provider's workers."""
    return f"provider.{provider}"


def celery_config(settings: Settings) -> dict[str, Any]:
    """Celery settings shared by producers and workers (see README, "Timeouts")."""
    return {
        "broker_url": settings.broker_url,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_default_queue": ANALYZE_QUEUE,
        "task_serializer": "json",
        "accept_content": ["json"],
        "broker_connection_retry_on_startup": True,
        "broker_transport_options": {"visibility_timeout": settings.visibility_timeout_s},
        "worker_hijack_root_logger": False,
        "task_ignore_result": True,
        "beat_schedule": {
            "reconcile": {"task": RECONCILE_TASK, "schedule": max(10.0, settings.reconcile_after_s / 4),
                          "options": {"queue": ANALYZE_QUEUE}},
        },
    }


class Dispatcher(ABC):
    """Sends chunks of request ids to a stage."""

    @abstractmethod
    def send(self, task: str, request_ids: Sequence[str], queue: str) -> None:
        """Deliver ``request_ids`` to ``task`` on ``queue`` (the one core method)."""

    def analyze(self, request_ids: Sequence[str]) -> None:
        """Queue new requests for the analyzer."""
        if request_ids:
            self.send(ANALYZE_TASK, list(request_ids), ANALYZE_QUEUE)

    def execute(self, provider: str, request_ids: Sequence[str]) -> None:
        """Queue routed requests for one provider's workers."""
        if request_ids:
            self.send(EXECUTE_TASK, list(request_ids), provider_queue(provider))

    def drain(self, timeout_s: float | None = None) -> None:  # noqa: B027 - optional hook
        """Wait for in-process work to finish (no-op for external brokers)."""


class CeleryDispatcher(Dispatcher):
    """Publishes to the Celery broker named by ``BATCHROUTE_BROKER_URL``."""

    def __init__(self, settings: Settings) -> None:
        from celery import Celery

        self.app = Celery("batchroute-producer")
        self.app.conf.update(celery_config(settings))

    def send(self, task: str, request_ids: Sequence[str], queue: str) -> None:
        try:
            self.app.send_task(task, args=[list(request_ids)], queue=queue)
        except Exception as exc:  # kombu raises many transport-specific types
            raise BrokerError(f"cannot publish to queue {queue!r}: {exc}") from exc


class InProcessDispatcher(Dispatcher):
    """The embedded default: stages run in this process; provider chunks run concurrently."""

    def __init__(self) -> None:
        self._pending: list[Future[Any]] = []
        self._lock = threading.Lock()

    def send(self, task: str, request_ids: Sequence[str], queue: str) -> None:
        from batchroute.execution import run_chunk
        from batchroute.pipeline import analyze_chunk
        from batchroute.runtime import get_runtime

        ids = list(request_ids)
        if task == ANALYZE_TASK:
            analyze_chunk(ids, self)
            return
        if task != EXECUTE_TASK:
            raise BrokerError(f"unknown task {task!r}")
        rt = get_runtime()
        fut = rt.submit(run_chunk(ids, self))
        with self._lock:
            self._pending.append(fut)

    def drain(self, timeout_s: float | None = None) -> None:
        while True:
            with self._lock:
                pending, self._pending = self._pending, []
            if not pending:
                return
            for fut in pending:
                exc = fut.exception(timeout_s)
                if exc is not None:
                    log.error("in-process chunk failed: %s", exc)


_dispatcher: Dispatcher | None = None
_dispatcher_lock = threading.Lock()


def get_dispatcher() -> Dispatcher:
    """The dispatcher for the configured broker (built once per process)."""
    global _dispatcher
    with _dispatcher_lock:
        if _dispatcher is None:
            settings = get_settings()
            _dispatcher = InProcessDispatcher() if settings.embedded else CeleryDispatcher(settings)
        return _dispatcher


def reset_dispatcher() -> None:
    """Forget the dispatcher (tests that change settings)."""
    global _dispatcher
    _dispatcher = None
