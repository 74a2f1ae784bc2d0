"""The CLI on the embedded default: submit, status, results, analyze, explain, registry validate."""

import json
from pathlib import Path

from typer.testing import CliRunner

from batchroute.cli import app

runner = CliRunner()


def _job(tmp: Path) -> Path:
    lines = [
        json.dumps({"id": "a", "prompt": "Is this review positive or negative? 'Great battery, awful screen.'"}),
        json.dumps({"id": "b", "prompt": "Write a Python function that merges two sorted lists."}),
        "not json",
        json.dumps({"custom_id": "c", "method": "POST", "url": "/v1/chat/completions",
                    "body": {"model": "sim-gpt-4", "messages": [{"role": "user", "content": "What is 17*23?"}],
                             "max_tokens": 50}}),
    ]
    path = tmp / "job.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_submit_status_results_explain(embedded: Path) -> None:
    res = runner.invoke(app, ["submit", str(_job(embedded)), "--latency", "batch", "--tag", "team=legal", "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout[res.stdout.index("{"):])
    assert (data["requests"], data["invalid"]) == (3, 1)
    job_id = data["job_id"]
    assert data["status"]["state"] == "completed" and data["status"]["by_state"]["succeeded"] == 3

    st = runner.invoke(app, ["status", job_id, "--json"])
    assert st.exit_code == 0
    status = json.loads(st.stdout)
    assert status["attempts"] == 3 and status["tags"] == {"team": "legal"}

    out = embedded / "results.jsonl"
    r = runner.invoke(app, ["results", job_id, "-o", str(out)])
    assert r.exit_code == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [row["id"] for row in rows] == ["a", "b", "c", None]
    assert rows[2]["model"] == "sim-gpt-4"  # pinned by the OpenAI Batch line
    assert rows[2]["completion_tokens"] <= 50
    assert rows[3]["state"] == "invalid" and rows[3]["error"]["message"].startswith("line 3:")
    for row in rows[:3]:
        assert row["response"]["status_code"] == 200
        assert row["output"].startswith(f"[{row['model']}]")
        assert row["cost_usd"] > 0 and row["latency_ms"] >= 0
    assert sum(row["cost_usd"] for row in rows[:3]) == __import__("pytest").approx(status["cost_usd"])

    ex = runner.invoke(app, ["explain", rows[0]["request_id"], "--json"])
    assert ex.exit_code == 0
    exp = json.loads(ex.stdout)
    d0 = exp["decisions"][0]["detail"]
    assert d0["labels"]["domain"] == exp["decisions"][0]["detail"]["labels"]["domain"]
    assert len(d0["candidates"]) == 5 and len(d0["neighbours"]) >= 1
    assert exp["attempts"][0]["status"] == "ok"

    # Readable on an 80-column terminal: whole model names, and each exclusion's reason in full.
    text = runner.invoke(app, ["explain", rows[2]["request_id"]], env={"COLUMNS": "80"})
    assert text.exit_code == 0, text.output
    lines = text.output.splitlines()
    assert max(len(line) for line in lines) <= 80
    for model in ("sim-gpt-4", "sim-claude-sonnet", "sim-gpt-3.5-turbo", "sim-mixtral-8x7b", "sim-llama-3-8b"):
        assert any(line.split()[:1] == [model] for line in lines), model
    excluded = [line.strip() for line in lines if " excluded: " in line]
    assert len(excluded) == 4 and all(line.endswith("its job line pins sim-gpt-4") for line in excluded)


def test_analyze_command(embedded: Path) -> None:
    res = runner.invoke(app, ["analyze", str(_job(embedded))])
    assert res.exit_code == 0, res.output
    rows = [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]
    assert len(rows) == 4
    keys = {"id", "domain", "complexity", "style", "confidence", "model", "provider", "reason"}
    assert all(keys <= set(r) for r in (rows[0], rows[1], rows[3]))
    assert rows[1]["domain"] == "code"
    assert rows[2]["line"] == 3 and "not valid JSON" in rows[2]["error"]
    assert rows[3]["model"] == "sim-gpt-4"


def test_bad_options_exit_2(embedded: Path) -> None:
    job = _job(embedded)
    for args, fragment in ((["--latency", "urgent"], "unknown latency class"),
                           (["--tag", "no-equals"], "bad tag"),
                           (["--objective", "cheapest"], "unknown objective"),
                           (["--model", "gpt-17"], "unknown model")):
        res = runner.invoke(app, ["submit", str(job), *args])
        assert res.exit_code == 2, (args, res.output)
        assert fragment in res.output
    res = runner.invoke(app, ["status", "job_nope"])
    assert res.exit_code == 1 and "no job 'job_nope'" in res.output


def test_registry_validate(tmp_path: Path) -> None:
    from batchroute.registry import BUNDLED_REGISTRY

    ok = runner.invoke(app, ["registry", "validate", str(BUNDLED_REGISTRY)])
    assert ok.exit_code == 0 and "5 models" in ok.output
    bad = tmp_path / "bad.yaml"
    bad.write_text(BUNDLED_REGISTRY.read_text().replace("input_price_per_mtok_usd: 10.0",
                                                        "input_price_per_mtok_usd: -1"))
    res = runner.invoke(app, ["registry", "validate", str(bad)])
    assert res.exit_code == 2
    assert "models[0](sim-gpt-4).input_price_per_mtok_usd" in res.output


def test_analyze_reports_progress_per_batch(embedded: Path) -> None:
    import io

    from batchroute.analyze_file import analyze_file
    from tests.conftest import apply_settings

    apply_settings(BATCHROUTE_DATABASE_URL=f"sqlite:///{embedded}/t.db", BATCHROUTE_BROKER_URL="memory://",
                   BATCHROUTE_ANALYZE_CHUNK_SIZE="2")
    job = embedded / "five.jsonl"
    job.write_text("".join(json.dumps({"id": str(i), "prompt": f"What is {i} plus {i}?"}) + "\n" for i in range(5))
                   + "{broken\n")
    seen: list[int] = []
    buf = io.StringIO()
    assert analyze_file(job, buf, on_progress=seen.append) == (6, 1)
    # After each full batch of 2, then once at the end (the bad line flushes the last one first).
    assert seen == [2, 4, 6]
    rows = [json.loads(line) for line in buf.getvalue().splitlines()]
    assert [r["id"] for r in rows] == ["0", "1", "2", "3", "4", None]

    out = embedded / "out.jsonl"
    res = runner.invoke(app, ["analyze", str(job), "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert len(out.read_text().splitlines()) == 6 and "6 lines analyzed, 1 invalid" in res.output
