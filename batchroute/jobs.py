"""Jobs: submit a file of prompts, follow it, read its results.

``submit_job`` streams the file (it never holds it whole): valid lines become request rows in batches
and are queued for the analyzer in chunks; each bad line is stored as a line error against the job
and the rest run. Re-submitting the same file with the same ``job_id`` resumes it: request ids are
``<job>-<line>``, inserted if absent, so nothing is stored or queued twice.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO, Any

from sqlalchemy import func, select, update
from sqlmodel import Session, col

from batchroute.db import get_engine
from batchroute.dispatch import Dispatcher, get_dispatcher
from batchroute.errors import InputError, NotFoundError
from batchroute.jobfile import OPEN_ERRORS, JobItem, iter_job_lines
from batchroute.ledger import REQUESTS, insert_ignore
from batchroute.planner import Plan, Reservoir, plan_items
from batchroute.registry import get_registry
from batchroute.routing import OBJECTIVES
from batchroute.settings import get_settings
from batchroute.tables import Attempt, Job, JobLineError, JobState, Request, RequestState, Result, utcnow
from batchroute.tags import check_tags
from batchroute.taxonomy import LATENCY_CLASSES

JOBS = Job.__table__  # type: ignore[attr-defined]
LINE_ERRORS = JobLineError.__table__  # type: ignore[attr-defined]
ERROR_SAMPLE = 20


@dataclass
class JobOptions:
    """How a job is run. Every field is checked by :func:`submit_job` before anything is stored."""

    latency_class: str = "standard"
    tenant: str = "default"
    name: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    objective: str = "balanced"
    budget_usd: float | None = None
    min_quality: float | None = None
    allowed_models: list[str] | None = None
    baseline_model: str | None = None
    ignore_model: bool = False
    deadline_at: datetime | None = None

    @property
    def has_goal(self) -> bool:
        """True when the job asks for a budget or a minimum quality (it is planned before dispatch)."""
        return self.budget_usd is not None or self.min_quality is not None

    def validate(self) -> None:
        """Raise InputError naming the first bad option."""
        registry = get_registry()
        if self.latency_class not in LATENCY_CLASSES:
            raise InputError(f"unknown latency class {self.latency_class!r}; allowed: {', '.join(LATENCY_CLASSES)}",
                             field="latency")
        if self.objective not in OBJECTIVES:
            raise InputError(f"unknown objective {self.objective!r}; allowed: {', '.join(OBJECTIVES)}",
                             field="objective")
        check_tags(self.tags)
        if self.budget_usd is not None and self.budget_usd <= 0:
            raise InputError("must be positive", field="budget")
        if self.min_quality is not None and not 0 < self.min_quality <= 1:
            raise InputError("must be in (0, 1]", field="min_quality")
        for name in (self.allowed_models or []) + ([self.baseline_model] if self.baseline_model else []):
            try:
                registry.model(name)
            except NotFoundError as exc:
                raise InputError(str(exc), field="model") from exc


@dataclass
class SubmitReport:
    """What ``submit_job`` stored."""

    job_id: str
    lines: int = 0
    requests: int = 0
    invalid: int = 0
    errors: list[str] = field(default_factory=list)  # the first few line errors, for the CLI


def new_job_id() -> str:
    """A fresh job id (``job_`` + 24 hex chars)."""
    return "job_" + uuid.uuid4().hex[:24]


def _context_check(item: JobItem, max_context: int, pinned_context: dict[str, int]) -> None:
    limit = pinned_context[item.model] if item.model else max_context
    needed = item.prompt_tokens_est + (item.max_tokens or 0)
    if needed > limit:
        raise InputError(f"prompt needs about {needed} tokens but the largest eligible context window "
                         f"is {limit} tokens", line=item.line, field="prompt")


def validated_lines(stream: IO[str], options: JobOptions, source: str | None) -> Iterator[JobItem | InputError]:
    """The job file's lines as ``submit`` judges them: a JobItem, or an InputError for a line that
    does not parse, repeats an id or fits no eligible model's context window."""
    registry = get_registry()
    allowed = [m for m in registry.models if not options.allowed_models or m.name in options.allowed_models]
    max_context = max(m.context_window_tokens for m in allowed)
    pinned_context = {m.name: m.context_window_tokens for m in registry.models}
    for item in iter_job_lines(stream, (m.name for m in registry.models), options.ignore_model, source):
        if isinstance(item, JobItem):
            try:
                _context_check(item, max_context, pinned_context)
            except InputError as err:
                err.source = source
                yield err
                continue
        yield item


def submit_job(source: Path | str | IO[str], options: JobOptions | None = None, *,
               job_id: str | None = None, dispatcher: Dispatcher | None = None,
               on_progress: Callable[[SubmitReport], None] | None = None) -> SubmitReport:
    """Store a job file's lines as requests and queue them; returns counts and sample errors.

    ``source`` is a path or an open text stream of JSONL. Pass ``job_id`` to resume a job.
    """
    options = options or JobOptions()
    options.validate()
    settings = get_settings()
    registry = get_registry()
    dispatcher = dispatcher or get_dispatcher()
    engine = get_engine()
    job_id = job_id or new_job_id()
    name = str(source) if isinstance(source, (str, Path)) else options.name
    with engine.begin() as conn:
        insert_ignore(conn, JOBS, [{
            "id": job_id, "tenant": options.tenant, "name": options.name or name, "source": name,
            "latency_class": options.latency_class, "objective": options.objective,
            "budget_usd": options.budget_usd, "min_quality": options.min_quality,
            "baseline_model": options.baseline_model or registry.strongest().name,
            "allowed_models": options.allowed_models, "tags": options.tags, "state": JobState.QUEUED,
            "deadline_at": options.deadline_at, "created_at": utcnow()}])
    report = SubmitReport(job_id=job_id)
    rows: list[dict[str, Any]] = []
    bad: list[dict[str, Any]] = []
    # A cost or quality goal is planned over the job's own prompts before anything is dispatched.
    sample = Reservoir(settings.plan_sample_size) if options.has_goal else None

    def flush() -> None:
        with engine.begin() as conn:
            insert_ignore(conn, REQUESTS, rows)
            insert_ignore(conn, LINE_ERRORS, bad)
        if sample is None:
            ids = [r["id"] for r in rows]
            for i in range(0, len(ids), settings.analyze_chunk_size):
                dispatcher.analyze(ids[i:i + settings.analyze_chunk_size])
        rows.clear()
        bad.clear()
        if on_progress:
            on_progress(report)

    stream: IO[str] = (open(source, encoding="utf-8", errors=OPEN_ERRORS)  # noqa: SIM115 - closed below
                       if isinstance(source, (str, Path)) else source)
    try:
        for item in validated_lines(stream, options, name):
            report.lines += 1
            if isinstance(item, InputError):
                report.invalid += 1
                if len(report.errors) < ERROR_SAMPLE:
                    report.errors.append(str(item))
                bad.append({"job_id": job_id, "line": item.line, "field": item.field, "reason": item.reason})
            else:
                report.requests += 1
                if sample is not None:
                    sample.add(item)
                now = utcnow()
                rows.append({
                    "id": f"{job_id}-{item.line}", "job_id": job_id, "line": item.line,
                    "custom_id": item.custom_id, "prompt": item.prompt, "messages": item.messages,
                    "max_tokens": item.max_tokens, "latency_class": item.latency_class or options.latency_class,
                    "pinned_model": item.model, "prompt_tokens_est": item.prompt_tokens_est,
                    "state": RequestState.QUEUED, "attempts": 0, "created_at": now, "updated_at": now})
            if len(rows) + len(bad) >= settings.submit_batch_size:
                flush()
        flush()
    finally:
        if stream is not source:
            stream.close()
    with engine.begin() as conn:
        conn.execute(update(JOBS).where(JOBS.c.id == job_id).values(
            total_lines=report.lines, invalid_lines=report.invalid, request_count=report.requests,
            submitted=True))
    if sample is not None:
        plan_job(job_id, sample.items, report.requests, options)
        dispatch_queued(job_id, dispatcher)
    refresh_job_state(job_id)
    return report


def plan_job(job_id: str, items: list[JobItem], requests: int, options: JobOptions) -> Plan:
    """Plan the job's λ from a sample of its lines and store the plan on the job row."""
    plan = _plan(items, requests, options)
    with get_engine().begin() as conn:
        conn.execute(update(JOBS).where(JOBS.c.id == job_id).values(
            cost_weight=plan.chosen.cost_weight, predicted_cost_usd=plan.chosen.cost_usd,
            predicted_quality=plan.chosen.quality, plan=plan.to_dict()))
    return plan


def plan_file(source: Path | str, options: JobOptions) -> Plan:
    """Plan a job file without storing or spending anything (``batchroute plan``)."""
    options.validate()
    sample = Reservoir(get_settings().plan_sample_size)
    invalid = 0
    errors: list[str] = []
    with open(source, encoding="utf-8", errors=OPEN_ERRORS) as stream:
        for item in validated_lines(stream, options, str(source)):
            if isinstance(item, JobItem):
                sample.add(item)
                continue
            invalid += 1
            if len(errors) < ERROR_SAMPLE:
                errors.append(str(item))
    if not sample.seen:
        detail = f": {invalid} invalid, the first: {errors[0]}" if errors else " (the file is empty)"
        raise InputError(f"no valid lines to plan{detail}", field="file", source=str(source))
    plan = _plan(sample.items, sample.seen, options)
    plan.invalid_lines, plan.line_errors = invalid, errors
    return plan


def _plan(items: list[JobItem], requests: int, options: JobOptions) -> Plan:
    return plan_items(items, requests, get_registry(), latency_class=options.latency_class,
                      objective=options.objective, budget_usd=options.budget_usd,
                      min_quality=options.min_quality, allowed_models=options.allowed_models)


def dispatch_queued(job_id: str, dispatcher: Dispatcher) -> int:
    """Send the job's queued requests to the analyzer in line order; returns how many."""
    chunk = get_settings().analyze_chunk_size
    n = 0
    ids: list[str] = []
    with get_engine().connect() as conn:
        result = conn.execute(select(REQUESTS.c.id).where(
            REQUESTS.c.job_id == job_id, REQUESTS.c.state == RequestState.QUEUED)
            .order_by(REQUESTS.c.line).execution_options(yield_per=10_000))
        for rid in result.scalars():
            ids.append(rid)
            if len(ids) == chunk:
                dispatcher.analyze(ids)
                n += len(ids)
                ids = []
    if ids:
        dispatcher.analyze(ids)
        n += len(ids)
    return n


def refresh_job_state(job_id: str) -> str:
    """Close a fully submitted job whose requests are all terminal; returns its state."""
    engine = get_engine()
    with engine.begin() as conn:
        job = conn.execute(select(JOBS.c.state, JOBS.c.submitted).where(JOBS.c.id == job_id)).first()
        if job is None:
            raise NotFoundError(f"no job {job_id!r}")
        if job.state in JobState.TERMINAL or not job.submitted or job.state == JobState.PAUSED:
            return str(job.state)
        active = conn.execute(select(func.count()).select_from(REQUESTS).where(
            REQUESTS.c.job_id == job_id, REQUESTS.c.state.not_in(RequestState.TERMINAL))).scalar_one()
        if active:
            return str(job.state)
        succeeded = conn.execute(select(func.count()).select_from(REQUESTS).where(
            REQUESTS.c.job_id == job_id, REQUESTS.c.state == RequestState.SUCCEEDED)).scalar_one()
        total = conn.execute(select(func.count()).select_from(REQUESTS).where(
            REQUESTS.c.job_id == job_id)).scalar_one()
        state = JobState.COMPLETED if succeeded or not total else JobState.FAILED
        conn.execute(update(JOBS).where(JOBS.c.id == job_id, JOBS.c.state.not_in(JobState.TERMINAL))
                     .values(state=state, finished_at=utcnow()))
        return state


def job_status(job_id: str) -> dict[str, Any]:
    """Counts by state, cost and tokens so far, and the job's settings, as a JSON-ready dict."""
    refresh_job_state(job_id)
    with Session(get_engine()) as s:
        job = s.get(Job, job_id)
        if job is None:
            raise NotFoundError(f"no job {job_id!r}")
        counts: dict[str, int] = {state: n for state, n in s.execute(
            select(col(Request.state), func.count()).where(col(Request.job_id) == job_id)
            .group_by(col(Request.state))).all()}
        cost, ptok, ctok, attempts = s.execute(select(
            func.coalesce(func.sum(col(Attempt.cost_usd)), 0.0), func.coalesce(func.sum(col(Attempt.prompt_tokens)), 0),
            func.coalesce(func.sum(col(Attempt.completion_tokens)), 0), func.count()).where(
            col(Attempt.job_id) == job_id)).one()
        by_model = {m: {"requests": n, "cost_usd": float(c)} for m, n, c in s.execute(select(
            col(Result.model), func.count(), func.coalesce(func.sum(col(Result.cost_usd)), 0.0)).where(
            col(Result.job_id) == job_id).group_by(col(Result.model))).all()}
    by_state = {st: int(counts.get(st, 0)) for st in RequestState.ALL}
    done = sum(by_state[st] for st in RequestState.TERMINAL)
    return {
        "job_id": job.id, "state": job.state, "tenant": job.tenant, "latency_class": job.latency_class,
        "objective": job.objective, "tags": job.tags, "lines": job.total_lines,
        "invalid_lines": job.invalid_lines, "requests": sum(by_state.values()), "done": done,
        "by_state": by_state, "attempts": int(attempts), "cost_usd": float(cost),
        "prompt_tokens": int(ptok), "completion_tokens": int(ctok), "by_model": by_model,
        "budget_usd": job.budget_usd, "predicted_cost_usd": job.predicted_cost_usd,
        "predicted_quality": job.predicted_quality, "pause_reason": job.pause_reason,
        "plan": _plan_summary(job.plan, by_model, sum(by_state.values())),
        "created_at": job.created_at.isoformat() if job.created_at else None,
        "finished_at": job.finished_at.isoformat() if job.finished_at else None,
    }


def _plan_summary(plan: dict[str, Any] | None, by_model: dict[str, dict[str, Any]],
                  requests: int) -> dict[str, Any] | None:
    """The chosen point of a job's plan next to what actually happened so far."""
    if not plan:
        return None
    chosen = plan["chosen"]
    done = sum(row["requests"] for row in by_model.values())
    return {"cost_weight": chosen["cost_weight"], "predicted_cost_usd": chosen["cost_usd"],
            "predicted_quality": chosen["quality"], "predicted_relative_quality": chosen["relative_quality"],
            "goal_met": plan["met"], "note": plan["note"], "predicted_share": chosen["share"],
            "actual_share": {m: round(row["requests"] / done, 4) for m, row in by_model.items()} if done else {},
            "sampled": plan["sampled"], "requests": requests}


def iter_results(job_id: str, include_errors: bool = True) -> Iterator[dict[str, Any]]:
    """Every request's outcome in line order (OpenAI Batch output shape plus routing and cost)."""
    engine = get_engine()
    with Session(engine) as s:
        if s.get(Job, job_id) is None:
            raise NotFoundError(f"no job {job_id!r}")
        q = (select(Request, Result).join(Result, col(Result.request_id) == col(Request.id), isouter=True)
             .where(col(Request.job_id) == job_id).order_by(col(Request.line))
             .execution_options(yield_per=1000))
        for req, res in s.execute(q):
            yield _result_line(req, res)
        if include_errors:
            for err in s.execute(select(JobLineError).where(col(JobLineError.job_id) == job_id)
                                 .order_by(col(JobLineError.line))).scalars():
                yield {"id": None, "custom_id": err.custom_id, "state": "invalid", "line": err.line,
                       "response": None, "error": {"code": "invalid_line", "field": err.field,
                                                   "message": f"line {err.line}: {err.reason}"}}


def _result_line(req: Request, res: Result | None) -> dict[str, Any]:
    base: dict[str, Any] = {"id": req.custom_id, "custom_id": req.custom_id, "request_id": req.id,
                            "state": req.state, "line": req.line, "domain": req.domain,
                            "complexity": req.complexity, "style": req.style, "attempts": req.attempts}
    if res is None:
        return {**base, "model": req.model, "provider": req.provider, "output": None,
                "prompt_tokens": 0, "completion_tokens": 0, "cost_usd": None, "latency_ms": None,
                "response": None,
                "error": {"code": req.state, "message": req.error} if req.state in RequestState.TERMINAL else None}
    body = {"id": f"chatcmpl-{res.attempt_id}", "object": "chat.completion", "model": res.model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": res.output},
                         "finish_reason": res.finish_reason}],
            "usage": {"prompt_tokens": res.prompt_tokens, "completion_tokens": res.completion_tokens,
                      "total_tokens": res.prompt_tokens + res.completion_tokens}}
    return {**base, "model": res.model, "provider": res.provider, "output": res.output,
            "prompt_tokens": res.prompt_tokens, "completion_tokens": res.completion_tokens,
            "cost_usd": res.cost_usd, "latency_ms": round(res.latency_ms, 3),
            "response": {"status_code": 200, "request_id": res.attempt_id, "body": body}, "error": None}


def write_results(job_id: str, out: IO[str]) -> int:
    """Write the job's results as JSONL to ``out``; returns the number of lines."""
    n = 0
    for line in iter_results(job_id):
        out.write(json.dumps(line, ensure_ascii=False) + "\n")
        n += 1
    return n
