"""The OpenAI chat-completions wire format (OpenAI, vLLM, Ollama /v1, Together, Groq, OpenRouter, LiteLLM).

Use through :func:`batchroute.providers.client_for`; models with ``api: openai`` or
``api: simulated`` get an :class:`OpenAIClient`::

    resp = await OpenAIClient(session, sim_url).complete(request)
"""

from __future__ import annotations

from typing import Any

from batchroute.providers.base import (
    PROVIDER_KINDS,
    ChatRequest,
    ParsedCompletion,
    ProviderClient,
    content_text,
    estimate_prompt_tokens,
    estimate_tokens,
    usage_int,
)
from batchroute.registry import ModelSpec


class OpenAIClient(ProviderClient):
    """POSTs ``{base_url}/chat/completions`` with ``Authorization: Bearer <key>``."""

    def endpoint(self, model: ModelSpec) -> str:
        """``{base_url}/chat/completions``; ``api: simulated`` models get ``/v1`` added if missing."""
        base = model.resolved_base_url(self.sim_url).rstrip("/")
        # The simulated provider serves /v1/...; its models default to a bare "{sim}" base URL.
        if model.api == "simulated" and not base.endswith("/v1"):
            base += "/v1"
        return f"{base}/chat/completions"

    def auth_headers(self, key: str) -> dict[str, str]:
        """The bearer-token header."""
        return {"authorization": f"Bearer {key}"}

    def build_body(self, request: ChatRequest) -> dict[str, Any]:
        """``{"model", "messages", "max_tokens", "temperature"?}``."""
        body: dict[str, Any] = {
            "model": request.model.wire_name,
            "messages": request.messages,
            "max_tokens": request.max_tokens,
        }
        if request.temperature is not None:
            body["temperature"] = request.temperature
        return body

    def parse_body(self, data: dict[str, Any], request: ChatRequest) -> ParsedCompletion:
        """Text of ``choices[0].message``, its finish_reason and usage (estimated when absent)."""
        choices = data["choices"]
        if not isinstance(choices, list) or not choices:
            raise ValueError("'choices' is empty or not a list")
        choice = choices[0]
        content = choice["message"].get("content")
        if content is not None and not isinstance(content, (str, list)):
            raise TypeError(f"message.content is a {type(content).__name__}")
        text = content_text(content)
        finish = choice.get("finish_reason")
        usage = data.get("usage")
        usage = usage if isinstance(usage, dict) else {}
        prompt = usage_int(usage, "prompt_tokens")
        completion = usage_int(usage, "completion_tokens")
        details = usage.get("prompt_tokens_details")
        cached = usage_int(details, "cached_tokens") if isinstance(details, dict) else None
        body_id = data.get("id")
        return ParsedCompletion(
            text=text,
            prompt_tokens=prompt if prompt is not None else estimate_prompt_tokens(request.messages),
            completion_tokens=completion if completion is not None else estimate_tokens(text),
            cached_tokens=cached or 0,
            finish_reason=finish if isinstance(finish, str) and finish else "unknown",
            usage_reported=prompt is not None and completion is not None,
            body_id=body_id if isinstance(body_id, str) else None,
        )


PROVIDER_KINDS["openai"] = OpenAIClient
PROVIDER_KINDS["simulated"] = OpenAIClient
