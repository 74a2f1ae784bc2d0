"""The simulated LLM provider: OpenAI and Anthropic wire formats for every registry model with a ``sim`` profile.

For demos, tests and benchmarks. Latency follows each model's profile (scaled by
``time_scale``), output length is a deterministic function of model and prompt, per-model rpm /
tpm limits are enforced with real 429s, and faults (429 storms, 5xx, hangs, malformed JSON,
connection resets, whole models down) can be injected at seeded rates, also mid-run::

    from batchroute.registry import load_registry
    from batchroute.simprovider import SimConfig, SimServerThread

    with SimServerThread(load_registry(), SimConfig(time_scale=0, rpm_override=600)) as sim:
        # OpenAI models: POST {sim.url}/v1/chat/completions; Anthropic: POST {sim.url}/v1/messages
        sim.configure(rate_5xx=0.3, seed=1)       # or POST {sim.url}/admin/faults
        print(sim.stats())                        # or GET {sim.url}/stats

A registry ``base_url`` of ``"{sim}/v1"`` (OpenAI format) or ``"{sim}"`` (Anthropic format)
points a model at this server. Modules: :mod:`.config` (options), :mod:`.wire` (formats, token
counting, deterministic answers), :mod:`.faults` (limits, fault draws, counters),
:mod:`.server` (app and runners).
"""

from __future__ import annotations

from batchroute.simprovider.config import SimConfig
from batchroute.simprovider.server import (
    SimServer,
    SimServerThread,
    SimState,
    create_app,
    run_sim_server,
    start_sim_server,
)
from batchroute.simprovider.wire import count_prompt_tokens, simulate_completion

__all__ = [
    "SimConfig",
    "SimServer",
    "SimServerThread",
    "SimState",
    "count_prompt_tokens",
    "create_app",
    "run_sim_server",
    "simulate_completion",
    "start_sim_server",
]
