"""Unit tests of batchroute.simprovider: wire formats, determinism, limits, faults, stats, runners."""

from __future__ import annotations

import asyncio
import json
import re
import time
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest

from batchroute.registry import Registry, load_registry
from batchroute.simprovider import (
    SimConfig,
    SimServer,
    SimServerThread,
    count_prompt_tokens,
    simulate_completion,
    start_sim_server,
)
from batchroute.simprovider.faults import Bucket
from batchroute.simprovider.wire import format_duration
from batchroute.taxonomy import DOMAINS

AV = {"anthropic-version": "2023-06-01"}
MSGS = [{"role": "user", "content": "What is the capital of France?"}]
QUALITY = dict.fromkeys(DOMAINS, 0.5)
DURATION = re.compile(r"^(\d+m)?\d+(\.\d+)?s$|^\d+ms$")
RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")
BUNDLED = load_registry()


def tiny_registry(**sim: float) -> Registry:
    """Two fixed-length models (100 output tokens): one per wire format."""
    profile = {"base_latency_ms": 0, "per_output_token_ms": 0, "output_tokens_min": 100,
               "output_tokens_max": 100, **sim}
    common = {"context_window_tokens": 1000, "max_output_tokens": 500, "input_price_per_mtok_usd": 1,
              "output_price_per_mtok_usd": 1, "rpm": 1000, "tpm": 1_000_000, "quality": QUALITY, "sim": profile}
    return Registry.model_validate({"models": [
        {"name": "oa", "provider": "p", "api": "openai", "base_url": "{sim}/v1", "wire_model": "oa-wire", **common},
        {"name": "an", "provider": "p", "api": "anthropic", "base_url": "{sim}", **common},
    ]})


class Sim:
    """A started server plus a client session, with helpers returning (status, headers, json)."""

    def __init__(self, server: SimServer, session: aiohttp.ClientSession) -> None:
        self.server, self.session, self.url = server, session, server.url

    async def raw(self, path: str, body: Any = None, headers: dict[str, str] | None = None,
                  data: bytes | None = None, timeout_s: float = 10.0) -> tuple[int, Any, bytes]:
        payload = data if data is not None else json.dumps(body).encode()
        async with self.session.post(self.url + path, data=payload, headers=headers,
                                     timeout=aiohttp.ClientTimeout(total=timeout_s)) as resp:
            return resp.status, resp.headers, await resp.read()

    async def openai(self, body: dict[str, Any], headers: dict[str, str] | None = None,
                     **kw: Any) -> tuple[int, Any, Any]:
        status, hdrs, content = await self.raw("/v1/chat/completions", body, headers, **kw)
        return status, hdrs, json.loads(content)

    async def anthropic(self, body: dict[str, Any], headers: dict[str, str] | None = None,
                        **kw: Any) -> tuple[int, Any, Any]:
        status, hdrs, content = await self.raw("/v1/messages", body, AV if headers is None else headers, **kw)
        return status, hdrs, json.loads(content)

    async def get(self, path: str) -> Any:
        async with self.session.get(self.url + path) as resp:
            assert resp.status == 200
            return await resp.json()


@asynccontextmanager
async def sim_server(config: SimConfig | None = None, registry: Registry = BUNDLED) -> AsyncIterator[Sim]:
    server = await start_sim_server(registry, config or SimConfig(time_scale=0))
    try:
        async with aiohttp.ClientSession() as session:
            yield Sim(server, session)
    finally:
        await server.close()


def run(config: SimConfig | None, body: Callable[[Sim], Awaitable[None]], registry: Registry = BUNDLED) -> None:
    async def main() -> None:
        async with sim_server(config, registry) as sim:
            await body(sim)
    asyncio.run(main())


def oa(model: str = "sim-gpt-4", messages: list[dict[str, Any]] | None = None, **kw: Any) -> dict[str, Any]:
    return {"model": model, "messages": MSGS if messages is None else messages, **kw}


def an(model: str = "sim-claude-sonnet", max_tokens: int = 1000, **kw: Any) -> dict[str, Any]:
    return {"model": model, "max_tokens": max_tokens, "messages": MSGS, **kw}


# -- pure functions ------------------------------------------------------------------------------


def test_count_prompt_tokens_is_chars_over_4_plus_overheads() -> None:
    assert count_prompt_tokens([{"role": "user", "content": "hello"}]) == 2 + 3 + 3
    assert count_prompt_tokens([{"role": "user", "content": ""}]) == 1 + 3 + 3
    assert count_prompt_tokens([{"role": "assistant", "content": None}]) == 1 + 3 + 3
    parts = [{"type": "text", "text": "y" * 9}, "zz"]
    assert count_prompt_tokens([{"role": "system", "content": "x" * 8},
                                {"role": "user", "content": parts}]) == 2 + 3 + 3 + 3 + 3


def test_count_prompt_tokens_agrees_with_the_client_estimate() -> None:
    from batchroute.providers import estimate_prompt_tokens

    samples: list[list[dict[str, Any]]] = [
        MSGS,
        [{"role": "system", "content": "s" * 37}, {"role": "user", "content": "u" * 401}],
        [{"role": "user", "content": [{"type": "text", "text": "abc"}, {"type": "text", "text": "defgh"}]}],
    ]
    for messages in samples:
        assert count_prompt_tokens(messages) == estimate_prompt_tokens(messages)


def test_simulate_completion_is_deterministic_and_in_range() -> None:
    model = BUNDLED.model("sim-llama-3-8b")
    assert model.sim is not None
    first = simulate_completion(model, MSGS, None)
    assert simulate_completion(model, MSGS, None) == first
    n, text, truncated = first
    assert model.sim.output_tokens_min <= n <= model.sim.output_tokens_max and not truncated
    assert text.startswith("[sim-llama-3-8b] ") and len(text) == 4 * n
    lengths = {simulate_completion(model, [{"role": "user", "content": f"prompt {i}"}], None)[0] for i in range(20)}
    assert len(lengths) > 5
    assert simulate_completion(model, MSGS, 3)[::2] == (3, True)


def test_format_duration_matches_openai_style() -> None:
    assert [format_duration(s) for s in (0, 0.017, 1, 2.4371, 360, 61.5)] == ["0s", "17ms", "1s", "2.437s", "6m0s",
                                                                               "1m1.5s"]


def test_bucket_allows_a_burst_of_rpm_then_refills_continuously() -> None:
    b = Bucket(60, 10_000, now=0.0)
    for _ in range(60):
        assert b.take(10, now=0.0).exceeded is None
    refused = b.take(10, now=0.0)
    assert (refused.exceeded, refused.remaining_requests, refused.retry_after_s) == ("requests", 0, pytest.approx(1.0))
    assert b.take(10, now=1.0).exceeded is None
    big = b.take(20_000, now=100.0)
    assert (big.exceeded, big.too_large) == ("tokens", True)


# -- OpenAI wire format --------------------------------------------------------------------------


def test_openai_response_schema_usage_and_headers() -> None:
    async def body(sim: Sim) -> None:
        status, headers, data = await sim.openai(oa(temperature=0.2))
        assert status == 200
        assert set(data) == {"id", "object", "created", "model", "choices", "usage"}
        assert data["id"].startswith("chatcmpl-") and data["object"] == "chat.completion"
        assert isinstance(data["created"], int) and data["model"] == "sim-gpt-4"
        (choice,) = data["choices"]
        assert choice["index"] == 0 and choice["finish_reason"] == "stop"
        assert choice["message"]["role"] == "assistant"
        text = choice["message"]["content"]
        assert text.startswith("[sim-gpt-4] ")
        usage = data["usage"]
        n = usage["completion_tokens"]
        assert usage == {"prompt_tokens": count_prompt_tokens(MSGS), "completion_tokens": n,
                         "total_tokens": count_prompt_tokens(MSGS) + n, "prompt_tokens_details": {"cached_tokens": 0}}
        assert 40 <= n <= 700 and len(text) == 4 * n
        assert headers["x-request-id"].startswith("req_")
        assert headers["content-type"].startswith("application/json")
        assert headers["x-ratelimit-limit-requests"] == "1500"
        assert headers["x-ratelimit-remaining-requests"] == "1499"
        assert headers["x-ratelimit-limit-tokens"] == "1000000"
        # The token budget is charged prompt + the most the answer may use (700 for sim-gpt-4).
        assert headers["x-ratelimit-remaining-tokens"] == str(1_000_000 - count_prompt_tokens(MSGS) - 700)
        for h in ("x-ratelimit-reset-requests", "x-ratelimit-reset-tokens"):
            assert DURATION.match(headers[h]), headers[h]
    run(None, body)


def test_openai_same_prompt_same_answer_and_max_tokens_cap() -> None:
    async def body(sim: Sim) -> None:
        _, _, a = await sim.openai(oa())
        _, _, b = await sim.openai(oa())
        assert a["choices"][0]["message"] == b["choices"][0]["message"] and a["usage"] == b["usage"]
        _, _, other = await sim.openai(oa("sim-llama-3-8b"))
        assert other["choices"][0]["message"]["content"].startswith("[sim-llama-3-8b] ")
        n = a["usage"]["completion_tokens"]
        _, _, capped = await sim.openai(oa(max_tokens=n - 1))
        assert capped["usage"]["completion_tokens"] == n - 1
        assert capped["choices"][0]["finish_reason"] == "length"
        _, _, capped2 = await sim.openai(oa(max_completion_tokens=7))
        assert capped2["usage"]["completion_tokens"] == 7
        _, _, exact = await sim.openai(oa(max_tokens=n))
        assert exact["choices"][0]["finish_reason"] == "stop"
    run(None, body)


def test_openai_serves_models_by_wire_name_and_echoes_it() -> None:
    async def body(sim: Sim) -> None:
        status, _, data = await sim.openai(oa("oa-wire", max_tokens=40))
        assert status == 200 and data["model"] == "oa-wire"
        assert data["usage"]["completion_tokens"] == 40 and data["choices"][0]["finish_reason"] == "length"
        assert data["choices"][0]["message"]["content"].startswith("[oa] ")
        _, _, full = await sim.openai(oa("oa"))
        assert full["usage"]["completion_tokens"] == 100
    run(None, body, tiny_registry())


def test_openai_request_errors_have_openai_shape() -> None:
    async def body(sim: Sim) -> None:
        status, _, content = await sim.raw("/v1/chat/completions", data=b"{not json")
        err = json.loads(content)
        assert status == 400 and set(err) == {"error"}
        assert set(err["error"]) == {"message", "type", "param", "code"}
        assert err["error"]["type"] == "invalid_request_error"
        cases: list[tuple[dict[str, Any], int, str | None, str | None]] = [
            ({"messages": MSGS}, 400, "model", None),
            ({"model": "oa"}, 400, "messages", "missing_required_parameter"),
            (oa("oa", messages=[]), 400, "messages", "empty_array"),
            (oa("oa", messages=[{"role": "wizard", "content": "x"}]), 400, "messages.[0].role", "invalid_value"),
            (oa("oa", max_tokens=0), 400, "max_tokens", "integer_below_min_value"),
            (oa("oa", max_tokens="9"), 400, "max_tokens", "invalid_type"),
            (oa("oa", temperature=3), 400, "temperature", "invalid_value"),
            (oa("oa", stream=True), 400, "stream", "unsupported_value"),
            (oa("oa", max_tokens=501), 400, "max_tokens", "invalid_value"),
            (oa("oa", messages=[{"role": "user", "content": "x" * 4000}], max_tokens=10), 400, "messages",
             "context_length_exceeded"),
            (oa("gpt-17"), 404, None, "model_not_found"),
        ]
        for req, want_status, param, code in cases:
            status, _, data = await sim.openai(req)
            assert status == want_status, (req, data)
            assert data["error"]["type"] == "invalid_request_error"
            assert (data["error"]["param"], data["error"]["code"]) == (param, code), data
    run(None, body, tiny_registry())


# -- Anthropic wire format -----------------------------------------------------------------------


def test_anthropic_response_schema_usage_and_headers() -> None:
    async def body(sim: Sim) -> None:
        status, headers, data = await sim.anthropic(an(system="Be brief."))
        assert status == 200
        assert set(data) == {"id", "type", "role", "model", "content", "stop_reason", "stop_sequence", "usage"}
        assert data["id"].startswith("msg_") and (data["type"], data["role"]) == ("message", "assistant")
        assert data["model"] == "sim-claude-sonnet" and data["stop_sequence"] is None
        assert data["stop_reason"] == "end_turn"
        (block,) = data["content"]
        assert block["type"] == "text" and block["text"].startswith("[sim-claude-sonnet] ")
        prompt = count_prompt_tokens([{"role": "system", "content": "Be brief."}, *MSGS])
        n = data["usage"]["output_tokens"]
        assert data["usage"] == {"input_tokens": prompt, "output_tokens": n, "cache_read_input_tokens": 0,
                                 "cache_creation_input_tokens": 0}
        assert len(block["text"]) == 4 * n
        assert headers["request-id"].startswith("req_")
        assert headers["anthropic-ratelimit-requests-limit"] == "1000"
        assert headers["anthropic-ratelimit-requests-remaining"] == "999"
        assert headers["anthropic-ratelimit-tokens-limit"] == "800000"
        assert headers["anthropic-ratelimit-tokens-remaining"] == str(800_000 - prompt - 1000)
        for h in ("anthropic-ratelimit-requests-reset", "anthropic-ratelimit-tokens-reset"):
            assert RFC3339.match(headers[h]), headers[h]
    run(None, body)


def test_anthropic_deterministic_capped_and_same_length_as_openai() -> None:
    async def body(sim: Sim) -> None:
        _, _, a = await sim.anthropic(an("an", max_tokens=500))
        _, _, b = await sim.anthropic(an("an", max_tokens=500))
        assert a["content"] == b["content"] and a["usage"]["output_tokens"] == 100
        _, _, capped = await sim.anthropic(an("an", max_tokens=12))
        assert capped["usage"]["output_tokens"] == 12 and capped["stop_reason"] == "max_tokens"
        # The same conversation costs the same through either format.
        _, _, via_openai = await sim.openai(oa("sim-claude-sonnet"))
        _, _, via_anthropic = await sim.anthropic(an())
        assert via_openai["usage"]["completion_tokens"] == via_anthropic["usage"]["output_tokens"]
        assert via_openai["usage"]["prompt_tokens"] == via_anthropic["usage"]["input_tokens"]
    both = Registry(models=[*BUNDLED.models, *tiny_registry().models])
    run(None, body, both)


def test_anthropic_request_errors_have_anthropic_shape() -> None:
    async def body(sim: Sim) -> None:
        cases = [
            (an("an"), {}, 400, "invalid_request_error", "anthropic-version"),
            ({"model": "an", "messages": MSGS}, AV, 400, "invalid_request_error", "max_tokens: Field required"),
            ({"max_tokens": 5, "messages": MSGS}, AV, 400, "invalid_request_error", "model"),
            ({"model": "an", "max_tokens": 5}, AV, 400, "invalid_request_error", "messages"),
            ({**an("an"), "messages": [{"role": "system", "content": "x"}]}, AV, 400, "invalid_request_error",
             "messages.0.role"),
            (an("an", max_tokens=0), AV, 400, "invalid_request_error", "max_tokens"),
            (an("an", max_tokens=501), AV, 400, "invalid_request_error", "maximum allowed number of output tokens"),
            (an("claude-17"), AV, 404, "not_found_error", "claude-17"),
        ]
        for req, headers, want_status, etype, fragment in cases:
            status, _, data = await sim.anthropic(req, headers)
            assert status == want_status, (req, data)
            assert data["type"] == "error" and set(data["error"]) == {"type", "message"}
            assert data["error"]["type"] == etype and fragment in data["error"]["message"], data
        status, _, content = await sim.raw("/v1/messages", data=b"[1,", headers=AV)
        assert status == 400 and json.loads(content)["error"]["type"] == "invalid_request_error"
    run(None, body, tiny_registry())


# -- auth ----------------------------------------------------------------------------------------


def test_auth_required_only_when_configured() -> None:
    async def body(sim: Sim) -> None:
        status, _, data = await sim.openai(oa())
        assert status == 401 and data["error"]["type"] == "invalid_request_error"
        status, _, data = await sim.openai(oa(), {"Authorization": "Basic abc"})
        assert status == 401 and data["error"]["code"] == "invalid_api_key"
        status, _, data = await sim.openai(oa(), {"Authorization": "Bearer "})
        assert status == 401
        assert (await sim.openai(oa(), {"Authorization": "Bearer sk-anything"}))[0] == 200
        status, _, data = await sim.anthropic(an())
        assert status == 401 and data["error"]["type"] == "authentication_error"
        assert (await sim.anthropic(an(), {**AV, "x-api-key": "k"}))[0] == 200
        assert (await sim.get("/stats"))["invalid"] == 4
    run(SimConfig(time_scale=0, require_auth=True), body)

    async def open_body(sim: Sim) -> None:
        assert (await sim.openai(oa()))[0] == 200
        assert (await sim.anthropic(an()))[0] == 200
    run(SimConfig(time_scale=0), open_body)


# -- rate limits ---------------------------------------------------------------------------------


def test_429_after_exactly_rpm_calls_with_retry_after() -> None:
    async def body(sim: Sim) -> None:
        for i in range(5):
            status, headers, _ = await sim.openai(oa())
            assert status == 200
            assert headers["x-ratelimit-remaining-requests"] == str(4 - i)
        status, headers, data = await sim.openai(oa())
        assert status == 429
        assert data["error"]["code"] == "rate_limit_exceeded" and data["error"]["type"] == "requests"
        assert "requests per min (RPM): Limit 5" in data["error"]["message"]
        # 5 rpm refills one call every 12 s.
        assert 11 <= int(headers["retry-after"]) <= 12
        assert 11_000 <= int(headers["retry-after-ms"]) <= 12_000
        assert headers["x-ratelimit-remaining-requests"] == "0"
        # Limits are per model.
        assert (await sim.openai(oa("sim-llama-3-8b")))[0] == 200
        for _ in range(5):
            assert (await sim.anthropic(an()))[0] == 200
        status, headers, data = await sim.anthropic(an())
        assert status == 429 and data == {"type": "error", "error": {"type": "rate_limit_error",
                                                                     "message": data["error"]["message"]}}
        assert int(headers["retry-after"]) >= 1 and headers["anthropic-ratelimit-requests-remaining"] == "0"
        stats = await sim.get("/stats")
        assert stats["models"]["sim-gpt-4"]["status_429"] == 1 and stats["models"]["sim-gpt-4"]["ok"] == 5
    run(SimConfig(time_scale=0, rpm_override=5), body)


def test_tpm_counts_prompt_plus_max_tokens() -> None:
    async def body(sim: Sim) -> None:
        prompt = count_prompt_tokens(MSGS)
        assert (await sim.openai(oa(max_tokens=400)))[0] == 200
        status, headers, _ = await sim.openai(oa(max_tokens=400))
        assert status == 200 and headers["x-ratelimit-remaining-tokens"] == str(1000 - 2 * (prompt + 400))
        status, headers, data = await sim.openai(oa(max_tokens=400))
        assert status == 429 and data["error"]["type"] == "tokens"
        assert int(headers["retry-after"]) >= 1
        status, headers, data = await sim.openai(oa("sim-llama-3-8b", max_tokens=2000))
        assert status == 429 and data["error"]["message"].startswith("Request too large")
    run(SimConfig(time_scale=0, tpm_override=1000), body)


# -- faults --------------------------------------------------------------------------------------


def test_fault_429_storm() -> None:
    async def body(sim: Sim) -> None:
        status, headers, data = await sim.openai(oa())
        assert status == 429 and (headers["retry-after"], headers["retry-after-ms"]) == ("1", "250")
        assert data["error"]["code"] == "rate_limit_exceeded"
        status, headers, data = await sim.anthropic(an())
        assert status == 429 and data["error"]["type"] == "rate_limit_error" and headers["retry-after"] == "1"
        assert (await sim.get("/stats"))["totals"]["status_429"] == 2
    run(SimConfig(time_scale=0, rate_429=1.0, retry_after_ms=250), body)


def test_fault_5xx_statuses_bodies_and_seeded_reproducibility() -> None:
    seen: list[list[int]] = []

    async def body(sim: Sim) -> None:
        statuses = []
        for _ in range(30):
            status, _, data = await sim.openai(oa())
            assert status in (500, 503) and data["error"]["type"] == "server_error"
            statuses.append(status)
        for _ in range(30):
            status, _, data = await sim.anthropic(an())
            assert status in (500, 503, 529)
            assert data["error"]["type"] == ("overloaded_error" if status == 529 else "api_error")
            statuses.append(status)
        assert {500, 503, 529} <= set(statuses)
        assert (await sim.get("/stats"))["totals"]["status_5xx"] == 60
        seen.append(statuses)
    run(SimConfig(time_scale=0, rate_5xx=1.0, seed=3), body)
    run(SimConfig(time_scale=0, rate_5xx=1.0, seed=3), body)
    assert seen[0] == seen[1]


def test_fault_rates_are_seeded() -> None:
    seen: list[list[int]] = []

    async def body(sim: Sim) -> None:
        seen.append([(await sim.openai(oa()))[0] for _ in range(40)])
    for _ in range(2):
        run(SimConfig(time_scale=0, rate_5xx=0.5, seed=11), body)
    assert seen[0] == seen[1] and {200} < set(seen[0])


def test_fault_hang_exceeds_client_timeout_then_answers() -> None:
    async def body(sim: Sim) -> None:
        with pytest.raises(asyncio.TimeoutError):
            await sim.openai(oa(), timeout_s=0.2)
        sim.server.configure(hang_s=0.3)
        start = time.perf_counter()
        status, _, _ = await sim.openai(oa())
        assert status == 200 and time.perf_counter() - start >= 0.3
        counts = (await sim.get("/stats"))["models"]["sim-gpt-4"]
        assert (counts["hangs"], counts["ok"]) == (2, 1)
    run(SimConfig(time_scale=0, rate_hang=1.0, hang_s=30), body)


def test_fault_malformed_is_a_200_with_broken_json() -> None:
    async def body(sim: Sim) -> None:
        for path, req, headers in (("/v1/chat/completions", oa(), None), ("/v1/messages", an(), AV)):
            async with sim.session.post(sim.url + path, json=req, headers=headers) as resp:
                assert resp.status == 200 and resp.content_type == "application/json"
                with pytest.raises(ValueError):
                    json.loads(await resp.read())
        counts = (await sim.get("/stats"))["totals"]
        assert (counts["malformed"], counts["ok"], counts["completion_tokens"]) == (2, 0, 0)
    run(SimConfig(time_scale=0, rate_malformed=1.0), body)


def test_fault_reset_drops_the_connection() -> None:
    async def body(sim: Sim) -> None:
        for path, req, headers in (("/v1/chat/completions", oa(), None), ("/v1/messages", an(), AV)):
            with pytest.raises(aiohttp.ClientConnectionError):
                await sim.raw(path, req, headers)
        assert (await sim.get("/stats"))["totals"]["resets"] == 2
        assert (await sim.get("/health")) == {"status": "ok"}
    run(SimConfig(time_scale=0, rate_reset=1.0), body)


def test_fault_models_restricts_faults_and_down_models_always_503() -> None:
    async def body(sim: Sim) -> None:
        assert (await sim.openai(oa("sim-gpt-4")))[0] in (500, 503)
        assert (await sim.openai(oa("sim-llama-3-8b")))[0] == 200
        status, _, data = await sim.openai(oa("sim-mixtral-8x7b"))
        assert status == 503 and data["error"]["type"] == "server_error"
        status, _, data = await sim.anthropic(an())
        assert status == 503 and data["error"]["type"] == "api_error"
        stats = (await sim.get("/stats"))["models"]
        assert stats["sim-mixtral-8x7b"]["status_5xx"] == 1 and stats["sim-claude-sonnet"]["status_5xx"] == 1
    run(SimConfig(time_scale=0, rate_5xx=1.0, fault_models={"sim-gpt-4"},
                  down_models={"sim-mixtral-8x7b", "sim-claude-sonnet"}), body)


def test_admin_faults_change_behaviour_mid_run() -> None:
    async def body(sim: Sim) -> None:
        assert (await sim.openai(oa()))[0] == 200
        status, _, content = await sim.raw("/admin/faults", {"rate_429": 1.0, "down_models": ["sim-llama-3-8b"]})
        assert status == 200 and json.loads(content)["rate_429"] == 1.0
        assert (await sim.openai(oa()))[0] == 429
        assert (await sim.openai(oa("sim-llama-3-8b")))[0] == 503
        for bad in ({"rate_429": 2}, {"bogus": 1}, [1]):
            assert (await sim.raw("/admin/faults", bad))[0] == 400
        assert (await sim.get("/admin/faults"))["rate_429"] == 1.0
        await sim.raw("/admin/faults", {"rate_429": 0, "down_models": []})
        assert (await sim.openai(oa()))[0] == 200
    run(None, body)


# -- stats, health, latency ----------------------------------------------------------------------


def test_stats_count_every_outcome_and_reset() -> None:
    async def body(sim: Sim) -> None:
        await sim.openai(oa("oa"))
        await sim.anthropic(an("an", max_tokens=10))
        await sim.openai(oa("oa", max_tokens=9999))
        await sim.openai(oa("nope"))
        for _ in range(3):
            await sim.openai(oa("oa"))  # rpm 3: the last of these is refused
        stats = await sim.get("/stats")
        prompt = count_prompt_tokens(MSGS)
        assert stats["models"]["oa"] == {"calls": 5, "ok": 3, "status_4xx": 1, "status_429": 1, "status_5xx": 0,
                                         "hangs": 0, "malformed": 0, "resets": 0, "prompt_tokens": 3 * prompt,
                                         "completion_tokens": 300}
        assert stats["models"]["an"]["ok"] == 1 and stats["models"]["an"]["completion_tokens"] == 10
        assert stats["totals"]["calls"] == 6 and stats["invalid"] == 1
        assert sim.server.stats() == stats
        assert (await sim.raw("/stats/reset", {}))[0] == 200
        assert await sim.get("/stats") == {"models": {}, "totals": dict.fromkeys(stats["totals"], 0), "invalid": 0}
        # The reset also refilled the rate-limit budgets.
        assert (await sim.openai(oa("oa")))[0] == 200
    run(SimConfig(time_scale=0, rpm_override=3), body, tiny_registry())


def test_health_and_model_list() -> None:
    async def body(sim: Sim) -> None:
        assert await sim.get("/health") == {"status": "ok"}
        models = await sim.get("/v1/models")
        assert [m["id"] for m in models["data"]] == [m.name for m in BUNDLED.models]
    run(None, body)


def test_latency_is_scaled_and_does_not_block() -> None:
    async def body(sim: Sim) -> None:
        start = time.perf_counter()
        results = await asyncio.gather(*(sim.openai(oa("oa")) for _ in range(20)))
        elapsed = time.perf_counter() - start
        assert all(r[0] == 200 for r in results)
        # Each call sleeps (100 + 1 * 100) ms * 0.5 = 0.1 s, concurrently.
        assert 0.1 <= elapsed < 0.6
        sim.server.configure(time_scale=0)
        start = time.perf_counter()
        await sim.openai(oa("oa"))
        assert time.perf_counter() - start < 0.05
    run(SimConfig(time_scale=0.5), body, tiny_registry(base_latency_ms=100, per_output_token_ms=1))


# -- runners and the real client -----------------------------------------------------------------


def test_server_thread_serves_synchronous_callers() -> None:
    with SimServerThread(BUNDLED, SimConfig(time_scale=0)) as sim:
        assert sim.url == f"http://127.0.0.1:{sim.port}"
        with urllib.request.urlopen(sim.url + "/health", timeout=5) as resp:
            assert json.loads(resp.read()) == {"status": "ok"}
        req = urllib.request.Request(sim.url + "/v1/chat/completions", data=json.dumps(oa()).encode(),
                                     headers={"content-type": "application/json"})
        with urllib.request.urlopen(req, timeout=5) as resp:
            assert json.loads(resp.read())["object"] == "chat.completion"
        assert sim.configure(rate_5xx=1.0).rate_5xx == 1.0
        assert sim.stats()["totals"]["ok"] == 1
    sim.stop()


def test_batchroute_clients_talk_to_the_simulator() -> None:
    from batchroute.errors import ProviderRateLimited, ProviderUnavailable
    from batchroute.providers import ChatRequest, client_for, estimate_prompt_tokens

    async def body(sim: Sim) -> None:
        for name in ("sim-gpt-4", "sim-claude-sonnet"):
            model = BUNDLED.model(name)
            messages = [{"role": "system", "content": "Be brief."}, *MSGS]
            resp = await client_for(model, sim.session, sim.url).complete(
                ChatRequest(model=model, messages=messages, max_tokens=30))
            assert resp.usage_reported and resp.prompt_tokens == estimate_prompt_tokens(messages)
            assert resp.completion_tokens == 30 and resp.finish_reason == "length"
            assert resp.text.startswith(f"[{name}] ") and resp.rate_limit is not None
        sim.server.configure(rate_429=1.0, retry_after_ms=1500)
        model = BUNDLED.model("sim-claude-sonnet")
        with pytest.raises(ProviderRateLimited) as exc:
            await client_for(model, sim.session, sim.url).complete(ChatRequest(model=model, messages=MSGS,
                                                                               max_tokens=5))
        assert exc.value.retry_after_s == 1.5
        sim.server.configure(rate_429=0.0, rate_reset=1.0)
        with pytest.raises(ProviderUnavailable):
            await client_for(model, sim.session, sim.url).complete(ChatRequest(model=model, messages=MSGS,
                                                                               max_tokens=5))
    run(None, body)
