import pytest

from batchroute.pricing import PriceSnapshot, estimate_cost_usd
from batchroute.registry import load_registry
from batchroute.routing import RouteInput, RoutePolicy, decide, weights_for

REG = load_registry()


def policy(latency="standard", **kw):
    lam, mu = weights_for(latency, kw.pop("objective", "balanced"))
    return RoutePolicy(cost_weight=lam, latency_weight=mu, **kw)


def inp(domain="classification", complexity="simple", style="concise", confidence=0.9, tokens=200, **kw):
    return RouteInput(domain=domain, complexity=complexity, style=style, confidence=confidence,
                      prompt_tokens=tokens, **kw)


def test_price_snapshot_math():
    p = PriceSnapshot(10.0, 30.0, 5.0)
    assert p.cost_usd(1000, 100) == pytest.approx((1000 * 10 + 100 * 30) / 1e6)
    assert p.cost_usd(1000, 100, cached_tokens=400) == pytest.approx((600 * 10 + 400 * 5 + 100 * 30) / 1e6)
    assert PriceSnapshot(1.0, 2.0).cost_usd(10, 10, cached_tokens=10) == pytest.approx((10 + 20) / 1e6)


def test_simple_classification_goes_cheap_in_batch():
    d = decide(inp(), REG, policy("batch"))
    assert d.model in ("sim-llama-3-8b", "sim-gpt-3.5-turbo", "sim-mixtral-8x7b")
    assert len(d.candidates) == 5 and all(c.score is not None for c in d.candidates)
    assert d.chosen is not None and d.chosen.score == max(c.score for c in d.candidates)


def test_complex_code_goes_strong():
    d = decide(inp("code", "complex", "verbose"), REG, policy("standard"))
    assert d.model in ("sim-gpt-4", "sim-claude-sonnet")


def test_quality_objective_picks_highest_quality():
    d = decide(inp("math", "complex", "verbose"), REG, policy("batch", objective="quality"))
    best = max(d.candidates, key=lambda c: c.quality)
    assert d.model == best.model == "sim-gpt-4"


def test_constraints_are_recorded():
    d = decide(inp(tokens=20_000), REG, policy(allowed=frozenset({"sim-llama-3-8b", "sim-gpt-4"}),
                                              tried=frozenset({"sim-gpt-4"})))
    ex = {c.model: c.excluded for c in d.candidates}
    assert d.model is None
    assert ex["sim-llama-3-8b"] == "prompt needs 20000 tokens, context window is 8192"
    assert ex["sim-gpt-4"] == "already tried for this request"
    assert ex["sim-claude-sonnet"] == "not in the job's allow-list"
    assert d.reason.startswith("no eligible model (")


def test_breaker_and_pin():
    d = decide(inp(), REG, policy("batch", unhealthy=frozenset({"together-sim"})))
    assert d.model not in ("sim-llama-3-8b", "sim-mixtral-8x7b")
    d = decide(inp(), REG, policy("batch", pinned="sim-gpt-4"))
    assert d.model == "sim-gpt-4" and d.reason == "pinned to sim-gpt-4 by the job"


def test_low_confidence_routes_as_complex():
    d = decide(inp("code", "simple", confidence=0.2), REG, policy("batch"))
    assert d.safe_route and "safe route" in d.reason
    gpt4 = next(c for c in d.candidates if c.model == "sim-gpt-4")
    assert gpt4.quality == pytest.approx(REG.model("sim-gpt-4").prior_quality("code", "complex"))


def test_outcome_aware_quality_overrides_prior():
    d = decide(inp(predicted_quality={"sim-llama-3-8b": 0.1}), REG, policy("batch"))
    assert d.model != "sim-llama-3-8b"


def test_cost_estimate_uses_prices():
    m = REG.model("sim-gpt-4")
    assert estimate_cost_usd(m, 1000, "concise") == pytest.approx((1000 * 10 + 370 * 30) / 1e6)
