"""Job-level goals: predict a job's cost and quality over its own prompts and pick the cost weight λ.

The router scores each model per prompt as ``quality − λ·cost/max_cost − μ·latency/max_latency``
(:mod:`batchroute.routing`). A job's goal is about the whole job, so the planner sweeps λ over a
grid on a sample of the job's prompts, routes every sampled prompt at each λ exactly as the
router would, and reads off the job's predicted cost (sample mean × requests) and mean predicted
quality; then it picks the point that meets the goal:

- ``budget_usd``: the highest-quality point whose predicted cost fits the budget;
- ``min_quality`` (relative to sending everything to the strongest model): the cheapest point
  that reaches it;
- both: the cheapest point meeting both, else the best quality within the budget;
- neither: the λ of the job's latency class and objective (the curve is still reported).

The sample calibrates λ for this job's own mix of prompts, not a global threshold. The sample is
routed with what the analyze stage would use: feedback-moved priors and the profiler's live
figures. Everything here but :func:`plan_items` is pure.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from batchroute.routing import Decision, RouteInput, RoutePolicy, decide, weights_for

if TYPE_CHECKING:
    from batchroute.jobfile import JobItem
    from batchroute.registry import Registry

# λ values tried; 0 buys quality only, the top end buys the cheapest eligible model.
LAMBDA_GRID: tuple[float, ...] = (0.0, *(round(float(x), 5) for x in np.geomspace(0.002, 20.0, 60)))


@dataclass(frozen=True)
class Terms:
    """Every sampled prompt's per-model terms, as the router sees them (``n`` prompts × ``m`` models)."""

    models: tuple[str, ...]
    quality: np.ndarray
    cost_usd: np.ndarray
    latency_ms: np.ndarray
    eligible: np.ndarray  # bool


@dataclass
class PlanPoint:
    """The predicted outcome of routing the whole job with one λ."""

    cost_weight: float
    cost_usd: float            # predicted for the whole job
    quality: float             # mean predicted quality of the routed prompts
    relative_quality: float    # quality / quality of all-to-the-strongest-model
    share: dict[str, float]    # model -> share of prompts


@dataclass
class Plan:
    """The curve, the chosen point and why."""

    requests: int
    sampled: int
    strongest_model: str
    strongest_cost_usd: float
    strongest_quality: float
    latency_weight: float
    points: list[PlanPoint]
    chosen: PlanPoint
    goal: dict[str, Any] = field(default_factory=dict)
    met: bool = True
    note: str = ""
    invalid_lines: int = 0  # lines ``submit`` would reject (``batchroute plan FILE``; 0 when planned at submit)
    line_errors: list[str] = field(default_factory=list)  # the first few of them, with file and line

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (stored on the job as its plan)."""
        return asdict(self)


def terms_from_decisions(decisions: Sequence[Decision], models: Sequence[str]) -> Terms:
    """Collect the candidates of decisions made at any λ (terms other than the score do not depend on λ)."""
    col = {name: j for j, name in enumerate(models)}
    n, m = len(decisions), len(models)
    q, c, lat = np.zeros((n, m)), np.zeros((n, m)), np.zeros((n, m))
    ok = np.zeros((n, m), dtype=bool)
    for i, d in enumerate(decisions):
        for cand in d.candidates:
            j = col[cand.model]
            q[i, j], c[i, j], lat[i, j] = cand.quality, cand.cost_usd, cand.latency_ms
            ok[i, j] = cand.excluded is None
    return Terms(tuple(models), q, c, lat, ok)


def route_all(terms: Terms, cost_weight: float, latency_weight: float) -> np.ndarray:
    """The model index :func:`batchroute.routing.decide` picks for each prompt at λ (−1: none eligible).

    Same score and tie-break (the cheaper model) as the router, vectorised.
    """
    if not terms.quality.size:
        return np.zeros(0, dtype=np.int64)
    big = np.where(terms.eligible, terms.cost_usd, -np.inf).max(axis=1, keepdims=True)
    max_cost = np.where(np.isfinite(big) & (big > 0), big, 1.0)
    big_lat = np.where(terms.eligible, terms.latency_ms, -np.inf).max(axis=1, keepdims=True)
    max_lat = np.where(np.isfinite(big_lat) & (big_lat > 0), big_lat, 1.0)
    score = np.round(terms.quality - cost_weight * terms.cost_usd / max_cost
                     - latency_weight * terms.latency_ms / max_lat, 6)
    score = np.where(terms.eligible, score, -np.inf)
    # lexsort: last key is primary; the cheaper model wins a tie.
    order = np.lexsort((terms.cost_usd, -score), axis=1)
    best = order[:, 0]
    none = ~terms.eligible.any(axis=1)
    return np.where(none, -1, best)


def point_at(terms: Terms, cost_weight: float, latency_weight: float, scale: float,
             strongest_quality: float) -> PlanPoint:
    """Route the sample at λ and extrapolate to the whole job (``scale`` = requests / sampled)."""
    pick = route_all(terms, cost_weight, latency_weight)
    rows = np.flatnonzero(pick >= 0)
    if not len(rows):
        return PlanPoint(cost_weight, 0.0, 0.0, 0.0, {})
    cost = float(terms.cost_usd[rows, pick[rows]].sum()) * scale
    quality = float(terms.quality[rows, pick[rows]].mean())
    counts = np.bincount(pick[rows], minlength=len(terms.models))
    share = {terms.models[j]: round(float(counts[j]) / len(pick), 4) for j in np.flatnonzero(counts)}
    rel = quality / strongest_quality if strongest_quality > 0 else 0.0
    return PlanPoint(cost_weight, round(cost, 6), round(quality, 6), round(rel, 6), share)


def sweep(terms: Terms, latency_weight: float, scale: float, strongest_quality: float,
          grid: Iterable[float] = LAMBDA_GRID) -> list[PlanPoint]:
    """The predicted cost-quality curve, one point per λ of ``grid``."""
    return [point_at(terms, lam, latency_weight, scale, strongest_quality) for lam in grid]


def choose(points: Sequence[PlanPoint], default: PlanPoint, budget_usd: float | None = None,
           min_quality: float | None = None) -> tuple[PlanPoint, bool, str]:
    """The point meeting the goal: (point, whether the goal is met, a one-line note)."""
    if budget_usd is None and min_quality is None:
        return default, True, "no cost or quality goal: the latency class and objective set λ"
    fits = [p for p in points if budget_usd is None or p.cost_usd <= budget_usd]
    good = [p for p in fits if min_quality is None or p.relative_quality >= min_quality]
    if good:
        best = min(good, key=lambda p: (p.cost_usd, -p.quality)) if min_quality is not None \
            else max(good, key=lambda p: (p.quality, -p.cost_usd))
        return best, True, _describe(best, budget_usd, min_quality)
    if fits:  # quality goal out of reach within the budget: best quality that fits
        best = max(fits, key=lambda p: (p.quality, -p.cost_usd))
        return best, False, (f"min quality {min_quality:.3f} is not reachable within ${budget_usd:.4f}; "
                             f"best within budget: {best.relative_quality:.3f}")
    if budget_usd is not None:
        best = min(points, key=lambda p: (p.cost_usd, -p.quality))
        return best, False, (f"even the cheapest plan (${best.cost_usd:.4f}) exceeds the budget "
                             f"${budget_usd:.4f}; the job will pause when its budget is spent")
    best = max(points, key=lambda p: (p.quality, -p.cost_usd))
    return best, False, (f"min quality {min_quality:.3f} is not reachable; best plan reaches "
                         f"{best.relative_quality:.3f}")


def _describe(p: PlanPoint, budget_usd: float | None, min_quality: float | None) -> str:
    parts = []
    if budget_usd is not None:
        parts.append(f"predicted ${p.cost_usd:.4f} within budget ${budget_usd:.4f}")
    if min_quality is not None:
        parts.append(f"relative quality {p.relative_quality:.3f} >= {min_quality:.3f}")
    return f"λ={p.cost_weight:g}: " + ", ".join(parts)


class Reservoir:
    """A uniform sample of at most ``k`` items from a stream of any length (Algorithm R)."""

    def __init__(self, k: int, seed: int = 0) -> None:
        self.k = k
        self.seen = 0
        self.items: list[Any] = []
        self._rng = random.Random(seed)

    def add(self, item: Any) -> None:
        """Offer one item of the stream."""
        self.seen += 1
        if len(self.items) < self.k:
            self.items.append(item)
            return
        j = self._rng.randrange(self.seen)
        if j < self.k:
            self.items[j] = item


def plan_items(items: Sequence[JobItem], requests: int, registry: Registry, *, latency_class: str,
               objective: str = "balanced", budget_usd: float | None = None,
               min_quality: float | None = None, allowed_models: Sequence[str] | None = None) -> Plan:
    """Plan a job from a sample of its valid lines (``items``) out of ``requests`` in all.

    Loads the analyzer (the embedding model) in this process on first use, learns the feedback
    recorded so far and reads the profiler's live figures, like the analyze stage.
    """
    from batchroute.analyzer import get_analyzer
    from batchroute.feedback import feedback_priors, quality_terms, sync_feedback
    from batchroute.profiler import get_profiler

    models = [m.name for m in registry.models]
    strongest = registry.strongest()
    default_lam, mu = weights_for(latency_class, objective)
    analyzer = get_analyzer()
    sync_feedback(analyzer)
    priors = feedback_priors(analyzer)
    live = get_profiler().snapshot(models)
    analyses = analyzer.analyze([it.prompt for it in items]) if items else []
    allowed = frozenset(allowed_models) if allowed_models else None
    decisions = []
    for it, a in zip(items, analyses, strict=True):
        predicted, prior_terms = quality_terms(a, registry, priors)
        inp = RouteInput(domain=a.domain, complexity=a.complexity, style=a.style, confidence=a.confidence,
                         prompt_tokens=it.prompt_tokens_est, latency_class=it.latency_class or latency_class,
                         max_tokens=it.max_tokens, predicted_quality=predicted, priors=prior_terms)
        decisions.append(decide(inp, registry, RoutePolicy(cost_weight=0.0, latency_weight=mu,
                                                           allowed=allowed, pinned=it.model, live=live)))
    terms = terms_from_decisions(decisions, models)
    scale = requests / len(items) if items else 0.0
    j = models.index(strongest.name)
    strongest_quality = float(terms.quality[:, j].mean()) if len(items) else 0.0
    strongest_cost = float(terms.cost_usd[:, j].sum()) * scale
    grid = sorted({*LAMBDA_GRID, default_lam})
    points = sweep(terms, mu, scale, strongest_quality, grid)
    default = next(p for p in points if p.cost_weight == default_lam)
    chosen, met, note = choose(points, default, budget_usd, min_quality)
    return Plan(requests=requests, sampled=len(items), strongest_model=strongest.name,
                strongest_cost_usd=round(strongest_cost, 6), strongest_quality=round(strongest_quality, 6),
                latency_weight=mu, points=points, chosen=chosen,
                goal={"budget_usd": budget_usd, "min_quality": min_quality, "objective": objective,
                      "latency_class": latency_class},
                met=met, note=note)
