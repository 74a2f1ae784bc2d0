"""Rate limits shared by every worker: per provider and per model, requests and tokens per minute.

Pick a backend and acquire before each provider call::

    from batchroute.ratelimit import RedisRateLimiter, limit_keys_for

    limiter = RedisRateLimiter("redis://127.0.0.1:6379/0")     # or InMemoryRateLimiter()
    keys = limit_keys_for(model, registry.provider(model.provider))
    res = await limiter.acquire(keys, tokens=estimate, timeout_s=30)
    ...                                                         # call the provider
    await limiter.settle(res, actual_tokens=usage)              # refund / charge the difference
    await limiter.penalize("model:" + model.name, retry_after_s)   # on a 429

Modules: :mod:`~batchroute.ratelimit.base` (types, pure GCRA math, the interface),
:mod:`~batchroute.ratelimit.aimd` (pure AIMD controller), :mod:`~batchroute.ratelimit.memory`
and :mod:`~batchroute.ratelimit.redis` (backends).
"""

from __future__ import annotations

from batchroute.ratelimit.aimd import AIMD, AIMDState
from batchroute.ratelimit.base import (
    AcquirePlan,
    Attempt,
    GcraResult,
    KeyState,
    KeyStatus,
    LimitKey,
    RateLimiter,
    Reservation,
    bucket_capacity,
    gcra,
    gcra_adjust,
    headers_block_s,
    limit_keys_for,
    plan_acquire,
    plan_feedback,
    plan_settle,
)
from batchroute.ratelimit.memory import InMemoryRateLimiter
from batchroute.ratelimit.redis import RedisRateLimiter

__all__ = [
    "AIMD",
    "AIMDState",
    "AcquirePlan",
    "Attempt",
    "GcraResult",
    "InMemoryRateLimiter",
    "KeyState",
    "KeyStatus",
    "LimitKey",
    "RateLimiter",
    "RedisRateLimiter",
    "Reservation",
    "bucket_capacity",
    "gcra",
    "gcra_adjust",
    "headers_block_s",
    "limit_keys_for",
    "plan_acquire",
    "plan_feedback",
    "plan_settle",
]
