"""SQLModel tables: the system of record for jobs, requests, decisions, attempts and results.

Postgres is the target; SQLite serves the embedded default. The schema is created by the Alembic
migration in ``migrations/`` (``batchroute migrate``), never by ``create_all`` in production.
Attempts are insert-only and carry the price in force at the time of the call.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Column, Index, SmallInteger, Text, UniqueConstraint
from sqlmodel import Field, SQLModel


def utcnow() -> datetime:
    """Timezone-aware now, for every timestamp column."""
    return datetime.now(UTC)


class JobState:
    """States of a job."""

    QUEUED = "queued"
    RUNNING = "running"
    PAUSED = "paused"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    TERMINAL = (COMPLETED, FAILED, CANCELLED)


class RequestState:
    """States of a request; the terminal ones never change again."""

    QUEUED = "queued"          # stored, waiting for the analyzer
    DISPATCHED = "dispatched"  # routed, message sent to provider.<name>
    RUNNING = "running"        # a provider worker is calling the model
    SUCCEEDED = "succeeded"
    FAILED = "failed"          # dead letter: every eligible model exhausted, or a bad request
    EXPIRED = "expired"        # past the job's deadline
    TERMINAL = (SUCCEEDED, FAILED, EXPIRED)
    ALL = (QUEUED, DISPATCHED, RUNNING, SUCCEEDED, FAILED, EXPIRED)


class Job(SQLModel, table=True):
    """One submitted job file."""

    __tablename__ = "jobs"

    id: str = Field(primary_key=True, max_length=40)
    tenant: str = Field(default="default", index=True, max_length=100)
    name: str | None = Field(default=None, max_length=200)
    source: str | None = Field(default=None, sa_column=Column(Text))
    latency_class: str = Field(default="standard", max_length=16)
    objective: str = Field(default="balanced", max_length=16)
    budget_usd: float | None = None
    min_quality: float | None = None
    baseline_model: str | None = Field(default=None, max_length=200)
    allowed_models: list[str] | None = Field(default=None, sa_column=Column(JSON))
    tags: dict[str, str] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    state: str = Field(default=JobState.QUEUED, index=True, max_length=16)
    total_lines: int = 0
    invalid_lines: int = 0
    request_count: int = 0
    submitted: bool = False  # all lines stored and enqueued
    cost_weight: float | None = None  # the lambda the planner chose for this job
    predicted_cost_usd: float | None = None
    predicted_quality: float | None = None
    plan: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))  # the planner's curve and choice
    deadline_at: datetime | None = None
    created_at: datetime = Field(default_factory=utcnow)
    finished_at: datetime | None = None
    pause_reason: str | None = Field(default=None, sa_column=Column(Text))  # why the job is paused (budget)


class JobLineError(SQLModel, table=True):
    """A job-file line that could not become a request: where it is and what is wrong."""

    __tablename__ = "job_line_errors"
    __table_args__ = (UniqueConstraint("job_id", "line", name="uq_line_error"),)

    id: int | None = Field(default=None, primary_key=True)
    job_id: str = Field(index=True, foreign_key="jobs.id", max_length=40)
    line: int
    custom_id: str | None = Field(default=None, max_length=200)
    field: str | None = Field(default=None, max_length=100)
    reason: str = Field(sa_column=Column(Text, nullable=False))


class Request(SQLModel, table=True):
    """One prompt of a job. ``id`` is ``<job_id>-<line>`` so a resubmitted line is the same row."""

    __tablename__ = "requests"
    __table_args__ = (
        Index("ix_requests_job_state", "job_id", "state"),
        Index("ix_requests_state_updated", "state", "updated_at"),
    )

    id: str = Field(primary_key=True, max_length=60)
    job_id: str = Field(foreign_key="jobs.id", max_length=40)
    line: int
    custom_id: str = Field(max_length=200)
    prompt: str = Field(sa_column=Column(Text, nullable=False))
    messages: list[dict[str, Any]] | None = Field(default=None, sa_column=Column(JSON))
    max_tokens: int | None = None
    latency_class: str = Field(default="standard", max_length=16)
    pinned_model: str | None = Field(default=None, max_length=200)
    prompt_tokens_est: int = 0
    state: str = Field(default=RequestState.QUEUED, max_length=16)
    domain: str | None = Field(default=None, max_length=32)
    complexity: str | None = Field(default=None, max_length=16)
    style: str | None = Field(default=None, max_length=16)
    confidence: float | None = None
    model: str | None = Field(default=None, max_length=200)
    provider: str | None = Field(default=None, max_length=100)
    attempts: int = 0
    error: str | None = Field(default=None, sa_column=Column(Text))
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)


class RoutingDecision(SQLModel, table=True):
    """Why a request went to a model: labels, neighbours and every candidate's terms."""

    __tablename__ = "routing_decisions"
    __table_args__ = (UniqueConstraint("request_id", "seq", name="uq_decision_seq"),)

    id: int | None = Field(default=None, primary_key=True)
    request_id: str = Field(index=True, max_length=60)
    job_id: str = Field(index=True, max_length=40)
    seq: int = 0  # 0 = first decision, 1.. = fallbacks
    model: str | None = Field(default=None, max_length=200)
    provider: str | None = Field(default=None, max_length=100)
    reason: str = Field(sa_column=Column(Text, nullable=False))
    detail: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    created_at: datetime = Field(default_factory=utcnow)


# What a per-job cost drill-down reads besides job_id and model (the INCLUDE list of ix_attempts_job_model).
ATTEMPT_DRILLDOWN_COLUMNS = ["status", "usage_estimated", "prompt_tokens", "completion_tokens", "cached_tokens",
                             "cost_usd", "baseline_cost_usd", "created_at", "provider", "domain", "latency_class"]


class Attempt(SQLModel, table=True):
    """One provider call: insert-only, priced at the moment of the call (the ledger)."""

    __tablename__ = "attempts"
    __table_args__ = (
        # Covering on Postgres (migration 0002): one job's drill-down is an index-only scan.
        Index("ix_attempts_job_model", "job_id", "model", postgresql_include=ATTEMPT_DRILLDOWN_COLUMNS),
        Index("ix_attempts_created", "created_at"),
    )

    # Generated before the call, so replaying the write of the same call never bills twice.
    id: str = Field(primary_key=True, max_length=40)
    request_id: str = Field(index=True, max_length=60)
    job_id: str = Field(max_length=40)
    tenant: str = Field(default="default", max_length=100)
    model: str = Field(max_length=200)
    provider: str = Field(max_length=100)
    attempt_no: int
    status: str = Field(max_length=16)  # ok | error
    error_kind: str | None = Field(default=None, max_length=64)
    error: str | None = Field(default=None, sa_column=Column(Text))
    http_status: int | None = None
    latency_ms: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    usage_estimated: bool = False
    input_price_per_mtok_usd: float = 0.0
    output_price_per_mtok_usd: float = 0.0
    cached_price_per_mtok_usd: float | None = None
    cost_usd: float = 0.0
    domain: str | None = Field(default=None, max_length=32)
    latency_class: str | None = Field(default=None, max_length=16)
    tags: dict[str, str] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    created_at: datetime = Field(default_factory=utcnow)
    # What the job's baseline model would have cost for this prompt; set on successful attempts only.
    baseline_cost_usd: float = 0.0
    # Hash of the canonical tag set ('' = no tags); tag_set_items maps it to its key/value pairs.
    tag_set: str = Field(default="", max_length=32)


class Result(SQLModel, table=True):
    """The one successful answer of a request (primary key = request id: at most one)."""

    __tablename__ = "results"

    request_id: str = Field(primary_key=True, max_length=60)
    job_id: str = Field(index=True, max_length=40)
    custom_id: str = Field(max_length=200)
    attempt_id: str = Field(max_length=40)
    model: str = Field(max_length=200)
    provider: str = Field(max_length=100)
    output: str = Field(sa_column=Column(Text, nullable=False))
    finish_reason: str | None = Field(default=None, max_length=32)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0  # all attempts of the request, failed ones included
    latency_ms: float = 0.0
    created_at: datetime = Field(default_factory=utcnow)


class TagSetItem(SQLModel, table=True):
    """One key/value pair of a tag set, so tag queries join on plain columns instead of JSON."""

    __tablename__ = "tag_set_items"
    __table_args__ = (Index("ix_tag_set_items_key_value", "key", "value"),)

    tag_set: str = Field(primary_key=True, max_length=32)
    key: str = Field(primary_key=True)
    value: str


class CostRollupDaily(SQLModel, table=True):
    """Ledger totals per day x tenant x job x model x provider x latency x domain x tag set x shard.

    Updated in the transaction that inserts the attempt, only when the attempt row is new. ``shard``
    is the writer process's slot, so concurrent writers never contend on one row; queries sum shards.
    Empty strings stand for a missing latency class or domain (NULLs would defeat the upsert key).
    """

    __tablename__ = "cost_rollup_daily"
    __table_args__ = (
        Index("ix_cost_rollup_job_day", "job_id", "day"),
        Index("ix_cost_rollup_tag_set_day", "tag_set", "day"),
    )

    day: date = Field(primary_key=True)
    tenant: str = Field(primary_key=True, max_length=100)
    job_id: str = Field(primary_key=True, max_length=40)
    model: str = Field(primary_key=True, max_length=200)
    provider: str = Field(primary_key=True, max_length=100)
    latency_class: str = Field(default="", primary_key=True, max_length=16)
    domain: str = Field(default="", primary_key=True, max_length=32)
    tag_set: str = Field(default="", primary_key=True, max_length=32)
    shard: int = Field(default=0, sa_column=Column(SmallInteger, primary_key=True, nullable=False))
    attempts: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))
    requests: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))  # successful attempts
    failed_attempts: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))
    estimated_attempts: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))  # usage_estimated
    prompt_tokens: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))
    completion_tokens: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))
    cached_tokens: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))
    cost_usd: float = 0.0
    baseline_cost_usd: float = 0.0


class Budget(SQLModel, table=True):
    """A spending limit on everything carrying one tag value (``scope='tag'``), lifetime to date."""

    __tablename__ = "budgets"

    scope: str = Field(primary_key=True, max_length=16)
    key: str = Field(primary_key=True)
    value: str = Field(primary_key=True)
    limit_usd: float
    updated_at: datetime = Field(default_factory=utcnow)


class BudgetReservation(SQLModel, table=True):
    """The estimated cost of one dispatched request, held until the request settles (one row each)."""

    __tablename__ = "budget_reservations"

    request_id: str = Field(primary_key=True, max_length=60)
    job_id: str = Field(index=True, max_length=40)
    tag_set: str = Field(default="", index=True, max_length=32)
    amount_usd: float
    created_at: datetime = Field(default_factory=utcnow)


ALL_TABLES = (Job, JobLineError, Request, RoutingDecision, Attempt, Result, TagSetItem, CostRollupDaily, Budget,
              BudgetReservation)


class Feedback(SQLModel, table=True):
    """An observed outcome of a request on a model (``batchroute feedback``); the analyzer learns from it."""

    __tablename__ = "feedback"

    id: int | None = Field(default=None, primary_key=True)
    request_id: str = Field(foreign_key="requests.id", index=True, max_length=60)
    model: str = Field(max_length=200)
    score: float
    created_at: datetime = Field(default_factory=utcnow)


class ProfileSnapshot(SQLModel, table=True):
    """The profiler's live figures of one model at one moment (``batchroute profile --history``).

    Written by provider workers every ``profile_snapshot_s`` (see :mod:`batchroute.profiler.snapshots`).
    Counts are exponentially decayed sums (``profile_half_life_s``); rates and the ratio are the
    observed ones (None without a sample); percentiles are None below ``profile_min_samples``.
    """

    __tablename__ = "profile_snapshots"
    __table_args__ = (
        Index("ix_profile_snapshots_model_taken", "model", "taken_at"),
        Index("ix_profile_snapshots_taken", "taken_at"),
    )

    id: int | None = Field(default=None, primary_key=True)
    taken_at: datetime = Field(default_factory=utcnow)
    model: str = Field(max_length=200)
    source: str = Field(default="", max_length=200)  # redis:<prefix> (shared) or memory:<host>:<pid>
    ok: float = 0.0
    errors: float = 0.0
    timeouts: float = 0.0
    rate_limited: float = 0.0  # 429s
    latency_samples: float = 0.0  # successes in the latency histogram
    error_rate: float | None = None  # (errors + timeouts) / (ok + errors + timeouts)
    rate_429: float | None = None  # 429s / every attempt
    latency_ratio: float | None = None  # observed / registry-expected latency
    p50_ms: float | None = None
    p95_ms: float | None = None
    p99_ms: float | None = None
    unhealthy: bool = False
    reason: str | None = Field(default=None, sa_column=Column(Text))  # why routing avoids it, if it does
