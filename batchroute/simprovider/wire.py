"""The two wire formats the simulated provider speaks, and its deterministic answers.

:func:`count_prompt_tokens` and :func:`simulate_completion` are the pure core: the same prompt
to the same model always yields the same usage numbers and text. :data:`OPENAI` and
:data:`ANTHROPIC` parse requests and build bodies, errors and rate-limit headers exactly as the
real APIs shape them.
"""

from __future__ import annotations

import functools
import hashlib
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from batchroute.registry import ModelSpec
from batchroute.simprovider.faults import LimitState

INVALID, AUTH, NOT_FOUND = "invalid_request_error", "authentication_error", "not_found_error"
RATE_LIMIT, API_ERROR, OVERLOADED = "rate_limit_error", "api_error", "overloaded_error"
_FILLER_WORDS = (
    "the", "model", "batch", "route", "token", "answer", "simulated", "latency", "cost", "prompt",
    "quality", "result", "value", "data", "step", "first", "then", "so", "we", "can", "see", "that",
    "each", "case", "is", "fine", "and", "a", "clear", "short", "output", "text", "here", "note",
)
_FILLER_CHARS = 1 << 16


class WireError(Exception):
    """An error answer: HTTP ``status``, Anthropic-style ``kind`` (mapped per format), message,
    and OpenAI's ``param`` / ``code`` / ``openai_type`` details."""

    def __init__(self, status: int, kind: str, message: str, param: str | None = None,
                 code: str | None = None, openai_type: str | None = None) -> None:
        super().__init__(message)
        self.status, self.kind, self.message = status, kind, message
        self.param, self.code, self.openai_type = param, code, openai_type


@dataclass(slots=True)
class Call:
    """A parsed request: the model id, OpenAI-style messages (an Anthropic ``system`` becomes a
    leading system message) and the requested output cap."""

    model: str
    messages: list[Mapping[str, Any]]
    max_tokens: int | None


def content_text(content: Any) -> str:
    """The text of a message content: a string, or the joined ``text`` of a list of parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = (p if isinstance(p, str) else p.get("text") if isinstance(p, dict) else None for p in content)
        return "".join(t for t in parts if isinstance(t, str))
    return ""


def count_prompt_tokens(messages: Sequence[Mapping[str, Any]]) -> int:
    """Prompt tokens of OpenAI-style ``messages``: per message ``max(1, ceil(chars / 4)) + 3``, plus 3.

    The same estimate as the client's ``estimate_prompt_tokens``, so simulated usage and
    client-side estimates agree. Example: ``[{"role": "user", "content": "hello"}]`` -> 2 + 3 + 3 = 8.
    """
    return sum(max(1, (len(content_text(m.get("content"))) + 3) // 4) + 3 for m in messages) + 3


@functools.cache
def _filler() -> str:
    # A fixed LCG (not `random`) so the text is identical on every Python version.
    words, x, size = [], 0x9E3779B97F4A7C15, 0
    while size < _FILLER_CHARS:
        x = (x * 6364136223846793005 + 1442695040888963407) & 0xFFFFFFFFFFFFFFFF
        word = _FILLER_WORDS[(x >> 33) % len(_FILLER_WORDS)]
        words.append(word)
        size += len(word) + 1
    return " ".join(words) + " "


def simulate_completion(model: ModelSpec, messages: Sequence[Mapping[str, Any]],
                        max_tokens: int | None) -> tuple[int, str, bool]:
    """``(completion_tokens, text, truncated)`` for ``messages`` sent to simulated ``model``.

    The length is a blake2b hash of model name and prompt text mapped into the model's
    ``[output_tokens_min, output_tokens_max]``, then capped at ``max_tokens`` (``truncated`` is
    True when the cap cut it). The text starts with ``"[<model name>] "`` and is about 4
    characters per token (exactly ``4 * completion_tokens`` unless the tag alone is longer).
    """
    sim = model.sim
    lo, hi = (sim.output_tokens_min, sim.output_tokens_max) if sim else (16, 600)
    prompt = "\n".join(content_text(m.get("content")) for m in messages)
    h = int.from_bytes(hashlib.blake2b(f"{model.name}\x00{prompt}".encode(), digest_size=8).digest(), "big")
    wanted = min(lo + h % (hi - lo + 1), model.max_output_tokens)
    n = min(wanted, max_tokens) if max_tokens else wanted
    tag = f"[{model.name}] "
    filler = _filler()
    length = max(0, 4 * n - len(tag))
    start = (h >> 24) % (len(filler) - 16)
    start = filler.index(" ", start) + 1
    body = filler[start:start + length]
    if len(body) < length:
        body = (filler * (length // len(filler) + 2))[start:start + length]
    text = tag + body
    if text.endswith(" "):
        text = text[:-1] + "."
    return n, text, n < wanted


def format_duration(seconds: float) -> str:
    """OpenAI's reset format: ``"17ms"``, ``"1s"``, ``"2.437s"``, ``"6m0s"``."""
    if seconds <= 0:
        return "0s"
    if seconds < 1:
        return f"{max(1, round(seconds * 1000))}ms"
    minutes, secs = divmod(seconds, 60.0)
    num = f"{secs:.3f}".rstrip("0").rstrip(".")
    return f"{int(minutes)}m{num}s" if minutes >= 1 else f"{num}s"


def _require_model(data: Mapping[str, Any], message: str) -> str:
    model = data.get("model")
    if not isinstance(model, str) or not model:
        raise WireError(400, INVALID, message, "model")
    return model


def _positive_int(value: Any, name: str, anthropic: bool) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        msg = (f"{name}: Input should be a valid integer" if anthropic
               else f"Invalid type for '{name}': expected an integer, but got {type(value).__name__} instead.")
        raise WireError(400, INVALID, msg, name, None if anthropic else "invalid_type")
    if value < 1:
        msg = (f"{name}: Input should be greater than or equal to 1" if anthropic else
               f"Invalid '{name}': integer below minimum value. Expected a value >= 1, but got {value} instead.")
        raise WireError(400, INVALID, msg, name, None if anthropic else "integer_below_min_value")
    return value


class Wire:
    """One wire format; subclasses parse requests and shape every answer."""

    request_id_header = "x-request-id"
    anthropic = False

    def check_headers(self, headers: Mapping[str, str], require_auth: bool) -> None:
        """Raise WireError (401/400) when required headers are missing."""

    def parse(self, data: Any) -> Call:
        """The call in a decoded JSON body; raises WireError(400) naming the bad field."""
        raise NotImplementedError

    def check_fit(self, model: ModelSpec, call: Call, prompt_tokens: int) -> None:
        """Raise WireError(400) when max_tokens or the context window is exceeded."""
        raise NotImplementedError

    def bad_json(self) -> WireError:
        """The error for a body that is not a JSON object."""
        raise NotImplementedError

    def not_found(self, model: str) -> WireError:
        """The error for a model this server does not serve."""
        raise NotImplementedError

    def success(self, model: ModelSpec, call: Call, rid: str, prompt_tokens: int, completion_tokens: int,
                text: str, truncated: bool) -> dict[str, Any]:
        """The 200 body."""
        raise NotImplementedError

    def error_body(self, err: WireError) -> dict[str, Any]:
        """The JSON body of an error answer."""
        raise NotImplementedError

    def limit_headers(self, state: LimitState) -> dict[str, str]:
        """Rate-limit headers describing ``state``."""
        raise NotImplementedError

    def rate_limited(self, model: ModelSpec, state: LimitState, tokens: int) -> WireError:
        """The 429 for a call refused by the model's rpm / tpm budget."""
        raise NotImplementedError

    def fault(self, model: ModelSpec, status: int) -> WireError:
        """An injected or down-model failure with ``status`` (429, 500, 503 or 529)."""
        name = model.wire_name
        if status == 429:
            return WireError(429, RATE_LIMIT, f"Rate limit reached for {name} (simulated 429 storm). "
                             "Please retry after the time in the retry-after header.",
                             code="rate_limit_exceeded", openai_type="requests")
        if status == 529:
            return WireError(529, OVERLOADED, "Overloaded")
        if status == 503:
            return WireError(503, API_ERROR, f"The server is overloaded or not ready: {name} is unavailable.")
        return WireError(500, API_ERROR, "The server had an error while processing your request. Sorry about that!")


class OpenAIWire(Wire):
    """``POST /v1/chat/completions`` with ``Authorization: Bearer <key>``."""

    _TYPES: ClassVar[dict[str, str]] = {AUTH: INVALID, NOT_FOUND: INVALID, API_ERROR: "server_error",
                                        OVERLOADED: "server_error"}

    def check_headers(self, headers: Mapping[str, str], require_auth: bool) -> None:
        """401 when auth is required and the bearer token is missing or malformed."""
        if not require_auth:
            return
        auth = headers.get("Authorization", "")
        scheme, _, key = auth.partition(" ")
        if not auth:
            raise WireError(401, AUTH, "You didn't provide an API key. You need to provide your API key in an "
                            "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).")
        if scheme.lower() != "bearer" or not key.strip():
            raise WireError(401, AUTH, "Incorrect API key provided. You can find your API key at "
                            "https://platform.openai.com/account/api-keys.", code="invalid_api_key")

    def bad_json(self) -> WireError:
        """400 like OpenAI's answer to an unparsable body."""
        return WireError(400, INVALID, "We could not parse the JSON body of your request. (HINT: This likely "
                         "means you aren't using your HTTP library correctly. The OpenAI API expects a JSON "
                         "payload, but what was sent was not valid JSON.)")

    def parse(self, data: Any) -> Call:
        """Validate model, messages, max_(completion_)tokens, temperature, stream and n."""
        if not isinstance(data, dict):
            raise self.bad_json()
        model = _require_model(data, "you must provide a model parameter")
        messages = data.get("messages")
        if messages is None:
            raise WireError(400, INVALID, "Missing required parameter: 'messages'.", "messages",
                            "missing_required_parameter")
        if not isinstance(messages, list) or not messages:
            raise WireError(400, INVALID, "Invalid 'messages': expected a non-empty array.", "messages",
                            "empty_array" if isinstance(messages, list) else "invalid_type")
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or m.get("role") not in ("system", "developer", "user", "assistant", "tool"):
                raise WireError(400, INVALID, f"Invalid value for 'messages[{i}].role': expected one of system, "
                                "developer, user, assistant, tool.", f"messages.[{i}].role", "invalid_value")
            if not isinstance(m.get("content"), str | list | None):
                raise WireError(400, INVALID, f"Invalid type for 'messages[{i}].content': expected a string or "
                                "an array of content parts.", f"messages.[{i}].content", "invalid_type")
        key = "max_completion_tokens" if data.get("max_completion_tokens") is not None else "max_tokens"
        raw = data.get(key)
        max_tokens = None if raw is None else _positive_int(raw, key, anthropic=False)
        temp = data.get("temperature")
        if temp is not None and (isinstance(temp, bool) or not isinstance(temp, int | float) or not 0 <= temp <= 2):
            raise WireError(400, INVALID, "Invalid 'temperature': expected a number between 0 and 2.",
                            "temperature", "invalid_value")
        if data.get("stream"):
            raise WireError(400, INVALID, "The simulated provider does not support 'stream'.", "stream",
                            "unsupported_value")
        if data.get("n") not in (None, 1):
            raise WireError(400, INVALID, "The simulated provider only supports 'n': 1.", "n", "unsupported_value")
        return Call(model, messages, max_tokens)

    def check_fit(self, model: ModelSpec, call: Call, prompt_tokens: int) -> None:
        """400 when max_tokens exceeds the model's output cap or prompt + max_tokens its context."""
        n = call.max_tokens or 0
        if n > model.max_output_tokens:
            raise WireError(400, INVALID, f"max_tokens is too large: {n}. This model supports at most "
                            f"{model.max_output_tokens} completion tokens, whereas you provided {n}.",
                            "max_tokens", "invalid_value")
        if prompt_tokens + n > model.context_window_tokens:
            raise WireError(400, INVALID, f"This model's maximum context length is {model.context_window_tokens} "
                            f"tokens. However, you requested {prompt_tokens + n} tokens ({prompt_tokens} in the "
                            f"messages, {n} in the completion). Please reduce the length of the messages or "
                            "completion.", "messages", "context_length_exceeded")

    def not_found(self, model: str) -> WireError:
        """404 ``model_not_found``."""
        return WireError(404, NOT_FOUND, f"The model `{model}` does not exist or you do not have access to it.",
                         code="model_not_found")

    def success(self, model: ModelSpec, call: Call, rid: str, prompt_tokens: int, completion_tokens: int,
                text: str, truncated: bool) -> dict[str, Any]:
        """A ``chat.completion`` object with usage."""
        return {
            "id": f"chatcmpl-{rid}", "object": "chat.completion", "created": int(time.time()),
            "model": call.model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                         "finish_reason": "length" if truncated else "stop"}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens,
                      "prompt_tokens_details": {"cached_tokens": 0}},
        }

    def error_body(self, err: WireError) -> dict[str, Any]:
        """``{"error": {"message", "type", "param", "code"}}``."""
        etype = err.openai_type or self._TYPES.get(err.kind, err.kind)
        return {"error": {"message": err.message, "type": etype, "param": err.param, "code": err.code}}

    def limit_headers(self, state: LimitState) -> dict[str, str]:
        """``x-ratelimit-{limit,remaining,reset}-{requests,tokens}`` (resets like ``"6m0s"``)."""
        return {
            "x-ratelimit-limit-requests": str(state.limit_requests),
            "x-ratelimit-remaining-requests": str(state.remaining_requests),
            "x-ratelimit-reset-requests": format_duration(state.reset_requests_s),
            "x-ratelimit-limit-tokens": str(state.limit_tokens),
            "x-ratelimit-remaining-tokens": str(state.remaining_tokens),
            "x-ratelimit-reset-tokens": format_duration(state.reset_tokens_s),
        }

    def rate_limited(self, model: ModelSpec, state: LimitState, tokens: int) -> WireError:
        """429 worded like OpenAI's, with ``type`` "requests" or "tokens" as OpenAI sends it."""
        where = f"Rate limit reached for {model.wire_name} in organization org-sim on"
        wait = format_duration(state.retry_after_s)
        if state.too_large:
            msg = (f"Request too large for {model.wire_name} in organization org-sim on tokens per min (TPM): "
                   f"Limit {state.limit_tokens}, Requested {tokens}. The input or output tokens must be reduced "
                   "in order to run successfully.")
        elif state.exceeded == "tokens":
            msg = (f"{where} tokens per min (TPM): Limit {state.limit_tokens}, Used "
                   f"{state.limit_tokens - state.remaining_tokens}, Requested {tokens}. Please try again in {wait}.")
        else:
            msg = (f"{where} requests per min (RPM): Limit {state.limit_requests}, Used "
                   f"{state.limit_requests - state.remaining_requests}, Requested 1. Please try again in {wait}.")
        return WireError(429, RATE_LIMIT, msg, code="rate_limit_exceeded", openai_type=state.exceeded)


def _rfc3339_after(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(math.ceil(time.time() + seconds)))


class AnthropicWire(Wire):
    """``POST /v1/messages`` with ``x-api-key`` and ``anthropic-version``."""

    request_id_header = "request-id"
    anthropic = True

    def check_headers(self, headers: Mapping[str, str], require_auth: bool) -> None:
        """401 for a missing/empty ``x-api-key`` (when required); 400 without ``anthropic-version``."""
        if require_auth:
            key = headers.get("x-api-key")
            if key is None:
                raise WireError(401, AUTH, "x-api-key header is required")
            if not key.strip():
                raise WireError(401, AUTH, "invalid x-api-key")
        if not headers.get("anthropic-version"):
            raise WireError(400, INVALID, "anthropic-version: header is required")

    def bad_json(self) -> WireError:
        """400 for an unparsable body."""
        return WireError(400, INVALID, "There was an error parsing the body of your request: expected a JSON object")

    def parse(self, data: Any) -> Call:
        """Validate model, max_tokens (required), messages and system."""
        if not isinstance(data, dict):
            raise self.bad_json()
        model = _require_model(data, "model: Field required")
        if data.get("max_tokens") is None:
            raise WireError(400, INVALID, "max_tokens: Field required")
        max_tokens = _positive_int(data["max_tokens"], "max_tokens", anthropic=True)
        messages = data.get("messages")
        if not isinstance(messages, list):
            raise WireError(400, INVALID, "messages: Field required" if messages is None
                            else "messages: Input should be a valid list")
        if not messages:
            raise WireError(400, INVALID, "messages: at least one message is required")
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or m.get("role") not in ("user", "assistant"):
                raise WireError(400, INVALID, f"messages.{i}.role: Input should be 'user' or 'assistant'")
            if not isinstance(m.get("content"), str | list):
                raise WireError(400, INVALID, f"messages.{i}.content: Input should be a valid string or list")
        system = data.get("system")
        if system is not None and not isinstance(system, str | list):
            raise WireError(400, INVALID, "system: Input should be a valid string or list of text blocks")
        head: list[Mapping[str, Any]] = [{"role": "system", "content": system}] if system else []
        return Call(model, head + messages, max_tokens)

    def check_fit(self, model: ModelSpec, call: Call, prompt_tokens: int) -> None:
        """400 when max_tokens exceeds the output cap or input + max_tokens the context window."""
        n = call.max_tokens or 0
        if n > model.max_output_tokens:
            raise WireError(400, INVALID, f"max_tokens: {n} > {model.max_output_tokens}, which is the maximum "
                            f"allowed number of output tokens for {model.wire_name}")
        if prompt_tokens + n > model.context_window_tokens:
            raise WireError(400, INVALID, f"input length and `max_tokens` exceed context limit: {prompt_tokens} + "
                            f"{n} > {model.context_window_tokens}, decrease input length or `max_tokens` and "
                            "try again")

    def not_found(self, model: str) -> WireError:
        """404 ``not_found_error``."""
        return WireError(404, NOT_FOUND, f"model: {model}")

    def success(self, model: ModelSpec, call: Call, rid: str, prompt_tokens: int, completion_tokens: int,
                text: str, truncated: bool) -> dict[str, Any]:
        """A ``message`` object with usage."""
        return {
            "id": f"msg_{rid}", "type": "message", "role": "assistant", "model": call.model,
            "content": [{"type": "text", "text": text}],
            "stop_reason": "max_tokens" if truncated else "end_turn", "stop_sequence": None,
            "usage": {"input_tokens": prompt_tokens, "output_tokens": completion_tokens,
                      "cache_read_input_tokens": 0, "cache_creation_input_tokens": 0},
        }

    def error_body(self, err: WireError) -> dict[str, Any]:
        """``{"type": "error", "error": {"type", "message"}}``."""
        return {"type": "error", "error": {"type": err.kind, "message": err.message}}

    def limit_headers(self, state: LimitState) -> dict[str, str]:
        """``anthropic-ratelimit-{requests,tokens}-{limit,remaining,reset}`` (resets in RFC 3339)."""
        return {
            "anthropic-ratelimit-requests-limit": str(state.limit_requests),
            "anthropic-ratelimit-requests-remaining": str(state.remaining_requests),
            "anthropic-ratelimit-requests-reset": _rfc3339_after(state.reset_requests_s),
            "anthropic-ratelimit-tokens-limit": str(state.limit_tokens),
            "anthropic-ratelimit-tokens-remaining": str(state.remaining_tokens),
            "anthropic-ratelimit-tokens-reset": _rfc3339_after(state.reset_tokens_s),
        }

    def rate_limited(self, model: ModelSpec, state: LimitState, tokens: int) -> WireError:
        """429 ``rate_limit_error`` naming the exceeded per-minute limit."""
        if state.exceeded == "tokens":
            what = f"{state.limit_tokens} tokens per minute (requested {tokens})"
        else:
            what = f"{state.limit_requests} requests per minute"
        return WireError(429, RATE_LIMIT, f"This request would exceed the rate limit for your organization of "
                         f"{what} for {model.wire_name}. Please retry after the time in the retry-after header.")


OPENAI = OpenAIWire()
ANTHROPIC = AnthropicWire()
