"""The provider stage: call models for a chunk of routed requests, with limits, retries and fallback.

Every request of a chunk runs as its own coroutine on the process's runtime loop, so one worker
process keeps ``concurrency x chunk size`` calls in flight. Per request:

1. wait for shared rate-limit capacity (pre-charging prompt + expected output tokens);
2. call the model; write an attempt row (tokens, price in force, cost, latency, status);
3. on a retryable failure, back off (full jitter, honouring ``retry-after``) and try again, up to
   ``max_attempts_per_model``; a 429 also lowers the shared rate (AIMD);
4. when a model is exhausted or its circuit breaker is open, re-route to the next-best eligible
   model (recording why); hand off to another provider's queue when the new model lives there;
5. when nothing is eligible, the request fails with the reasons (dead letter), never silently.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlmodel import Session

from batchroute.backoff import retry_delay_s
from batchroute.dispatch import Dispatcher, get_dispatcher
from batchroute.errors import ProviderAuthError, ProviderError, ProviderRateLimited
from batchroute.ledger import mark_running, record_attempt, record_failure, record_reroute, record_success
from batchroute.pipeline import policy_for
from batchroute.pricing import PriceSnapshot
from batchroute.providers import ChatRequest, ChatResponse, client_for
from batchroute.ratelimit import limit_keys_for
from batchroute.registry import ModelSpec, Registry, get_registry
from batchroute.routing import RouteInput, decide
from batchroute.runtime import Runtime, get_runtime
from batchroute.tables import Job, Request, RequestState, Result, RoutingDecision, utcnow

log = logging.getLogger(__name__)
ACTIVE = (RequestState.DISPATCHED, RequestState.RUNNING)


@dataclass
class Work:
    """One request to execute and what is needed to do it without more reads."""

    request: Request
    job: Job
    past_models: list[str]  # models of the routing decisions so far, in order (fallbacks last)


@dataclass
class ModelOutcome:
    """How one model's attempts for a request ended."""

    response: ChatResponse | None = None
    attempt_id: str | None = None
    fatal: str | None = None       # a bad request: no other model will do better
    exhausted: str | None = None   # this model is out: try the next one


def _load(request_ids: Sequence[str]) -> list[Work]:
    from batchroute.db import get_engine

    with Session(get_engine()) as s:
        reqs = list(s.exec(select(Request).where(  # type: ignore[call-overload]
            Request.id.in_(list(request_ids)), Request.state.in_(ACTIVE))).scalars())  # type: ignore[attr-defined]
        if not reqs:
            return []
        ids = [r.id for r in reqs]
        done = set(s.exec(select(Result.request_id).where(Result.request_id.in_(ids))).scalars())  # type: ignore[call-overload,attr-defined]
        past: dict[str, list[str]] = {}
        for rid, m in s.exec(select(RoutingDecision.request_id, RoutingDecision.model)  # type: ignore[call-overload]
                             .where(RoutingDecision.request_id.in_(ids))  # type: ignore[attr-defined]
                             .order_by(RoutingDecision.seq)).all():
            past.setdefault(rid, []).append(m)
        jobs = {j.id: j for j in s.exec(select(Job).where(  # type: ignore[call-overload]
            Job.id.in_({r.job_id for r in reqs}))).scalars()}  # type: ignore[attr-defined]
    return [Work(r, jobs[r.job_id], past.get(r.id, [])) for r in reqs if r.id not in done]


async def run_chunk(request_ids: Sequence[str], dispatcher: Dispatcher | None = None) -> None:
    """Execute the still-active requests among ``request_ids`` (idempotent on redelivery)."""
    rt = get_runtime()
    dispatcher = dispatcher or get_dispatcher()
    work = await asyncio.to_thread(_load, request_ids)
    if not work:
        return
    await rt.writer.write(mark_running([w.request.id for w in work]))
    results = await asyncio.gather(*(execute_one(rt, w, dispatcher) for w in work), return_exceptions=True)
    errors = [r for r in results if isinstance(r, BaseException)]
    for err in errors:
        log.error("request execution crashed: %r", err)
    if errors:
        # Let the task fail; the reconciler re-enqueues what is left.
        raise errors[0]


def _attempt_row(w: Work, model: ModelSpec, attempt_id: str, attempt_no: int, prices: PriceSnapshot,
                 started: float, resp: ChatResponse | None, err: ProviderError | None) -> dict[str, Any]:
    req = w.request
    tokens = (resp.prompt_tokens, resp.completion_tokens, resp.cached_tokens) if resp else (0, 0, 0)
    return {
        "id": attempt_id, "request_id": req.id, "job_id": req.job_id, "tenant": w.job.tenant,
        "model": model.name, "provider": model.provider, "attempt_no": attempt_no,
        "status": "ok" if resp else "error",
        "error_kind": err.kind if err else None, "error": str(err)[:2000] if err else None,
        "http_status": resp.http_status if resp else (err.status if err else None),
        "latency_ms": resp.latency_ms if resp else (time.perf_counter() - started) * 1000.0,
        "prompt_tokens": tokens[0], "completion_tokens": tokens[1], "cached_tokens": tokens[2],
        "usage_estimated": bool(resp and not resp.usage_reported),
        "input_price_per_mtok_usd": prices.input_per_mtok_usd,
        "output_price_per_mtok_usd": prices.output_per_mtok_usd,
        "cached_price_per_mtok_usd": prices.cached_per_mtok_usd,
        "cost_usd": prices.cost_usd(*tokens),
        "domain": req.domain, "latency_class": req.latency_class, "tags": w.job.tags or {},
        "created_at": utcnow(),
    }


async def _try_model(rt: Runtime, w: Work, model: ModelSpec, registry: Registry) -> ModelOutcome:
    settings = rt.settings
    req = w.request
    limiter = await rt.limiter()
    keys = limit_keys_for(model, registry.provider(model.provider))
    room = model.context_window_tokens - req.prompt_tokens_est
    max_tokens = max(1, min(req.max_tokens or settings.default_max_tokens, model.max_output_tokens, room))
    # Providers count prompt + max_tokens against tpm before the call; pre-charge the same.
    est_tokens = req.prompt_tokens_est + max_tokens
    client = client_for(model, await rt.session(), await rt.sim_url())
    last = ""
    for i in range(settings.max_attempts_per_model):
        if not (rt.breaker.allow(model.name) and rt.breaker.allow(model.provider)):
            return ModelOutcome(exhausted=f"{model.name}: circuit breaker open" + (f" after {last}" if last else ""))
        reservation = await limiter.acquire(keys, est_tokens)
        attempt_id = uuid.uuid4().hex
        prices = PriceSnapshot.of(model)  # the price in force at the moment of the call
        started = time.perf_counter()
        req.attempts += 1
        try:
            resp = await client.complete(ChatRequest(model=model, messages=req.messages or [
                {"role": "user", "content": req.prompt}], max_tokens=max_tokens, request_id=req.id,
                timeout_s=settings.request_timeout_s))
        except ProviderError as err:
            await limiter.settle(reservation, 0)
            rt.breaker.record_failure(model.name)
            rt.breaker.record_failure(model.provider)
            await rt.writer.write(record_attempt(_attempt_row(w, model, attempt_id, req.attempts, prices,
                                                              started, None, err)))
            last = f"{err.kind} {err.status or ''}".strip()
            if isinstance(err, ProviderRateLimited):
                for key in keys:
                    await limiter.penalize(key.name, err.retry_after_s)
            if isinstance(err, ProviderAuthError):
                return ModelOutcome(exhausted=f"{model.name}: {err}")
            if not err.retryable:
                return ModelOutcome(fatal=f"{model.name} rejected the request: {err}")
            if i + 1 < settings.max_attempts_per_model:
                await asyncio.sleep(retry_delay_s(i, settings.backoff_base_s, settings.backoff_cap_s,
                                                  err.retry_after_s))
            continue
        await limiter.settle(reservation, resp.prompt_tokens + resp.completion_tokens)
        rt.breaker.record_success(model.name)
        rt.breaker.record_success(model.provider)
        if resp.rate_limit is not None:
            rl = resp.rate_limit
            for key in keys:
                await limiter.observe_headers(key.name, rl.remaining_requests, rl.remaining_tokens,
                                              rl.reset_requests_s, rl.reset_tokens_s)
        await rt.writer.write(record_attempt(_attempt_row(w, model, attempt_id, req.attempts, prices,
                                                          started, resp, None)))
        return ModelOutcome(response=resp, attempt_id=attempt_id)
    return ModelOutcome(exhausted=f"{model.name}: {settings.max_attempts_per_model} attempts failed (last: {last})")


async def _reroute(rt: Runtime, w: Work, registry: Registry, tried: set[str], why: str) -> ModelSpec | None:
    req = w.request
    inp = RouteInput(domain=req.domain or "factual_qa", complexity=req.complexity or "complex",
                     style=req.style or "verbose", confidence=req.confidence or 0.0,
                     prompt_tokens=req.prompt_tokens_est, latency_class=req.latency_class,
                     max_tokens=req.max_tokens)
    unhealthy = frozenset(m.name for m in registry.models if rt.breaker.state(m.name) == "open")
    unhealthy |= frozenset(p for p in registry.provider_names() if rt.breaker.state(p) == "open")
    decision = decide(inp, registry, policy_for(w.job, req, frozenset(tried), unhealthy))
    reason = f"fallback after {why}: " + decision.reason
    await rt.writer.write(record_reroute(req.id, req.job_id, len(w.past_models), decision.model,
                                         decision.provider, reason, decision.to_dict()))
    w.past_models.append(decision.model or "")
    return registry.model(decision.model) if decision.model else None


async def execute_one(rt: Runtime, w: Work, dispatcher: Dispatcher) -> None:
    """Run one request to a terminal state, or hand it to another provider's queue."""
    registry = get_registry()
    req = w.request
    if w.job.deadline_at is not None and w.job.deadline_at.replace(tzinfo=UTC) < datetime.now(UTC):
        await rt.writer.write(record_failure(req.id, "past the job's deadline", RequestState.EXPIRED))
        return
    if req.model is None:
        await rt.writer.write(record_failure(req.id, "request has no routed model"))
        return
    model = registry.model(req.model)
    # Models an earlier delivery already gave up on (the current one is the last decision).
    tried: set[str] = {m for m in w.past_models[:-1] if m}
    while True:
        outcome = await _try_model(rt, w, model, registry)
        if outcome.response is not None and outcome.attempt_id is not None:
            resp = outcome.response
            await rt.writer.write(record_success({
                "request_id": req.id, "job_id": req.job_id, "custom_id": req.custom_id,
                "attempt_id": outcome.attempt_id, "model": model.name, "provider": model.provider,
                "output": resp.text, "finish_reason": resp.finish_reason,
                "prompt_tokens": resp.prompt_tokens, "completion_tokens": resp.completion_tokens,
                "latency_ms": resp.latency_ms, "created_at": utcnow()}))
            return
        if outcome.fatal:
            await rt.writer.write(record_failure(req.id, outcome.fatal))
            return
        tried.add(model.name)
        if len(tried) >= rt.settings.max_models_per_request:
            await rt.writer.write(record_failure(
                req.id, f"dead letter: {len(tried)} models tried, last: {outcome.exhausted}"))
            return
        nxt = await _reroute(rt, w, registry, tried, outcome.exhausted or "failure")
        if nxt is None:
            await rt.writer.write(record_failure(req.id, f"dead letter: no eligible model after {outcome.exhausted}"))
            return
        if nxt.provider != model.provider:
            # Another provider's workers (and rate limits) own it now.
            await asyncio.to_thread(dispatcher.execute, nxt.provider, [req.id])
            return
        model = nxt
