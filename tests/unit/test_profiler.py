"""The profiler's pure math, its in-process store and cache, and how routing uses live figures."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence

import pytest

from batchroute.errors import (
    BrokerError,
    ConfigError,
    ProviderAuthError,
    ProviderBadRequest,
    ProviderProtocolError,
    ProviderRateLimited,
    ProviderTimeout,
    ProviderUnavailable,
)
from batchroute.planner import route_all, terms_from_decisions
from batchroute.pricing import expected_latency_ms
from batchroute.profiler import (
    MAX_LATENCY_RATIO,
    MIN_LATENCY_RATIO,
    Counts,
    LiveModel,
    MemoryProfileStore,
    ProfilePolicy,
    Profiler,
    ProfileStore,
    attempt_counts,
    decay_factor,
    latency_sample,
    live_model,
    new_profile_store,
    outcome_of,
)
from batchroute.registry import load_registry
from batchroute.routing import RouteInput, RoutePolicy, decide, weights_for
from tests.profiler_helpers import FakeClock

REG = load_registry()
POLICY = ProfilePolicy(min_samples=20, min_calls=20, unhealthy_error_rate=0.5)


# -- pure math ------------------------------------------------------------------------------------


def test_decay_halves_every_half_life() -> None:
    assert decay_factor(0.0, 60.0) == 1.0
    assert decay_factor(-5.0, 60.0) == 1.0  # a clock that went backwards never grows the sums
    assert decay_factor(60.0, 60.0) == pytest.approx(0.5)
    assert decay_factor(180.0, 60.0) == pytest.approx(0.125)
    c = Counts(ok=8.0, errors=4.0, observed_ms=800.0).scaled(decay_factor(60.0, 60.0))
    assert (c.ok, c.errors, c.observed_ms) == pytest.approx((4.0, 2.0, 400.0))


def test_attempt_counts_per_outcome() -> None:
    at_500 = latency_sample(500.0)
    assert attempt_counts("ok", 500.0, 1000.0) == Counts(ok=1, latency_n=1, observed_ms=500, expected_ms=1000,
                                                         latency_hist=at_500)
    # No expectation: no latency-ratio sample, but the observed latency still counts in the histogram.
    assert attempt_counts("ok", 500.0, 0.0) == Counts(ok=1, latency_hist=at_500)
    assert attempt_counts("ok") == Counts(ok=1)  # not timed at all
    assert attempt_counts("error") == Counts(errors=1)
    assert attempt_counts("timeout") == Counts(timeouts=1)
    assert attempt_counts("rate_limited") == Counts(rate_limited=1)
    with pytest.raises(ValueError, match="unknown outcome"):
        attempt_counts("meh")  # type: ignore[arg-type]
    total = attempt_counts("ok", 1, 2) + attempt_counts("error") + attempt_counts("rate_limited")
    assert (total.calls, total.attempts) == (2.0, 3.0)


def test_outcome_of_provider_errors() -> None:
    assert outcome_of(None) == "ok"
    assert outcome_of(ProviderRateLimited("429", status=429)) == "rate_limited"
    assert outcome_of(ProviderTimeout("slow")) == "timeout"
    assert outcome_of(ProviderUnavailable("503", status=503)) == "error"
    assert outcome_of(ProviderProtocolError("not json")) == "error"
    assert outcome_of(ProviderAuthError("bad key", status=401)) == "error"
    # A 400 is our request's fault: it says nothing about the model.
    assert outcome_of(ProviderBadRequest("bad", status=400)) is None


def test_live_model_needs_enough_samples() -> None:
    few = live_model(Counts(ok=19, latency_n=19, observed_ms=5 * 19_000, expected_ms=19_000), POLICY)
    assert few.observed_ratio == 5.0 and few.latency_ratio == 1.0 and not few.applied
    enough = live_model(Counts(ok=20, latency_n=20, observed_ms=5 * 20_000, expected_ms=20_000), POLICY)
    assert enough.latency_ratio == 5.0 and enough.latency_factor == 5.0 and enough.applied
    fast = live_model(Counts(ok=50, latency_n=50, observed_ms=1.0, expected_ms=50_000), POLICY)
    assert fast.latency_ratio == MIN_LATENCY_RATIO
    slow = live_model(Counts(ok=50, latency_n=50, observed_ms=1e9, expected_ms=50_000), POLICY)
    assert slow.latency_ratio == MAX_LATENCY_RATIO


def test_live_model_health_and_error_penalty() -> None:
    sick = live_model(Counts(ok=15, errors=20, timeouts=5, rate_limited=60), POLICY)
    assert sick.unhealthy == "live error rate 0.62 over 40 calls"
    assert sick.error_rate == 0.625 and sick.rate_limited_rate == 0.6
    # 429s are not errors: 10 ok + 50 throttled is healthy.
    busy = live_model(Counts(ok=30, rate_limited=50), POLICY)
    assert busy.unhealthy is None and busy.error_rate == 0.0 and busy.rate_limited_rate == 0.625
    # Below the threshold: a penalty of 1 / (1 - rate) on latency (failed attempts are retried).
    flaky = live_model(Counts(ok=30, errors=20, latency_n=30, observed_ms=60_000, expected_ms=30_000), POLICY)
    assert flaky.unhealthy is None and flaky.error_rate == 0.4
    assert flaky.latency_factor == pytest.approx(2.0 / 0.6)
    # Too few calls to judge: nothing applied, the raw figure still reported.
    young = live_model(Counts(ok=1, errors=9), POLICY)
    assert young.unhealthy is None and young.error_rate == 0.0 and young.observed_error_rate == 0.9
    assert live_model(Counts(), POLICY) == LiveModel()


# -- stores and the per-process profiler ------------------------------------------------------------


def test_memory_store_decays_between_records() -> None:
    clock = FakeClock()
    store = MemoryProfileStore(half_life_s=10.0, clock=clock)
    store.record({"m": Counts(ok=4.0, errors=4.0)})
    clock.t += 10.0
    store.record({"m": Counts(ok=1.0)})
    assert store.read(["m", "never"]) == {"m": Counts(ok=3.0, errors=2.0), "never": Counts()}
    clock.t += 20.0
    assert store.read(["m"])["m"] == Counts(ok=0.75, errors=0.5)
    with pytest.raises(ConfigError):
        MemoryProfileStore(half_life_s=0)


class CountingStore(ProfileStore):
    """A remote-like store (batched writes) that counts calls and can fail."""

    def __init__(self) -> None:
        super().__init__(half_life_s=1e9)
        self.inner = MemoryProfileStore(1e9)
        self.reads = 0
        self.records: list[dict[str, Counts]] = []
        self.fail = False

    def record(self, batch: Mapping[str, Counts]) -> None:
        if self.fail:
            raise BrokerError("down")
        self.records.append(dict(batch))
        self.inner.record(batch)

    def read(self, models: Sequence[str]) -> dict[str, Counts]:
        self.reads += 1
        if self.fail:
            raise BrokerError("down")
        return self.inner.read(models)


def test_snapshot_is_cached_and_survives_a_failing_store() -> None:
    clock = FakeClock()
    store = CountingStore()
    store.inner.record({"a": Counts(ok=10, errors=30)})
    prof = Profiler(store, POLICY, cache_s=2.0, clock=clock)
    first = prof.snapshot(["a", "b"])
    assert first["a"].unhealthy == "live error rate 0.75 over 40 calls" and first["b"] == LiveModel()
    assert prof.snapshot(["a", "b"]) is first and store.reads == 1  # within cache_s: no read
    clock.t += 2.5
    store.fail = True
    assert prof.snapshot(["a", "b"]) is first and store.reads == 2  # read failed: last figures kept
    assert prof.snapshot(["a", "b"]) is first and store.reads == 2  # ...and not retried before cache_s
    store.fail = False
    prof.invalidate()
    assert prof.snapshot(["a", "b"]) == first and store.reads == 3


def test_observe_batches_writes_to_a_remote_store() -> None:
    store = CountingStore()
    prof = Profiler(store, POLICY, flush_s=0.05)

    async def attempts() -> None:
        prof.observe("a", "ok", 100.0, 200.0)
        prof.observe("a", "error")
        prof.observe("b", "rate_limited")
        assert store.records == []  # nothing written on the hot path
        await asyncio.sleep(0.3)

    asyncio.run(attempts())
    assert store.records == [{"a": Counts(ok=1, errors=1, latency_n=1, observed_ms=100, expected_ms=200,
                                          latency_hist=latency_sample(100.0)),
                              "b": Counts(rate_limited=1)}]
    store.fail = True
    prof.observe("a", "ok", 1.0, 1.0)  # outside a loop: written at once; a failure is dropped, not raised
    assert len(store.records) == 1


def test_observe_on_memory_store_is_immediate_and_off_records_nothing() -> None:
    # A frozen clock: with the real one, time passing between record and read decays the count.
    prof = Profiler(MemoryProfileStore(60.0, clock=lambda: 100.0), POLICY)
    prof.observe("a", "timeout")
    assert prof.counts(["a"])["a"].timeouts == 1.0
    off = Profiler(None, POLICY)
    off.observe("a", "error")
    assert off.snapshot(["a"]) == {} and off.counts(["a"]) == {"a": Counts()}


def test_backend_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    from batchroute.settings import Settings

    assert isinstance(new_profile_store(Settings(broker_url="memory://")), MemoryProfileStore)
    assert new_profile_store(Settings(profile_backend="off")) is None
    with pytest.raises(ConfigError, match="needs BATCHROUTE_REDIS_URL"):
        new_profile_store(Settings(broker_url="memory://", profile_backend="redis"))


def test_get_profiler_follows_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    from batchroute.profiler import get_profiler
    from batchroute.settings import get_settings

    monkeypatch.setenv("BATCHROUTE_BROKER_URL", "memory://")
    monkeypatch.delenv("BATCHROUTE_REDIS_URL", raising=False)
    get_settings.cache_clear()
    try:
        prof = get_profiler()
        assert get_profiler() is prof
        prof.observe("a", "error")
        monkeypatch.setenv("BATCHROUTE_PROFILE_MIN_CALLS", "7")
        get_settings.cache_clear()
        fresh = get_profiler()
        assert fresh is not prof and fresh.policy.min_calls == 7
        assert fresh.counts(["a"])["a"] == Counts()  # in-process figures do not leak between configurations
    finally:
        get_settings.cache_clear()


# -- routing with live figures ----------------------------------------------------------------------


def realtime(**kw: object) -> RoutePolicy:
    lam, mu = weights_for("realtime")
    return RoutePolicy(cost_weight=lam, latency_weight=mu, **kw)  # type: ignore[arg-type]


CLASSIFY = RouteInput(domain="classification", complexity="simple", style="concise", confidence=0.9,
                      prompt_tokens=200, latency_class="realtime")


def test_five_times_slower_model_loses_the_realtime_decision() -> None:
    plain = decide(CLASSIFY, REG, realtime())
    assert plain.model == "sim-gpt-3.5-turbo"
    slow = live_model(Counts(ok=30, latency_n=30, observed_ms=150_000, expected_ms=30_000), POLICY)
    assert slow.latency_ratio == 5.0
    d = decide(CLASSIFY, REG, realtime(live={"sim-gpt-3.5-turbo": slow}))
    assert d.model == "sim-mixtral-8x7b"
    c = {x.model: x for x in d.candidates}
    expected = expected_latency_ms(REG.model("sim-gpt-3.5-turbo"), "concise")
    assert c["sim-gpt-3.5-turbo"].expected_latency_ms == expected == 3780.0
    assert c["sim-gpt-3.5-turbo"].latency_ms == 5 * expected
    assert c["sim-gpt-3.5-turbo"].live_latency_ratio == 5.0 and c["sim-gpt-3.5-turbo"].live_calls == 30
    # Models without live data keep the registry's figure and say so.
    assert c["sim-mixtral-8x7b"].latency_ms == c["sim-mixtral-8x7b"].expected_latency_ms
    assert c["sim-mixtral-8x7b"].live_latency_ratio is None
    # The same figures with too few samples change nothing.
    few = live_model(Counts(ok=5, latency_n=5, observed_ms=25_000, expected_ms=5_000), POLICY)
    assert decide(CLASSIFY, REG, realtime(live={"sim-gpt-3.5-turbo": few})).model == "sim-gpt-3.5-turbo"


def test_unhealthy_model_is_excluded_with_the_reason() -> None:
    sick = live_model(Counts(ok=15, errors=25), POLICY)
    d = decide(CLASSIFY, REG, realtime(live={"sim-gpt-3.5-turbo": sick}))
    ex = {c.model: c.excluded for c in d.candidates}
    assert ex["sim-gpt-3.5-turbo"] == "live error rate 0.62 over 40 calls"
    assert d.model == "sim-llama-3-8b"
    assert "avoided sim-gpt-3.5-turbo (live error rate 0.62 over 40 calls)" in d.reason
    # A pinned model stays the only choice: routed anyway rather than failed.
    pinned = decide(CLASSIFY, REG, realtime(pinned="sim-gpt-3.5-turbo", live={"sim-gpt-3.5-turbo": sick}))
    assert pinned.model == "sim-gpt-3.5-turbo"
    assert "every eligible model is unhealthy" in pinned.reason


def test_every_model_unhealthy_routes_anyway() -> None:
    sick = live_model(Counts(ok=10, errors=30), POLICY)
    d = decide(CLASSIFY, REG, realtime(live={m.name: sick for m in REG.models}))
    assert d.model is not None and all(c.excluded is None for c in d.candidates)
    assert all(c.latency_ms == pytest.approx(c.expected_latency_ms / 0.25) for c in d.candidates)  # type: ignore[operator]


def test_planner_routes_like_the_router_with_live_figures() -> None:
    models = [m.name for m in REG.models]
    live = {"sim-gpt-3.5-turbo": live_model(Counts(ok=30, latency_n=30, observed_ms=90_000, expected_ms=30_000),
                                            POLICY),
            "sim-claude-sonnet": live_model(Counts(ok=10, errors=30), POLICY),
            "sim-llama-3-8b": live_model(Counts(ok=40, errors=10, latency_n=40, observed_ms=8_000,
                                                expected_ms=40_000), POLICY)}
    inputs = [RouteInput(domain=d, complexity=cx, style=st, confidence=0.9, prompt_tokens=300)
              for d in ("code", "classification", "summarization", "math")
              for cx in ("simple", "complex") for st in ("concise", "verbose")]
    lam, mu = weights_for("realtime")
    base = [decide(x, REG, RoutePolicy(0.0, mu, live=live)) for x in inputs]
    picks = route_all(terms_from_decisions(base, models), lam, mu)
    for x, p in zip(inputs, picks, strict=True):
        assert models[p] == decide(x, REG, RoutePolicy(lam, mu, live=live)).model


# -- what users see -------------------------------------------------------------------------------


def test_profile_command_prints_live_figures(monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    from typer.testing import CliRunner

    from batchroute.cli import app
    from batchroute.profiler import get_profiler
    from batchroute.settings import get_settings

    monkeypatch.setenv("BATCHROUTE_BROKER_URL", "memory://")
    monkeypatch.delenv("BATCHROUTE_REDIS_URL", raising=False)
    monkeypatch.setenv("BATCHROUTE_PROFILE_HALF_LIFE_S", "1e9")
    get_settings.cache_clear()
    try:
        store = get_profiler().store
        assert store is not None
        at_2s = tuple(30.0 * w for w in latency_sample(2000.0))  # bucket [1900.5, 2470.6) ms
        store.record({"sim-gpt-4": Counts(ok=10, errors=25, timeouts=5, rate_limited=10),
                      "sim-llama-3-8b": Counts(ok=30, latency_n=30, observed_ms=60_000, expected_ms=30_000,
                                               latency_hist=at_2s)})
        res = CliRunner().invoke(app, ["profile", "--json"])
        assert res.exit_code == 0, res.output
        data = json.loads(res.stdout)
        assert data["backend"] == "memory" and data["min_calls"] == 20
        gpt4, llama = data["models"]["sim-gpt-4"], data["models"]["sim-llama-3-8b"]
        assert gpt4["unhealthy"] == "live error rate 0.75 over 40 calls" and gpt4["counts"]["timeouts"] == 5.0
        assert gpt4["rate_limited_rate"] == 0.2
        assert gpt4["p50_ms"] is None and gpt4["latency_buckets"] == []
        assert llama["latency_ratio"] == 2.0 and llama["latency_factor"] == 2.0 and llama["unhealthy"] is None
        assert (llama["p50_ms"], llama["p95_ms"], llama["p99_ms"]) == (2166.899, 2438.446, 2464.172)
        assert llama["hist_samples"] == 30.0
        assert llama["latency_buckets"] == [{"low_ms": 1900.496, "high_ms": 2470.645, "weight": 30.0}]
        assert data["models"]["sim-claude-sonnet"]["calls"] == 0.0
        text = CliRunner().invoke(app, ["profile"], env={"COLUMNS": "200"})
        words = " ".join(text.output.split())
        assert text.exit_code == 0 and "live error rate 0.75 over 40 calls" in words
        assert "p50 ms ┃ p95 ms ┃ p99 ms" in words
        assert "sim-llama-3-8b │ 30.0 │ 0.00 │ 0.0 │ 0.00 │ 30.0 │ 2167 │ 2438 │ 2464 │ 2.00 │ 2.00 │ used" in words
    finally:
        get_settings.cache_clear()


@pytest.mark.parametrize(("args", "message"), [
    (["profile", "--since", "2026-11-28"], "--since: only with --history"),
    (["profile", "--model", "m", "--hours", "2"], "--model, --hours: only with --history"),
    (["profile", "--history", "--since", "last tuesday"], "bad time 'last tuesday': expected ISO 8601"),
    (["profile", "--history", "--since", "2026-11-28", "--hours", "3"], "give --since or --hours, not both"),
    (["profile", "--history", "--hours", "-1"], "--hours must be > 0"),
    (["profile", "--history", "--limit", "0"], "--limit must be >= 1"),
])
def test_profile_history_rejects_bad_options(args: list[str], message: str) -> None:
    from typer.testing import CliRunner

    from batchroute.cli import app

    res = CliRunner().invoke(app, args)  # rejected before any database is opened
    assert res.exit_code == 2, res.output
    assert message in " ".join(res.output.split())


def test_explain_shows_live_terms_and_moved_priors() -> None:
    from rich.console import Console

    from batchroute.explain import render_explanation

    cand = {"model": "sim-gpt-3.5-turbo", "quality": 0.8, "cost_usd": 0.0003, "latency_ms": 18900.0,
            "score": 0.5, "excluded": None, "prior": 0.613333, "registry_prior": 0.92, "feedback_n": 5,
            "expected_latency_ms": 3780.0, "live_latency_ratio": 5.0, "live_error_rate": 0.1, "live_calls": 42.0}
    old = {"model": "sim-gpt-4", "quality": 0.9, "cost_usd": 0.01, "latency_ms": 11900.0, "score": 0.4,
           "excluded": None}  # a decision stored before these terms existed still renders
    data = {"request_id": "j-1", "custom_id": "p1", "state": "succeeded", "model": "sim-gpt-3.5-turbo",
            "provider": "openai-sim", "prompt_head": "hi", "attempts": [],
            "decisions": [{"seq": 0, "reason": "r", "detail": {"candidates": [cand, old]}}]}
    console = Console(record=True, width=400)
    render_explanation(data, console)
    text = console.export_text()
    assert "x5.00 of 3780 ms, err 0.10 / 42 calls" in text
    assert "0.613 (registry 0.920, 5 feedback)" in text


def test_a_flush_lost_with_its_loop_is_scheduled_again() -> None:
    store = CountingStore()
    prof = Profiler(store, POLICY, flush_s=0.05)

    async def on_a_loop_that_stops() -> None:
        prof.observe("a", "ok", 1.0, 1.0)  # flush scheduled on this loop, which ends first

    asyncio.run(on_a_loop_that_stops())
    assert store.records == []

    async def later() -> None:
        await asyncio.sleep(1.2)
        prof.observe("a", "error")
        await asyncio.sleep(0.3)

    asyncio.run(later())
    assert store.records == [{"a": Counts(ok=1, errors=1, latency_n=1, observed_ms=1, expected_ms=1,
                                          latency_hist=latency_sample(1.0))}]
