"""Provider clients: one :class:`ProviderClient` per wire format (OpenAI, Anthropic).

Typical use (one session per process)::

    from batchroute.providers import ChatRequest, client_for, new_session

    session = new_session()
    resp = await client_for(spec, session, sim_url).complete(
        ChatRequest(model=spec, messages=[{"role": "user", "content": "hi"}], max_tokens=128))
"""

from __future__ import annotations

# Importing the wire-format modules registers their clients in PROVIDER_KINDS.
from batchroute.providers.anthropic import AnthropicClient
from batchroute.providers.base import (
    PROVIDER_KINDS,
    ChatRequest,
    ChatResponse,
    ProviderClient,
    RateLimitInfo,
    client_for,
    estimate_prompt_tokens,
    estimate_tokens,
    new_session,
    parse_rate_limit_headers,
)
from batchroute.providers.openai import OpenAIClient

__all__ = [
    "PROVIDER_KINDS",
    "AnthropicClient",
    "ChatRequest",
    "ChatResponse",
    "OpenAIClient",
    "ProviderClient",
    "RateLimitInfo",
    "client_for",
    "estimate_prompt_tokens",
    "estimate_tokens",
    "new_session",
    "parse_rate_limit_headers",
]
