"""The Anthropic Messages wire format.

Use through :func:`batchroute.providers.client_for`; models with ``api: anthropic`` get an
:class:`AnthropicClient`, which accepts the same OpenAI-style messages as every other client::

    resp = await AnthropicClient(session, sim_url).complete(request)
"""

from __future__ import annotations

import json
from typing import Any

from batchroute.errors import ProviderBadRequest
from batchroute.providers.base import (
    PROVIDER_KINDS,
    ChatRequest,
    ParsedCompletion,
    ProviderClient,
    content_text,
    estimate_prompt_tokens,
    estimate_tokens,
    provider_message,
    usage_int,
)
from batchroute.registry import ModelSpec

ANTHROPIC_VERSION = "2023-06-01"
FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}
_SYSTEM_ROLES = ("system", "developer")
_CHAT_ROLES = ("user", "assistant")


def _convert_part(part: Any) -> dict[str, Any]:
    if isinstance(part, str):
        return {"type": "text", "text": part}
    if not isinstance(part, dict):
        raise TypeError(f"content part must be a string or object, not {type(part).__name__}")
    if part.get("type") == "text":
        return {"type": "text", "text": str(part.get("text", ""))}
    if part.get("type") == "image_url":
        ref = part.get("image_url")
        url = ref.get("url") if isinstance(ref, dict) else ref
        if not isinstance(url, str):
            raise ValueError("image_url part has no url")
        if url.startswith("data:") and ";base64," in url:
            media_type, data = url[len("data:"):].split(";base64,", 1)
            return {"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}}
        return {"type": "image", "source": {"type": "url", "url": url}}
    # Anything else is assumed to be an Anthropic block already (image, document, tool_result...).
    return part


def convert_messages(messages: list[dict[str, Any]]) -> tuple[str | None, list[dict[str, Any]]]:
    """Split OpenAI-style messages into Anthropic ``(system, messages)``; ValueError/TypeError if unusable.

    System (and developer) messages are joined with blank lines into ``system``; string
    contents stay strings; lists of parts become Anthropic content blocks.
    """
    system: list[str] = []
    out: list[dict[str, Any]] = []
    for i, message in enumerate(messages):
        role, content = message.get("role"), message.get("content")
        if role in _SYSTEM_ROLES:
            if text := content_text(content):
                system.append(text)
        elif role in _CHAT_ROLES:
            converted = [_convert_part(p) for p in content] if isinstance(content, list) else content_text(content)
            out.append({"role": role, "content": converted})
        else:
            raise ValueError(f"messages[{i}]: role {role!r} is not supported (use system, user or assistant)")
    return ("\n\n".join(system) if system else None), out


class AnthropicClient(ProviderClient):
    """POSTs ``{base_url}/v1/messages`` with ``x-api-key`` and ``anthropic-version``."""

    def endpoint(self, model: ModelSpec) -> str:
        """``{base_url}/v1/messages`` (a base URL already ending in ``/v1`` is not doubled)."""
        base = model.resolved_base_url(self.sim_url).rstrip("/")
        return f"{base}/messages" if base.endswith("/v1") else f"{base}/v1/messages"

    def auth_headers(self, key: str) -> dict[str, str]:
        """The ``x-api-key`` header."""
        return {"x-api-key": key}

    def extra_headers(self) -> dict[str, str]:
        """The API version every call must name."""
        return {"anthropic-version": ANTHROPIC_VERSION}

    def build_body(self, request: ChatRequest) -> dict[str, Any]:
        """``{"model", "max_tokens", "messages", "system"?, "temperature"?}``."""
        try:
            system, messages = convert_messages(request.messages)
        except (TypeError, ValueError) as exc:
            raise self.make_error(ProviderBadRequest, request.model, f"cannot convert messages: {exc}") from exc
        body: dict[str, Any] = {
            "model": request.model.wire_name,
            "max_tokens": request.max_tokens,
            "messages": messages,
        }
        if system is not None:
            body["system"] = system
        if request.temperature is not None:
            body["temperature"] = request.temperature
        return body

    def parse_body(self, data: dict[str, Any], request: ChatRequest) -> ParsedCompletion:
        """Joined text blocks, stop_reason mapped to OpenAI names, usage (estimated when absent)."""
        if data.get("type") == "error":
            raise ValueError(f"error object in a 2xx answer: {provider_message(json.dumps(data))}")
        blocks = data["content"]
        if not isinstance(blocks, list):
            raise TypeError(f"'content' is a {type(blocks).__name__}, not a list")
        text = "".join(b["text"] for b in blocks if isinstance(b, dict) and b.get("type") == "text")
        stop = data.get("stop_reason")
        usage = data.get("usage")
        usage = usage if isinstance(usage, dict) else {}
        inp = usage_int(usage, "input_tokens")
        out = usage_int(usage, "output_tokens")
        cache_read = usage_int(usage, "cache_read_input_tokens") or 0
        cache_creation = usage_int(usage, "cache_creation_input_tokens") or 0
        # Anthropic's input_tokens excludes cached and cache-written tokens; we report the whole prompt.
        prompt = inp + cache_read + cache_creation if inp is not None else estimate_prompt_tokens(request.messages)
        body_id = data.get("id")
        return ParsedCompletion(
            text=text,
            prompt_tokens=prompt,
            completion_tokens=out if out is not None else estimate_tokens(text),
            cached_tokens=cache_read,
            finish_reason=FINISH_REASONS.get(stop, stop) if isinstance(stop, str) and stop else "unknown",
            usage_reported=inp is not None and out is not None,
            body_id=body_id if isinstance(body_id, str) else None,
        )


PROVIDER_KINDS["anthropic"] = AnthropicClient
