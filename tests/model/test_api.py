"""The HTTP producer API on the embedded default, through a real aiohttp server and client."""

import asyncio
import json
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient, TestServer

from batchroute.api import make_app


async def _session(calls: Any) -> Any:
    async with TestClient(TestServer(make_app())) as client:
        return await calls(client)


def test_submit_status_results_over_http(embedded: Path) -> None:
    body = "\n".join([
        json.dumps({"id": "a", "prompt": "Is this review positive or negative? 'Great battery.'"}),
        "{broken",
        json.dumps({"custom_id": "b", "method": "POST", "url": "/v1/chat/completions",
                    "body": {"model": "sim-gpt-4", "messages": [{"role": "user", "content": "What is 2+2?"}],
                             "max_tokens": 20}}),
    ]) + "\n"

    async def calls(client: TestClient) -> dict[str, Any]:
        out: dict[str, Any] = {}
        r = await client.post("/v1/jobs?latency=batch&tag=team=legal", data=body.encode())
        out["submit"] = (r.status, await r.json())
        job_id = out["submit"][1]["job_id"]
        r = await client.get(f"/v1/jobs/{job_id}")
        out["status"] = (r.status, await r.json())
        r = await client.get(f"/v1/jobs/{job_id}/results")
        out["results"] = (r.status, r.headers["Content-Type"], await r.text())
        r = await client.get("/v1/jobs/job_nope")
        out["missing"] = (r.status, await r.json())
        r = await client.post("/v1/jobs?latency=soon", data=body.encode())
        out["bad_latency"] = (r.status, await r.json())
        r = await client.post("/v1/jobs?budget=lots", data=body.encode())
        out["bad_budget"] = (r.status, await r.json())
        r = await client.post("/v1/jobs", data=b"")
        out["empty"] = (r.status, await r.json())
        r = await client.get("/healthz")
        out["health"] = r.status
        return out

    out = asyncio.run(_session(calls))
    status, sub = out["submit"]
    assert status == 201 and (sub["lines"], sub["requests"], sub["invalid"]) == (3, 2, 1)
    assert sub["errors"][0].startswith("line 2")
    status, st = out["status"]
    assert status == 200 and st["state"] == "completed" and st["by_state"]["succeeded"] == 2
    assert st["tags"] == {"team": "legal"} and st["latency_class"] == "batch"
    status, ctype, text = out["results"]
    rows = [json.loads(x) for x in text.splitlines()]
    assert status == 200 and ctype == "application/x-ndjson"
    assert [r["id"] for r in rows] == ["a", "b", None] and rows[1]["model"] == "sim-gpt-4"
    assert rows[2]["state"] == "invalid"
    assert out["missing"][0] == 404 and out["missing"][1]["error"]["type"] == "NotFoundError"
    assert out["bad_latency"][0] == 400 and out["bad_latency"][1]["error"]["field"] == "latency"
    assert out["bad_budget"][0] == 400 and out["bad_budget"][1]["error"]["field"] == "budget"
    assert out["empty"][0] == 400 and out["empty"][1]["error"]["field"] == "body"
    assert out["health"] == 200
