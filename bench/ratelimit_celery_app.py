"""The Celery side of ``ratelimit_bench``: one task per provider call, limited by Celery's own ``rate_limit``.

This is how a Celery user commonly throttles an API: ``@app.task(rate_limit="600/m")``. Celery
enforces it per worker process (a token bucket in each worker's consumer), so N workers send N
times the limit. The benchmark starts workers with ``celery -A ratelimit_celery_app worker`` from
this folder; the environment carries the settings:

- ``BENCH_RL_BROKER``: the Redis broker; ``BENCH_RL_RATE``: the task's ``rate_limit`` (e.g. "600/m");
- ``BENCH_RL_MODEL`` and ``BENCH_RL_MAX_TOKENS``: what to call; ``BATCHROUTE_SIM_URL`` and
  ``BATCHROUTE_REGISTRY``: where (batchroute's own OpenAI client on batchroute's runtime loop).

A 429 is counted by the simulator and dropped (the queue always holds more work), as a retry
would only come back through the same per-worker bucket.
"""

from __future__ import annotations

import asyncio
import os
import threading

import aiohttp
from celery import Celery

from batchroute.errors import ProviderError

QUEUE = "bench.ratelimit"
TASK = "bench.ratelimit.call"

app = Celery("bench-ratelimit", broker=os.environ.get("BENCH_RL_BROKER", "redis://127.0.0.1:6379/11"))
app.conf.update(task_acks_late=False, task_ignore_result=True,
                worker_prefetch_multiplier=int(os.environ.get("BENCH_RL_PREFETCH", "1")),
                task_default_queue=QUEUE, worker_hijack_root_logger=False, broker_connection_retry_on_startup=True)


_loop: asyncio.AbstractEventLoop | None = None
_session: aiohttp.ClientSession | None = None
_lock = threading.Lock()


def _ensure_loop() -> asyncio.AbstractEventLoop:
    # One event loop thread and one aiohttp session per worker process, as batchroute's runtime
    # keeps (without its ledger writer: this side writes nothing).
    global _loop
    with _lock:
        if _loop is None:
            _loop = asyncio.new_event_loop()
            threading.Thread(target=_loop.run_forever, name="bench-loop", daemon=True).start()
        return _loop


@app.task(name=TASK, rate_limit=os.environ.get("BENCH_RL_RATE", "600/m"))
def call(i: int) -> str:
    """One chat completion against the simulated provider; returns "ok" or the error kind."""
    from batchroute.providers import ChatRequest, client_for, new_session
    from batchroute.registry import get_registry

    model = get_registry().model(os.environ.get("BENCH_RL_MODEL", "sim-llama-3-8b"))

    async def once() -> str:
        global _session
        if _session is None:
            _session = new_session()
        client = client_for(model, _session, os.environ["BATCHROUTE_SIM_URL"])
        await client.complete(ChatRequest(model=model, max_tokens=int(os.environ.get("BENCH_RL_MAX_TOKENS", "100")),
                                          messages=[{"role": "user", "content": f"Rate limit probe {i}."}]))
        return "ok"

    try:
        return asyncio.run_coroutine_threadsafe(once(), _ensure_loop()).result(60)
    except ProviderError as exc:
        return exc.kind
