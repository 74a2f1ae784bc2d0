"""Feedback-moved priors: the pure math, per-cell bookkeeping, and their effect on a decision."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, cast

import pytest

from batchroute.feedback import FeedbackPriors, feedback_prior, quality_terms
from batchroute.registry import load_registry
from batchroute.routing import Candidate, RouteInput, RoutePolicy, decide, weights_for

if TYPE_CHECKING:
    from batchroute.analyzer import Analysis

REG = load_registry()


@dataclass
class FakeAnalysis:
    """What quality_terms reads of an analysis: labels and the neighbour-based estimate."""

    domain: str = "classification"
    complexity: str = "simple"
    style: str = "concise"
    confidence: float = 0.9
    outcome_stats: dict[str, tuple[float, float, int]] = field(default_factory=dict)

    def predicted_quality(self, model_name: str, prior: float, strength: float = 5.0) -> float:
        stats = self.outcome_stats.get(model_name)
        if stats is None:
            return prior
        return (stats[0] + strength * prior) / (stats[1] + strength)

    def as_analysis(self) -> Analysis:
        """This fake as the Analysis that quality_terms takes: it has every attribute quality_terms reads."""
        return cast("Analysis", self)


def test_feedback_prior_math() -> None:
    assert feedback_prior(0.9, 0, 0.0, 10.0) == 0.9
    assert feedback_prior(0.9, 10, 0.0, 10.0) == pytest.approx(0.45)
    assert feedback_prior(0.5, 30, 30.0, 10.0) == pytest.approx((30 + 5) / 40)
    # Many rows take over from the registry.
    assert feedback_prior(0.9, 10_000, 2_000.0, 10.0) == pytest.approx(0.2, abs=1e-3)


def test_priors_are_per_model_domain_and_complexity() -> None:
    p = FeedbackPriors(pseudo_count=10.0)
    for s in (0.0, 0.2, 0.1):
        p.add("sim-gpt-3.5-turbo", "classification", "simple", s)
    llm = REG.model("sim-gpt-3.5-turbo")
    t = p.term(llm, "classification", "simple")
    registry = llm.prior_quality("classification", "simple")
    assert (t.registry, t.feedback_n) == (registry, 3)
    assert t.feedback_mean == pytest.approx(0.1)
    assert t.value == pytest.approx((0.3 + 10 * registry) / 13)
    untouched = p.term(llm, "classification", "complex")
    assert untouched.value == untouched.registry == llm.prior_quality("classification", "complex")
    assert untouched.feedback_n == 0 and untouched.feedback_mean is None
    assert p.term(REG.model("sim-gpt-4"), "classification", "simple").feedback_n == 0


def test_neighbour_estimate_is_shrunk_toward_the_moved_prior() -> None:
    p = FeedbackPriors(pseudo_count=10.0)
    for _ in range(10):
        p.add("sim-llama-3-8b", "classification", "simple", 0.0)
    a = FakeAnalysis(outcome_stats={"sim-llama-3-8b": (0.8, 1.0, 1)})
    predicted, terms = quality_terms(a.as_analysis(), REG, p)
    prior = terms["sim-llama-3-8b"].value
    assert prior == pytest.approx(0.5 * REG.model("sim-llama-3-8b").prior_quality("classification", "simple"))
    assert predicted["sim-llama-3-8b"] == pytest.approx((0.8 + 5 * prior) / 6)
    plain, plain_terms = quality_terms(a.as_analysis(), REG)
    assert plain_terms["sim-llama-3-8b"].feedback_n == 0 and plain["sim-llama-3-8b"] > predicted["sim-llama-3-8b"]


def test_feedback_changes_the_decision_and_is_recorded() -> None:
    a = FakeAnalysis()
    lam, mu = weights_for("batch")
    policy = RoutePolicy(cost_weight=lam, latency_weight=mu)

    def route(priors: FeedbackPriors | None) -> tuple[str | None, dict[str, Candidate]]:
        predicted, terms = quality_terms(a.as_analysis(), REG, priors)
        d = decide(RouteInput(domain=a.domain, complexity=a.complexity, style=a.style, confidence=a.confidence,
                              prompt_tokens=200, latency_class="batch", predicted_quality=predicted,
                              priors=terms), REG, policy)
        return d.model, {c.model: c for c in d.candidates}

    before, _ = route(FeedbackPriors())
    assert before == "sim-gpt-3.5-turbo"
    p = FeedbackPriors(pseudo_count=10.0)
    for _ in range(5):
        p.add("sim-gpt-3.5-turbo", "classification", "simple", 0.1)
    after, cands = route(p)
    assert after == "sim-mixtral-8x7b"
    moved = cands["sim-gpt-3.5-turbo"]
    registry = REG.model("sim-gpt-3.5-turbo").prior_quality("classification", "simple")
    assert moved.registry_prior == registry and moved.feedback_n == 5
    assert moved.prior == moved.quality == round((0.5 + 10 * registry) / 15, 6)


def test_low_confidence_takes_the_complex_prior_and_can_change_the_choice() -> None:
    # The safe route: below MIN_CONFIDENCE the simple label is not trusted, so every model's
    # quality is its complex prior (weak models drop most), not the simple one.
    sure = FakeAnalysis(domain="math", complexity="simple", confidence=0.9)
    unsure = FakeAnalysis(domain="math", complexity="simple", confidence=0.3)
    q_sure, _ = quality_terms(sure.as_analysis(), REG)
    q_unsure, terms = quality_terms(unsure.as_analysis(), REG)
    for m in REG.models:
        assert q_sure[m.name] == pytest.approx(m.prior_quality("math", "simple"))
        assert q_unsure[m.name] == pytest.approx(m.prior_quality("math", "complex"))
        assert terms[m.name].registry == pytest.approx(m.prior_quality("math", "complex"))
    lam, mu = weights_for("batch")

    def choose(a: FakeAnalysis, q: dict[str, float]) -> str | None:
        inp = RouteInput(domain=a.domain, complexity=a.complexity, style=a.style, confidence=a.confidence,
                         prompt_tokens=200, latency_class="batch", predicted_quality=q)
        return decide(inp, REG, RoutePolicy(cost_weight=lam, latency_weight=mu)).model

    complex_sure = FakeAnalysis(domain="math", complexity="complex", confidence=0.9)
    as_complex = choose(complex_sure, quality_terms(complex_sure.as_analysis(), REG)[0])
    assert choose(unsure, q_unsure) == as_complex
    assert choose(sure, q_sure) != as_complex  # the safe route changed the decision
