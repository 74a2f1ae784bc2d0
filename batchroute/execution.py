"""The provider stage: call models for a chunk of routed requests, with limits, retries and fallback.

Every request of a chunk runs as its own coroutine on the process's runtime loop, so one worker
process keeps ``concurrency x chunk size`` calls in flight. Per request:

1. wait for shared rate-limit capacity (pre-charging prompt + expected output tokens);
2. call the model; write an attempt row (tokens, price in force, cost, latency, status) and report
   the outcome to the profiler (live latency and error rates, read by the analyze stage);
3. on a retryable failure, back off (full jitter, honouring ``retry-after``) and try again, up to
   ``max_attempts_per_model``; a 429 also lowers the shared rate (AIMD);
4. when a model is exhausted or its circuit breaker is open, re-route to the next-best eligible
   model (recording why); hand off to another provider's queue when the new model lives there;
5. when nothing is eligible, the request fails with the reasons (dead letter), never silently.

Delivery is at least once (a killed worker, a flushed broker, the reconciler re-sending), so a chunk
first *claims* its requests: only ``dispatched`` ones, or ``running`` ones whose executor stopped
refreshing them for ``reconcile_after_s``. A live executor refreshes its requests' clock
(heartbeat) so neither the reconciler nor a duplicate delivery takes them from it. A successful
attempt and its result are written in one transaction: a request never holds an ok attempt
without its result, so a crash can never make a finished call be paid for twice. The calls of
concurrent requests are written in batches (:class:`CallWriter`): one op per call would cap a
worker process near 200 calls/s on ledger round trips.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
import weakref
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import Connection, and_, bindparam, func, or_, select, update
from sqlmodel import Session

from batchroute.backoff import retry_delay_s
from batchroute.budgets import settle_many
from batchroute.dispatch import Dispatcher, get_dispatcher
from batchroute.errors import (
    BatchrouteError,
    BrokerError,
    ProviderAuthError,
    ProviderError,
    ProviderProtocolError,
    ProviderRateLimited,
    ProviderTimeout,
)
from batchroute.ledger import (
    ATTEMPTS,
    MAX_BIND_PARAMS,
    REQUESTS,
    RESULTS,
    Op,
    record_failure,
    record_reroute,
    write_attempts,
)
from batchroute.pipeline import policy_for
from batchroute.pricing import PriceSnapshot, expected_latency_ms
from batchroute.profiler import get_profiler, outcome_of
from batchroute.providers import ChatRequest, ChatResponse, client_for
from batchroute.ratelimit import LimitKey, RateLimiter, Reservation, limit_keys_for
from batchroute.registry import ModelSpec, Registry, get_registry
from batchroute.rollups import dialect_insert
from batchroute.routing import RouteInput, decide
from batchroute.runtime import Runtime, get_runtime
from batchroute.settings import Settings
from batchroute.tables import Job, Request, RequestState, Result, RoutingDecision, utcnow

log = logging.getLogger(__name__)
ACTIVE = (RequestState.DISPATCHED, RequestState.RUNNING)
ACQUIRE_TRIES = 5
T = TypeVar("T")


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
    attempt_row: dict[str, Any] | None = None  # the ok attempt, written with the result
    fatal: str | None = None       # a bad request: no other model will do better
    exhausted: str | None = None   # this model is out: try the next one


async def write(rt: Runtime, op: Callable[[Connection], T]) -> T:
    """Commit ``op`` through the runtime's writer and return its result.

    Shielded: a cancelled caller must not cancel the writer's future, which the writer thread
    resolves later (a cancelled one would make it fail), and the write itself goes through anyway.
    """
    return await asyncio.shield(rt.writer.write(op))


@dataclass
class _Live:
    """The requests a chunk is still executing (their clock is refreshed while they run)."""

    ids: set[str] = field(default_factory=set)


def claim(request_ids: Sequence[str], stale_after_s: float) -> Op:
    """Mark the requests this delivery may execute as running; the op returns their ids.

    Claimable: ``dispatched`` requests, and ``running`` ones not refreshed for ``stale_after_s``
    (their executor died). A request a live executor holds is left alone, so a chunk delivered
    twice executes each request once.
    """
    ids = list(request_ids)

    def op(conn: Connection) -> list[str]:
        now = utcnow()
        stale = now - timedelta(seconds=stale_after_s)
        res = conn.execute(update(REQUESTS).where(
            REQUESTS.c.id.in_(ids),
            or_(REQUESTS.c.state == RequestState.DISPATCHED,
                and_(REQUESTS.c.state == RequestState.RUNNING, REQUESTS.c.updated_at < stale)))
            .values(state=RequestState.RUNNING, updated_at=now).returning(REQUESTS.c.id))
        return list(res.scalars())

    return op


def touch(request_ids: Sequence[str]) -> Op:
    """Refresh the clock of requests still running (the executor's heartbeat)."""
    ids = list(request_ids)

    def op(conn: Connection) -> int:
        res = conn.execute(update(REQUESTS).where(REQUESTS.c.id.in_(ids), REQUESTS.c.state == RequestState.RUNNING)
                           .values(updated_at=utcnow()))
        return int(res.rowcount or 0)

    return op


def _insert_results(conn: Connection, rows: list[dict[str, Any]]) -> set[str]:
    """Insert results (each priced at the sum of its request's attempts); returns the attempt ids of those inserted.

    Bulk form of :func:`batchroute.ledger.record_success`, with the same effects: the result is
    inserted if absent, the budget reservation settled, the request marked succeeded (never out
    of a terminal state). A request that already had a result keeps it, with its cost brought up
    to all of its attempts (it ran twice), so results and the ledger never disagree.
    """
    if not rows:
        return set()
    rids = list(dict.fromkeys(r["request_id"] for r in rows))
    totals = dict(conn.execute(select(ATTEMPTS.c.request_id, func.coalesce(func.sum(ATTEMPTS.c.cost_usd), 0.0))
                               .where(ATTEMPTS.c.request_id.in_(rids)).group_by(ATTEMPTS.c.request_id)).all())
    full = [{**r, "cost_usd": float(totals.get(r["request_id"], 0.0))} for r in rows]
    won: list[dict[str, Any]] = []
    per_stmt = max(1, MAX_BIND_PARAMS // max(1, len(full[0])))
    by_attempt = {r["attempt_id"]: r for r in full}
    for i in range(0, len(full), per_stmt):
        stmt = dialect_insert(conn, RESULTS).values(full[i:i + per_stmt]).on_conflict_do_nothing()
        won += [by_attempt[a] for a in conn.execute(stmt.returning(RESULTS.c.attempt_id)).scalars()]
    settle_many(conn, rids)
    if won:
        # Spelled out: an expanding NOT IN cannot be used in an executemany.
        not_terminal = and_(*(REQUESTS.c.state != st for st in RequestState.TERMINAL))
        conn.execute(update(REQUESTS).where(REQUESTS.c.id == bindparam("b_id"), not_terminal)
                     .values(state=RequestState.SUCCEEDED, model=bindparam("b_model"),
                             provider=bindparam("b_provider"), error=None, updated_at=utcnow()),
                     [{"b_id": r["request_id"], "b_model": r["model"], "b_provider": r["provider"]} for r in won])
    inserted = {r["request_id"] for r in won}
    again = [rid for rid in rids if rid not in inserted]
    if again:
        total = select(func.coalesce(func.sum(ATTEMPTS.c.cost_usd), 0.0)).where(
            ATTEMPTS.c.request_id == RESULTS.c.request_id).scalar_subquery()
        conn.execute(update(RESULTS).where(RESULTS.c.request_id.in_(again)).values(cost_usd=total))
    return {r["attempt_id"] for r in won}


def record_calls(calls: Sequence[tuple[dict[str, Any], dict[str, Any] | None]]) -> Op:
    """Write provider calls in one transaction: each call's attempt row and, for a success, its result.

    The op returns, per call, True when its result (success) or its attempt row (failure) is new.
    An ok attempt and its result always land together: a request never holds an ok attempt
    without its result, so a crash cannot make a finished call be paid for twice.
    """
    items = list(calls)

    def op(conn: Connection) -> list[bool]:
        new_attempts = set(write_attempts(conn, [a for a, _ in items]))
        new_results = _insert_results(conn, [r for _, r in items if r is not None])
        return [r["attempt_id"] in new_results if r is not None else a["id"] in new_attempts for a, r in items]

    return op


def _close_answered(request_ids: Sequence[str]) -> Op:
    ids = list(request_ids)

    def op(conn: Connection) -> int:
        has_result = select(RESULTS.c.request_id).where(RESULTS.c.request_id == REQUESTS.c.id).exists()
        res = conn.execute(update(REQUESTS).where(REQUESTS.c.id.in_(ids), REQUESTS.c.state == RequestState.RUNNING,
                                                  has_result).values(state=RequestState.SUCCEEDED, updated_at=utcnow()))
        return int(res.rowcount or 0)

    return op


def record_call_success(attempt_row: dict[str, Any], result_row: dict[str, Any]) -> Op:
    """The ok attempt and the request's result in one transaction; the op returns True if the result is new."""
    calls = record_calls([(attempt_row, result_row)])

    def op(conn: Connection) -> bool:
        return bool(calls(conn)[0])

    return op


class CallWriter:
    """Coalesces the call writes of concurrent requests into one :func:`record_calls` op at a time.

    One worker process finishes hundreds of calls a second; written one op per call, the ledger's
    statements (attempt, rollup, counter, result, request) cost round trips that cap the process
    near 200 calls/s. While one batch is being committed the next one gathers, so batches grow
    with the load and an idle process still writes each call at once. Use from the runtime loop.
    """

    def __init__(self, rt: Runtime, max_batch: int = 500) -> None:
        self._rt = rt
        self._max_batch = max_batch
        self._pending: list[tuple[dict[str, Any], dict[str, Any] | None, asyncio.Future[bool]]] = []
        self._flusher: asyncio.Task[None] | None = None

    async def write(self, attempt_row: dict[str, Any], result_row: dict[str, Any] | None = None) -> bool:
        """Write one call (see :func:`record_calls`) and wait for its commit."""
        fut: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._pending.append((attempt_row, result_row, fut))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())
        return await fut

    async def _flush(self) -> None:
        while self._pending:
            batch, self._pending = self._pending[:self._max_batch], self._pending[self._max_batch:]
            if len(batch) == 1:
                await self._one(*batch[0])
                continue
            try:
                results = await write(self._rt, record_calls([(a, r) for a, r, _ in batch]))
            except Exception:
                # One bad row must not fail its neighbours: write them one by one.
                await asyncio.gather(*(self._one(a, r, f) for a, r, f in batch))
                continue
            for (_, _, fut), res in zip(batch, results, strict=True):
                if not fut.done():
                    fut.set_result(res)

    async def _one(self, attempt_row: dict[str, Any], result_row: dict[str, Any] | None,
                   fut: asyncio.Future[bool]) -> None:
        try:
            res = (await write(self._rt, record_calls([(attempt_row, result_row)])))[0]
        except Exception as exc:
            if not fut.done():
                fut.set_exception(exc)
        else:
            if not fut.done():
                fut.set_result(res)


_call_writers: weakref.WeakKeyDictionary[Runtime, CallWriter] = weakref.WeakKeyDictionary()


def call_writer(rt: Runtime) -> CallWriter:
    """The runtime's :class:`CallWriter` (one per process, used from its loop)."""
    w = _call_writers.get(rt)
    if w is None:
        w = _call_writers[rt] = CallWriter(rt)
    return w


def _reroute_op(request_id: str, job_id: str, seq: int, model: str | None, provider: str | None, reason: str,
                detail: dict[str, Any], keep_running: bool) -> Op:
    base = record_reroute(request_id, job_id, seq, model, provider, reason, detail)

    def op(conn: Connection) -> None:
        base(conn)
        if keep_running:
            # The new model is on this provider and this executor carries on with it: the request
            # stays claimed, or a duplicate delivery could take it meanwhile.
            conn.execute(update(REQUESTS).where(REQUESTS.c.id == request_id,
                                                REQUESTS.c.state == RequestState.DISPATCHED)
                         .values(state=RequestState.RUNNING, updated_at=utcnow()))

    return op


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


async def _heartbeat(rt: Runtime, live: _Live, every_s: float, stop: asyncio.Event) -> None:
    # Stopped by ``stop`` rather than cancelled, so a beat in progress completes its write.
    while True:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every_s)
        if stop.is_set():
            return
        if live.ids:
            try:
                await write(rt, touch(sorted(live.ids)))
            except BatchrouteError as exc:  # the next beat tries again; the reconciler is the backstop
                log.warning("heartbeat failed: %s", exc)


async def _execute_tracked(rt: Runtime, w: Work, dispatcher: Dispatcher, live: _Live) -> None:
    try:
        await execute_one(rt, w, dispatcher)
    finally:
        live.ids.discard(w.request.id)


async def run_chunk(request_ids: Sequence[str], dispatcher: Dispatcher | None = None) -> None:
    """Execute the requests among ``request_ids`` that this delivery can claim (idempotent on redelivery)."""
    rt = get_runtime()
    dispatcher = dispatcher or get_dispatcher()
    stale_s = rt.settings.reconcile_after_s
    claimed = await write(rt, claim(request_ids, stale_s))
    if not claimed:
        return
    work = await asyncio.to_thread(_load, claimed)
    answered = set(claimed) - {w.request.id for w in work}
    if answered:
        # Claimed but already answered (a result written by an earlier delivery): close them,
        # or they would sit in ``running`` and be re-sent by every reconciler pass.
        await write(rt, _close_answered(sorted(answered)))
    if not work:
        return
    live = _Live({w.request.id for w in work})
    stop = asyncio.Event()
    beat = asyncio.create_task(_heartbeat(rt, live, max(0.2, stale_s / 3), stop))
    try:
        results = await asyncio.gather(*(_execute_tracked(rt, w, dispatcher, live) for w in work),
                                       return_exceptions=True)
    finally:
        stop.set()
        await beat
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


# A failure of these kinds happened after the provider admitted the call, so it counted against
# its token budget (the simulated provider and OpenAI charge prompt + max_tokens at admission).
_CHARGED_FAILURES = (ProviderTimeout, ProviderProtocolError)


async def _bookkeep(what: str, coro: Coroutine[Any, Any, None]) -> None:
    # Settling, penalizing and reading headers only tune the shared limits: a Redis hiccup there
    # must not throw away a call that was made (and paid for) before its attempt row is written.
    try:
        await coro
    except BrokerError as exc:
        log.warning("rate limiter %s skipped: %s", what, exc)


async def _acquire(limiter: RateLimiter, keys: list[LimitKey], tokens: int, settings: Settings) -> Reservation:
    # Redis down or flushed mid-call: wait and try again rather than fail the request; after a
    # few tries the error propagates and the reconciler re-sends the request later.
    for i in range(ACQUIRE_TRIES):
        try:
            return await limiter.acquire(keys, tokens)
        except BrokerError as exc:
            if i + 1 == ACQUIRE_TRIES:
                raise
            log.warning("rate limiter unavailable (%s); retrying", exc)
            await asyncio.sleep(retry_delay_s(i, settings.backoff_base_s, settings.backoff_cap_s, None))
    raise AssertionError("unreachable")


def _counts_against_health(err: ProviderError) -> bool:
    # A 429 says "healthy, slow down": the shared limiter handles it (retry-after block, AIMD), and
    # tripping the breaker on it would strand a whole batch on a transient storm. A 400 is our fault.
    return isinstance(err, ProviderAuthError) or (err.retryable and not isinstance(err, ProviderRateLimited))


async def _try_model(rt: Runtime, w: Work, model: ModelSpec, registry: Registry) -> ModelOutcome:
    settings = rt.settings
    req = w.request
    limiter = await rt.limiter()
    keys = limit_keys_for(model, registry.provider(model.provider))
    model_key = keys[-1].name  # [provider key, model key]
    room = model.context_window_tokens - req.prompt_tokens_est
    max_tokens = max(1, min(req.max_tokens or settings.default_max_tokens, model.max_output_tokens, room))
    # Providers count prompt + max_tokens against tpm before the call; pre-charge the same.
    est_tokens = req.prompt_tokens_est + max_tokens
    client = client_for(model, await rt.session(), await rt.sim_url())
    profiler = get_profiler()
    # What the router expected for this call: the profiler's latency ratio is relative to it.
    expected_ms = expected_latency_ms(model, req.style, req.max_tokens)
    last = ""
    for i in range(settings.max_attempts_per_model):
        if not (rt.breaker.allow(model.name) and rt.breaker.allow(model.provider)):
            return ModelOutcome(exhausted=f"{model.name}: circuit breaker open" + (f" after {last}" if last else ""))
        reservation = await _acquire(limiter, keys, est_tokens, settings)
        attempt_id = uuid.uuid4().hex
        prices = PriceSnapshot.of(model)  # the price in force at the moment of the call
        started = time.perf_counter()
        req.attempts += 1
        try:
            resp = await client.complete(ChatRequest(model=model, messages=req.messages or [
                {"role": "user", "content": req.prompt}], max_tokens=max_tokens, request_id=req.id,
                timeout_s=settings.request_timeout_s))
        except ProviderError as err:
            await _bookkeep("settle", limiter.settle(reservation, est_tokens if isinstance(err, _CHARGED_FAILURES)
                                                     else 0))
            if _counts_against_health(err):
                rt.breaker.record_failure(model.name)
                rt.breaker.record_failure(model.provider)
            if (kind := outcome_of(err)) is not None:
                profiler.observe(model.name, kind)
            await call_writer(rt).write(_attempt_row(w, model, attempt_id, req.attempts, prices, started, None, err))
            last = f"{err.kind} {err.status or ''}".strip()
            if isinstance(err, ProviderRateLimited):
                # The provider said which model it throttles; the provider-wide key is left to its own limit.
                await _bookkeep("penalize", limiter.penalize(model_key, err.retry_after_s))
            if isinstance(err, ProviderAuthError):
                return ModelOutcome(exhausted=f"{model.name}: {err}")
            if not err.retryable:
                return ModelOutcome(fatal=f"{model.name} rejected the request: {err}")
            if i + 1 < settings.max_attempts_per_model:
                await asyncio.sleep(retry_delay_s(i, settings.backoff_base_s, settings.backoff_cap_s,
                                                  err.retry_after_s))
            continue
        # What the provider counted: the real prompt plus the max_tokens it reserved (no refund).
        await _bookkeep("settle", limiter.settle(reservation, resp.prompt_tokens + max(max_tokens,
                                                                                      resp.completion_tokens)))
        rt.breaker.record_success(model.name)
        rt.breaker.record_success(model.provider)
        profiler.observe(model.name, "ok", resp.latency_ms, expected_ms)
        if resp.rate_limit is not None:
            rl = resp.rate_limit
            # Response headers describe the model's own budget.
            await _bookkeep("headers", limiter.observe_headers(model_key, rl.remaining_requests, rl.remaining_tokens,
                                                               rl.reset_requests_s, rl.reset_tokens_s))
        # Written together with the result (execute_one), so an ok attempt never lacks its result.
        return ModelOutcome(response=resp, attempt_id=attempt_id,
                            attempt_row=_attempt_row(w, model, attempt_id, req.attempts, prices, started, resp, None))
    return ModelOutcome(exhausted=f"{model.name}: {settings.max_attempts_per_model} attempts failed (last: {last})")


async def _reroute(rt: Runtime, w: Work, registry: Registry, tried: set[str], why: str,
                   current: ModelSpec) -> ModelSpec | None:
    req = w.request
    inp = RouteInput(domain=req.domain or "factual_qa", complexity=req.complexity or "complex",
                     style=req.style or "verbose", confidence=req.confidence or 0.0,
                     prompt_tokens=req.prompt_tokens_est, latency_class=req.latency_class,
                     max_tokens=req.max_tokens)
    unhealthy = frozenset(m.name for m in registry.models if rt.breaker.state(m.name) == "open")
    unhealthy |= frozenset(p for p in registry.provider_names() if rt.breaker.state(p) == "open")
    # The snapshot is cached per process; a refresh reads the store off the loop.
    live = await asyncio.to_thread(get_profiler().snapshot, [m.name for m in registry.models])
    decision = decide(inp, registry, policy_for(w.job, req, frozenset(tried), unhealthy, live))
    reason = f"fallback after {why}: " + decision.reason
    await write(rt, _reroute_op(req.id, req.job_id, len(w.past_models), decision.model, decision.provider,
                                      reason, decision.to_dict(), keep_running=decision.provider == current.provider))
    w.past_models.append(decision.model or "")
    return registry.model(decision.model) if decision.model else None


async def execute_one(rt: Runtime, w: Work, dispatcher: Dispatcher) -> None:
    """Run one request to a terminal state, or hand it to another provider's queue."""
    registry = get_registry()
    req = w.request
    if w.job.deadline_at is not None and w.job.deadline_at.replace(tzinfo=UTC) < datetime.now(UTC):
        await write(rt, record_failure(req.id, "past the job's deadline", RequestState.EXPIRED))
        return
    if req.model is None:
        await write(rt, record_failure(req.id, "request has no routed model"))
        return
    model = registry.model(req.model)
    # Models an earlier delivery already gave up on (the current one is the last decision).
    tried: set[str] = {m for m in w.past_models[:-1] if m}
    why: list[str] = []
    while True:
        outcome = await _try_model(rt, w, model, registry)
        if outcome.response is not None and outcome.attempt_row is not None:
            resp = outcome.response
            await call_writer(rt).write(outcome.attempt_row, {
                "request_id": req.id, "job_id": req.job_id, "custom_id": req.custom_id,
                "attempt_id": outcome.attempt_id, "model": model.name, "provider": model.provider,
                "output": resp.text, "finish_reason": resp.finish_reason,
                "prompt_tokens": resp.prompt_tokens, "completion_tokens": resp.completion_tokens,
                "latency_ms": resp.latency_ms, "created_at": utcnow()})
            return
        if outcome.fatal:
            await write(rt, record_failure(req.id, outcome.fatal))
            return
        tried.add(model.name)
        why.append(outcome.exhausted or f"{model.name}: failed")
        if len(tried) >= rt.settings.max_models_per_request:
            await write(rt, record_failure(
                req.id, f"dead letter: {len(tried)} models tried ({req.attempts} attempts): " + "; ".join(why)))
            return
        nxt = await _reroute(rt, w, registry, tried, outcome.exhausted or "failure", model)
        if nxt is None:
            await write(rt, record_failure(
                req.id, f"dead letter: no eligible model ({req.attempts} attempts): " + "; ".join(why)))
            return
        if nxt.provider != model.provider:
            # Another provider's workers (and rate limits) own it now.
            await asyncio.to_thread(dispatcher.execute, nxt.provider, [req.id])
            return
        model = nxt
