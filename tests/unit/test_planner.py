"""The planner's pure parts: vectorised routing equals the router, goal selection, sampling."""

import random

import pytest

from batchroute.planner import LAMBDA_GRID, PlanPoint, Reservoir, choose, point_at, route_all, terms_from_decisions
from batchroute.registry import load_registry
from batchroute.routing import RouteInput, RoutePolicy, decide
from batchroute.taxonomy import COMPLEXITIES, DOMAINS, STYLES

REG = load_registry()
MODELS = [m.name for m in REG.models]


def random_inputs(n: int, seed: int = 7) -> list[RouteInput]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        predicted = {m: rng.uniform(0.3, 0.95) for m in MODELS if rng.random() < 0.5}
        out.append(RouteInput(domain=rng.choice(DOMAINS), complexity=rng.choice(COMPLEXITIES),
                              style=rng.choice(STYLES), confidence=rng.uniform(0.2, 1.0),
                              prompt_tokens=rng.choice([20, 300, 2_000, 9_000, 40_000]),
                              max_tokens=rng.choice([None, 50, 800]), predicted_quality=predicted))
    return out


@pytest.mark.parametrize("lam", [0.0, 0.03, 0.15, 0.6, 2.0, 10.0])
def test_route_all_picks_what_the_router_picks(lam: float) -> None:
    inputs = random_inputs(300)
    mu = 0.04
    pins = [random.Random(i).choice([None, None, None, "sim-gpt-4"]) for i in range(len(inputs))]
    base = [decide(x, REG, RoutePolicy(cost_weight=0.0, latency_weight=mu, pinned=p))
            for x, p in zip(inputs, pins, strict=True)]
    terms = terms_from_decisions(base, MODELS)
    picks = route_all(terms, lam, mu)
    for i, (x, p) in enumerate(zip(inputs, pins, strict=True)):
        d = decide(x, REG, RoutePolicy(cost_weight=lam, latency_weight=mu, pinned=p))
        assert (MODELS[picks[i]] if picks[i] >= 0 else None) == d.model, i
    # A prompt no eligible model can take gives -1, as decide() gives None.
    assert all(picks[i] == -1 for i, d in enumerate(base) if d.model is None)


def test_curve_costs_fall_and_extrapolate() -> None:
    inputs = random_inputs(200)
    terms = terms_from_decisions([decide(x, REG, RoutePolicy(0.0, 0.0)) for x in inputs], MODELS)
    pts = [point_at(terms, lam, 0.0, scale=10.0, strongest_quality=0.9) for lam in LAMBDA_GRID]
    costs = [p.cost_usd for p in pts]
    assert costs == sorted(costs, reverse=True)  # a higher λ never costs more
    assert pts[0].quality >= pts[-1].quality
    p = pts[0]
    picks = route_all(terms, 0.0, 0.0)
    rows = [i for i in range(len(inputs)) if picks[i] >= 0]
    assert p.cost_usd == pytest.approx(10.0 * sum(terms.cost_usd[i, picks[i]] for i in rows), rel=1e-6)
    assert sum(p.share.values()) == pytest.approx(len(rows) / len(inputs), abs=1e-3)
    assert p.relative_quality == pytest.approx(p.quality / 0.9, abs=1e-5)


POINTS = [PlanPoint(0.0, 10.0, 0.90, 1.00, {}), PlanPoint(0.1, 6.0, 0.88, 0.978, {}),
          PlanPoint(0.3, 3.0, 0.84, 0.933, {}), PlanPoint(1.0, 1.0, 0.75, 0.833, {})]


def test_choose_budget_min_quality_and_both() -> None:
    default = POINTS[1]
    assert choose(POINTS, default) == (default, True, "no cost or quality goal: the latency class and objective set λ")
    p, met, note = choose(POINTS, default, budget_usd=6.5)
    assert (p.cost_weight, met) == (0.1, True) and "within budget $6.5000" in note
    p, met, _ = choose(POINTS, default, min_quality=0.93)
    assert (p.cost_weight, met) == (0.3, True)  # cheapest reaching 0.93
    p, met, _ = choose(POINTS, default, budget_usd=5.0, min_quality=0.9)
    assert (p.cost_weight, met) == (0.3, True)
    p, met, note = choose(POINTS, default, budget_usd=2.0, min_quality=0.95)
    assert (p.cost_weight, met) == (1.0, False) and "not reachable within $2.0000" in note
    p, met, note = choose(POINTS, default, budget_usd=0.5)
    assert (p.cost_weight, met) == (1.0, False) and "exceeds the budget" in note
    p, met, _ = choose(POINTS, default, min_quality=1.0)
    assert (p.cost_weight, met) == (0.0, True)


def test_reservoir_keeps_k_uniform_items() -> None:
    r = Reservoir(3)
    for i in range(2):
        r.add(i)
    assert (r.items, r.seen) == ([0, 1], 2)
    hits = [0] * 20
    for seed in range(2000):
        r = Reservoir(5, seed=seed)
        for i in range(20):
            r.add(i)
        assert len(r.items) == 5 and r.seen == 20 and len(set(r.items)) == 5
        for x in r.items:
            hits[x] += 1
    # Each item is kept with probability 5/20: 500 of 2000 runs, within sampling noise.
    assert all(400 < h < 600 for h in hits), hits
