"""The Celery app: queue ``analyze`` and one queue ``provider.<name>`` per provider.

Start workers with ``batchroute worker analyze`` / ``batchroute worker provider --provider NAME``,
or directly: ``celery -A workers.app worker -Q provider.openai-sim -P threads -c 16``.
Provider workers use the threads pool: each thread hands its chunk to the process's event loop,
so one process keeps ``concurrency x chunk size`` calls in flight over one aiohttp session.
"""

from __future__ import annotations

import logging

from celery import Celery
from celery.signals import worker_init, worker_process_init

from batchroute.dispatch import ANALYZE_TASK, EXECUTE_TASK, RECONCILE_TASK, celery_config
from batchroute.settings import get_settings

log = logging.getLogger(__name__)

app = Celery("batchroute")
app.conf.update(celery_config(get_settings()))


@worker_process_init.connect
def _fresh_process(**_: object) -> None:
    # A prefork child must not reuse the parent's event loop, sessions or DB connections.
    from batchroute.db import get_engine
    from batchroute.runtime import reset_runtime

    reset_runtime()
    get_engine().dispose(close=False)


@worker_init.connect
def _warm_analyzer(sender: object = None, **_: object) -> None:
    # An analyze worker loads the embedding model and the exemplar index (building its on-disk
    # cache if the exemplars changed) before it reports ready, so its first chunk does not
    # wait for them. Prefork children load their own on first use instead: the model must not
    # be loaded in the parent before the fork.
    queues = getattr(getattr(getattr(sender, "app", None), "amqp", None), "queues", None)
    consuming = getattr(queues, "consume_from", None) or {}
    pool = getattr(sender, "pool_cls", "")
    pool_name = pool if isinstance(pool, str) else f"{getattr(pool, '__module__', '')}.{getattr(pool, '__name__', '')}"
    if "analyze" not in consuming or "prefork" in pool_name:
        return
    from batchroute.analyzer import get_analyzer

    analyzer = get_analyzer()
    analyzer.embedder.load()
    log.info("analyzer ready: %d exemplars", len(analyzer.index))


@app.task(name=ANALYZE_TASK)
def analyze(request_ids: list[str]) -> int:
    """Label, route and dispatch a chunk of queued requests."""
    from batchroute.dispatch import get_dispatcher
    from batchroute.pipeline import analyze_chunk

    return sum(len(v) for v in analyze_chunk(request_ids, get_dispatcher()).values())


@app.task(name=EXECUTE_TASK)
def execute(request_ids: list[str]) -> int:
    """Call the routed models for a chunk of requests (many in flight on the process loop)."""
    from batchroute.execution import run_chunk
    from batchroute.runtime import get_runtime

    get_runtime().run(run_chunk(request_ids))
    return len(request_ids)


@app.task(name=RECONCILE_TASK)
def reconcile() -> dict[str, object]:
    """One reconciler pass (scheduled by celery beat)."""
    from dataclasses import asdict

    from batchroute.reconciler import reconcile as run

    return asdict(run())
