"""Budgets: a limit per job (``jobs.budget_usd``) and per tag value (``budgets`` rows), kept at dispatch time.

Dispatching a request *reserves* its estimated cost: one ``budget_reservations`` row per request
(an insert, never a shared counter). When the request reaches a terminal state the ledger *settles*
it (deletes the row, in the same transaction); its real cost is already in the ledger. A request
fits when, for its job budget and every tag budget its job's tags match::

    spent (daily rollups) + reserved (reservations of non-terminal requests) + estimate <= limit

A request that does not fit stays ``queued`` and its job is paused with the reason;
``resume_job`` (optionally with a new job budget) sets it running and re-queues what is waiting.
Tag budgets count every job carrying that tag value, lifetime to date; raise the limit with
``set_tag_budget`` to give more room. Reservations are only made while a budget applies. Analyzer
processes running at the same moment may overshoot a limit by the estimates they admit together.

The pipeline calls (see each function)::

    held = admit_chunk(conn, jobs, [(request, model, style), ...])  # analyze stage, per chunk
    ok = reserve(conn, job_id, tags, request_id, amount_usd)        # one request
    settle(conn, request_id)                                        # done by the ledger ops

From Python::

    set_tag_budget("team", "legal", 10.0)
    resume_job("job_...", new_budget_usd=25.0)
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Table, and_, false, func, or_, select, update

from batchroute.errors import InputError, NotFoundError
from batchroute.rollups import ROLLUP, TAG_ITEMS, dialect_insert, ensure_tag_sets, tag_set_id
from batchroute.tables import Budget, BudgetReservation, Job, JobState, Request, RequestState, utcnow
from batchroute.tags import check_tags

if TYPE_CHECKING:
    from batchroute.dispatch import Dispatcher

BUDGETS: Table = Budget.__table__  # type: ignore[attr-defined]
RESERVATIONS: Table = BudgetReservation.__table__  # type: ignore[attr-defined]
JOBS: Table = Job.__table__  # type: ignore[attr-defined]
REQUESTS: Table = Request.__table__  # type: ignore[attr-defined]
TAG_SCOPE = "tag"
# Floating-point slack so a budget spent exactly to its limit still admits the last cent.
EPS_USD = 1e-9
_IN_CHUNK = 1_000


# ---- pure decisions -------------------------------------------------------------------------------

@dataclass(frozen=True)
class BudgetState:
    """One budget at a moment: its limit, what the ledger has spent and what is reserved."""

    name: str  # "job:<id>" or "tag:<key>=<value>"
    limit_usd: float
    spent_usd: float = 0.0
    reserved_usd: float = 0.0

    @property
    def remaining_usd(self) -> float:
        """What is left to reserve (negative when already over)."""
        return self.limit_usd - self.spent_usd - self.reserved_usd


@dataclass(frozen=True)
class Ask:
    """A request asking to reserve ``amount_usd`` against each budget named in ``budgets``."""

    request_id: str
    amount_usd: float
    budgets: tuple[str, ...]


def fits(limit_usd: float, spent_usd: float, reserved_usd: float, amount_usd: float) -> bool:
    """True when reserving ``amount_usd`` keeps spent + reserved within the limit."""
    return spent_usd + reserved_usd + amount_usd <= limit_usd + EPS_USD


def admit(states: Mapping[str, BudgetState], asks: Sequence[Ask]) -> tuple[list[str], dict[str, str]]:
    """Decide asks in order: (admitted request ids, {rejected request id: reason}).

    Each admitted ask adds to the reserved total of its budgets. Once an ask does not fit a budget,
    later asks on that budget are rejected too, so a job pauses at one point of its queue instead of
    letting smaller later prompts jump ahead.
    """
    reserved = {name: st.reserved_usd for name, st in states.items()}
    blocked: dict[str, str] = {}
    admitted: list[str] = []
    rejected: dict[str, str] = {}
    for ask in asks:
        reason = None
        for name in ask.budgets:
            st = states[name]
            if name in blocked:
                reason = blocked[name]
                break
            if not fits(st.limit_usd, st.spent_usd, reserved[name], ask.amount_usd):
                reason = (f"{name} budget ${st.limit_usd:.6f} reached: spent ${st.spent_usd:.6f} + reserved "
                          f"${reserved[name]:.6f} + next request ${ask.amount_usd:.6f}")
                blocked[name] = reason
                break
        if reason is not None:
            rejected[ask.request_id] = reason
            continue
        for name in ask.budgets:
            reserved[name] += ask.amount_usd
        admitted.append(ask.request_id)
    return admitted, rejected


def job_budget_name(job_id: str) -> str:
    """The budget name of a job's own limit."""
    return f"job:{job_id}"


def tag_budget_name(key: str, value: str) -> str:
    """The budget name of a tag value's limit."""
    return f"tag:{key}={value}"


# ---- reading budget states ------------------------------------------------------------------------

def _active() -> Any:
    return REQUESTS.c.state.not_in(RequestState.TERMINAL)


def _tag_match(pairs: Sequence[tuple[str, str]]) -> Any:
    return or_(*(and_(TAG_ITEMS.c.key == k, TAG_ITEMS.c.value == v) for k, v in pairs)) if pairs else false()


def load_states(conn: Connection, jobs: Mapping[str, tuple[float | None, Mapping[str, str] | None]]
                ) -> tuple[dict[str, BudgetState], dict[str, tuple[str, ...]]]:
    """Budget states and, per job, the budgets that apply to it.

    ``jobs`` maps job id -> (budget_usd, tags). Spent comes from the daily rollups, reserved from
    reservations of requests not yet terminal.
    """
    tag_limits = {(k, v): float(lim) for k, v, lim in conn.execute(
        select(BUDGETS.c.key, BUDGETS.c.value, BUDGETS.c.limit_usd).where(BUDGETS.c.scope == TAG_SCOPE))}
    names: dict[str, tuple[str, ...]] = {}
    job_limits: dict[str, float] = {}
    pairs: set[tuple[str, str]] = set()
    for job_id, (budget, tags) in jobs.items():
        mine = []
        if budget is not None:
            job_limits[job_id] = float(budget)
            mine.append(job_budget_name(job_id))
        for (k, v) in sorted(tag_limits):
            if tags and k in tags and str(tags[k]) == v:
                pairs.add((k, v))
                mine.append(tag_budget_name(k, v))
        names[job_id] = tuple(mine)
    spent: dict[str, float] = defaultdict(float)
    reserved: dict[str, float] = defaultdict(float)
    ids = sorted(job_limits)
    for i in range(0, len(ids), _IN_CHUNK):
        chunk = ids[i:i + _IN_CHUNK]
        for jid, total in conn.execute(select(ROLLUP.c.job_id, func.sum(ROLLUP.c.cost_usd))
                                       .where(ROLLUP.c.job_id.in_(chunk)).group_by(ROLLUP.c.job_id)):
            spent[job_budget_name(jid)] += float(total or 0)
        for jid, total in conn.execute(
                select(RESERVATIONS.c.job_id, func.sum(RESERVATIONS.c.amount_usd))
                .join(REQUESTS, REQUESTS.c.id == RESERVATIONS.c.request_id)
                .where(RESERVATIONS.c.job_id.in_(chunk), _active()).group_by(RESERVATIONS.c.job_id)):
            reserved[job_budget_name(jid)] += float(total or 0)
    if pairs:
        match = _tag_match(sorted(pairs))
        for k, v, total in conn.execute(
                select(TAG_ITEMS.c.key, TAG_ITEMS.c.value, func.sum(ROLLUP.c.cost_usd))
                .join(TAG_ITEMS, TAG_ITEMS.c.tag_set == ROLLUP.c.tag_set).where(match)
                .group_by(TAG_ITEMS.c.key, TAG_ITEMS.c.value)):
            spent[tag_budget_name(k, v)] += float(total or 0)
        for k, v, total in conn.execute(
                select(TAG_ITEMS.c.key, TAG_ITEMS.c.value, func.sum(RESERVATIONS.c.amount_usd))
                .join(TAG_ITEMS, TAG_ITEMS.c.tag_set == RESERVATIONS.c.tag_set)
                .join(REQUESTS, REQUESTS.c.id == RESERVATIONS.c.request_id)
                .where(match, _active()).group_by(TAG_ITEMS.c.key, TAG_ITEMS.c.value)):
            reserved[tag_budget_name(k, v)] += float(total or 0)
    states = {job_budget_name(j): BudgetState(job_budget_name(j), lim, spent[job_budget_name(j)],
                                              reserved[job_budget_name(j)]) for j, lim in job_limits.items()}
    for k, v in pairs:
        n = tag_budget_name(k, v)
        states[n] = BudgetState(n, tag_limits[(k, v)], spent[n], reserved[n])
    return states, names


# ---- reserving and settling -----------------------------------------------------------------------

def _reserved_ids(conn: Connection, request_ids: Sequence[str]) -> set[str]:
    found: set[str] = set()
    ids = list(request_ids)
    for i in range(0, len(ids), _IN_CHUNK):
        found.update(conn.execute(select(RESERVATIONS.c.request_id)
                                  .where(RESERVATIONS.c.request_id.in_(ids[i:i + _IN_CHUNK]))).scalars())
    return found


def _insert_reservations(conn: Connection, rows: Sequence[tuple[str, str, Mapping[str, str] | None, float]]) -> None:
    if not rows:
        return
    ensure_tag_sets(conn, (tags for _, _, tags, _ in rows))
    now = utcnow()
    values = [{"request_id": rid, "job_id": jid, "tag_set": tag_set_id(tags), "amount_usd": float(amount),
               "created_at": now} for rid, jid, tags, amount in rows]
    for i in range(0, len(values), _IN_CHUNK):
        conn.execute(dialect_insert(conn, RESERVATIONS).values(values[i:i + _IN_CHUNK]).on_conflict_do_nothing())


def reserve(conn: Connection, job_id: str, tags: Mapping[str, str] | None, request_id: str,
            amount_usd: float) -> bool:
    """Reserve ``amount_usd`` for one request of ``job_id``; False when a budget would be exceeded.

    On False the caller pauses the job (``pause_job``) and leaves the request queued. A paused job
    admits nothing. Reserving a request twice is a no-op that returns True. No row is written when
    no budget applies to the job.
    """
    if _reserved_ids(conn, [request_id]):
        return True
    job = conn.execute(select(JOBS.c.budget_usd, JOBS.c.state).where(JOBS.c.id == job_id)).first()
    if job is None:
        raise NotFoundError(f"no job {job_id!r}")
    if job.state == JobState.PAUSED:
        return False
    states, names = load_states(conn, {job_id: (job.budget_usd, tags)})
    if not names[job_id]:
        return True
    admitted, _ = admit(states, [Ask(request_id, amount_usd, names[job_id])])
    if not admitted:
        return False
    _insert_reservations(conn, [(request_id, job_id, tags, amount_usd)])
    return True


def admit_chunk(conn: Connection, jobs: Mapping[str, Job],
                routed: Sequence[tuple[Request, str | None, str | None]]) -> set[str]:
    """Reserve budget for a chunk of routed requests; returns the ids to hold back (leave queued).

    ``routed`` holds (request, routed model or None, style) in queue order; ``jobs`` maps job id to
    its row. Requests of paused jobs are held; a request that does not fit its budgets is held and
    its job paused with the reason, in this transaction. Each request's estimate is
    :func:`batchroute.pricing.estimate_cost_usd` of its routed model.
    """
    from batchroute.pricing import estimate_cost_usd
    from batchroute.registry import get_registry

    registry = get_registry()
    held: set[str] = set()
    pending: list[tuple[Request, float]] = []
    for req, model, style in routed:
        if model is None:
            continue
        if jobs[req.job_id].state == JobState.PAUSED:
            held.add(req.id)
            continue
        pending.append((req, estimate_cost_usd(registry.model(model), req.prompt_tokens_est, style, req.max_tokens)))
    job_ids = {req.job_id for req, _ in pending}
    states, names = load_states(conn, {j: (jobs[j].budget_usd, jobs[j].tags) for j in job_ids})
    pending = [(req, amount) for req, amount in pending if names[req.job_id]]
    if not pending:
        return held
    already = _reserved_ids(conn, [req.id for req, _ in pending])
    asks = [Ask(req.id, amount, names[req.job_id]) for req, amount in pending if req.id not in already]
    admitted, rejected = admit(states, asks)
    ok = set(admitted)
    _insert_reservations(conn, [(req.id, req.job_id, jobs[req.job_id].tags, amount)
                                for req, amount in pending if req.id in ok])
    paused: set[str] = set()
    for req, _ in pending:
        if req.id in rejected:
            held.add(req.id)
            if req.job_id not in paused:
                pause_job(req.job_id, rejected[req.id], conn=conn)
                paused.add(req.job_id)
    return held


def settle(conn: Connection, request_id: str) -> None:
    """Release a request's reservation (its real cost is in the ledger). Safe to call more than once."""
    conn.execute(RESERVATIONS.delete().where(RESERVATIONS.c.request_id == request_id))


def settle_many(conn: Connection, request_ids: Sequence[str]) -> None:
    """Release the reservations of many requests."""
    ids = list(request_ids)
    for i in range(0, len(ids), _IN_CHUNK):
        conn.execute(RESERVATIONS.delete().where(RESERVATIONS.c.request_id.in_(ids[i:i + _IN_CHUNK])))


# ---- pausing and resuming jobs --------------------------------------------------------------------

def pause_job(job_id: str, reason: str, conn: Connection | None = None) -> bool:
    """Pause a running or queued job with ``reason``; True if it was paused now (False: terminal or already)."""
    stmt = (update(JOBS).where(JOBS.c.id == job_id, JOBS.c.state.not_in((*JobState.TERMINAL, JobState.PAUSED)))
            .values(state=JobState.PAUSED, pause_reason=reason[:4000]))
    if conn is not None:
        return bool(conn.execute(stmt).rowcount)
    from batchroute.db import get_engine

    with get_engine().begin() as own:
        return bool(own.execute(stmt).rowcount)


@dataclass
class ResumeReport:
    """What ``resume_job`` did."""

    job_id: str
    state: str
    requeued: int
    budget_usd: float | None
    spent_usd: float
    budgets: list[dict[str, Any]] = field(default_factory=list)  # the job's budgets after resuming


def resume_job(job_id: str, new_budget_usd: float | None = None, *,
               dispatcher: Dispatcher | None = None) -> ResumeReport:
    """Set a paused job running (optionally with a new budget) and re-queue its waiting requests.

    Waiting requests (state ``queued``) go to the analyzer again via ``dispatcher.analyze`` in chunks
    of ``BATCHROUTE_ANALYZE_CHUNK_SIZE``; if the budget still does not fit, the job pauses again.
    """
    from batchroute.db import get_engine
    from batchroute.dispatch import get_dispatcher
    from batchroute.settings import get_settings

    if new_budget_usd is not None and not new_budget_usd > 0:
        raise InputError("must be positive", field="budget")
    engine = get_engine()
    with engine.begin() as conn:
        job = conn.execute(select(JOBS.c.state, JOBS.c.budget_usd, JOBS.c.tags).where(JOBS.c.id == job_id)).first()
        if job is None:
            raise NotFoundError(f"no job {job_id!r}")
        if job.state in JobState.TERMINAL:
            raise InputError(f"job {job_id} is {job.state}; only a paused or running job can be resumed", field="job")
        values: dict[str, Any] = {"pause_reason": None}
        if job.state == JobState.PAUSED:
            values["state"] = JobState.RUNNING
        if new_budget_usd is not None:
            values["budget_usd"] = new_budget_usd
        conn.execute(update(JOBS).where(JOBS.c.id == job_id).values(**values))
        ids = list(conn.execute(select(REQUESTS.c.id).where(REQUESTS.c.job_id == job_id,
                                                            REQUESTS.c.state == RequestState.QUEUED)
                                .order_by(REQUESTS.c.line)).scalars())
        # Refresh their clock so the reconciler does not send them a second time right away.
        for i in range(0, len(ids), _IN_CHUNK):
            conn.execute(update(REQUESTS).where(REQUESTS.c.id.in_(ids[i:i + _IN_CHUNK]),
                                                REQUESTS.c.state == RequestState.QUEUED)
                         .values(updated_at=utcnow()))
        budget = new_budget_usd if new_budget_usd is not None else job.budget_usd
        states, names = load_states(conn, {job_id: (budget, job.tags)})
        state = values.get("state", job.state)
    spent = float(states[job_budget_name(job_id)].spent_usd) if job_budget_name(job_id) in states else 0.0
    chunk = get_settings().analyze_chunk_size
    dispatcher = dispatcher or get_dispatcher()
    for i in range(0, len(ids), chunk):
        dispatcher.analyze(ids[i:i + chunk])
    return ResumeReport(job_id=job_id, state=str(state), requeued=len(ids), budget_usd=budget, spent_usd=spent,
                        budgets=[_state_dict(states[n]) for n in names[job_id]])


# ---- managing budgets -----------------------------------------------------------------------------

def _state_dict(st: BudgetState) -> dict[str, Any]:
    return {"budget": st.name, "limit_usd": st.limit_usd, "spent_usd": st.spent_usd,
            "reserved_usd": st.reserved_usd, "remaining_usd": st.remaining_usd}


def set_tag_budget(key: str, value: str, limit_usd: float, url: str | None = None) -> None:
    """Set (or replace) the limit for everything tagged ``key=value``."""
    from batchroute.db import get_engine

    check_tags({key: value})
    if not limit_usd > 0:
        raise InputError("must be positive", field="usd")
    with get_engine(url).begin() as conn:
        stmt = dialect_insert(conn, BUDGETS).values(scope=TAG_SCOPE, key=key, value=value, limit_usd=float(limit_usd),
                                                    updated_at=utcnow())
        conn.execute(stmt.on_conflict_do_update(index_elements=["scope", "key", "value"],
                                                set_={"limit_usd": stmt.excluded.limit_usd,
                                                      "updated_at": stmt.excluded.updated_at}))


def remove_tag_budget(key: str, value: str, url: str | None = None) -> bool:
    """Drop the limit of ``key=value``; True if there was one."""
    from batchroute.db import get_engine

    with get_engine(url).begin() as conn:
        res = conn.execute(BUDGETS.delete().where(BUDGETS.c.scope == TAG_SCOPE, BUDGETS.c.key == key,
                                                  BUDGETS.c.value == value))
        return bool(res.rowcount)


def set_job_budget(job_id: str, limit_usd: float, url: str | None = None) -> None:
    """Set a job's budget (it applies to requests dispatched from now on)."""
    from batchroute.db import get_engine

    if not limit_usd > 0:
        raise InputError("must be positive", field="usd")
    with get_engine(url).begin() as conn:
        if not conn.execute(update(JOBS).where(JOBS.c.id == job_id).values(budget_usd=float(limit_usd))).rowcount:
            raise NotFoundError(f"no job {job_id!r}")


def list_budgets(url: str | None = None) -> list[dict[str, Any]]:
    """Every tag budget and the budget of every open job, with spent, reserved and remaining USD."""
    from batchroute.db import get_engine

    with get_engine(url).connect() as conn:
        open_jobs = {r.id: (r.budget_usd, r.tags) for r in conn.execute(
            select(JOBS.c.id, JOBS.c.budget_usd, JOBS.c.tags).where(
                JOBS.c.budget_usd.is_not(None), JOBS.c.state.not_in(JobState.TERMINAL)))}
        states, _ = load_states(conn, open_jobs)
        tags = [(k, v) for k, v in conn.execute(select(BUDGETS.c.key, BUDGETS.c.value)
                                                .where(BUDGETS.c.scope == TAG_SCOPE))]
        # Tag budgets no open job carries: state them too (spent over every job with the tag).
        extra, _ = load_states(conn, {f"\0{k}={v}": (None, {k: v}) for k, v in tags})
    states.update(extra)
    return [_state_dict(states[n]) for n in sorted(states)]
