"""The router benchmark's pure metric functions, on hand-computed examples (no model, fast)."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from batchroute.evaluation.metrics import (
    aiq,
    apgr,
    classification_report,
    confusion_matrix,
    cpt,
    hull_value,
    min_cost_reaching,
    nondecreasing_convex_hull,
    pgr,
    roc_auc,
    share_at_strong_fraction,
    shrunk_quality,
    threshold_curve,
    top_confusions,
)
from batchroute.evaluation.routing import (
    KnnParams,
    OutcomeSet,
    knn,
    lambda_grid,
    lambda_path,
    predict,
    router_points,
    score_test,
)

# ---- classification ---------------------------------------------------------------------------


def test_confusion_matrix_orders_by_given_labels_and_drops_unseen() -> None:
    truth = ["code", "math", "math", "reasoning"]
    pred = ["code", "math", "reasoning", "reasoning"]
    labels, m = confusion_matrix(truth, pred, labels=["code", "math", "reasoning", "extraction"])
    assert labels == ["code", "math", "reasoning"]
    assert m == [[1, 0, 0], [0, 1, 1], [0, 0, 1]]


def test_confusion_matrix_length_mismatch() -> None:
    with pytest.raises(ValueError):
        confusion_matrix(["a"], ["a", "b"])


def test_classification_report_hand_computed() -> None:
    truth = ["a", "a", "a", "b", "b"]
    pred = ["a", "a", "b", "b", "c"]
    # a: predicted 2 times correctly, true 3 -> tp=2 fp=0 fn=1: P=1 R=2/3 F1=0.8
    # b: tp=1 fp=1 fn=1 -> P=R=F1=0.5;  c: tp=0 fp=1 fn=0 -> F1=0
    rep = classification_report(truth, pred)
    assert rep["n"] == 5
    assert rep["accuracy"] == pytest.approx(3 / 5)
    assert rep["per_class"]["a"]["precision"] == pytest.approx(1.0)
    assert rep["per_class"]["a"]["recall"] == pytest.approx(2 / 3, abs=1e-4)
    assert rep["per_class"]["a"]["f1"] == pytest.approx(0.8)
    assert rep["per_class"]["b"]["f1"] == pytest.approx(0.5)
    assert rep["per_class"]["c"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0, "predicted": 1}
    assert rep["macro_f1"] == pytest.approx((0.8 + 0.5 + 0.0) / 3, abs=1e-4)
    assert rep["macro_f1_true_labels"] == pytest.approx((0.8 + 0.5) / 2, abs=1e-4)
    assert rep["balanced_accuracy"] == pytest.approx((2 / 3 + 0.5) / 2, abs=1e-4)
    assert rep["confusion"] == {"labels": ["a", "b", "c"], "matrix": [[2, 1, 0], [0, 1, 1], [0, 0, 0]]}
    assert top_confusions(rep)[0]["count"] == 1
    assert {(d["true"], d["predicted"]) for d in top_confusions(rep)} == {("a", "b"), ("b", "c")}


def test_perfect_classification() -> None:
    rep = classification_report(["x", "y", "y"], ["x", "y", "y"])
    assert rep["accuracy"] == 1.0 and rep["macro_f1"] == 1.0


# ---- hull and AIQ ------------------------------------------------------------------------------


def test_nondecreasing_convex_hull_drops_dominated_and_inner_points() -> None:
    pts = [(0.0, 0.2), (1.0, 0.5), (2.0, 0.55), (3.0, 0.9), (4.0, 0.8), (1.5, 0.3), (3.0, 0.1)]
    # (4, .8) costs more for less; (1.5, .3) and (3, .1) are dominated; (1, .5) lies below the
    # chord (0, .2)-(3, .9)? chord at 1 = .2 + .7/3 = .433 < .5 -> kept; (2, .55): chord (1,.5)-(3,.9)
    # at 2 = .7 > .55 -> dropped.
    assert nondecreasing_convex_hull(pts) == [(0.0, 0.2), (1.0, 0.5), (3.0, 0.9)]


def test_hull_collinear_and_ties() -> None:
    assert nondecreasing_convex_hull([(0, 0), (1, 1), (2, 2)]) == [(0.0, 0.0), (2.0, 2.0)]
    # Same cost: the better point wins.
    assert nondecreasing_convex_hull([(1, 0.3), (1, 0.6), (2, 0.7)]) == [(1.0, 0.6), (2.0, 0.7)]
    assert nondecreasing_convex_hull([]) == []


def test_hull_value_interpolates_and_extends_flat() -> None:
    h = [(1.0, 0.5), (3.0, 0.9)]
    assert hull_value(h, 0.5) == 0.0      # below the cheapest point: unreachable
    assert hull_value(h, 2.0) == pytest.approx(0.7)
    assert hull_value(h, 10.0) == 0.9


def test_aiq_of_known_hull() -> None:
    # Hull (0,.2)-(1,.5)-(3,.9) over [0, 3]: area = (.2+.5)/2*1 + (.5+.9)/2*2 = .35 + 1.4 = 1.75 -> /3
    pts = [(0.0, 0.2), (1.0, 0.5), (2.0, 0.55), (3.0, 0.9)]
    assert aiq(pts, 0.0, 3.0) == pytest.approx(1.75 / 3)
    # Over [0, 4] the hull stays flat at .9 after cost 3: (1.75 + .9) / 4
    assert aiq(pts, 0.0, 4.0) == pytest.approx(2.65 / 4)
    # A curve that starts at cost 1 gets nothing for [0, 1): (.5+.9)/2*2 / 3
    assert aiq([(1.0, 0.5), (3.0, 0.9)], 0.0, 3.0) == pytest.approx(1.4 / 3)
    # Degenerate range: the hull's value there.
    assert aiq([(1.0, 0.5)], 1.0, 1.0) == 0.5


def test_aiq_single_models_vs_router() -> None:
    singles = [(1.0, 0.6), (10.0, 0.9)]
    # Straight line: mean height .75.
    assert aiq(singles, 1.0, 10.0) == pytest.approx(0.75)
    router = [(1.0, 0.6), (4.0, 0.88), (10.0, 0.9)]
    assert aiq(router, 1.0, 10.0) > aiq(singles, 1.0, 10.0)


def test_min_cost_reaching() -> None:
    pts = [(1.0, 0.6), (4.0, 0.8), (10.0, 0.9)]
    assert min_cost_reaching(pts, 0.8) == 4.0
    assert min_cost_reaching(pts, 0.95) is None
    assert min_cost_reaching(pts, 0.7, hull=True) == pytest.approx(2.5)


# ---- RouteLLM PGR / APGR / CPT ------------------------------------------------------------------


def test_threshold_curve_and_perfect_router() -> None:
    weak = [0, 0, 1, 1]
    strong = [1, 1, 1, 0]
    # Route score ranks the two prompts the strong model alone solves first.
    share, q = threshold_curve([0.9, 0.8, 0.1, -0.5], weak, strong)
    assert share.tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert q.tolist() == [0.5, 0.75, 1.0, 1.0, 0.75]
    qw, qs = 0.5, 0.75
    assert pgr(1.0, qw, qs) == pytest.approx(2.0)
    # PGR: 0, 1, 2, 2, 1 -> trapezoid area: .25*(0.5 + 1.5 + 2 + 1.5) = 1.375
    assert apgr(share, q, qw, qs) == pytest.approx(1.375)
    assert cpt(share, q, qw, qs, 0.5) == pytest.approx(0.125)
    assert cpt(share, q, qw, qs, 0.8) == pytest.approx(0.2)


def test_threshold_curve_ties_move_together() -> None:
    share, q = threshold_curve([1.0, 1.0, 0.0], [0, 0, 0], [1, 0, 0])
    assert share.tolist() == [0.0, pytest.approx(2 / 3), 1.0]
    assert q.tolist() == [0.0, pytest.approx(1 / 3), pytest.approx(1 / 3)]


def test_random_router_apgr_is_half_and_cpt_is_target() -> None:
    share = np.linspace(0, 1, 11)
    q = 0.6 + 0.2 * share                   # straight line weak -> strong
    assert apgr(share, q, 0.6, 0.8) == pytest.approx(0.5)
    assert cpt(share, q, 0.6, 0.8, 0.5) == pytest.approx(0.5)
    assert cpt(share, q, 0.6, 0.8, 0.8) == pytest.approx(0.8)


def test_share_at_95pct_of_strong_quality() -> None:
    share = np.linspace(0, 1, 11)
    q = 0.6 + 0.2 * share                   # random router: straight line weak -> strong
    # 95% of 0.8 is 0.76, i.e. PGR 0.8: a random router needs 80% of the calls on the strong model.
    assert share_at_strong_fraction(share, q, 0.6, 0.8) == pytest.approx(0.8)
    assert share_at_strong_fraction(share, q, 0.6, 0.8, fraction=0.85) == pytest.approx(0.4)
    # A router recovering the whole gap with 30% of the calls.
    assert share_at_strong_fraction([0.0, 0.3, 1.0], [0.6, 0.8, 0.8], 0.6, 0.8) == pytest.approx(0.24)
    assert share_at_strong_fraction([0, 1], [0.78, 0.8], 0.78, 0.8) == 0.0   # the weak model is enough
    assert share_at_strong_fraction([0.0, 1.0], [0.5, 0.7], 0.5, 0.7, fraction=1.01) is None


def test_pgr_without_gap_is_none() -> None:
    assert pgr(0.5, 0.8, 0.8) is None
    assert apgr([0, 1], [0.8, 0.8], 0.8, 0.8) is None
    assert cpt([0, 1], [0.8, 0.8], 0.8, 0.7, 0.5) is None


def test_cpt_never_reached() -> None:
    assert cpt([0.0, 0.5, 1.0], [0.6, 0.62, 0.7], 0.6, 0.8, 0.8) is None


# ---- kNN router pieces -------------------------------------------------------------------------


def test_shrunk_quality_matches_the_analyzer_formula() -> None:
    from batchroute.analyzer import Analysis

    a = Analysis(domain="code", complexity="simple", style="concise", confidence=1.0,
                 complexity_confidence=1.0, style_confidence=1.0, domain_probs={}, neighbours=[],
                 features={}, outcome_stats={"m": (1.6, 2.0, 2)})
    got = shrunk_quality(np.array([1.6, 0.0]), np.array([2.0, 0.0]), np.array([0.5, 0.3]), 5.0)
    assert got[0] == pytest.approx(a.predicted_quality("m", prior=0.5, strength=5.0))
    assert got[0] == pytest.approx((1.6 + 2.5) / 7.0)
    assert got[1] == pytest.approx(a.predicted_quality("other", prior=0.3))


def test_knn_and_predict() -> None:
    index = np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]], dtype=np.float32)
    sims, idx = knn(np.array([[1.0, 0.0]], dtype=np.float32), index, 2)
    assert idx.tolist() == [[0, 2]]
    assert sims[0].tolist() == pytest.approx([1.0, 0.6])
    scores = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, np.nan]])
    costs = np.array([[1.0, 2.0], [1.0, 2.0], [3.0, np.nan]])
    q, c = predict(sims, idx, scores, costs, prior=np.array([0.5, 0.5]), cost_prior=np.array([9.0, 9.0]),
                   params=KnnParams(k=2, strength=1.0))
    # model 0: (1*1 + .6*1 + 1*.5) / (1.6 + 1); model 1: only row 0 has it: (0 + .5) / (1 + 1)
    assert q[0].tolist() == pytest.approx([2.1 / 2.6, 0.25])
    assert c[0].tolist() == pytest.approx([(1.0 + 0.6 * 3.0) / 1.6, 2.0])


def test_lambda_grid_reaches_cheapest_everywhere() -> None:
    q = np.array([[0.9, 0.5], [0.6, 0.55]])
    c = np.array([[1.0, 0.1], [1.0, 0.1]])
    grid = lambda_grid(q, c)
    assert grid[0] == 0.0
    # switch points .4/.9 and .05/.9; the last λ is past both
    assert grid[-1] > 0.4 / 0.9
    top = q - grid[-1] * c
    assert (top.argmax(axis=1) == 1).all()


def test_roc_auc_hand_computed() -> None:
    # Positives score .35 and .8, negatives .1 and .4: pairs (.35>.1), (.35<.4), (.8>.1), (.8>.4) -> 3/4
    assert roc_auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75)
    assert roc_auc([1.0, 1.0, 1.0], [0, 1, 1]) == pytest.approx(0.5)      # ties count half
    assert roc_auc([1.0, 2.0], [1, 1]) is None                           # one class only
    assert roc_auc([1.0, 2.0], [0.5, 1.0]) is None                       # not binary


@pytest.mark.parametrize("seed", range(6))
def test_lambda_path_is_the_exact_curve_of_decide(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n, m = 30, 6
    q, c = rng.random((n, m)), rng.random((n, m))
    if seed % 2:
        q, c = np.round(q, 1), np.round(c, 1)          # many ties between models and switch points
    s, tc = rng.integers(0, 2, (n, m)).astype(float), rng.random((n, m))
    path = lambda_path(q, c, s, tc, keep_choices=True)
    lams = [p["lambda"] for p in path]
    assert lams[0] == 0.0 and all(a < b for a, b in itertools.pairwise(lams))
    # Between two switch points decide() holds the path's decision ...
    mids = [(a + b) / 2 for a, b in itertools.pairwise([*lams, lams[-1] * 2 + 1])]
    for pt, ref in zip(path, router_points(q, c, s, tc, mids), strict=True):
        assert (pt["choice"] == ref["choice"]).all()
        assert (pt["cost"], pt["quality"]) == pytest.approx((ref["cost"], ref["quality"]))
    # ... and no λ gives a decision the path lacks; the last one is the cheapest model everywhere.
    seen = {tuple(p["choice"]) for p in path}
    assert all(tuple(r["choice"]) in seen for r in router_points(q, c, s, tc, np.linspace(0, lams[-1] * 1.2, 2000)))
    assert (path[-1]["choice"] == router_points(q, c, s, tc, [1e9])[0]["choice"]).all()


def test_chance_level_of_a_router_without_signal() -> None:
    rng = np.random.default_rng(0)
    n = 200
    s = (rng.random((n, 3)) < [0.5, 0.6, 0.8]).astype(float)
    c = np.tile([0.1, 0.15, 1.0], (n, 1))
    data = OutcomeSet([str(i) for i in range(n)], ["p"] * n, ["f"] * n, [{}] * n, s, c)
    noise = rng.random((n, 3)) * 0.2 + [0.5, 0.6, 0.8]            # predictions unrelated to the rows
    res = score_test(noise, c, data, ["a", "b", "c"], 1.0, "recorded", None, None, bootstrap=50, diagnostics=True)
    ch = res["chance"]
    assert ch["permutations"] == 50 and ch["aiq_gain_p_value"] > 0.05 and not ch["router_beats_chance"]
    assert res["quality_auc"]["mean"] == pytest.approx(0.5, abs=0.08)
    ub = res["upper_bounds"]
    assert ub["oracle"]["aiq"] > res["aiq_router"]
    assert ub["cheap_models_oracle"]["models"] == ["a", "b"]
    # A router told the truth beats its own shuffles.
    res = score_test(s, c, data, ["a", "b", "c"], 1.0, "recorded", None, None, bootstrap=50)
    assert res["chance"]["aiq_gain_p_value"] < 0.05 and res["chance"]["router_beats_chance"]


# ---- eval_routing end to end, with a fake embedder (no model) ------------------------------------


class _FakeEmbedder:
    """Deterministic unit vectors: prompts about the same topic word point the same way."""

    def encode(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), 8), dtype=np.float32)
        for i, t in enumerate(texts):
            out[i, 0 if "hard" in t else 1] = 1.0
            out[i, 2 + len(t) % 6] = 0.1
        return out / np.linalg.norm(out, axis=1, keepdims=True)


def _write(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return path


def _rows(n: int, split: str, costs: bool) -> list[dict[str, Any]]:
    rows = []
    for i in range(n):
        hard = i % 2 == 0
        outcomes: dict[str, dict[str, float]] = {
            "weak": {"score": 0.0 if hard else 1.0}, "strong": {"score": 1.0}}
        if costs:
            outcomes["weak"]["cost_usd"] = 0.001
            outcomes["strong"]["cost_usd"] = 0.01
            outcomes["mid"] = {"score": 0.0 if hard else 1.0, "cost_usd": 0.005}
        rows.append({"id": f"{split}{i}", "split": split, "prompt": f"{'hard' if hard else 'easy'} q {split} {i}",
                     "outcomes": outcomes})
    return rows


def test_eval_routing_two_models_call_share(tmp_path: Path) -> None:
    from batchroute.evaluation import eval_routing

    train = _rows(40, "train", costs=False)
    test = _rows(10, "test", costs=False)
    train.append({**train[0], "id": "leak", "prompt": test[0]["prompt"]})  # shares a prompt with a test row
    f = _write(tmp_path / "two.jsonl", train + test)
    rep = eval_routing([f], [f], embedder=_FakeEmbedder())
    assert rep["cost_mode"] == "call_share" and rep["train_rows_dropped_overlap"] == 1
    res = rep["tests"]["two.jsonl"]
    assert res["strong_model"] == "strong" and res["n_test"] == 10
    # The kNN separates hard from easy prompts: half the calls recover the whole gap.
    assert res["cpt80"] == pytest.approx(0.4) and res["apgr"] > 0.7
    # 95% of the strong model's quality (1.0) is PGR 0.9 over the weak one's 0.5: random needs 90% of
    # the calls on the strong model, the router (the whole gap at half the calls) 45%.
    assert (res["strong_share_at_95pct"], res["strong_share_at_95pct_random"]) == (pytest.approx(0.45), 0.9)
    assert res["aiq_router"] > res["aiq_single_hull"]
    assert res["best_quality_at_half_cost"] is True
    lo, hi = res["aiq_gain_ci95"]
    assert lo <= res["aiq_gain"] <= hi
    assert res["chance"]["apgr_mean"] == pytest.approx(0.5, abs=0.15) and res["chance"]["apgr_p_value"] < 0.05
    assert res["upper_bounds"]["oracle"]["apgr"] >= res["apgr"]


def test_eval_routing_recorded_costs(tmp_path: Path) -> None:
    from batchroute.evaluation import eval_routing

    tr = _write(tmp_path / "tr.jsonl", _rows(40, "train", costs=True))
    te = _write(tmp_path / "te.jsonl", _rows(10, "test", costs=True))
    rep = eval_routing([tr], [te], embedder=_FakeEmbedder(), tune=False)
    res = rep["tests"]["te.jsonl"]
    assert rep["cost_mode"] == "recorded" and "apgr" not in res
    assert res["best_single_model"] == "strong"
    assert res["router_max_quality"] == pytest.approx(1.0)
    assert res["cost_ratio_at_best_quality"] == pytest.approx(0.55)   # (5 * 0.01 + 5 * 0.001) / 10 / 0.01
    assert res["oracle"] == {"cost": pytest.approx(0.0055), "quality": pytest.approx(1.0)}
    assert res["upper_bounds"]["oracle"]["cost_ratio_at_best_quality"] == pytest.approx(0.55)
    assert res["quality_auc"]["per_model"]["weak"] == pytest.approx(1.0)   # hard vs easy, perfectly
    assert res["quality_auc"]["per_model"]["strong"] is None                # always right: no AUC


def test_eval_routing_printout_shows_the_chance_level(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from rich.console import Console

    from batchroute import eval_cli
    from batchroute.evaluation import eval_routing

    f = _write(tmp_path / "two.jsonl", _rows(40, "train", costs=False) + _rows(10, "test", costs=False))
    rep = eval_routing([f], [f], embedder=_FakeEmbedder(), bootstrap=50)
    console = Console(record=True, width=200)
    monkeypatch.setattr(eval_cli, "out", console)
    eval_cli.print_routing(rep)
    text = console.export_text()
    chance = rep["tests"]["two.jsonl"]["chance"]
    assert chance["permutations"] == 50
    assert f"chance.apgr_p_value {chance['apgr_p_value']:.4f}".split() == \
        next(line for line in text.splitlines() if "chance.apgr_p_value" in line).replace("│", " ").split()
    assert "chance.router_beats_chance" in text and "quality_auc.mean" in text
    p = rep["params"]
    assert (f"to route with these kNN settings: BATCHROUTE_ANALYZER_OUTCOME_K={p['k']} "
            f"BATCHROUTE_ANALYZER_OUTCOME_STRENGTH={p['strength']}") in " ".join(text.split())


def test_eval_default_params_are_what_the_analyzer_runs() -> None:
    import inspect

    from batchroute.analyzer import Analyzer
    from batchroute.evaluation.routing import KnnParams
    from batchroute.settings import Settings

    sig = inspect.signature(Analyzer).parameters
    fields = Settings.model_fields
    assert (fields["analyzer_outcome_k"].default, KnnParams().k, sig["outcome_k"].default) == (80, 80, 80)
    assert (fields["analyzer_outcome_strength"].default, KnnParams().strength,
            sig["outcome_strength"].default) == (5.0, 5.0, 5.0)
    assert KnnParams().temperature is None  # the analyzer weighs neighbours by cosine


def test_eval_routing_strips_template_lines_unless_told_not_to(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    import batchroute.evaluation as evaluation
    from batchroute.cli import app
    from batchroute.evaluation import eval_routing

    header = "Answer with one letter, please."
    rows = [{**r, "prompt": f"{header}\n{r['prompt']}\nAnswer:"} for r in _rows(40, "train", costs=True)]
    tr = _write(tmp_path / "tr.jsonl", rows)
    te = _write(tmp_path / "te.jsonl", [{**r, "prompt": f"{header}\n{r['prompt']}\nAnswer:"}
                                        for r in _rows(10, "test", costs=True)])
    seen: list[list[str]] = []

    class Recording(_FakeEmbedder):
        def encode(self, texts: list[str]) -> np.ndarray:
            seen.append(list(texts))
            return super().encode(texts)

    rep = eval_routing([tr], [te], embedder=Recording(), tune=False, bootstrap=0)
    assert rep["boilerplate_lines_stripped"] == 2
    assert not any(header in t or "Answer:" in t for batch in seen for t in batch)
    seen.clear()
    rep = eval_routing([tr], [te], embedder=Recording(), tune=False, bootstrap=0, strip_boilerplate=False)
    assert rep["boilerplate_lines_stripped"] == 0
    assert all(t.startswith(header) for batch in seen for t in batch)

    # The CLI flag reaches eval_routing.
    calls: list[dict[str, Any]] = []

    def fake(*args: Any, **kwargs: Any) -> dict[str, Any]:
        calls.append(kwargs)
        raise SystemExit(0)

    monkeypatch.setattr(evaluation, "eval_routing", fake)
    runner = CliRunner()
    for flag, expected in (([], True), (["--no-strip-templates"], False)):
        runner.invoke(app, ["eval", "routing", "--train", str(tr), "--test", str(te), *flag])
        assert calls.pop()["strip_boilerplate"] is expected


def test_cross_validation_searches_train_rows_as_queries(tmp_path: Path) -> None:
    from batchroute.evaluation import eval_routing

    seen: list[tuple[str, list[str]]] = []

    class Rows(_FakeEmbedder):
        def encode(self, texts: list[str]) -> np.ndarray:
            seen.append(("rows", list(texts)))
            return super().encode(texts)

    class Queries(_FakeEmbedder):
        def for_index(self) -> Rows:
            return rows

        def encode(self, texts: list[str]) -> np.ndarray:
            seen.append(("queries", list(texts)))
            return super().encode(texts)

    rows = Rows()
    train, test = _rows(40, "train", costs=True), _rows(10, "test", costs=True)
    tr, te = _write(tmp_path / "tr.jsonl", train), _write(tmp_path / "te.jsonl", test)
    train_prompts, test_prompts = [r["prompt"] for r in train], [r["prompt"] for r in test]
    eval_routing([tr], [te], embedder=Queries(), tune=True, bootstrap=0)
    assert seen == [("rows", train_prompts), ("queries", test_prompts), ("queries", train_prompts)]
    seen.clear()
    eval_routing([tr], [te], embedder=Queries(), tune=False, bootstrap=0)
    assert seen == [("rows", train_prompts), ("queries", test_prompts)]


def test_cross_validate_uses_the_query_vectors_for_the_held_out_fold() -> None:
    from batchroute.evaluation.routing import PARAM_GRID, cross_validate, fill_arrays

    rows = _rows(40, "train", costs=True)
    models = ["weak", "mid", "strong"]
    data = OutcomeSet([r["id"] for r in rows], [r["prompt"] for r in rows], ["f"] * len(rows),
                      [r["outcomes"] for r in rows])
    fill_arrays(data, models, "recorded", {}, None)
    emb = _FakeEmbedder().encode(data.prompts)
    same = cross_validate(emb, data, 1.0, "recorded", None, models, PARAM_GRID[:4])
    assert cross_validate(emb, data, 1.0, "recorded", None, models, PARAM_GRID[:4], queries=emb) == same
    # Queries pointing away from their own kind find the wrong neighbours: a worse held-out gain.
    flipped = emb[:, [1, 0, 2, 3, 4, 5, 6, 7]]
    worse = cross_validate(emb, data, 1.0, "recorded", None, models, PARAM_GRID[:4], queries=flipped)
    assert worse["table"][0]["cv_aiq_gain"] < same["table"][0]["cv_aiq_gain"]
