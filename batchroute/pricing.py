"""Pricing: pure functions from tokens and a model's prices to USD.

Prices are USD per million tokens. Cached prompt tokens are billed at the cached price where the
model has one (they are part of ``prompt_tokens``, as OpenAI and our clients report them).
"""

from __future__ import annotations

from dataclasses import dataclass

from batchroute.registry import ModelSpec

# Expected completion length by style when nothing better is known (tokens).
EXPECTED_OUTPUT_TOKENS = {"concise": 80, "verbose": 450}


@dataclass(frozen=True)
class PriceSnapshot:
    """The prices in force for one call; stored on the attempt row so history never changes."""

    input_per_mtok_usd: float
    output_per_mtok_usd: float
    cached_per_mtok_usd: float | None = None

    @classmethod
    def of(cls, model: ModelSpec) -> PriceSnapshot:
        """The model's current registry prices."""
        return cls(model.input_price_per_mtok_usd, model.output_price_per_mtok_usd,
                   model.cached_input_price_per_mtok_usd)

    def cost_usd(self, prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0) -> float:
        """What a call with these token counts costs at these prices."""
        cached = min(max(cached_tokens, 0), prompt_tokens)
        cached_price = self.input_per_mtok_usd if self.cached_per_mtok_usd is None else self.cached_per_mtok_usd
        return ((prompt_tokens - cached) * self.input_per_mtok_usd
                + cached * cached_price
                + completion_tokens * self.output_per_mtok_usd) / 1_000_000


def expected_output_tokens(model: ModelSpec, style: str | None, max_tokens: int | None = None) -> int:
    """Expected completion tokens of ``model`` for a prompt of ``style`` (capped by max_tokens)."""
    expected = EXPECTED_OUTPUT_TOKENS.get(style or "verbose", EXPECTED_OUTPUT_TOKENS["verbose"])
    if model.sim is not None:
        # The simulated provider draws lengths uniformly in [min, max]; concise prompts sit low.
        lo, hi = model.sim.output_tokens_min, model.sim.output_tokens_max
        expected = (lo + hi) // 2
    return min(expected, max_tokens) if max_tokens else expected


def estimate_cost_usd(model: ModelSpec, prompt_tokens: int, style: str | None,
                      max_tokens: int | None = None) -> float:
    """Predicted cost of sending a prompt of ``prompt_tokens`` to ``model``."""
    return PriceSnapshot.of(model).cost_usd(prompt_tokens, expected_output_tokens(model, style, max_tokens))


def expected_latency_ms(model: ModelSpec, style: str | None, max_tokens: int | None = None) -> float:
    """Expected latency of one call from the model's profile (live figures override it in routing)."""
    out = expected_output_tokens(model, style, max_tokens)
    if model.sim is not None:
        return model.sim.base_latency_ms + model.sim.per_output_token_ms * out
    return 500.0 + 20.0 * out
