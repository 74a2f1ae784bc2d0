"""The routing engine: pure scoring and deciding, no I/O.

For each eligible model::

    score = quality - cost_weight * cost / max_cost - latency_weight * latency / max_latency

where ``quality`` is the analyzer's predicted quality of the model on this prompt (outcome-aware
when exemplars carry outcomes, else the registry prior for the domain and complexity), and cost and
latency are normalised by the most expensive / slowest eligible candidate so the weights are
comparable across prompts. Weights come from the latency class and the job's objective.
A model is excluded (with the reason recorded) when the prompt does not fit its context window,
it is not in the job's allow-list, it was already tried, or its circuit breaker is open.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from batchroute.pricing import estimate_cost_usd, expected_latency_ms, expected_output_tokens
from batchroute.registry import ModelSpec, Registry

# (cost_weight, latency_weight) per latency class: batch buys cost, realtime buys speed.
LATENCY_CLASS_WEIGHTS: dict[str, tuple[float, float]] = {
    "batch": (0.15, 0.0),
    "standard": (0.08, 0.04),
    "realtime": (0.03, 0.15),
}
# Multiplier on the cost weight per job objective.
OBJECTIVE_COST_FACTOR: dict[str, float] = {"cost": 3.0, "balanced": 1.0, "quality": 0.0}
OBJECTIVES = tuple(OBJECTIVE_COST_FACTOR)
# Below this domain confidence the label is not trusted: route as if the prompt were complex.
MIN_CONFIDENCE = 0.45


@dataclass(frozen=True)
class RouteInput:
    """What the router knows about one prompt."""

    domain: str
    complexity: str
    style: str
    confidence: float
    prompt_tokens: int
    latency_class: str = "standard"
    max_tokens: int | None = None
    # Outcome-aware predicted quality per model name; models missing here use the prior.
    predicted_quality: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class RoutePolicy:
    """The job-level and live constraints a decision must respect."""

    cost_weight: float
    latency_weight: float
    allowed: frozenset[str] | None = None
    pinned: str | None = None
    tried: frozenset[str] = frozenset()
    unhealthy: frozenset[str] = frozenset()
    # Live p50 latency per model (profiler); falls back to the registry profile.
    live_latency_ms: Mapping[str, float] = field(default_factory=dict)
    min_confidence: float = MIN_CONFIDENCE


@dataclass
class Candidate:
    """One model's terms in a decision (``excluded`` says why it could not be chosen)."""

    model: str
    provider: str
    quality: float
    cost_usd: float
    latency_ms: float
    score: float | None = None
    excluded: str | None = None


@dataclass
class Decision:
    """The chosen model (None when nothing is eligible), why, and every candidate's terms."""

    model: str | None
    provider: str | None
    reason: str
    candidates: list[Candidate]
    cost_weight: float
    latency_weight: float
    safe_route: bool = False

    @property
    def chosen(self) -> Candidate | None:
        """The chosen candidate's terms."""
        return next((c for c in self.candidates if c.model == self.model), None)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, stored on the routing decision row."""
        return asdict(self)


def weights_for(latency_class: str, objective: str = "balanced",
                cost_weight: float | None = None) -> tuple[float, float]:
    """(cost_weight, latency_weight) for a latency class and objective; an explicit λ wins."""
    lam, mu = LATENCY_CLASS_WEIGHTS.get(latency_class, LATENCY_CLASS_WEIGHTS["standard"])
    lam *= OBJECTIVE_COST_FACTOR.get(objective, 1.0)
    return (lam if cost_weight is None else cost_weight), mu


def model_quality(model: ModelSpec, inp: RouteInput, complexity: str) -> float:
    """Predicted quality of ``model`` for the prompt (outcome-aware if known, else its prior)."""
    if model.name in inp.predicted_quality:
        return inp.predicted_quality[model.name]
    return model.prior_quality(inp.domain, complexity)


def _exclusion(model: ModelSpec, inp: RouteInput, policy: RoutePolicy) -> str | None:
    if policy.pinned is not None and model.name != policy.pinned:
        return f"job pins {policy.pinned}"
    if policy.allowed is not None and model.name not in policy.allowed:
        return "not in the job's allow-list"
    needed = inp.prompt_tokens + (inp.max_tokens or 0)
    if needed > model.context_window_tokens:
        return f"prompt needs {needed} tokens, context window is {model.context_window_tokens}"
    if model.name in policy.tried:
        return "already tried for this request"
    if model.name in policy.unhealthy or model.provider in policy.unhealthy:
        return "circuit breaker open"
    return None


def decide(inp: RouteInput, registry: Registry, policy: RoutePolicy) -> Decision:
    """Score every model and choose the best eligible one; never raises for 'nothing eligible'."""
    safe = inp.confidence < policy.min_confidence
    complexity = "complex" if safe else inp.complexity
    cands: list[Candidate] = []
    for m in registry.models:
        latency = policy.live_latency_ms.get(m.name) or expected_latency_ms(m, inp.style, inp.max_tokens)
        cands.append(Candidate(
            model=m.name, provider=m.provider, quality=round(model_quality(m, inp, complexity), 6),
            cost_usd=estimate_cost_usd(m, inp.prompt_tokens, inp.style, inp.max_tokens),
            latency_ms=round(latency, 3), excluded=_exclusion(m, inp, policy)))
    eligible = [c for c in cands if c.excluded is None]
    if not eligible:
        reasons = "; ".join(f"{c.model}: {c.excluded}" for c in cands)
        return Decision(None, None, f"no eligible model ({reasons})", cands,
                        policy.cost_weight, policy.latency_weight, safe)
    max_cost = max(c.cost_usd for c in eligible) or 1.0
    max_lat = max(c.latency_ms for c in eligible) or 1.0
    for c in eligible:
        c.score = round(c.quality - policy.cost_weight * c.cost_usd / max_cost
                        - policy.latency_weight * c.latency_ms / max_lat, 6)
    # Ties go to the cheaper model.
    best = max(eligible, key=lambda c: (c.score or 0.0, -c.cost_usd))
    if policy.pinned is not None:
        reason = f"pinned to {best.model} by the job"
    else:
        runner = max((c for c in eligible if c is not best), key=lambda c: c.score or 0.0, default=None)
        reason = (f"{inp.domain}/{complexity}/{inp.style} ({inp.latency_class}): {best.model} "
                  f"quality {best.quality:.2f}, cost ${best.cost_usd:.6f}, {best.latency_ms:.0f} ms")
        if runner is not None:
            reason += f"; beats {runner.model} ({runner.score:.3f} < {best.score:.3f})"
        if safe:
            reason += f"; low confidence {inp.confidence:.2f}: routed as complex (safe route)"
    return Decision(best.model, best.provider, reason, cands, policy.cost_weight,
                    policy.latency_weight, safe)


def baseline_cost_usd(registry: Registry, prompt_tokens: int, style: str | None,
                      baseline: str | None = None, max_tokens: int | None = None) -> float:
    """What the baseline model (default: the strongest) would cost for this prompt."""
    model = registry.model(baseline) if baseline else registry.strongest()
    return estimate_cost_usd(model, prompt_tokens, style, max_tokens)


__all__ = [
    "OBJECTIVES",
    "Candidate",
    "Decision",
    "RouteInput",
    "RoutePolicy",
    "baseline_cost_usd",
    "decide",
    "expected_output_tokens",
    "weights_for",
]
