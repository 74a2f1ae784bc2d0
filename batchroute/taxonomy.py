"""The label contract of TAXONOMY.md: the only names the analyzer, router and evaluation use."""

from __future__ import annotations

from typing import Literal, get_args

Domain = Literal[
    "code",
    "math",
    "reasoning",
    "creative_writing",
    "factual_qa",
    "summarization",
    "extraction",
    "classification",
    "brainstorming",
]
Complexity = Literal["simple", "complex"]
Style = Literal["concise", "verbose"]
LatencyClass = Literal["realtime", "standard", "batch"]

DOMAINS: tuple[str, ...] = get_args(Domain)
COMPLEXITIES: tuple[str, ...] = get_args(Complexity)
STYLES: tuple[str, ...] = get_args(Style)
LATENCY_CLASSES: tuple[str, ...] = get_args(LatencyClass)
