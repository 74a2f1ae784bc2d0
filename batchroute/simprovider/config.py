"""Options of the simulated provider: latency scale, rate-limit overrides and fault injection."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class SimConfig(BaseModel):
    """How a simulated provider server behaves; every field can be changed at runtime.

    Build one and hand it to :func:`~batchroute.simprovider.start_sim_server`::

        SimConfig(time_scale=0)                                  # no latency
        SimConfig(time_scale=0, rpm_override=600)                # every model limited to 600 rpm
        SimConfig(rate_429=0.2, rate_5xx=0.05, seed=7)           # reproducible fault storm
        SimConfig(down_models={"sim-gpt-4"})                     # one model fully down (503)

    Fault rates are probabilities in [0, 1], drawn per call in the order 429, 5xx, hang,
    malformed, reset (the first that hits wins) by a ``random.Random(seed)``. ``fault_models``
    restricts them to those model names (None = every model); ``down_models`` is separate and
    always answers 503. Unknown field names are rejected, so a typo in ``POST /admin/faults``
    is a 400, not a silently ignored option.
    """

    model_config = ConfigDict(extra="forbid")

    # Multiplies every simulated latency; 0 answers as fast as possible.
    time_scale: float = Field(default=1.0, ge=0)
    # Replace every model's registry rpm / tpm (e.g. 600 rpm for a benchmark).
    rpm_override: int | None = Field(default=None, gt=0)
    tpm_override: int | None = Field(default=None, gt=0)
    rate_429: float = Field(default=0.0, ge=0, le=1)
    rate_5xx: float = Field(default=0.0, ge=0, le=1)
    rate_hang: float = Field(default=0.0, ge=0, le=1)
    # Wall-clock seconds a hanging call waits before answering (not scaled by time_scale).
    hang_s: float = Field(default=600.0, ge=0)
    rate_malformed: float = Field(default=0.0, ge=0, le=1)
    rate_reset: float = Field(default=0.0, ge=0, le=1)
    # retry-after-ms sent with fault-injected 429s (retry-after is this rounded up to >= 1 s).
    retry_after_ms: int = Field(default=1000, ge=0)
    down_models: set[str] = Field(default_factory=set)
    fault_models: set[str] | None = None
    seed: int | None = None
    # Demand `Authorization: Bearer <key>` (OpenAI) or `x-api-key` (Anthropic); any non-empty key passes.
    require_auth: bool = False
