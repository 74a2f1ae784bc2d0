"""The provider client layer: request/response types, error mapping and rate-limit headers.

Call a model (one session per process, shared by every client)::

    session = new_session()
    client = client_for(spec, session, sim_url="http://127.0.0.1:8700")
    resp = await client.complete(ChatRequest(model=spec, max_tokens=256,
                                             messages=[{"role": "user", "content": "hi"}]))
    resp.text, resp.prompt_tokens, resp.completion_tokens, resp.rate_limit

:meth:`ProviderClient.complete` raises only :class:`~batchroute.errors.ProviderError`
subclasses; ``exc.retryable`` says whether another attempt may succeed.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import aiohttp

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
from batchroute.registry import ModelSpec

REQUEST_ID_HEADER = "x-batchroute-request-id"
MAX_BODY_CHARS = 2048
MAX_MESSAGE_CHARS = 300


@dataclass(frozen=True)
class ChatRequest:
    """One chat call: ``messages`` are OpenAI-style ``{"role", "content"}`` dicts."""

    model: ModelSpec
    messages: list[dict[str, Any]]
    max_tokens: int
    temperature: float | None = None
    # Sent as the x-batchroute-request-id header so retries can be traced and de-duplicated.
    request_id: str | None = None
    timeout_s: float = 120.0


@dataclass
class RateLimitInfo:
    """Rate-limit state a provider reported; resets are seconds from the moment of parsing."""

    limit_requests: int | None = None
    remaining_requests: int | None = None
    reset_requests_s: float | None = None
    limit_tokens: int | None = None
    remaining_tokens: int | None = None
    reset_tokens_s: float | None = None
    retry_after_s: float | None = None


@dataclass
class ChatResponse:
    """A successful completion; token counts are estimated when ``usage_reported`` is False."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    finish_reason: str
    usage_reported: bool
    http_status: int
    latency_ms: float
    rate_limit: RateLimitInfo | None
    provider_request_id: str | None
    raw: dict[str, Any]


@dataclass
class ParsedCompletion:
    """What a wire format yields from a 2xx body; :meth:`ProviderClient.parse_body` returns it."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    finish_reason: str
    usage_reported: bool
    body_id: str | None = None


def estimate_tokens(text: str) -> int:
    """Rough token count of ``text`` (4 characters per token, at least 1)."""
    return max(1, math.ceil(len(text) / 4))


def content_text(content: Any) -> str:
    """The text of an OpenAI-style content: a string, or the joined text of a list of parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(content_text(part) for part in content)
    if isinstance(content, dict):
        text = content.get("text")
        return text if isinstance(text, str) else ""
    return str(content)


def estimate_prompt_tokens(messages: Sequence[Mapping[str, Any]]) -> int:
    """Rough prompt size of ``messages``: their content tokens + 3 per message + 3."""
    return sum(estimate_tokens(content_text(m.get("content"))) + 3 for m in messages) + 3


_DURATION = re.compile(r"(?:\d+(?:\.\d+)?(?:ms|us|µs|ns|h|m|s))+")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|us|µs|ns|h|m|s)")
_UNIT_S = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}
# A bare number this large is a Unix timestamp, not a number of seconds.
_EPOCH_THRESHOLD = 1e9


def _parse_float(value: str) -> float | None:
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def _parse_int(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return int(value.strip())
    except ValueError:
        number = _parse_float(value.strip())
        return int(number) if number is not None else None


def _parse_timestamp(value: str, now: float) -> float | None:
    try:
        ts = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        return None
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=UTC)
    return max(0.0, ts.timestamp() - now)


def _parse_reset(value: str | None, now: float) -> float | None:
    """Seconds until reset from "6m0s"-style durations, bare seconds, epochs or RFC 3339."""
    if value is None:
        return None
    value = value.strip()
    if _DURATION.fullmatch(value):
        return sum(float(n) * _UNIT_S[unit] for n, unit in _DURATION_PART.findall(value))
    number = _parse_float(value)
    if number is not None:
        return max(0.0, number - now if number > _EPOCH_THRESHOLD else number)
    return _parse_timestamp(value, now)


def _parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds from a ``retry-after`` header: a number of seconds or an HTTP date."""
    if value is None:
        return None
    number = _parse_float(value.strip())
    if number is not None:
        return max(0.0, number)
    try:
        when = parsedate_to_datetime(value.strip())
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - now)


def parse_rate_limit_headers(headers: Mapping[str, str], now: float | None = None) -> RateLimitInfo | None:
    """Rate-limit state from OpenAI- or Anthropic-style response headers; None when absent.

    ``now`` (Unix seconds, default ``time.time()``) anchors timestamps. For Anthropic the
    combined ``tokens-*`` bucket wins; without it the ``input-tokens-*`` bucket is used.
    ``retry-after-ms`` wins over ``retry-after``. Unparsable values are ignored.
    """
    now = time.time() if now is None else now
    h = {k.lower(): v for k, v in headers.items()}

    def pick(*names: str) -> str | None:
        return next((h[n] for n in names if n in h), None)

    def bucket(openai_kind: str, *anthropic_kinds: str) -> tuple[int | None, int | None, float | None]:
        def get(part: str) -> str | None:
            anthropic = (f"anthropic-ratelimit-{k}-{part}" for k in anthropic_kinds)
            return pick(f"x-ratelimit-{part}-{openai_kind}", *anthropic)
        return _parse_int(get("limit")), _parse_int(get("remaining")), _parse_reset(get("reset"), now)

    retry_ms = _parse_float(h["retry-after-ms"].strip()) if "retry-after-ms" in h else None
    retry_after = max(0.0, retry_ms / 1000.0) if retry_ms is not None else _parse_retry_after(h.get("retry-after"), now)
    info = RateLimitInfo(*bucket("requests", "requests"), *bucket("tokens", "tokens", "input-tokens"),
                         retry_after_s=retry_after)
    if all(v is None for v in vars(info).values()):
        return None
    return info


def _truncate(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _redact(text: str, secret: str | None) -> str:
    return text.replace(secret, "***") if secret else text


def provider_message(body: str) -> str:
    """The provider's own error message from an OpenAI or Anthropic error body (or the raw body)."""
    try:
        data = json.loads(body)
    except ValueError:
        return body.strip()
    if isinstance(data, dict):
        err = data.get("error")
        if isinstance(err, dict) and isinstance(err.get("message"), str):
            return str(err["message"])
        for key in ("error", "message", "detail"):
            if isinstance(data.get(key), str):
                return str(data[key])
    return body.strip()


def _retry_hint(status: int, info: RateLimitInfo | None) -> float | None:
    if info is None:
        return None
    if info.retry_after_s is not None or status != 429:
        return info.retry_after_s
    # No retry-after on a 429: wait for whichever exhausted bucket resets.
    resets = [reset for remaining, reset in ((info.remaining_requests, info.reset_requests_s),
                                             (info.remaining_tokens, info.reset_tokens_s))
              if remaining == 0 and reset is not None]
    return max(resets) if resets else None


def error_for_status(status: int, body: str, headers: Mapping[str, str], model: ModelSpec,
                     secret: str | None = None) -> ProviderError:
    """The ProviderError for a non-2xx answer (``secret`` is scrubbed from message and body)."""
    cls: type[ProviderError]
    if status == 429:
        cls = ProviderRateLimited
    elif status in (408, 409) or status >= 500:
        cls = ProviderUnavailable
    elif status in (401, 403):
        cls = ProviderAuthError
    else:
        cls = ProviderBadRequest
    body = _redact(body, secret)
    detail = _truncate(" ".join(provider_message(body).split()), MAX_MESSAGE_CHARS) or "(empty body)"
    return cls(f"{model.provider} model {model.name}: HTTP {status}: {detail}",
               status=status, provider=model.provider, model=model.name,
               retry_after_s=_retry_hint(status, parse_rate_limit_headers(headers)),
               body=_truncate(body, MAX_BODY_CHARS))


class ProviderClient(ABC):
    """Calls one wire format; build with ``client_for(model, session, sim_url)``.

    Subclasses supply the endpoint, auth headers, request body and response parsing;
    :meth:`complete` owns transport, timing and error mapping.
    """

    def __init__(self, session: aiohttp.ClientSession, sim_url: str = "") -> None:
        self.session = session
        self.sim_url = sim_url

    @abstractmethod
    def endpoint(self, model: ModelSpec) -> str:
        """The full URL to POST to."""

    @abstractmethod
    def auth_headers(self, key: str) -> dict[str, str]:
        """Headers carrying the API key."""

    @abstractmethod
    def build_body(self, request: ChatRequest) -> dict[str, Any]:
        """The JSON request body; raise ProviderBadRequest for messages the format cannot carry."""

    @abstractmethod
    def parse_body(self, data: dict[str, Any], request: ChatRequest) -> ParsedCompletion:
        """Parse a 2xx JSON body; Key/Index/Type/Value/AttributeError become ProviderProtocolError."""

    def extra_headers(self) -> dict[str, str]:
        """Fixed headers the format needs on every call."""
        return {}

    def api_key(self, model: ModelSpec) -> str | None:
        """The key from ``model.api_key_env`` (read now); raises ProviderAuthError if a real model lacks it."""
        env = model.api_key_env
        if not env:
            return None
        key = os.environ.get(env)
        if key or model.simulated:
            return key or None
        raise ProviderAuthError(
            f"{model.provider} model {model.name}: API key environment variable {env} is not set",
            provider=model.provider, model=model.name)

    def make_error(self, cls: type[ProviderError], model: ModelSpec, what: str, *, status: int | None = None,
                   body: str | None = None, secret: str | None = None) -> ProviderError:
        """A ``cls`` error for ``model`` whose message starts with provider and model name."""
        what = _truncate(_redact(what, secret), MAX_MESSAGE_CHARS)
        return cls(f"{model.provider} model {model.name}: {what}", status=status, provider=model.provider,
                   model=model.name, body=None if body is None else _truncate(_redact(body, secret), MAX_BODY_CHARS))

    async def complete(self, request: ChatRequest) -> ChatResponse:
        """Send ``request`` and return the parsed answer; raises only ProviderError subclasses."""
        model = request.model
        key = self.api_key(model)
        headers = {"content-type": "application/json", "accept": "application/json", **self.extra_headers()}
        if key:
            headers.update(self.auth_headers(key))
        if request.request_id:
            headers[REQUEST_ID_HEADER] = request.request_id
        try:
            payload = json.dumps(self.build_body(request)).encode()
        except (TypeError, ValueError) as exc:
            raise self.make_error(ProviderBadRequest, model, f"request is not JSON-serialisable: {exc}") from exc
        url = self.endpoint(model)
        start = time.perf_counter()
        try:
            async with self.session.post(url, data=payload, headers=headers, allow_redirects=False,
                                         timeout=aiohttp.ClientTimeout(total=request.timeout_s)) as resp:
                content = await resp.read()
                status, resp_headers = resp.status, resp.headers
        # TimeoutError first: aiohttp's ServerTimeoutError is also a ClientConnectionError and OSError.
        except TimeoutError as exc:
            what = f"no answer within {request.timeout_s:g}s from {url}"
            raise self.make_error(ProviderTimeout, model, what) from exc
        except aiohttp.InvalidURL as exc:
            raise self.make_error(ProviderBadRequest, model, f"invalid URL {url!r}") from exc
        except (aiohttp.ClientError, OSError) as exc:
            what = f"connection to {url} failed: {type(exc).__name__}: {exc}"
            raise self.make_error(ProviderUnavailable, model, what, secret=key) from exc
        latency_ms = (time.perf_counter() - start) * 1000.0
        if not 200 <= status < 300:
            raise error_for_status(status, content.decode("utf-8", "replace"), resp_headers, model, secret=key)
        data, parsed = self._decode(content, status, request, key)
        request_id = resp_headers.get("x-request-id") or resp_headers.get("request-id") or parsed.body_id
        return ChatResponse(
            text=parsed.text, prompt_tokens=parsed.prompt_tokens, completion_tokens=parsed.completion_tokens,
            cached_tokens=parsed.cached_tokens, finish_reason=parsed.finish_reason,
            usage_reported=parsed.usage_reported, http_status=status, latency_ms=latency_ms,
            rate_limit=parse_rate_limit_headers(resp_headers), provider_request_id=request_id, raw=data)

    def _decode(self, content: bytes, status: int, request: ChatRequest,
                key: str | None) -> tuple[dict[str, Any], ParsedCompletion]:
        def protocol_error(what: str) -> ProviderError:
            return self.make_error(ProviderProtocolError, request.model, f"HTTP {status}: {what}", status=status,
                                   body=content.decode("utf-8", "replace"), secret=key)

        try:
            data = json.loads(content)
        except ValueError as exc:
            raise protocol_error(f"response is not JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise protocol_error("response is not a JSON object")
        try:
            return data, self.parse_body(data, request)
        except (KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
            raise protocol_error(f"unexpected response shape: {exc!r}") from exc


def usage_int(usage: Mapping[str, Any], key: str) -> int | None:
    """A non-negative integer usage field, or None when absent or malformed."""
    value = usage.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return None
    return value


# Filled in by the wire-format modules (openai.py, anthropic.py) when the package is imported.
PROVIDER_KINDS: dict[str, type[ProviderClient]] = {}


def client_for(model: ModelSpec, session: aiohttp.ClientSession, sim_url: str = "") -> ProviderClient:
    """The client for ``model.api`` ("openai", "anthropic", "simulated") on the shared ``session``."""
    try:
        cls = PROVIDER_KINDS[model.api]
    except KeyError as exc:
        known = sorted(PROVIDER_KINDS)
        raise ConfigError(f"model {model.name}: unknown api kind {model.api!r}; known: {known}") from exc
    return cls(session, sim_url)


def new_session(limit: int = 1000) -> aiohttp.ClientSession:
    """A ClientSession pooling up to ``limit`` connections per host; call inside a running loop.

    Create one per process, share it across clients, and ``await session.close()`` on shutdown.
    """
    connector = aiohttp.TCPConnector(limit=limit, limit_per_host=limit, ttl_dns_cache=300)
    return aiohttp.ClientSession(connector=connector)
