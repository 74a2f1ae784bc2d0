"""Unit tests of batchroute.providers against tiny in-test aiohttp servers (no simprovider)."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import formatdate
from typing import Any, cast

import aiohttp
import pytest
from aiohttp import web
from multidict import CIMultiDict

from batchroute.errors import (
    ConfigError,
    ProviderAuthError,
    ProviderBadRequest,
    ProviderError,
    ProviderProtocolError,
    ProviderRateLimited,
    ProviderTimeout,
    ProviderUnavailable,
)
from batchroute.providers import (
    PROVIDER_KINDS,
    AnthropicClient,
    ChatRequest,
    ChatResponse,
    OpenAIClient,
    RateLimitInfo,
    client_for,
    estimate_prompt_tokens,
    estimate_tokens,
    new_session,
    parse_rate_limit_headers,
)
from batchroute.registry import ModelSpec, SimProfile
from batchroute.taxonomy import DOMAINS

OPENAI_KEY_ENV = "BR_TEST_OPENAI_KEY"
ANTHROPIC_KEY_ENV = "BR_TEST_ANTHROPIC_KEY"
OPENAI_KEY = "sk-test-openai-0123456789"
ANTHROPIC_KEY = "sk-ant-test-9876543210"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def make_model(base_url: str, *, api: str = "openai", name: str = "test-gpt", provider: str = "test-openai",
               key_env: str | None = OPENAI_KEY_ENV, wire_model: str | None = None) -> ModelSpec:
    sim = "{sim}" in base_url or api == "simulated"
    return ModelSpec(
        name=name, provider=provider, api=api, wire_model=wire_model,  # type: ignore[arg-type]
        base_url=base_url, api_key_env=key_env, context_window_tokens=8000,
        input_price_per_mtok_usd=1.0, output_price_per_mtok_usd=2.0, rpm=100, tpm=100_000,
        quality=dict.fromkeys(DOMAINS, 0.5),
        sim=SimProfile(base_latency_ms=1, per_output_token_ms=0) if sim else None,
    )


def anthropic_model(base_url: str, **kw: Any) -> ModelSpec:
    kw.setdefault("key_env", ANTHROPIC_KEY_ENV)
    return make_model(base_url, api="anthropic", name="test-claude", provider="test-anthropic", **kw)


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: Any


@dataclass
class Server:
    url: str
    seen: list[Seen] = field(default_factory=list)


@asynccontextmanager
async def serve(handler: Handler) -> AsyncIterator[Server]:
    """Run ``handler`` for every path on 127.0.0.1:<free port>; record each request."""
    server = Server(url="")

    async def record(request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        try:
            body: Any = json.loads(raw)
        except ValueError:
            body = raw
        server.seen.append(Seen(request.method, request.path, {k.lower(): v for k, v in request.headers.items()}, body))
        return await handler(request)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", record)
    runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        yield server
    finally:
        await runner.cleanup()


def reply(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Handler:
    async def handler(_: web.Request) -> web.StreamResponse:
        text = body if isinstance(body, str) else json.dumps(body)
        return web.Response(status=status, text=text, headers=headers, content_type="application/json")
    return handler


async def call(model: ModelSpec, handler: Handler, *, sim: bool = False,
               **kw: Any) -> tuple[ChatResponse | ProviderError, Server]:
    """Serve ``handler``, send one request for ``model`` and return the outcome and the server."""
    kw.setdefault("messages", [{"role": "user", "content": "Hello there"}])
    kw.setdefault("max_tokens", 32)
    async with serve(handler) as server, aiohttp.ClientSession() as session:
        if not sim:
            model = model.model_copy(update={"base_url": model.base_url.replace("{srv}", server.url)})
        client = client_for(model, session, sim_url=server.url + "/" if sim else "")
        try:
            return await client.complete(ChatRequest(model=model, **kw)), server
        except ProviderError as exc:
            return exc, server


def outcome_error(result: ChatResponse | ProviderError) -> ProviderError:
    assert isinstance(result, ProviderError), f"expected an error, got {result!r}"
    return result


def outcome_ok(result: ChatResponse | ProviderError) -> ChatResponse:
    assert isinstance(result, ChatResponse), f"expected a response, got {result!r}"
    return result


@pytest.fixture(autouse=True)
def keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(OPENAI_KEY_ENV, OPENAI_KEY)
    monkeypatch.setenv(ANTHROPIC_KEY_ENV, ANTHROPIC_KEY)


OPENAI_OK = {
    "id": "chatcmpl-1", "object": "chat.completion",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi! How can I help?"},
                 "finish_reason": "length"}],
    "usage": {"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19,
              "prompt_tokens_details": {"cached_tokens": 4}},
}
OPENAI_RL_HEADERS = {
    "x-ratelimit-limit-requests": "60", "x-ratelimit-remaining-requests": "59",
    "x-ratelimit-reset-requests": "1s", "x-ratelimit-limit-tokens": "150000",
    "x-ratelimit-remaining-tokens": "149984", "x-ratelimit-reset-tokens": "6m0s",
    "x-request-id": "req_abc",
}


# ---------------------------------------------------------------- OpenAI format


def test_openai_success_parses_everything_and_sends_auth() -> None:
    async def slow_ok(_: web.Request) -> web.StreamResponse:
        await asyncio.sleep(0.05)
        return web.json_response(OPENAI_OK, headers=OPENAI_RL_HEADERS)

    model = make_model("{srv}/v1/", wire_model="gpt-wire")
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}]
    result, server = asyncio.run(call(model, slow_ok, messages=messages, max_tokens=32,
                                      temperature=0.3, request_id="r-1"))
    resp = outcome_ok(result)
    assert (resp.text, resp.prompt_tokens, resp.completion_tokens) == ("Hi! How can I help?", 12, 7)
    assert resp.cached_tokens == 4
    assert resp.finish_reason == "length"
    assert resp.usage_reported is True
    assert resp.http_status == 200
    assert 50 <= resp.latency_ms < 5000
    assert resp.provider_request_id == "req_abc"
    assert resp.raw == OPENAI_OK
    assert resp.rate_limit == RateLimitInfo(limit_requests=60, remaining_requests=59, reset_requests_s=1.0,
                                            limit_tokens=150000, remaining_tokens=149984, reset_tokens_s=360.0)
    [seen] = server.seen
    assert (seen.method, seen.path) == ("POST", "/v1/chat/completions")
    assert seen.headers["authorization"] == f"Bearer {OPENAI_KEY}"
    assert seen.headers["x-batchroute-request-id"] == "r-1"
    assert seen.headers["content-type"] == "application/json"
    assert seen.body == {"model": "gpt-wire", "messages": messages, "max_tokens": 32, "temperature": 0.3}


def test_openai_content_parts_temperature_omitted_and_body_id_fallback() -> None:
    body = {"id": "chatcmpl-9", "choices": [{"message": {"role": "assistant", "content": [
        {"type": "text", "text": "Hello, "}, {"type": "text", "text": "world"}]}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2}}
    result, server = asyncio.run(call(make_model("{srv}/v1"), reply(body)))
    resp = outcome_ok(result)
    assert (resp.text, resp.finish_reason, resp.cached_tokens) == ("Hello, world", "stop", 0)
    assert resp.provider_request_id == "chatcmpl-9"
    assert resp.rate_limit is None
    assert "temperature" not in server.seen[0].body
    assert "x-batchroute-request-id" not in server.seen[0].headers


def test_openai_missing_usage_is_estimated() -> None:
    body = {"choices": [{"message": {"role": "assistant", "content": "abcdefghij"}, "finish_reason": None}]}
    messages = [{"role": "user", "content": "x" * 20}, {"role": "assistant", "content": "y" * 8}]
    resp = outcome_ok(asyncio.run(call(make_model("{srv}/v1"), reply(body), messages=messages))[0])
    assert resp.usage_reported is False
    assert resp.prompt_tokens == (5 + 3) + (2 + 3) + 3
    assert resp.completion_tokens == 3
    assert resp.cached_tokens == 0
    assert resp.finish_reason == "unknown"


def test_openai_partial_usage_counts_as_unreported() -> None:
    body = {"choices": [{"message": {"content": "abcd"}, "finish_reason": "stop"}], "usage": {"prompt_tokens": 9}}
    resp = outcome_ok(asyncio.run(call(make_model("{srv}/v1"), reply(body)))[0])
    assert (resp.prompt_tokens, resp.completion_tokens, resp.usage_reported) == (9, 1, False)


def test_simulated_model_without_key_sends_no_auth(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(OPENAI_KEY_ENV)
    result, server = asyncio.run(call(make_model("{sim}/v1"), reply(OPENAI_OK), sim=True))
    assert outcome_ok(result).text == "Hi! How can I help?"
    assert server.seen[0].path == "/v1/chat/completions"
    assert "authorization" not in server.seen[0].headers


def test_simulated_model_with_key_sends_it() -> None:
    _, server = asyncio.run(call(make_model("{sim}/v1"), reply(OPENAI_OK), sim=True))
    assert server.seen[0].headers["authorization"] == f"Bearer {OPENAI_KEY}"


def test_api_simulated_with_bare_sim_base_url_posts_to_v1() -> None:
    model = make_model("{sim}", api="simulated", key_env=None)
    result, server = asyncio.run(call(model, reply(OPENAI_OK), sim=True))
    outcome_ok(result)
    assert server.seen[0].path == "/v1/chat/completions"
    assert "authorization" not in server.seen[0].headers


def test_model_without_key_env_sends_no_auth() -> None:
    result, server = asyncio.run(call(make_model("{srv}/v1", key_env=None), reply(OPENAI_OK)))
    outcome_ok(result)
    assert "authorization" not in server.seen[0].headers


@pytest.mark.parametrize("factory", [make_model, anthropic_model])
def test_missing_key_for_real_model_raises_auth_error_without_calling(
        monkeypatch: pytest.MonkeyPatch, factory: Callable[..., ModelSpec]) -> None:
    monkeypatch.delenv(OPENAI_KEY_ENV)
    monkeypatch.delenv(ANTHROPIC_KEY_ENV)
    model = factory("{srv}/v1")
    result, server = asyncio.run(call(model, reply(OPENAI_OK)))
    exc = outcome_error(result)
    assert type(exc) is ProviderAuthError
    assert not exc.retryable
    assert model.api_key_env is not None and model.api_key_env in str(exc)
    assert (exc.provider, exc.model, exc.status) == (model.provider, model.name, None)
    assert server.seen == []


def test_empty_key_counts_as_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(OPENAI_KEY_ENV, "")
    result, server = asyncio.run(call(make_model("{srv}/v1"), reply(OPENAI_OK)))
    assert type(outcome_error(result)) is ProviderAuthError
    assert server.seen == []


# ---------------------------------------------------------------- Anthropic format


def test_anthropic_success_converts_system_and_parts() -> None:
    reset_at = datetime.fromtimestamp(time.time() + 20, UTC).isoformat().replace("+00:00", "Z")
    body = {
        "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-wire",
        "content": [{"type": "text", "text": "2+2 "}, {"type": "tool_use", "id": "t", "name": "x", "input": {}},
                    {"type": "text", "text": "is 4."}],
        "stop_reason": "end_turn", "stop_sequence": None,
        "usage": {"input_tokens": 20, "output_tokens": 5, "cache_read_input_tokens": 100,
                  "cache_creation_input_tokens": 10},
    }
    headers = {"anthropic-ratelimit-requests-limit": "50", "anthropic-ratelimit-requests-remaining": "49",
               "anthropic-ratelimit-requests-reset": reset_at, "anthropic-ratelimit-tokens-limit": "80000",
               "anthropic-ratelimit-tokens-remaining": "79000", "anthropic-ratelimit-tokens-reset": reset_at,
               "request-id": "req_ant"}
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "system", "content": [{"type": "text", "text": "Answer in English."}]},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": [{"type": "text", "text": "What is 2+2?"},
                                     {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                                     {"type": "image_url", "image_url": {"url": "https://x.test/a.png"}}]},
    ]
    model = anthropic_model("{srv}", wire_model="claude-wire")
    result, server = asyncio.run(call(model, reply(body, headers=headers), messages=messages, max_tokens=64,
                                      temperature=0.0, request_id="r-2"))
    resp = outcome_ok(result)
    assert resp.text == "2+2 is 4."
    assert (resp.prompt_tokens, resp.completion_tokens, resp.cached_tokens) == (130, 5, 100)
    assert resp.finish_reason == "stop"
    assert resp.usage_reported is True
    assert resp.provider_request_id == "req_ant"
    rl = resp.rate_limit
    assert rl is not None and (rl.limit_requests, rl.remaining_requests, rl.limit_tokens, rl.remaining_tokens) == (
        50, 49, 80000, 79000)
    assert rl.reset_requests_s is not None and 18 < rl.reset_requests_s <= 20
    [seen] = server.seen
    assert (seen.method, seen.path) == ("POST", "/v1/messages")
    assert seen.headers["x-api-key"] == ANTHROPIC_KEY
    assert seen.headers["anthropic-version"] == "2023-06-01"
    assert seen.headers["content-type"] == "application/json"
    assert seen.headers["x-batchroute-request-id"] == "r-2"
    assert "authorization" not in seen.headers
    assert seen.body == {
        "model": "claude-wire", "max_tokens": 64, "temperature": 0.0,
        "system": "Be brief.\n\nAnswer in English.",
        "messages": [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello!"},
            {"role": "user", "content": [
                {"type": "text", "text": "What is 2+2?"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}},
                {"type": "image", "source": {"type": "url", "url": "https://x.test/a.png"}}]},
        ],
    }


def test_anthropic_without_system_or_temperature_omits_them() -> None:
    body = {"type": "message", "content": [{"type": "text", "text": "ok"}], "stop_reason": "max_tokens",
            "usage": {"input_tokens": 4, "output_tokens": 1}}
    result, server = asyncio.run(call(anthropic_model("{srv}/v1"), reply(body)))
    resp = outcome_ok(result)
    assert (resp.finish_reason, resp.prompt_tokens, resp.cached_tokens) == ("length", 4, 0)
    assert server.seen[0].path == "/v1/messages"
    assert set(server.seen[0].body) == {"model", "max_tokens", "messages"}


def test_anthropic_missing_usage_is_estimated() -> None:
    body = {"type": "message", "content": [{"type": "text", "text": "abcdefghi"}], "stop_reason": "end_turn"}
    messages = [{"role": "system", "content": "abcd"}, {"role": "user", "content": "x" * 12}]
    resp = outcome_ok(asyncio.run(call(anthropic_model("{srv}"), reply(body), messages=messages))[0])
    assert resp.usage_reported is False
    assert (resp.prompt_tokens, resp.completion_tokens, resp.cached_tokens) == ((1 + 3) + (3 + 3) + 3, 3, 0)


@pytest.mark.parametrize(("stop", "finish"), [
    ("end_turn", "stop"), ("max_tokens", "length"), ("stop_sequence", "stop"), ("tool_use", "tool_calls"),
    ("refusal", "content_filter"), ("pause_turn", "pause_turn"), (None, "unknown"),
])
def test_anthropic_stop_reason_mapping(stop: str | None, finish: str) -> None:
    client = AnthropicClient(cast(aiohttp.ClientSession, None))
    request = ChatRequest(model=anthropic_model("http://x"), messages=[], max_tokens=1)
    data: dict[str, Any] = {"content": [], "stop_reason": stop, "usage": {"input_tokens": 1, "output_tokens": 0}}
    assert client.parse_body(data, request).finish_reason == finish


def test_anthropic_unsupported_role_is_bad_request_without_calling() -> None:
    messages = [{"role": "tool", "content": "42"}]
    result, server = asyncio.run(call(anthropic_model("{srv}"), reply({}), messages=messages))
    exc = outcome_error(result)
    assert type(exc) is ProviderBadRequest and "'tool'" in str(exc)
    assert server.seen == []


def test_anthropic_error_body_message_is_parsed() -> None:
    body = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    exc = outcome_error(asyncio.run(call(anthropic_model("{srv}"), reply(body, status=529)))[0])
    assert type(exc) is ProviderUnavailable
    assert str(exc) == "test-anthropic model test-claude: HTTP 529: Overloaded"


def test_anthropic_error_object_in_2xx_is_protocol_error() -> None:
    body = {"type": "error", "error": {"type": "api_error", "message": "boom"}}
    exc = outcome_error(asyncio.run(call(anthropic_model("{srv}"), reply(body)))[0])
    assert type(exc) is ProviderProtocolError and exc.status == 200


# ---------------------------------------------------------------- HTTP status mapping

HTTP_DATE_30S = "http-date+30s"


@pytest.mark.parametrize(("status", "headers", "cls", "retry_after"), [
    (400, {}, ProviderBadRequest, None),
    (401, {}, ProviderAuthError, None),
    (403, {}, ProviderAuthError, None),
    (404, {}, ProviderBadRequest, None),
    (408, {}, ProviderUnavailable, None),
    (409, {}, ProviderUnavailable, None),
    (413, {}, ProviderBadRequest, None),
    (422, {}, ProviderBadRequest, None),
    (429, {}, ProviderRateLimited, None),
    (429, {"retry-after": "7"}, ProviderRateLimited, 7.0),
    (429, {"retry-after-ms": "1500", "retry-after": "2"}, ProviderRateLimited, 1.5),
    (429, {"retry-after": HTTP_DATE_30S}, ProviderRateLimited, 30.0),
    (429, {"x-ratelimit-remaining-tokens": "0", "x-ratelimit-reset-tokens": "2.5s",
           "x-ratelimit-remaining-requests": "3", "x-ratelimit-reset-requests": "9s"}, ProviderRateLimited, 2.5),
    (500, {}, ProviderUnavailable, None),
    (502, {}, ProviderUnavailable, None),
    (503, {"retry-after": "3"}, ProviderUnavailable, 3.0),
    (529, {}, ProviderUnavailable, None),
])
def test_status_mapping(status: int, headers: dict[str, str], cls: type[ProviderError],
                        retry_after: float | None) -> None:
    if headers.get("retry-after") == HTTP_DATE_30S:
        headers = {"retry-after": formatdate(time.time() + 30, usegmt=True)}
    body = {"error": {"message": f"the provider says {status}", "type": "x", "code": None}}
    result, server = asyncio.run(call(make_model("{srv}/v1"), reply(body, status=status, headers=headers)))
    exc = outcome_error(result)
    assert type(exc) is cls
    assert exc.retryable is (cls in (ProviderRateLimited, ProviderUnavailable))
    assert (exc.status, exc.provider, exc.model) == (status, "test-openai", "test-gpt")
    assert str(exc) == f"test-openai model test-gpt: HTTP {status}: the provider says {status}"
    assert exc.body == json.dumps(body)
    if retry_after is None:
        assert exc.retry_after_s is None
    else:
        assert exc.retry_after_s == pytest.approx(retry_after, abs=1.1)
    assert OPENAI_KEY not in str(exc)
    assert len(server.seen) == 1


def test_error_body_truncated_and_key_scrubbed() -> None:
    message = f"Incorrect API key provided: {OPENAI_KEY}. " + "x" * 5000
    handler = reply({"error": {"message": message}}, status=401)
    exc = outcome_error(asyncio.run(call(make_model("{srv}/v1"), handler))[0])
    assert type(exc) is ProviderAuthError
    assert exc.body is not None and len(exc.body) == 2048
    assert OPENAI_KEY not in exc.body and OPENAI_KEY not in str(exc)
    assert "Incorrect API key provided: ***" in str(exc)
    assert len(str(exc)) < 400


def test_non_json_error_body_is_quoted() -> None:
    exc = outcome_error(asyncio.run(call(make_model("{srv}/v1"), reply("<html>Bad Gateway</html>", status=502)))[0])
    assert type(exc) is ProviderUnavailable
    assert str(exc).endswith("HTTP 502: <html>Bad Gateway</html>")


# ---------------------------------------------------------------- protocol and transport failures


@pytest.mark.parametrize("body", [
    "{not json", "", "[1, 2]", json.dumps({"id": "x"}), json.dumps({"choices": []}),
    json.dumps({"choices": [{"finish_reason": "stop"}]}),
    json.dumps({"choices": [{"message": "hi"}]}),
    json.dumps({"choices": [{"message": {"content": 42}}]}),
])
def test_malformed_2xx_is_protocol_error(body: str) -> None:
    exc = outcome_error(asyncio.run(call(make_model("{srv}/v1"), reply(body)))[0])
    assert type(exc) is ProviderProtocolError
    assert exc.retryable and exc.status == 200 and exc.body == body
    assert "test-openai model test-gpt: HTTP 200" in str(exc)


def test_malformed_json_keeps_cause() -> None:
    exc = outcome_error(asyncio.run(call(make_model("{srv}/v1"), reply("{oops")))[0])
    assert isinstance(exc.__cause__, json.JSONDecodeError)


def test_server_closing_connection_is_unavailable() -> None:
    async def main() -> ProviderError:
        async def slam(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.read(1024)
            writer.close()

        server = await asyncio.start_server(slam, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        model = make_model(f"http://127.0.0.1:{port}/v1")
        try:
            async with aiohttp.ClientSession() as session:
                with pytest.raises(ProviderUnavailable) as info:
                    await client_for(model, session).complete(
                        ChatRequest(model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=5))
        finally:
            server.close()
            await server.wait_closed()
        return info.value

    exc = asyncio.run(main())
    assert exc.retryable and exc.status is None
    assert isinstance(exc.__cause__, aiohttp.ClientError)
    assert str(exc).startswith("test-openai model test-gpt: connection to http://127.0.0.1:")


def test_connection_refused_is_unavailable() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    model = make_model(f"http://127.0.0.1:{port}/v1")

    async def main() -> None:
        async with aiohttp.ClientSession() as session:
            await client_for(model, session).complete(ChatRequest(model=model, messages=[], max_tokens=5))

    with pytest.raises(ProviderUnavailable) as info:
        asyncio.run(main())
    assert isinstance(info.value.__cause__, aiohttp.ClientConnectionError)


def test_hanging_server_times_out() -> None:
    async def hang(_: web.Request) -> web.StreamResponse:
        await asyncio.sleep(10)
        return web.json_response(OPENAI_OK)

    start = time.perf_counter()
    exc = outcome_error(asyncio.run(call(make_model("{srv}/v1"), hang, timeout_s=0.2))[0])
    assert time.perf_counter() - start < 3
    assert type(exc) is ProviderTimeout and exc.retryable
    assert isinstance(exc.__cause__, TimeoutError)
    assert "0.2s" in str(exc)


def test_invalid_url_is_bad_request() -> None:
    model = make_model("not-a-url")

    async def main() -> None:
        async with aiohttp.ClientSession() as session:
            await client_for(model, session).complete(ChatRequest(model=model, messages=[], max_tokens=5))

    with pytest.raises(ProviderBadRequest):
        asyncio.run(main())


def test_unserialisable_message_is_bad_request() -> None:
    result, server = asyncio.run(call(make_model("{srv}/v1"), reply(OPENAI_OK),
                                      messages=[{"role": "user", "content": object()}]))
    assert type(outcome_error(result)) is ProviderBadRequest
    assert server.seen == []


# ---------------------------------------------------------------- registry, session, estimates


def test_provider_kinds_and_client_for() -> None:
    expected = {"openai": OpenAIClient, "anthropic": AnthropicClient, "simulated": OpenAIClient}
    assert dict(PROVIDER_KINDS) == expected
    session = cast(aiohttp.ClientSession, object())
    client = client_for(anthropic_model("{sim}"), session, "http://sim:1")
    assert isinstance(client, AnthropicClient)
    assert (client.session, client.sim_url) == (session, "http://sim:1")
    assert isinstance(client_for(make_model("{sim}", api="simulated"), session), OpenAIClient)
    assert client.endpoint(anthropic_model("{sim}")) == "http://sim:1/v1/messages"
    bogus = make_model("{sim}").model_copy(update={"api": "bogus"})
    with pytest.raises(ConfigError):
        client_for(bogus, session)


def test_new_session_pools_connections() -> None:
    async def main() -> tuple[int, int]:
        session = new_session(limit=250)
        try:
            connector = session.connector
            assert isinstance(connector, aiohttp.TCPConnector)
            return connector.limit, connector.limit_per_host
        finally:
            await session.close()

    assert asyncio.run(main()) == (250, 250)


def test_estimates() -> None:
    assert [estimate_tokens(t) for t in ("", "a", "abcd", "abcde", "x" * 400)] == [1, 1, 1, 2, 100]
    assert estimate_prompt_tokens([]) == 3
    assert estimate_prompt_tokens([{"role": "user", "content": "abcdefgh"}]) == 2 + 3 + 3
    parts = [{"type": "text", "text": "abcd"}, {"type": "image_url", "image_url": {"url": "u"}},
             {"type": "text", "text": "efgh"}]
    assert estimate_prompt_tokens([{"role": "user", "content": parts}, {"role": "assistant"}]) == (2 + 3) + (1 + 3) + 3


# ---------------------------------------------------------------- rate-limit header parser

NOW = datetime(2024, 6, 1, 12, 0, 0, tzinfo=UTC).timestamp()


def test_no_rate_limit_headers_gives_none() -> None:
    assert parse_rate_limit_headers({}) is None
    assert parse_rate_limit_headers({"content-type": "application/json", "retry-after": "soon"}) is None


def test_openai_headers_full() -> None:
    info = parse_rate_limit_headers(OPENAI_RL_HEADERS, now=NOW)
    assert info == RateLimitInfo(60, 59, 1.0, 150000, 149984, 360.0, None)


@pytest.mark.parametrize(("value", "seconds"), [
    ("1s", 1.0), ("6m0s", 360.0), ("20ms", 0.02), ("1h2m3.5s", 3723.5), ("7.66s", 7.66),
    ("2m59.56s", 179.56), ("0s", 0.0), ("1h", 3600.0), ("500us", 0.0005), ("1m30s250ms", 90.25),
    ("0.5", 0.5), ("30", 30.0), (" 2s ", 2.0), (str(NOW + 42), 42.0), (str(NOW - 5), 0.0),
    ("2024-06-01T12:00:30Z", 30.0), ("garbage", None), ("", None), ("1x", None), ("s", None),
])
def test_openai_reset_formats(value: str, seconds: float | None) -> None:
    info = parse_rate_limit_headers({"x-ratelimit-reset-tokens": value, "x-ratelimit-limit-tokens": "1"}, now=NOW)
    assert info is not None
    assert info.reset_tokens_s == (None if seconds is None else pytest.approx(seconds))


@pytest.mark.parametrize(("value", "seconds"), [
    ("2024-06-01T12:00:30Z", 30.0), ("2024-06-01T12:00:30.250Z", 30.25), ("2024-06-01T14:01:00+02:00", 60.0),
    ("2024-06-01T12:00:30", 30.0), ("2024-06-01T11:59:00Z", 0.0), ("2024-06-01T12:00:30.123456789Z", 30.123456),
    ("tomorrow", None),
])
def test_anthropic_reset_timestamps(value: str, seconds: float | None) -> None:
    info = parse_rate_limit_headers({"anthropic-ratelimit-requests-reset": value,
                                     "anthropic-ratelimit-requests-limit": "50"}, now=NOW)
    assert info is not None and info.limit_requests == 50
    assert info.reset_requests_s == (None if seconds is None else pytest.approx(seconds, abs=1e-3))


def test_anthropic_headers_full_and_input_token_fallback() -> None:
    base = {"anthropic-ratelimit-requests-limit": "50", "anthropic-ratelimit-requests-remaining": "49",
            "anthropic-ratelimit-requests-reset": "2024-06-01T12:00:01Z",
            "anthropic-ratelimit-input-tokens-limit": "40000", "anthropic-ratelimit-input-tokens-remaining": "39000",
            "anthropic-ratelimit-input-tokens-reset": "2024-06-01T12:00:05Z",
            "anthropic-ratelimit-output-tokens-limit": "8000", "anthropic-ratelimit-output-tokens-remaining": "10",
            "anthropic-ratelimit-output-tokens-reset": "2024-06-01T12:00:09Z"}
    assert parse_rate_limit_headers(base, now=NOW) == RateLimitInfo(50, 49, 1.0, 40000, 39000, 5.0, None)
    combined = {**base, "anthropic-ratelimit-tokens-limit": "48000", "anthropic-ratelimit-tokens-remaining": "100",
                "anthropic-ratelimit-tokens-reset": "2024-06-01T12:00:07Z"}
    assert parse_rate_limit_headers(combined, now=NOW) == RateLimitInfo(50, 49, 1.0, 48000, 100, 7.0, None)


@pytest.mark.parametrize(("headers", "seconds"), [
    ({"retry-after": "20"}, 20.0), ({"retry-after": "0"}, 0.0), ({"retry-after": "1.5"}, 1.5),
    ({"retry-after": "-3"}, 0.0), ({"retry-after": "Sat, 01 Jun 2024 12:01:00 GMT"}, 60.0),
    ({"retry-after": "Sat, 01 Jun 2024 11:00:00 GMT"}, 0.0), ({"retry-after-ms": "250"}, 0.25),
    ({"retry-after-ms": "250", "retry-after": "9"}, 0.25), ({"retry-after-ms": "nan", "retry-after": "9"}, 9.0),
    ({"retry-after-ms": "junk", "retry-after": "junk"}, None), ({"Retry-After": "4"}, 4.0),
])
def test_retry_after_formats(headers: dict[str, str], seconds: float | None) -> None:
    info = parse_rate_limit_headers({**headers, "x-ratelimit-limit-requests": "1"}, now=NOW)
    assert info is not None
    assert info.retry_after_s == (None if seconds is None else pytest.approx(seconds))


def test_header_names_are_case_insensitive_and_bad_numbers_ignored() -> None:
    info = parse_rate_limit_headers({"X-RateLimit-Remaining-Requests": "5", "X-RATELIMIT-LIMIT-TOKENS": "12.0",
                                     "x-ratelimit-limit-requests": "lots"}, now=NOW)
    assert info == RateLimitInfo(remaining_requests=5, limit_tokens=12)
    multi = CIMultiDict({"Anthropic-RateLimit-Tokens-Remaining": "7"})
    assert parse_rate_limit_headers(multi, now=NOW) == RateLimitInfo(remaining_tokens=7)


def test_retry_after_only_gives_info() -> None:
    assert parse_rate_limit_headers({"retry-after": "3"}, now=NOW) == RateLimitInfo(retry_after_s=3.0)
