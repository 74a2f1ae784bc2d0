"""Budgets through the real pipeline (embedded default): a job pauses at its budget, resumes with more."""

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from batchroute.cli import app
from tests.conftest import apply_settings

runner = CliRunner()
N = 40
PROMPT = "Summarise in one sentence: the quarterly report shows revenue up 4% and costs flat."


def _status(job_id: str) -> dict:
    res = runner.invoke(app, ["status", job_id, "--json"])
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)


def test_job_pauses_at_budget_then_resumes(embedded: Path) -> None:
    from batchroute.analyzer import get_analyzer
    from batchroute.pricing import estimate_cost_usd
    from batchroute.registry import get_registry

    # One analyze chunk, so admission is decided from estimates alone before any call lands.
    apply_settings(BATCHROUTE_DATABASE_URL=f"sqlite:///{embedded}/t.db", BATCHROUTE_BROKER_URL="memory://",
                   BATCHROUTE_SIM_TIME_SCALE="0", BATCHROUTE_ANALYZE_CHUNK_SIZE="100")
    lines = [{"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions",
              "body": {"model": "sim-gpt-4", "max_tokens": 60, "messages": [{"role": "user", "content": PROMPT}]}}
             for i in range(N)]
    src = embedded / "job.jsonl"
    src.write_text("".join(json.dumps(x) + "\n" for x in lines))

    from batchroute.providers.base import estimate_prompt_tokens

    style = get_analyzer().analyze([PROMPT])[0].style
    tokens = estimate_prompt_tokens([{"role": "user", "content": PROMPT}])
    each = estimate_cost_usd(get_registry().model("sim-gpt-4"), tokens, style, 60)
    budget = each * 7.5  # room for exactly 7 requests

    res = runner.invoke(app, ["submit", str(src), "--budget", f"{budget:.10f}", "--json"])
    assert res.exit_code == 0, res.output
    job_id = json.loads(res.stdout[res.stdout.index("{"):])["job_id"]
    st = _status(job_id)
    assert st["state"] == "paused"
    assert st["by_state"]["succeeded"] == 7 and st["by_state"]["queued"] == N - 7
    assert st["pause_reason"].startswith(f"job:{job_id} budget")
    assert st["cost_usd"] <= budget + 1e-9

    res = runner.invoke(app, ["resume", job_id, "--budget", "100", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["requeued"] == N - 7
    st = _status(job_id)
    assert st["state"] == "completed" and st["by_state"]["succeeded"] == N and st["pause_reason"] is None
    assert st["attempts"] == N  # nothing was sent twice
    assert st["cost_usd"] <= 100.0  # within the final budget
    assert st["cost_usd"] == pytest.approx(sum(m["cost_usd"] for m in st["by_model"].values()))
