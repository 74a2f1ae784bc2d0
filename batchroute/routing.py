"""The routing engine: pure scoring and deciding, no I/O.

For each eligible model::

    score = quality - cost_weight * cost / max_cost - latency_weight * latency / max_latency

where ``quality`` is the analyzer's predicted quality of the model on this prompt (outcome-aware
when exemplars carry outcomes, shrunk toward the model's prior for the domain and complexity: the
registry's, moved by feedback, see :class:`PriorTerm`), and cost and latency are normalised by the
most expensive / slowest eligible candidate so the weights are comparable across prompts. Weights
come from the latency class and the job's objective.

Latency is the registry's expectation for this prompt times the model's live factor from the
profiler (:class:`batchroute.profiler.LiveModel`): the observed/expected latency ratio, divided by
``1 - error rate`` (failed attempts are retried). A model without enough recent data has factor 1,
so every candidate's latency is in the same unit: what the registry expects, corrected by what
was seen.

A model is excluded (with the reason recorded) when the prompt does not fit its context window,
it is not in the job's allow-list, it was already tried, its circuit breaker is open, or its live
error rate is above the profiler's threshold; the last only while another model stays eligible,
so a provider-wide outage slows requests down instead of failing them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from batchroute.pricing import estimate_cost_usd, expected_latency_ms, expected_output_tokens
from batchroute.profiler.stats import LiveModel
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
class PriorTerm:
    """A model's prior quality for the prompt's (domain, complexity) and the feedback behind it."""

    registry: float                     # the registry's static prior
    value: float                        # the prior used: registry, moved toward the feedback mean
    feedback_n: int = 0                 # feedback rows in this (model, domain, complexity) cell
    feedback_mean: float | None = None


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
    # The prior behind each model's quality (recorded on the decision); missing = the registry's.
    priors: Mapping[str, PriorTerm] = field(default_factory=dict)


@dataclass(frozen=True)
class RoutePolicy:
    """The job-level and live constraints a decision must respect."""

    cost_weight: float
    latency_weight: float
    allowed: frozenset[str] | None = None
    pinned: str | None = None
    tried: frozenset[str] = frozenset()
    # Models or providers whose circuit breaker is open (hard exclusion).
    unhealthy: frozenset[str] = frozenset()
    # Live figures per model (profiler snapshot); a model missing here uses the registry alone.
    live: Mapping[str, LiveModel] = field(default_factory=dict)
    min_confidence: float = MIN_CONFIDENCE


@dataclass
class Candidate:
    """One model's terms in a decision (``excluded`` says why it could not be chosen)."""

    model: str
    provider: str
    quality: float
    cost_usd: float
    latency_ms: float                           # what the score uses: expected x live factor
    score: float | None = None
    excluded: str | None = None
    prior: float | None = None                  # the prior quality used (registry or feedback-moved)
    registry_prior: float | None = None
    feedback_n: int = 0                         # feedback rows that moved the prior
    expected_latency_ms: float | None = None    # the registry's expectation for this prompt
    live_latency_ratio: float | None = None     # applied live terms; None = no live data used
    live_error_rate: float | None = None
    live_calls: float | None = None


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
    prior = inp.priors.get(model.name)
    if prior is not None and complexity == inp.complexity:
        return prior.value
    return model.prior_quality(inp.domain, complexity)


def _exclusion(model: ModelSpec, inp: RouteInput, policy: RoutePolicy) -> str | None:
    if policy.pinned is not None and model.name != policy.pinned:
        return f"its job line pins {policy.pinned}"
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


def _candidate(m: ModelSpec, inp: RouteInput, policy: RoutePolicy, complexity: str) -> Candidate:
    expected = expected_latency_ms(m, inp.style, inp.max_tokens)
    live = policy.live.get(m.name)
    used = live if live is not None and live.applied else None
    prior = inp.priors.get(m.name)
    return Candidate(
        model=m.name, provider=m.provider, quality=round(model_quality(m, inp, complexity), 6),
        cost_usd=estimate_cost_usd(m, inp.prompt_tokens, inp.style, inp.max_tokens),
        latency_ms=round(expected * (used.latency_factor if used else 1.0), 3),
        excluded=_exclusion(m, inp, policy),
        prior=None if prior is None else round(prior.value, 6),
        registry_prior=None if prior is None else round(prior.registry, 6),
        feedback_n=0 if prior is None else prior.feedback_n,
        expected_latency_ms=round(expected, 3),
        live_latency_ratio=None if used is None else used.latency_ratio,
        live_error_rate=None if used is None else used.error_rate,
        live_calls=None if used is None else used.calls)


def _exclude_unhealthy(cands: list[Candidate], policy: RoutePolicy) -> list[str]:
    """Exclude live-unhealthy candidates while a healthy one stays eligible; returns the notes."""
    sick = [c for c in cands if c.excluded is None and (live := policy.live.get(c.model)) is not None
            and live.unhealthy is not None]
    if not sick:
        return []
    names = {c.model for c in sick}
    if any(c.excluded is None and c.model not in names for c in cands):
        for c in sick:
            c.excluded = policy.live[c.model].unhealthy
        return [f"avoided {c.model} ({c.excluded})" for c in sick]
    return ["every eligible model is unhealthy: routed anyway, retries and fallback will cope"]


def decide(inp: RouteInput, registry: Registry, policy: RoutePolicy) -> Decision:
    """Score every model and choose the best eligible one; never raises for 'nothing eligible'."""
    safe = inp.confidence < policy.min_confidence
    complexity = "complex" if safe else inp.complexity
    cands = [_candidate(m, inp, policy, complexity) for m in registry.models]
    live_notes = _exclude_unhealthy(cands, policy)
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
    if best.live_latency_ratio is not None:
        reason += (f"; live latency x{best.live_latency_ratio:.2f}, error rate {best.live_error_rate:.2f} "
                   f"over {best.live_calls:.0f} calls")
    if live_notes:
        reason += "; " + "; ".join(live_notes)
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
    "PriorTerm",
    "RouteInput",
    "RoutePolicy",
    "baseline_cost_usd",
    "decide",
    "expected_output_tokens",
    "weights_for",
]
