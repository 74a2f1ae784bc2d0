"""Routing evaluation: an outcome-aware kNN router on real outcome data, scored as RouterBench and RouteLLM do.

Use::

    from batchroute.evaluation import eval_routing
    report = eval_routing([Path("routerbench_mbpp_train.jsonl")], [Path("routerbench_mbpp_test.jsonl")])
    report["tests"]["routerbench_mbpp_test.jsonl"]["aiq_router"]

Input: outcome files, one line per prompt::

    {"id", "prompt", "split"?, "outcomes": {MODEL: {"score": 0..1, "cost_usd"?, "output_chars"?}}}

A file with a ``split`` field gives its ``train`` rows to the index and its ``test`` rows to
the measurement (the same file may be named on both sides); rows without ``split`` are used on
the side the file was named.

Method (all fitted on TRAIN rows only; test rows are never in the index — asserted by id and by
prompt hash; train rows that share an id or a prompt with a test row are dropped first):

1. **Text**: template lines (few-shot examples and answer-format boilerplate of the benchmark
   prompts) are removed before embedding, so the neighbours are found by what differs between
   prompts: exactly what the analyzer does for its outcome neighbours
   (:mod:`batchroute.analyzer.templates`). Train rows lose the lines in >= 5% of their file's
   train prompts (as ``index build`` learns them per file); test rows those lines plus the ones
   in >= 5% of their own test file's prompts (as ``analyze`` does per batch; prompts only,
   never outcomes). Without it, every ARC prompt's nearest train row has cosine 1.0.
2. **Embedding** with the project's :class:`~batchroute.analyzer.Embedder`, cached on disk by
   content hash (its SQLite store under ``cache_dir``), so a second run embeds nothing.
3. **Prediction** for test prompt ``x`` and model ``m`` from its ``k`` nearest train rows (cosine),
   weights ``w = sim`` (or ``exp(-(1 - sim) / T)`` with a temperature ``T``)::

       q̂(x, m) = (Σ w·score + strength·prior_m) / (Σ w + strength)     # the analyzer's formula
       ĉ(x, m) = weighted mean cost of the neighbours (else m's mean train cost)

   ``prior_m`` is m's mean train score. ``k``, ``strength`` and ``T`` are chosen by repeated
   cross-validation on the train rows (2 × 5 folds; objective: AIQ gain over the single-model
   hull on the held-out folds) unless given.
4. **Decision** for a cost weight λ: ``argmax_m q̂ − λ·ĉ / c_max`` (``c_max``: the largest mean
   train cost of a model), as :mod:`batchroute.routing` scores. λ takes every value at which some
   prompt's decision changes (:func:`lambda_path`: the exact curve, from 0 to where the cheapest
   model always wins); each gives one (mean true cost, mean true score) point on the test rows,
   from the TRUE outcome of the chosen model.

Reading the result (see :func:`score_test`): ``chance`` scores the same router with its
predictions shuffled over the test rows. AIQ is taken over the upper hull of the router's many
curve points, so noise alone lifts it above the hull of the few single models; a gain means
something only where ``chance.aiq_gain_p_value`` is small. ``upper_bounds`` gives what perfect
predictions would reach and ``quality_auc`` how well q̂ ranks right above wrong answers per
model — together they say how far the predictor, not the decision rule, limits the router.

Predictors compared by cross-validation on RouterBench / RouteLLM train rows (kNN as here,
per-model ridge and logistic regression on the embedding, kNN + ridge stacks, a pooled-difficulty
prior, Platt calibration, a cascade rule, a pooled index): none beat this kNN by more than the
folds' noise, and per-model AUCs stay around 0.55 (0.72 on MMLU, mostly its subject) — so the
kNN stays.

Costs: ``cost_usd`` where every outcome records it; else, for two models, the share of calls to
the stronger one (RouteLLM's setting; APGR / CPT reported, with the predicted score difference
q̂_strong − q̂_weak as the threshold variable); else, for models of :data:`PRICE_TABLE` with
``output_chars``, list price × tokens (prompt chars / 4 in, output chars / 4 out).
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from batchroute.analyzer.index import index_embedder
from batchroute.analyzer.templates import grouped_template_lines, strip_template, template_lines
from batchroute.errors import InputError
from batchroute.evaluation.labels import iter_jsonl, prompt_hash
from batchroute.evaluation.metrics import (
    aiq,
    apgr,
    cpt,
    min_cost_reaching,
    nondecreasing_convex_hull,
    roc_auc,
    share_at_strong_fraction,
    shrunk_quality,
    threshold_curve,
)
from batchroute.settings import DEFAULT_OUTCOME_K, DEFAULT_OUTCOME_STRENGTH

log = logging.getLogger(__name__)

# Approximate public list prices, USD per million tokens (input, output), as they stood around
# the end of 2023 / early 2024 when the arena-bench-v1 answers were generated. APPROXIMATE: open
# models use typical hosted-inference prices (Together / Anyscale tiers by size); palm-2 was
# priced per character (converted at 4 characters per token). Only used where a file records no
# cost (arena_bench_v1); pass ``prices=`` to use your own.
PRICE_TABLE: dict[str, tuple[float, float]] = {
    "gpt-4-0314": (30.0, 60.0),
    "gpt-4-1106-preview": (10.0, 30.0),
    "gpt-3.5-turbo": (1.5, 2.0),            # gpt-3.5-turbo-0613
    "gpt-3.5-turbo-1106": (1.0, 2.0),
    "claude-1": (8.0, 24.0),
    "claude-2.1": (8.0, 24.0),
    "claude-instant-1": (0.8, 2.4),
    "Llama-2-70b-chat": (0.9, 0.9),
    "mistralai/Mixtral-8x7B-Instruct-v0.1": (0.6, 0.6),
    "mistralai/Mistral-7B-Instruct-v0.1": (0.2, 0.2),
    "openchat_3.5": (0.2, 0.2),
    "Starling-LM-7B-alpha": (0.2, 0.2),
    "palm-2-chat-bison-001": (1.0, 2.0),
    "vicuna-33b-v1.3": (0.8, 0.8),
    "llama-13b": (0.3, 0.3),
}
CHARS_PER_TOKEN = 4

ROUTELLM_REFERENCE = (
    "reference (RouteLLM's published headline; their routers, not ours): costs cut by over 85% on "
    "MT Bench, 45% on MMLU and 35% on GSM8K against GPT-4 alone while keeping 95% of GPT-4's "
    "performance (LMSYS blog 2024-07-01 as quoted by AINews; the MT Bench figure is also in the "
    "lm-sys/RouteLLM README). Their cost is USD with a far cheaper weak model, so close to the share "
    "of GPT-4 calls saved: compare with 1 - strong_share_at_95pct. Their routers learnt from Chatbot "
    "Arena preferences, not from the benchmark's own rows.")
ROUTERBENCH_REFERENCE = (
    "reference (approximate, from the RouterBench paper, Hu et al. 2024): its kNN and MLP routers "
    "(MiniLM embeddings) did not reliably beat the non-decreasing convex hull of the single models "
    "(AIQ router <= AIQ single hull on most tasks); the oracle lies far above both.")

CV_FOLDS = 5
CV_REPEATS = 2


@dataclass(frozen=True)
class KnnParams:
    """The kNN router's knobs. ``temperature`` None: weights are the cosine similarities."""

    k: int = DEFAULT_OUTCOME_K  # the analyzer's defaults, so "default_params" is what production runs
    strength: float = DEFAULT_OUTCOME_STRENGTH
    temperature: float | None = None

    def weights(self, sims: np.ndarray) -> np.ndarray:
        """Neighbour weights for similarities ``sims`` (0 for non-positive similarity)."""
        s = np.asarray(sims, dtype=np.float64)
        w = np.clip(s, 0.0, 1.0) if self.temperature is None else np.exp(-(1.0 - s) / self.temperature)
        return np.where(s > 0, w, 0.0)


DEFAULT_PARAMS = KnnParams()
PARAM_GRID: tuple[KnnParams, ...] = tuple(
    KnnParams(k, s, t) for k in (5, 10, 20, 40, 80, 160, 320) for s in (1.0, 5.0, 20.0) for t in (None, 0.1, 0.03))


# ---- data ---------------------------------------------------------------------------------------


@dataclass
class OutcomeSet:
    """Rows of outcome files on one side (train or test) as arrays over a fixed model list.

    ``scores[i, j]`` / ``costs[i, j]`` are NaN where row ``i`` has no usable outcome of model ``j``.
    """

    ids: list[str]
    prompts: list[str]
    files: list[str]
    raw: list[dict[str, dict[str, Any]]]
    scores: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    costs: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, idx: Sequence[int] | np.ndarray) -> OutcomeSet:
        """The rows ``idx`` (in that order)."""
        ix = [int(i) for i in idx]
        return OutcomeSet([self.ids[i] for i in ix], [self.prompts[i] for i in ix], [self.files[i] for i in ix],
                          [self.raw[i] for i in ix], self.scores[ix] if len(self.scores) else self.scores,
                          self.costs[ix] if len(self.costs) else self.costs)


def read_outcomes(paths: Sequence[Path], side: str) -> OutcomeSet:
    """The rows of ``paths`` for ``side`` ("train" / "test"): rows whose ``split`` is ``side`` or absent."""
    ids: list[str] = []
    prompts: list[str] = []
    files: list[str] = []
    raw: list[dict[str, dict[str, Any]]] = []
    for path in paths:
        for n, row in iter_jsonl(path):
            if not isinstance(row, dict) or not isinstance(row.get("prompt"), str) \
                    or not isinstance(row.get("outcomes"), dict):
                raise InputError("needs 'prompt' (string) and 'outcomes' (object)", source=str(path), line=n)
            if row.get("split") not in (None, side):
                continue
            ids.append(str(row.get("id", f"{path.name}:{n}")))
            prompts.append(row["prompt"])
            files.append(path.name)
            raw.append({str(m): rec for m, rec in row["outcomes"].items() if isinstance(rec, dict)})
    return OutcomeSet(ids, prompts, files, raw)


def _num(x: object) -> float | None:
    if isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(float(x)):
        return float(x)
    return None


def choose_cost_mode(train: OutcomeSet, models: Sequence[str], prices: dict[str, tuple[float, float]]) -> str:
    """How costs are known: ``recorded`` (every outcome has ``cost_usd``); else ``call_share`` for two
    models (RouteLLM's setting: cost = share of calls to the stronger); else ``price_table`` when
    every model has a price and outcomes give ``output_chars``; else an InputError."""
    recs = [r[m] for r in train.raw for m in models if m in r]
    if recs and all(_num(rec.get("cost_usd")) is not None for rec in recs):
        return "recorded"
    if len(models) == 2:
        return "call_share"
    if all(m in prices for m in models) and any(_num(rec.get("output_chars")) is not None for rec in recs):
        return "price_table"
    missing = [m for m in models if m not in prices]
    raise InputError("outcomes carry no cost_usd and these models are not in the price table: "
                     f"{missing}; give cost_usd, pass prices=, or compare exactly two models")


def fill_arrays(data: OutcomeSet, models: Sequence[str], mode: str, prices: dict[str, tuple[float, float]],
                strong: str | None) -> None:
    """Fill ``data.scores`` / ``data.costs`` for ``models`` under cost ``mode`` (NaN where unknown)."""
    n, m = len(data), len(models)
    scores = np.full((n, m), np.nan)
    costs = np.full((n, m), np.nan)
    for i, row in enumerate(data.raw):
        for j, model in enumerate(models):
            rec = row.get(model)
            if rec is None or (s := _num(rec.get("score"))) is None:
                continue
            if mode == "recorded":
                c = _num(rec.get("cost_usd"))
            elif mode == "price_table":
                chars = _num(rec.get("output_chars"))
                pin, pout = prices[model]
                c = None if chars is None else (len(data.prompts[i]) / CHARS_PER_TOKEN * pin
                                                + chars / CHARS_PER_TOKEN * pout) / 1e6
            else:
                c = 1.0 if model == strong else 0.0
            if c is not None:
                scores[i, j] = min(max(s, 0.0), 1.0)
                costs[i, j] = c
    data.scores, data.costs = scores, costs


def _by_file(data: OutcomeSet) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for p, f in zip(data.prompts, data.files, strict=True):
        out.setdefault(f, []).append(p)
    return out


def embed(texts: Sequence[str], embedder: Any, chunk: int = 1000) -> np.ndarray:
    """Unit embeddings of ``texts``; the embedder caches them on disk by content hash.

    Encoded ``chunk`` texts at a time so an interrupted run keeps what it embedded.
    """
    if not texts:
        return np.zeros((0, 384), dtype=np.float32)
    parts = []
    for a in range(0, len(texts), chunk):
        parts.append(np.asarray(embedder.encode(list(texts[a:a + chunk])), dtype=np.float32))
        if len(texts) > chunk:
            log.info("embedded %d / %d texts", min(a + chunk, len(texts)), len(texts))
    return np.concatenate(parts)


# ---- kNN prediction -----------------------------------------------------------------------------


def knn(queries: np.ndarray, index: np.ndarray, k: int, chunk: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` rows of ``index`` by inner product for each query: ``(sims, idx)`` sorted descending."""
    k = max(1, min(k, len(index)))
    sims = np.empty((len(queries), k), dtype=np.float32)
    idx = np.empty((len(queries), k), dtype=np.int64)
    for a in range(0, len(queries), chunk):
        s = queries[a:a + chunk] @ index.T
        part = np.argpartition(-s, k - 1, axis=1)[:, :k] if k < s.shape[1] else np.tile(np.arange(k), (len(s), 1))
        ps = np.take_along_axis(s, part, axis=1)
        order = np.argsort(-ps, axis=1, kind="stable")
        sims[a:a + chunk] = np.take_along_axis(ps, order, axis=1)
        idx[a:a + chunk] = np.take_along_axis(part, order, axis=1)
    return sims, idx


def predict(sims: np.ndarray, idx: np.ndarray, train_scores: np.ndarray, train_costs: np.ndarray,
            prior: np.ndarray, cost_prior: np.ndarray, params: KnnParams) -> tuple[np.ndarray, np.ndarray]:
    """``(q̂, ĉ)``, each ``(n_queries, n_models)``, from the first ``params.k`` neighbours."""
    k = min(params.k, sims.shape[1])
    w = params.weights(sims[:, :k])[:, :, None]                       # (n, k, 1)
    s = train_scores[idx[:, :k]]                                        # (n, k, m)
    c = train_costs[idx[:, :k]]
    has = ~np.isnan(s)
    wsum = (w * has).sum(axis=1)
    ssum = (w * np.where(has, s, 0.0)).sum(axis=1)
    q = shrunk_quality(ssum, wsum, prior[None, :], params.strength)
    has_c = ~np.isnan(c)
    cw = (w * has_c).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        chat = np.where(cw > 0, (w * np.where(has_c, c, 0.0)).sum(axis=1) / np.where(cw > 0, cw, 1.0),
                        cost_prior[None, :])
    return q, chat


def lambda_grid(q: np.ndarray, c: np.ndarray, n: int = 240) -> np.ndarray:
    """λ values from 0 to past the last switch (where the predicted-cheapest model always wins).

    A prompt switches between models a (costlier, better) and b at λ = (q̂a − q̂b) / (ĉa − ĉb);
    the grid takes quantiles of all those switch points, so it is dense where decisions change.
    An approximation that can miss decisions; the evaluation takes every one (:func:`lambda_path`).
    """
    dq = q[:, :, None] - q[:, None, :]
    dc = c[:, :, None] - c[:, None, :]
    ok = (dc > 1e-15) & (dq > 0)
    cross = (dq[ok] / dc[ok]) if ok.any() else np.zeros(0)
    if not len(cross):
        return np.array([0.0, 1.0])
    qs = np.quantile(cross, np.linspace(0.0, 1.0, n))
    return np.unique(np.concatenate([[0.0], qs * (1 - 1e-9), qs * (1 + 1e-9), [cross.max() * 1.01]]))


def lambda_path(q: np.ndarray, c_norm: np.ndarray, true_s: np.ndarray, true_c: np.ndarray, *,
                keep_choices: bool = False) -> list[dict[str, Any]]:
    """The router's exact curve: one ``{lambda, cost, quality}`` per distinct decision of :func:`decide`.

    As λ grows from 0 each prompt walks down the upper envelope of its lines ``q̂_m − λ·ĉ_m``,
    switching to a cheaper model at ``λ = (q̂_cur − q̂_m) / (ĉ_cur − ĉ_m)`` (ties: the cheaper,
    as :func:`decide`). Every switch of every prompt gives a point, so no point of the curve is
    missed, as a grid can miss them. ``lambda`` is the smallest λ at which that decision holds. With
    ``keep_choices`` each point also has ``choice`` (the model index per prompt).
    """
    n, m = q.shape
    rows = np.arange(n)
    state = decide(q, c_norm, 0.0)
    start = state.copy()
    ev_lam: list[np.ndarray] = []
    ev_row: list[np.ndarray] = []
    ev_to: list[np.ndarray] = []
    prev = np.zeros(n)
    for _ in range(m - 1):                   # each switch goes to a strictly cheaper model
        dc = c_norm[rows, state][:, None] - c_norm
        cheaper = dc > 0
        with np.errstate(divide="ignore", invalid="ignore"):
            lam = np.where(cheaper, (q[rows, state][:, None] - q) / np.where(cheaper, dc, 1.0), np.inf)
        # Monotone per prompt (the envelope is convex; this only absorbs rounding).
        lam = np.maximum(lam, prev[:, None])
        lo = lam.min(axis=1)
        go = np.isfinite(lo)
        if not go.any():
            break
        tied = lam <= lo[:, None] * (1 + 1e-12) + 1e-300
        nxt = np.argmin(np.where(tied, c_norm, np.inf), axis=1)
        r = rows[go]
        ev_lam.append(lo[go])
        ev_row.append(r)
        ev_to.append(nxt[go])
        state = np.where(go, nxt, state)
        prev = np.where(go, lo, prev)
    out: list[dict[str, Any]] = [{"lambda": 0.0, "cost": float(true_c[rows, start].mean()),
                                  "quality": float(true_s[rows, start].mean())}]
    if keep_choices:
        out[0]["choice"] = start.copy()
    if not ev_lam:
        return out
    lams, ev_r, ev_t = np.concatenate(ev_lam), np.concatenate(ev_row), np.concatenate(ev_to)
    # The model each event leaves: the previous event's target for that prompt (or its start).
    order = np.lexsort((lams, ev_r))
    frm = np.empty_like(ev_t)
    first = np.concatenate([[True], ev_r[order][1:] != ev_r[order][:-1]])
    frm[order] = np.where(first, start[ev_r[order]], np.roll(ev_t[order], 1))
    order = np.argsort(lams, kind="stable")
    lams, ev_r, ev_t, frm = lams[order], ev_r[order], ev_t[order], frm[order]
    cost = out[0]["cost"] + np.cumsum(true_c[ev_r, ev_t] - true_c[ev_r, frm]) / n
    qual = out[0]["quality"] + np.cumsum(true_s[ev_r, ev_t] - true_s[ev_r, frm]) / n
    # Switches closer than rounding (relative 1e-9) are one decision: decide()'s tie rule cannot
    # tell them apart.
    ends = np.flatnonzero(np.concatenate([lams[1:] > lams[:-1] * (1 + 1e-9) + 1e-15, [True]]))
    choice = start.copy()
    a = 0
    for e in ends.tolist():
        pt: dict[str, Any] = {"lambda": float(lams[e]), "cost": float(cost[e]), "quality": float(qual[e])}
        if keep_choices:
            choice[ev_r[a:e + 1]] = ev_t[a:e + 1]
            pt["choice"] = choice.copy()
        out.append(pt)
        a = e + 1
    return out


def decide(q: np.ndarray, c_norm: np.ndarray, lam: float) -> np.ndarray:
    """Per prompt, the model index maximising ``q̂ − λ·ĉ`` (ties: the cheaper prediction)."""
    score = q - lam * c_norm - 1e-12 * c_norm
    return np.argmax(score, axis=1)


def router_points(q: np.ndarray, c_norm: np.ndarray, true_s: np.ndarray, true_c: np.ndarray,
                  lambdas: Sequence[float] | np.ndarray) -> list[dict[str, Any]]:
    """One ``{lambda, cost, quality, choice}`` per λ on the given rows (true outcomes of the chosen model)."""
    rows = np.arange(len(q))
    out = []
    for lam in lambdas:
        ch = decide(q, c_norm, float(lam))
        out.append({"lambda": float(lam), "cost": float(true_c[rows, ch].mean()),
                    "quality": float(true_s[rows, ch].mean()), "choice": ch})
    return out


# ---- evaluation of one test set ----------------------------------------------------------------


def _r(x: float | None, digits: int = 6) -> float | None:
    """Round to ``digits`` significant digits (None stays None)."""
    if x is None or not math.isfinite(x):
        return None
    return float(f"{x:.{digits}g}")


def _curve(q: np.ndarray, c_norm: np.ndarray, s: np.ndarray, c: np.ndarray, mode: str, j_s: int,
           lambdas: Sequence[float] | None, keep_choices: bool = False) -> list[dict[str, Any]]:
    """The router's (cost, quality) points: the threshold curve for two models (``call_share``), else
    :func:`router_points` over ``lambdas`` or, without them, the exact :func:`lambda_path`."""
    if mode == "call_share":
        share, qual = threshold_curve(q[:, j_s] - q[:, 1 - j_s], s[:, 1 - j_s], s[:, j_s])
        return [{"lambda": None, "cost": float(x), "quality": float(y)} for x, y in zip(share, qual, strict=True)]
    if lambdas is not None:
        pts = router_points(q, c_norm, s, c, np.asarray(lambdas, dtype=np.float64))
        if not keep_choices:
            for pt in pts:
                pt.pop("choice")
        return pts
    return lambda_path(q, c_norm, s, c, keep_choices=keep_choices)


def _reach_ratio(points: Sequence[tuple[float, float]], best_q: float, best_c: float) -> float | None:
    """Least cost of ``points`` reaching ``best_q``, as a share of ``best_c`` (None: never reached)."""
    reach = min_cost_reaching(points, best_q)
    return reach / best_c if reach is not None and best_c > 0 else None


def _pts(curve: list[dict[str, Any]]) -> list[tuple[float, float]]:
    return [(float(p["cost"]), float(p["quality"])) for p in curve]


def score_test(q: np.ndarray, chat: np.ndarray, test: OutcomeSet, models: Sequence[str], c_scale: float,
               mode: str, lambdas: Sequence[float] | None, strong: str | None, bootstrap: int = 0,
               seed: int = 0, diagnostics: bool = False) -> dict[str, Any]:
    """All metrics of the router with predictions ``(q, chat)`` on the (complete) test rows.

    Without ``lambdas`` the curve is exact (:func:`lambda_path`: every distinct decision). With
    ``bootstrap`` > 0, ``aiq_gain_ci95`` is a percentile interval of AIQ(router) − AIQ(single
    hull) over that many resamples of the test rows (the router's decisions held fixed), and
    ``chance`` compares the router with as many permutations of its predictions over the test
    rows (:func:`_permutation_null`). ``diagnostics`` adds ``upper_bounds`` and ``quality_auc``.
    """
    s, c = test.scores, test.costs
    n = s.shape[0]
    single = {name: {"cost": float(c[:, j].mean()), "quality": float(s[:, j].mean())}
              for j, name in enumerate(models)}
    single_pts = [(v["cost"], v["quality"]) for v in single.values()]
    cmin, cmax = min(p[0] for p in single_pts), max(p[0] for p in single_pts)
    c_norm = chat / c_scale
    j_s = list(models).index(strong or "") if mode == "call_share" else -1
    curve = _curve(q, c_norm, s, c, mode, j_s, lambdas, keep_choices=True)
    choice_at: list[np.ndarray] = [p.pop("choice") for p in curve if "choice" in p]
    router_pts = _pts(curve)
    # Ties on quality go to the cheaper model: the reference is the least a single model must cost
    # to reach the best quality (with gpt-4 and gpt-3.5 tied, "half of gpt-4's cost" would be met
    # by gpt-3.5 alone, with no routing at all).
    best = max(models, key=lambda name: (single[name]["quality"], -single[name]["cost"]))
    best_q, best_c = single[best]["quality"], single[best]["cost"]
    reach_hull = min_cost_reaching(router_pts, best_q, hull=True)
    best_per_row = s.max(axis=1)
    oracle_j = np.argmax(np.where(s >= best_per_row[:, None] - 1e-12, -c, -np.inf), axis=1)
    out: dict[str, Any] = {
        "n_test": n,
        "cost_unit": "share of calls to the strong model" if mode == "call_share" else "USD per prompt",
        "aiq_router": _r(aiq(router_pts, cmin, cmax)),
        "aiq_single_hull": _r(aiq(single_pts, cmin, cmax)),
        "best_single_model": best,
        "best_single_quality": _r(best_q),
        "best_single_cost": _r(best_c),
        "router_max_quality": _r(max(p[1] for p in router_pts)),
        "cost_ratio_at_best_quality": _r(_reach_ratio(router_pts, best_q, best_c)),
        "cost_ratio_at_best_quality_hull": _r(reach_hull / best_c) if reach_hull is not None and best_c > 0 else None,
        "single_models": {k: {"cost": _r(v["cost"]), "quality": _r(v["quality"])} for k, v in single.items()},
        "random": {"cost": _r(float(c.mean())), "quality": _r(float(s.mean()))},
        "oracle": {"cost": _r(float(c[np.arange(n), oracle_j].mean())),
                   "quality": _r(float(best_per_row.mean()))},
        "router_hull": [{"cost": _r(x), "quality": _r(y)} for x, y in nondecreasing_convex_hull(router_pts)],
        "router_curve": _thin(curve, 40),
        "router_curve_points": len(curve),
    }
    out["aiq_gain"] = _r((out["aiq_router"] or 0.0) - (out["aiq_single_hull"] or 0.0), 4)
    out["router_beats_single_hull"] = (out["aiq_router"] or 0) > (out["aiq_single_hull"] or 0)
    if bootstrap > 0:
        if mode == "call_share":
            resample = _resampler_call_share(q[:, j_s] - q[:, 1 - j_s], s, j_s)
        else:
            resample = _resampler_lambda(np.stack(choice_at), s, c)
        gains = _bootstrap_gain(resample, s, c, bootstrap, seed)
        out["aiq_gain_ci95"] = [_r(float(x), 4) for x in np.percentile(gains, [2.5, 97.5])]
        out["bootstrap_resamples"] = bootstrap
    ratio = out["cost_ratio_at_best_quality"]
    out["best_quality_at_half_cost"] = ratio is not None and ratio <= 0.5
    if choice_at:
        # Which models the router uses at λ = 0 and at the middle of the sweep.
        mid = choice_at[len(choice_at) // 2]
        out["choice_share_lambda0"] = _shares(choice_at[0], models)
        out["choice_share_mid_sweep"] = _shares(mid, models)
    if mode == "call_share":
        qw, qs = float(s[:, 1 - j_s].mean()), float(s[:, j_s].mean())
        share = np.array([p["cost"] for p in curve])
        qual = np.array([p["quality"] for p in curve])
        out.update({"strong_model": strong, "weak_model": models[1 - j_s],
                    "apgr": _r(apgr(share, qual, qw, qs), 4),
                    "cpt50": _r(cpt(share, qual, qw, qs, 0.5), 4),
                    "cpt80": _r(cpt(share, qual, qw, qs, 0.8), 4),
                    "apgr_random": 0.5, "cpt50_random": 0.5, "cpt80_random": 0.8,
                    "strong_share_at_95pct": _r(share_at_strong_fraction(share, qual, qw, qs), 4),
                    "strong_share_at_95pct_random": _r(share_at_strong_fraction([0.0, 1.0], [qw, qs], qw, qs), 4),
                    "reference": ROUTELLM_REFERENCE})
    else:
        out["reference"] = ROUTERBENCH_REFERENCE
    if bootstrap > 0:
        out["chance"] = _permutation_null(q, c_norm, s, c, mode, j_s, lambdas, out, bootstrap, seed)
    if diagnostics:
        out["quality_auc"] = _quality_auc(q, s, models)
        out["upper_bounds"] = _upper_bounds(q, c_norm, s, c, mode, j_s, best_q, best_c, cmin, cmax, models)
    return out


def _permutation_null(q: np.ndarray, c_norm: np.ndarray, s: np.ndarray, c: np.ndarray, mode: str, j_s: int,
                      lambdas: Sequence[float] | None, res: dict[str, Any], reps: int, seed: int) -> dict[str, Any]:
    """The same router with its predictions shuffled over the test rows, ``reps`` times.

    Shuffling keeps how often each model is chosen along the curve but breaks the link between a
    prompt and its prediction: what such a router scores is chance. AIQ takes the upper hull of
    many noisy curve points, so even a shuffled router "beats" the single-model hull (11 points) by a
    margin: the ``aiq_gain`` of a router shows skill only where it clears this null
    (``aiq_gain_p_value``: the share of shuffles scoring at least as high, +1 smoothed).
    """
    rng = np.random.default_rng(seed + 1)
    single = list(zip(c.mean(axis=0).tolist(), s.mean(axis=0).tolist(), strict=True))
    cmin, cmax = min(p[0] for p in single), max(p[0] for p in single)
    hull_aiq = aiq(single, cmin, cmax)
    best_q, best_c = float(res["best_single_quality"]), float(res["best_single_cost"])
    gains, ratios, apgrs = np.empty(reps), np.full(reps, np.nan), np.full(reps, np.nan)
    qw, qs = float(s[:, 1 - j_s].mean()), float(s[:, j_s].mean())
    for b in range(reps):
        perm = rng.permutation(len(q))
        curve = _curve(q[perm], c_norm[perm], s, c, mode, j_s, lambdas)
        pts = _pts(curve)
        gains[b] = aiq(pts, cmin, cmax) - hull_aiq
        r = _reach_ratio(pts, best_q, best_c)
        ratios[b] = np.nan if r is None else r
        if mode == "call_share":
            apgrs[b] = apgr(np.array([p[0] for p in pts]), np.array([p[1] for p in pts]), qw, qs) or np.nan
    mine_gain = (res["aiq_router"] or 0.0) - (res["aiq_single_hull"] or 0.0)
    out: dict[str, Any] = {
        "permutations": reps,
        "aiq_gain_mean": _r(float(gains.mean()), 4),
        "aiq_gain_p95": _r(float(np.percentile(gains, 95)), 4),
        "aiq_gain_p_value": _r((1 + int((gains >= mine_gain - 1e-12).sum())) / (1 + reps), 3),
        "cost_ratio_at_best_quality_median": _r(float(np.nanmedian(ratios))) if np.isfinite(ratios).any() else None,
        "cost_ratio_never_reached_share": _r(float(np.isnan(ratios).mean()), 3),
    }
    mine = res["cost_ratio_at_best_quality"]
    if mine is not None:
        out["cost_ratio_p_value"] = _r((1 + int((np.nan_to_num(ratios, nan=np.inf) <= mine).sum())) / (1 + reps), 3)
    if mode == "call_share":
        out["apgr_mean"] = _r(float(np.nanmean(apgrs)), 4)
        out["apgr_p95"] = _r(float(np.nanpercentile(apgrs, 95)), 4)
        out["apgr_p_value"] = _r((1 + int((apgrs >= (res["apgr"] or 0.0) - 1e-12).sum())) / (1 + reps), 3)
    out["router_beats_chance"] = out["aiq_gain_p_value"] < 0.05
    return out


def _quality_auc(q: np.ndarray, s: np.ndarray, models: Sequence[str]) -> dict[str, Any]:
    """Per model, how well q̂ ranks the test prompts it got right above those it got wrong (0.5: chance)."""
    per = {m: roc_auc(q[:, j], s[:, j]) for j, m in enumerate(models)}
    vals = [v for v in per.values() if v is not None]
    return {"mean": _r(float(np.mean(vals)), 4) if vals else None,
            "per_model": {m: _r(v, 4) for m, v in per.items()}}


CHEAP_SHARE = 0.2


def _upper_bounds(q: np.ndarray, c_norm: np.ndarray, s: np.ndarray, c: np.ndarray, mode: str, j_s: int,
                  best_q: float, best_c: float, cmin: float, cmax: float, models: Sequence[str]) -> dict[str, Any]:
    """What perfect knowledge would reach on these test rows (measurements, never used to choose).

    ``oracle``: the router given every true score (and true cost). ``cheap_models_oracle`` (three
    or more models): true scores only for the cheap models (predicted mean cost below
    :data:`CHEAP_SHARE` of the dearest), the router's own q̂ for the others — what a router
    that knew exactly when a cheap model suffices would reach.
    """
    def summary(qq: np.ndarray, cc: np.ndarray) -> dict[str, Any]:
        pts = _pts(_curve(qq, cc, s, c, mode, j_s, None))
        out: dict[str, Any] = {"aiq": _r(aiq(pts, cmin, cmax)),
                               "cost_ratio_at_best_quality": _r(_reach_ratio(pts, best_q, best_c))}
        if mode == "call_share":
            qw, qs = float(s[:, 1 - j_s].mean()), float(s[:, j_s].mean())
            out["apgr"] = _r(apgr(np.array([p[0] for p in pts]), np.array([p[1] for p in pts]), qw, qs), 4)
        return out

    c_true = c / max(float(c.mean(axis=0).max()), 1e-300)
    res = {"oracle": summary(s.astype(np.float64), c_true)}
    if mode != "call_share":
        mean_c = c_norm.mean(axis=0)
        cheap = mean_c < CHEAP_SHARE * mean_c.max()
        if cheap.any() and not cheap.all():
            res["cheap_models_oracle"] = {**summary(np.where(cheap[None, :], s, q), c_norm),
                                          "models": [m for m, ch in zip(models, cheap, strict=True) if ch]}
    return res


def _resampler_lambda(choices: np.ndarray, s: np.ndarray, c: np.ndarray) -> Any:
    """Router points on resampled rows ``ix`` for fixed λ decisions ``choices`` (n_lambda, n)."""
    rows = np.arange(s.shape[0])[None, :]
    qv, cv = s[rows, choices], c[rows, choices]

    def points(ix: np.ndarray) -> list[tuple[float, float]]:
        return list(zip(cv[:, ix].mean(axis=1).tolist(), qv[:, ix].mean(axis=1).tolist(), strict=True))

    return points


def _resampler_call_share(route_score: np.ndarray, s: np.ndarray, j_s: int) -> Any:
    """Threshold-curve points on resampled rows ``ix`` for a two-model router."""

    def points(ix: np.ndarray) -> list[tuple[float, float]]:
        share, qual = threshold_curve(route_score[ix], s[ix, 1 - j_s], s[ix, j_s])
        return list(zip(share.tolist(), qual.tolist(), strict=True))

    return points


def _bootstrap_gain(points: Any, s: np.ndarray, c: np.ndarray, reps: int, seed: int) -> np.ndarray:
    """AIQ(router) − AIQ(single hull) on ``reps`` resamples (with replacement) of the test rows."""
    rng = np.random.default_rng(seed)
    n = s.shape[0]
    gains = np.empty(reps)
    for b in range(reps):
        ix = rng.integers(0, n, n)
        sq, sc = s[ix].mean(axis=0), c[ix].mean(axis=0)
        singles = list(zip(sc.tolist(), sq.tolist(), strict=True))
        lo, hi = float(sc.min()), float(sc.max())
        gains[b] = aiq(points(ix), lo, hi) - aiq(singles, lo, hi)
    return gains


def _shares(choice: np.ndarray, models: Sequence[str]) -> dict[str, float]:
    cnt = np.bincount(choice, minlength=len(models)) / max(len(choice), 1)
    return {models[j]: round(float(v), 3) for j, v in enumerate(cnt) if v > 0}


def _thin(curve: list[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    """At most ``n`` points of the curve, evenly spread, rounded for output."""
    if len(curve) > n:
        step = (len(curve) - 1) / (n - 1)
        curve = [curve[round(i * step)] for i in range(n)]
    return [{"lambda": _r(p["lambda"]), "cost": _r(p["cost"]), "quality": _r(p["quality"])} for p in curve]


# ---- cross-validation on train rows -------------------------------------------------------------


def _fold_of(prompts: Sequence[str], folds: int, seed: int) -> np.ndarray:
    """Fold of each row from a seeded hash of its prompt (duplicates share a fold)."""
    return np.array([int(hashlib.sha256(f"{seed}|{prompt_hash(p)}".encode()).hexdigest()[:8], 16) % folds
                     for p in prompts])


def cross_validate(emb: np.ndarray, train: OutcomeSet, c_scale: float, mode: str, strong: str | None,
                   models: Sequence[str], grid: Sequence[KnnParams], folds: int = CV_FOLDS,
                   seed: int = 0, repeats: int = CV_REPEATS, queries: np.ndarray | None = None) -> dict[str, Any]:
    """Mean held-out AIQ gain of each parameter set over ``repeats`` × ``folds`` folds of the train rows.

    The gain is AIQ(router) − AIQ(single hull) on the held-out fold; the best parameter set wins.
    ``emb``: the train rows as the index holds them; ``queries``: the same rows as a query would
    be embedded (None: ``emb``), so the held-out fold is searched as test prompts are.
    """
    queries = emb if queries is None else queries
    kmax = max(p.k for p in grid)
    scores: dict[KnnParams, list[float]] = {p: [] for p in grid}
    for rep, f in ((r, f) for r in range(repeats) for f in range(folds)):
        fold = _fold_of(train.prompts, folds, seed + rep)
        held = np.flatnonzero((fold == f) & ~np.isnan(train.scores).any(axis=1) & ~np.isnan(train.costs).any(axis=1))
        rest = np.flatnonzero(fold != f)
        if len(held) < 5 or len(rest) < 5:
            continue
        part = train.subset(held)
        sub_s, sub_c = train.scores[rest], train.costs[rest]
        prior = np.nanmean(sub_s, axis=0)
        cost_prior = np.nanmean(sub_c, axis=0)
        sims, idx = knn(queries[held], emb[rest], kmax)
        for p in grid:
            q, chat = predict(sims, idx, sub_s, sub_c, prior, cost_prior, p)
            res = score_test(q, chat, part, models, c_scale, mode, None, strong)
            scores[p].append(float(res["aiq_router"] or 0.0) - float(res["aiq_single_hull"] or 0.0))
    table = sorted(((float(np.mean(v)), p) for p, v in scores.items() if v), key=lambda t: -t[0])
    if not table:
        return {"best": DEFAULT_PARAMS, "table": []}
    return {"best": table[0][1],
            "table": [{**asdict(p), "cv_aiq_gain": round(g, 5)} for g, p in table[:10]],
            "default_cv_aiq_gain": next((round(g, 5) for g, p in table if p == DEFAULT_PARAMS), None)}


# ---- the entry point ----------------------------------------------------------------------------


def _sample(data: OutcomeSet, limit: int | None, rng: np.random.Generator) -> OutcomeSet:
    if limit is None or len(data) <= limit:
        return data
    return data.subset(np.sort(rng.choice(len(data), size=limit, replace=False)))


def eval_routing(train: Sequence[Path | str], test: Sequence[Path | str], lambdas: Sequence[float] | None = None,
                 seed: int = 0, *, max_train: int | None = None, max_test: int | None = None,
                 params: KnnParams | None = None, tune: bool = True, embedder: Any = None,
                 cache_dir: Path | None = None, prices: dict[str, tuple[float, float]] | None = None,
                 strip_boilerplate: bool = True, bootstrap: int = 200) -> dict[str, Any]:
    """Benchmark the outcome-aware kNN router: train on ``train`` files, measure on each ``test`` file.

    Args:
        train: outcome files whose train rows (``split`` "train" or absent) build the index.
        test: outcome files whose test rows (``split`` "test" or absent) are measured, each file
            on its own.
        lambdas: the cost weights to sweep (default: an adaptive grid from 0 to where the cheapest
            model always wins).
        seed: for sampling (``max_train`` / ``max_test``) and the cross-validation folds.
        max_train / max_test: use at most this many rows (a seeded random sample) for quick runs.
        params: kNN parameters; default: chosen by cross-validation on the train rows (``tune``),
            else :data:`DEFAULT_PARAMS`.
        embedder: an :class:`~batchroute.analyzer.Embedder`; default one caching under ``cache_dir``
            (default ``settings.data_dir / "eval_cache"``).
        prices: ``{model: (input, output) USD per Mtok}`` for files without costs (default
            :data:`PRICE_TABLE`).
        strip_boilerplate: remove template lines before embedding (see the module docstring).
        bootstrap: resamples of the test rows for the 95% interval of the AIQ gain, and as many
            shuffles of the predictions for the chance level (0: neither).

    Returns a dict: ``models``, ``cost_mode``, ``params``, ``cv``, ``train_rows``, ``timing`` and
    ``tests`` (per test file name: see :func:`score_test` — ``aiq_router``, ``aiq_single_hull``,
    ``best_single_model``, ``best_single_quality``, ``router_max_quality``,
    ``cost_ratio_at_best_quality``, and ``apgr``, ``cpt50``, ``cpt80`` for two-model files; with
    ``bootstrap`` > 0 also ``aiq_gain_ci95`` and ``chance`` (the router against ``bootstrap``
    shuffles of its predictions); always ``quality_auc`` and ``upper_bounds``).
    """
    t_start = time.perf_counter()
    train_paths, test_paths = [Path(p) for p in train], [Path(p) for p in test]
    rng = np.random.default_rng(seed)
    price_table = PRICE_TABLE if prices is None else prices
    tr = read_outcomes(train_paths, "train")
    te = read_outcomes(test_paths, "test")
    if not len(tr):
        raise InputError("no train rows in " + ", ".join(map(str, train_paths)))
    if not len(te):
        raise InputError("no test rows in " + ", ".join(map(str, test_paths)))
    # Leakage guard: no train row may share an id or a prompt with any test row.
    test_ids, test_hashes = set(te.ids), {prompt_hash(p) for p in te.prompts}
    keep = [i for i, (rid, p) in enumerate(zip(tr.ids, tr.prompts, strict=True))
            if rid not in test_ids and prompt_hash(p) not in test_hashes]
    dropped_overlap = len(tr) - len(keep)
    tr = _sample(tr.subset(keep), max_train, rng)
    te = _sample(te, max_test, rng)
    # Checked even under ``python -O``: a number measured on indexed rows is not a result.
    if set(tr.ids) & test_ids:
        raise AssertionError("a test id is in the train index")
    if {prompt_hash(p) for p in tr.prompts} & test_hashes:
        raise AssertionError("a test prompt is in the train index")

    model_count = Counter(m for r in tr.raw for m in r)
    models = sorted(m for m, cnt in model_count.items() if cnt >= 0.5 * len(tr))
    if len(models) < 2:
        raise InputError(f"need outcomes of at least two models in the train rows, found {models}")
    mode = choose_cost_mode(tr, models, price_table)
    means = {m: float(np.mean([_num(r[m].get("score")) or 0.0 for r in tr.raw if m in r])) for m in models}
    strong = max(models, key=lambda m: means[m]) if mode == "call_share" else None
    fill_arrays(tr, models, mode, price_table, strong)
    fill_arrays(te, models, mode, price_table, strong)
    prior = np.nanmean(tr.scores, axis=0)
    cost_prior = np.nanmean(tr.costs, axis=0)
    c_scale = float(np.max(cost_prior)) or 1.0

    # Embeddings of the prompts without their template lines, cached on disk by content hash.
    t0 = time.perf_counter()
    if embedder is None:
        from batchroute.analyzer import Embedder
        from batchroute.settings import get_settings

        embedder = Embedder.from_settings(cache_dir=cache_dir or get_settings().data_dir / "eval_cache")
    lines, te_texts = frozenset[str](), list(te.prompts)
    if strip_boilerplate:
        lines = grouped_template_lines(_by_file(tr).values())
        te_lines = {f: lines | template_lines(ps) for f, ps in _by_file(te).items()}
        te_texts = [strip_template(p, te_lines[f]) for p, f in zip(te.prompts, te.files, strict=True)]
    # As in production: the outcome rows form the index (embedded for it), test prompts are queries.
    tr_texts = [strip_template(p, lines) for p in tr.prompts]
    rows_embedder = index_embedder(embedder)
    tr_emb = embed(tr_texts, rows_embedder)
    te_emb = embed(te_texts, embedder)
    tune_now = params is None and tune
    # Cross-validation searches its held-out train rows embedded as queries too.
    tr_queries = embed(tr_texts, embedder) if tune_now and rows_embedder is not embedder else None
    t_embed = time.perf_counter() - t0

    t0 = time.perf_counter()
    cv: dict[str, Any] = {}
    if tune_now:
        cv = cross_validate(tr_emb, tr, c_scale, mode, strong, models, PARAM_GRID, seed=seed, queries=tr_queries)
        params = cv["best"]
    chosen = params or DEFAULT_PARAMS
    t_cv = time.perf_counter() - t0

    t0 = time.perf_counter()
    kmax = max(chosen.k, DEFAULT_PARAMS.k)
    tests: dict[str, Any] = {}
    for name in dict.fromkeys(te.files):
        rows = [i for i, f in enumerate(te.files) if f == name]
        complete = [i for i in rows if not np.isnan(te.scores[i]).any() and not np.isnan(te.costs[i]).any()]
        if not complete:
            tests[name] = {"n_test": 0, "error": "no test row has outcomes of every model"}
            continue
        part = te.subset(complete)
        sims, idx = knn(te_emb[complete], tr_emb, kmax)
        q, chat = predict(sims, idx, tr.scores, tr.costs, prior, cost_prior, chosen)
        res = score_test(q, chat, part, models, c_scale, mode, lambdas, strong, bootstrap, seed, diagnostics=True)
        res["n_test_incomplete_dropped"] = len(rows) - len(complete)
        if chosen != DEFAULT_PARAMS:
            q0, c0 = predict(sims, idx, tr.scores, tr.costs, prior, cost_prior, DEFAULT_PARAMS)
            base = score_test(q0, c0, part, models, c_scale, mode, lambdas, strong)
            res["default_params"] = {k: base.get(k) for k in (
                "aiq_router", "router_max_quality", "cost_ratio_at_best_quality", "apgr", "cpt50", "cpt80")
                if k in base}
        res["mean_top1_similarity"] = _r(float(sims[:, 0].mean()), 4)
        tests[name] = res
    t_eval = time.perf_counter() - t0
    return {
        "train_files": [p.name for p in train_paths],
        "test_files": [p.name for p in test_paths],
        "train_rows": len(tr),
        "train_rows_dropped_overlap": dropped_overlap,
        "models": models,
        "cost_mode": mode,
        "prices_per_mtok": {m: list(price_table[m]) for m in models} if mode == "price_table" else None,
        "price_note": ("APPROXIMATE list prices (USD per Mtok in/out) x tokens (chars / 4)"
                       if mode == "price_table" else None),
        "boilerplate_lines_stripped": len(lines),
        "params": asdict(chosen),
        "cv": {"folds": CV_FOLDS, "repeats": CV_REPEATS, "objective": "mean held-out AIQ(router) - AIQ(single hull)",
               "top": cv.get("table", []), "default_params_gain": cv.get("default_cv_aiq_gain")} if cv else None,
        "tests": tests,
        "timing_s": {"embed": round(t_embed, 1), "cv": round(t_cv, 1), "eval": round(t_eval, 1),
                     "total": round(time.perf_counter() - t_start, 1)},
        "embedded_texts": len(tr) + len(te),
    }


__all__ = [
    "DEFAULT_PARAMS",
    "PARAM_GRID",
    "PRICE_TABLE",
    "ROUTELLM_REFERENCE",
    "ROUTERBENCH_REFERENCE",
    "KnnParams",
    "OutcomeSet",
    "eval_routing",
    "knn",
    "lambda_grid",
    "lambda_path",
    "predict",
    "read_outcomes",
    "score_test",
]
