"""Job goals planned before dispatch, feedback learned by the analyzer, and `index build --from`."""

import json
import threading
from pathlib import Path

import pytest
from typer.testing import CliRunner

from batchroute.cli import app

runner = CliRunner()


def _demo_job(tmp: Path, n: int = 120) -> Path:
    from batchroute.demo import demo_prompts

    rows = demo_prompts()[:n]
    path = tmp / "job.jsonl"
    path.write_text("".join(json.dumps({"id": r["id"], "prompt": r["prompt"]}) + "\n" for r in rows))
    return path


def test_plan_command_spends_nothing_and_meets_the_budget(embedded: Path) -> None:
    src = _demo_job(embedded)
    res = runner.invoke(app, ["plan", str(src), "--json"])
    assert res.exit_code == 0, res.output
    free = json.loads(res.stdout)
    assert free["requests"] == 120 and free["sampled"] == 120 and free["met"]
    costs = [p["cost_usd"] for p in free["points"]]
    budget = round((max(costs) + min(costs)) / 2, 6)  # a budget between the extremes binds
    res = runner.invoke(app, ["plan", str(src), "--budget", str(budget), "--json"])
    assert res.exit_code == 0, res.output
    plan = json.loads(res.stdout)
    chosen = plan["chosen"]
    assert plan["met"] and chosen["cost_usd"] <= budget
    within = [p for p in plan["points"] if p["cost_usd"] <= budget]
    assert chosen["quality"] == max(p["quality"] for p in within)
    assert plan["strongest_model"] == "sim-gpt-4" and plan["strongest_cost_usd"] > 0
    assert min(costs) < budget < max(costs)
    # Nothing was stored: planning touches no job.
    st = runner.invoke(app, ["costs", "--format", "json"])
    assert st.exit_code == 0 and json.loads(st.stdout) == []

    bad = runner.invoke(app, ["plan", str(src), "--min-quality", "1.5"])
    assert bad.exit_code == 2 and "min_quality" in " ".join(bad.output.split())


def test_plan_reports_the_lines_submit_would_skip(embedded: Path) -> None:
    src = _demo_job(embedded, 20)
    huge = "word " * 2_000_000  # ~2.5M tokens: fits no model's context window
    with src.open("a") as f:
        f.write('{"id": "e", "prompt": ""}\nnot json\n{"id": "n", "prompt": 5}\n')
        f.write(json.dumps({"id": "big", "prompt": huge}) + "\n")
    res = runner.invoke(app, ["plan", str(src), "--json"])
    assert res.exit_code == 0, res.output
    plan = json.loads(res.stdout)
    assert plan["requests"] == 20 and plan["sampled"] == 20 and plan["invalid_lines"] == 4
    assert plan["line_errors"][:3] == [
        f"{src}, line 21, field 'prompt': missing or empty",
        f"{src}, line 22: not valid JSON: Expecting value at column 1",
        f"{src}, line 23, field 'prompt': must be a string, got a number"]
    assert plan["line_errors"][3].startswith(f"{src}, line 24, field 'prompt': prompt needs about 2500")
    assert plan["line_errors"][3].endswith("but the largest eligible context window is 200000 tokens")
    text = runner.invoke(app, ["plan", str(src)])
    shown = " ".join(text.output.split())  # rich wraps long paths at the console width
    assert text.exit_code == 0 and "20 requests, 4 invalid lines" in shown
    assert shown.count("would be skipped") == 4 and "line 22: not valid JSON" in shown

    only_bad = embedded / "bad.jsonl"
    only_bad.write_text("not json\n")
    res = runner.invoke(app, ["plan", str(only_bad)])
    assert res.exit_code == 2
    assert "no valid lines to plan: 1 invalid, the first:" in " ".join(res.output.split())


def test_submit_with_min_quality_plans_then_runs(embedded: Path) -> None:
    src = _demo_job(embedded, 80)
    res = runner.invoke(app, ["submit", str(src), "--min-quality", "0.95", "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout[res.stdout.index("{"):])
    st = data["status"]
    assert st["state"] == "completed" and st["by_state"]["succeeded"] == 80
    plan = st["plan"]
    assert plan["goal_met"] and plan["predicted_relative_quality"] >= 0.95
    assert plan["sampled"] == 80 and plan["requests"] == 80
    # Every request was routed with the planned λ.
    ex = runner.invoke(app, ["explain", f"{data['job_id']}-1", "--json"])
    assert json.loads(ex.stdout)["decisions"][0]["detail"]["cost_weight"] == plan["cost_weight"]
    # Predicted cost is the sample's own decisions, so with every prompt sampled it matches
    # the routed estimates; actual cost differs only by real output lengths.
    assert st["cost_usd"] > 0 and plan["predicted_cost_usd"] > 0
    assert sum(plan["actual_share"].values()) == pytest.approx(1.0, abs=1e-3)


def test_feedback_moves_predicted_quality(embedded: Path) -> None:
    from batchroute.analyzer import get_analyzer, reset_analyzer
    from batchroute.feedback import feedback_priors, sync_feedback

    prompt = "Translate the following legal clause into plain English for a tenant: 'The lessee shall indemnify.'"
    path = embedded / "one.jsonl"
    path.write_text(json.dumps({"id": "x", "prompt": prompt}) + "\n")
    res = runner.invoke(app, ["submit", str(path), "--json"])
    assert res.exit_code == 0, res.output
    job_id = json.loads(res.stdout[res.stdout.index("{"):])["job_id"]
    reset_analyzer()  # a fresh index: feedback from other tests' databases must not count
    analyzer = get_analyzer()
    try:
        sync_feedback(analyzer, force=True)
        before = analyzer.analyze([prompt])[0].predicted_quality("sim-llama-3-8b", prior=0.8)
        n = len(analyzer.index)
        fb = runner.invoke(app, ["feedback", f"{job_id}-1", "--score", "0.0", "--model", "sim-llama-3-8b"])
        assert fb.exit_code == 0, fb.output
        assert len(analyzer.index) == n + 1 and analyzer.feedback_seen == 1
        after = analyzer.analyze([prompt])[0].predicted_quality("sim-llama-3-8b", prior=0.8)
        assert after < before - 0.05  # the same prompt now has a nearby 0.0 outcome for that model

        # A fresh analyzer (feedback_seen 0) with four threads racing to sync learns the row once.
        reset_analyzer()
        fresh = get_analyzer()
        n_fresh = len(fresh.index)
        barrier = threading.Barrier(4)
        learned: list[int] = []

        def race() -> None:
            barrier.wait()
            learned.append(sync_feedback(fresh, force=True))

        threads = [threading.Thread(target=race) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(learned) == [0, 0, 0, 1]
        assert len(fresh.index) == n_fresh + 1 and fresh.feedback_seen == 1
        cells = feedback_priors(fresh).cells
        assert list(cells.values()) == [(1, 0.0)] and next(iter(cells))[0] == "sim-llama-3-8b"
    finally:
        reset_analyzer()  # the in-memory feedback row must not leak into later tests

    assert runner.invoke(app, ["feedback", f"{job_id}-1", "--score", "1.5"]).exit_code == 2
    assert runner.invoke(app, ["feedback", f"{job_id}-1", "--score", "1", "--model", "nope"]).exit_code == 2
    missing = runner.invoke(app, ["feedback", "job_nope-1", "--score", "1"])
    assert missing.exit_code == 1 and "no request 'job_nope-1'" in " ".join(missing.output.split())


def test_index_build_from_adds_rows_and_skips_bad_lines(embedded: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from batchroute.analyzer import get_analyzer, reset_analyzer
    from batchroute.settings import get_settings

    reset_analyzer()
    bundled = len(get_analyzer().index)
    # A data dir of its own: the rows it adds must not leak into the session's shared index.
    monkeypatch.setenv("BATCHROUTE_DATA_DIR", str(embedded / "data"))
    get_settings.cache_clear()
    try:
        src = embedded / "mine.jsonl"
        src.write_text("\n".join([
            json.dumps({"id": "m1", "prompt": "Classify this ticket: printer on fire", "domain": "classification"}),
            "{not json",
            json.dumps({"id": "m2", "prompt": "Prove that sqrt(2) is irrational.", "domain": "math",
                        "outcomes": {"sim-llama-3-8b": {"score": 0.1}, "sim-gpt-4": {"score": 0.95}}}),
            json.dumps({"id": "m3", "prompt": "x", "domain": "not-a-domain"}),
            json.dumps({"id": "m4", "prompt": "Write a limerick about queues.", "domain": "creative_writing"}),
        ]) + "\n")
        res = runner.invoke(app, ["index", "build", "--from", str(src), "--json"])
        assert res.exit_code == 0, res.output
        report = json.loads(res.stdout)
        assert report["exemplars"] == bundled + 3 and report["skipped_lines"] == 2
        assert report["with_outcomes"] >= 1 and "sim-llama-3-8b" in report["outcome_models"]
        assert report["template_lines"] == 0  # one outcome row: too few to share a template
        assert report["load_s"] < 1.0
        assert Path(report["added"][0]).parent == embedded / "data" / "exemplars"
        # Every later analyzer in this data dir uses the added rows.
        assert len(get_analyzer().index) == bundled + 3

        empty = embedded / "bad.jsonl"
        empty.write_text("{not json\n")
        res = runner.invoke(app, ["index", "build", "--from", str(empty)])
        assert res.exit_code == 2 and "bad.jsonl: no usable exemplar lines" in " ".join(res.output.split())

        # The outcome kNN knobs (what `eval routing` recommends) reach the process-wide analyzer.
        monkeypatch.setenv("BATCHROUTE_ANALYZER_OUTCOME_K", "3")
        monkeypatch.setenv("BATCHROUTE_ANALYZER_OUTCOME_STRENGTH", "0.5")
        get_settings.cache_clear()
        reset_analyzer()
        tuned = get_analyzer()
        assert (tuned.outcome_k, tuned.outcome_strength) == (3, 0.5)
        [a] = tuned.analyze(["Prove that sqrt(2) is irrational."])
        score_sum, weight_sum, n = a.outcome_stats["sim-llama-3-8b"]
        assert n == 1 and score_sum == pytest.approx(0.1 * weight_sum)
        assert a.predicted_quality("sim-llama-3-8b", prior=0.8) == pytest.approx(
            (score_sum + 0.5 * 0.8) / (weight_sum + 0.5))
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()
        reset_analyzer()
