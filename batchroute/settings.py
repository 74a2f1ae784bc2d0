"""Typed settings, read once from ``BATCHROUTE_*`` environment variables.

Use :func:`get_settings` everywhere; it builds the object once per process. An invalid value
stops at startup with a :class:`~batchroute.errors.ConfigError` naming the variable.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from batchroute.errors import ConfigError

IN_PROCESS_BROKER = "memory://"

# Outcome neighbours behind a predicted quality, and the prior's weight against them (in
# neighbours). Chosen by 2x5-fold cross-validation on the TRAIN rows of the five public outcome
# sets (RouterBench ARC, MBPP, Winogrande; RouteLLM GSM8K, MMLU): mean held-out AIQ gain over the
# single-model hull 0.0197 for k 80 (positive on all five) against 0.0094 for the former k 20.
DEFAULT_OUTCOME_K = 80
DEFAULT_OUTCOME_STRENGTH = 5.0


def default_data_dir() -> Path:
    """Where the embedded default keeps its SQLite file and caches (XDG data dir)."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "batchroute"


class Settings(BaseSettings):
    """All configuration of a batchroute process. Field ``x`` is read from ``BATCHROUTE_X``."""

    model_config = SettingsConfigDict(env_prefix="BATCHROUTE_", extra="ignore")

    data_dir: Path = Field(default_factory=default_data_dir)
    database_url: str = ""
    broker_url: str = IN_PROCESS_BROKER
    # Redis for shared rate limits; empty = the broker when it is Redis, else in-process limits.
    redis_url: str = ""
    registry: Path | None = None
    # Where the simulated provider listens; empty = start one in-process when a model needs it.
    sim_url: str = ""
    sim_time_scale: float = Field(default=1.0, ge=0)
    analyze_chunk_size: int = Field(default=200, ge=1, le=10_000)
    provider_chunk_size: int = Field(default=25, ge=1, le=1_000)
    submit_batch_size: int = Field(default=1_000, ge=1)
    # max_tokens sent when a request gives none (also what rate limits pre-charge, as providers do).
    default_max_tokens: int = Field(default=1024, ge=1)
    request_timeout_s: float = Field(default=120.0, gt=0)
    max_attempts_per_model: int = Field(default=3, ge=1, le=20)
    max_models_per_request: int = Field(default=3, ge=1, le=20)
    backoff_base_s: float = Field(default=0.5, gt=0)
    backoff_cap_s: float = Field(default=30.0, gt=0)
    # Requests sitting in queued/dispatched/running longer than this are re-enqueued.
    reconcile_after_s: float = Field(default=600.0, gt=0)
    # Broker visibility timeout; must exceed the longest task (see README "Timeouts").
    visibility_timeout_s: float = Field(default=3600.0, gt=0)
    embed_batch_size: int = Field(default=64, ge=1)
    # Padded tokens per forward pass (0: no limit): long prompts go in smaller batches.
    embed_batch_tokens: int = Field(default=1024, ge=0)
    # The analyzer's embedding precision: auto = the int8 ONNX graph (served without torch: ~0.5 s
    # and ~130 MB to the first vector); bf16 is ~1.3x faster on CPUs with AMX but loads torch
    # (~4 s, ~580 MB). Every worker sharing an index cache should use the same value.
    embed_precision: Literal["auto", "fp32", "bf16", "int8", "ort-int8", "ort-fp32"] = "auto"
    # Embed the exemplar index (built once, cached) from whole prompts in fp32 whatever the queries
    # use: labels as good as the full model's at the fast path's speed; off only to build very
    # large outcome indexes faster (~5x on long prompts).
    embed_index_full: bool = True
    # Nearest exemplars with outcomes behind a prompt's predicted quality per model, and the weight
    # (in neighbours) of the model's prior against them; `batchroute eval routing` reports the
    # values that cross-validate best on your outcome files.
    analyzer_outcome_k: int = Field(default=DEFAULT_OUTCOME_K, ge=1, le=1000)
    analyzer_outcome_strength: float = Field(default=DEFAULT_OUTCOME_STRENGTH, gt=0)
    # Prompts of a job sampled to plan a budget or quality goal before dispatch.
    plan_sample_size: int = Field(default=1_000, ge=10, le=100_000)
    # Extra exemplar/outcome JSONL files or directories for the analyzer's index (a JSON list);
    # ``batchroute index build --from`` also adds files under ``data_dir/exemplars``.
    exemplar_paths: list[Path] = Field(default_factory=list)
    # Feedback pulls a (model, domain, complexity) prior toward the observed mean as if the registry
    # prior were this many feedback rows: prior' = (n * mean + k * registry) / (n + k).
    feedback_prior_pseudo_count: float = Field(default=10.0, gt=0)
    # Live per-model figures (batchroute.profiler): auto = redis when Redis is configured, else memory.
    profile_backend: Literal["auto", "memory", "redis", "off"] = "auto"
    # Redis key prefix of the shared profile (deployments sharing one Redis need distinct ones).
    profile_prefix: str = Field(default="batchroute:profile", min_length=1, pattern=r"^[^{}]+$")
    # Half-life of the decayed attempt counts and latency sums.
    profile_half_life_s: float = Field(default=60.0, gt=0)
    # Successful attempts (decayed) before a model's live latency ratio replaces ratio 1.
    profile_min_samples: int = Field(default=20, ge=1)
    # Served attempts (decayed) before a model's live error rate counts (penalty and health).
    profile_min_calls: int = Field(default=20, ge=1)
    # A model whose live error rate reaches this is excluded from new decisions (if another is eligible).
    unhealthy_error_rate: float = Field(default=0.5, gt=0, le=1)
    # How long an analyzer process reuses a snapshot of the live figures.
    profile_cache_s: float = Field(default=2.0, ge=0)
    # How long a provider worker sums attempts before writing them to the shared store.
    profile_flush_s: float = Field(default=1.0, ge=0)
    # How often provider workers store the live figures in the database (profile_snapshots; 0 = never).
    profile_snapshot_s: float = Field(default=60.0, ge=0)
    # Snapshots older than this are deleted each time a snapshot is stored (0 = keep them forever).
    profile_snapshot_retention_days: float = Field(default=30.0, ge=0)

    @property
    def user_exemplar_dir(self) -> Path:
        """Where ``batchroute index build --from`` keeps the files it adds."""
        return self.data_dir / "exemplars"
    log_level: str = "INFO"

    @field_validator("database_url")
    @classmethod
    def _db_scheme(cls, v: str) -> str:
        if v and not v.startswith(("sqlite", "postgresql", "postgres")):
            raise ValueError("must start with sqlite:// or postgresql://")
        return v

    @property
    def effective_database_url(self) -> str:
        """The database URL in force: the env value, or a SQLite file under ``data_dir``."""
        if self.database_url:
            url = self.database_url
            if url.startswith("postgres://"):
                url = "postgresql://" + url[len("postgres://"):]
            if url.startswith("postgresql://"):
                url = "postgresql+psycopg://" + url[len("postgresql://"):]
            return url
        return f"sqlite:///{self.data_dir / 'batchroute.db'}"

    @property
    def effective_redis_url(self) -> str:
        """The Redis URL for shared state, or '' for in-process state."""
        if self.redis_url:
            return self.redis_url
        return self.broker_url if self.broker_url.startswith(("redis://", "rediss://")) else ""

    @property
    def embedded(self) -> bool:
        """True when tasks run in the calling process (no external broker)."""
        return self.broker_url.startswith(IN_PROCESS_BROKER)


@functools.lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings (built on first call). Raises ConfigError naming the bad variable."""
    try:
        return Settings()
    except ValidationError as exc:
        problems = [
            f"BATCHROUTE_{'_'.join(str(p) for p in err['loc']).upper()}: {err['msg']}"
            for err in exc.errors()
        ]
        raise ConfigError("invalid settings", problems) from exc
