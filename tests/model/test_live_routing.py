"""The analyze stage routes on the profiler's live figures and on feedback-moved priors (real analyzer).

Each test submits jobs with a dispatcher that only records, runs the analyze stage itself and reads
the stored decision, so nothing calls a model and the live figures are exactly what the test put
in the embedded (in-process) profile.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from batchroute.dispatch import Dispatcher
from batchroute.profiler import Counts
from batchroute.routing import weights_for
from tests.conftest import apply_settings

SENTIMENT = "Classify the sentiment of this product review as positive or negative: 'The battery died after two days.'"
OTHER_SENTIMENT = "Is this customer review positive or negative? 'Arrived quickly and works perfectly, great value.'"
FEEDBACK_PROMPTS = [
    SENTIMENT,
    "Label this tweet's sentiment as positive, negative or neutral: 'Stuck in traffic again, great start to the day.'",
    "Classify the sentiment of this hotel review as positive or negative: 'The room was spotless and the staff kind.'",
    "Positive or negative? Review: 'The headphones broke within a week and support never answered.'",
]


class Recorder(Dispatcher):
    """Records what would be queued; runs nothing."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, list[str], str]] = []

    def send(self, task: str, request_ids: Sequence[str], queue: str) -> None:
        self.sent.append((task, list(request_ids), queue))


def route(tmp: Path, prompts: list[str], latency: str) -> list[dict[str, Any]]:
    """Submit ``prompts`` as a job, run the analyze stage on it, return each request's decision detail."""
    from batchroute.explain import explain_request
    from batchroute.jobs import JobOptions, submit_job
    from batchroute.pipeline import analyze_chunk

    path = tmp / f"{uuid.uuid4().hex}.jsonl"
    path.write_text("".join(json.dumps({"id": f"p{i}", "prompt": p}) + "\n" for i, p in enumerate(prompts)))
    queued = Recorder()
    report = submit_job(path, JobOptions(latency_class=latency), dispatcher=queued)
    ids = [i for _, chunk, _ in queued.sent for i in chunk]
    assert len(ids) == len(prompts) == report.requests
    analyze_chunk(ids, Recorder())
    return [{**explain_request(i)["decisions"][0], "request_id": i} for i in ids]


@pytest.fixture
def steady(embedded: Path) -> Path:
    """The embedded default with live figures that do not decay during a test (exact counts)."""
    apply_settings(BATCHROUTE_DATABASE_URL=f"sqlite:///{embedded}/t.db", BATCHROUTE_BROKER_URL="memory://",
                   BATCHROUTE_SIM_TIME_SCALE="0", BATCHROUTE_PROFILE_HALF_LIFE_S="1e9")
    return embedded


def inject(model: str, counts: Counts) -> None:
    from batchroute.profiler import get_profiler

    prof = get_profiler()
    assert prof.store is not None and prof.store.local  # the embedded default: in-process figures
    prof.store.record({model: counts})
    prof.invalidate()


def rescore(candidates: list[dict[str, Any]], cost_weight: float, latency_weight: float) -> str:
    """The router's choice among stored candidates (its documented score and tie-break)."""
    ok = [c for c in candidates if c["excluded"] is None]
    max_cost = max(c["cost_usd"] for c in ok) or 1.0
    max_lat = max(c["latency_ms"] for c in ok) or 1.0
    score = {c["model"]: round(c["quality"] - cost_weight * c["cost_usd"] / max_cost
                               - latency_weight * c["latency_ms"] / max_lat, 6) for c in ok}
    return str(max(ok, key=lambda c: (score[c["model"]], -c["cost_usd"]))["model"])


def test_five_times_slower_model_loses_the_realtime_decision(steady: Path, analyzer: Any) -> None:
    [plain] = route(steady, [SENTIMENT], "realtime")
    winner = plain["model"]
    by_model = {c["model"]: c for c in plain["detail"]["candidates"]}
    assert winner is not None and by_model[winner]["live_latency_ratio"] is None
    assert by_model[winner]["latency_ms"] == by_model[winner]["expected_latency_ms"]

    # 30 recent calls of the winner took 5x what the registry expected for them.
    inject(winner, Counts(ok=30, latency_n=30, observed_ms=150_000.0, expected_ms=30_000.0))
    [slow] = route(steady, [SENTIMENT], "realtime")
    cands = slow["detail"]["candidates"]
    mine = next(c for c in cands if c["model"] == winner)
    assert mine["live_latency_ratio"] == 5.0 and mine["live_error_rate"] == 0.0
    assert mine["latency_ms"] == round(5 * by_model[winner]["expected_latency_ms"], 3)
    assert mine["excluded"] is None
    # Every other candidate's terms are exactly as before (no live data: the registry's figure);
    # only scores move, as the slowest latency normalises the term.
    for c in cands:
        if c["model"] != winner:
            assert {**c, "score": None} == {**by_model[c["model"]], "score": None}
    lam, mu = weights_for("realtime")
    assert slow["model"] != winner
    assert slow["model"] == rescore(cands, lam, mu)


def test_high_live_error_rate_is_excluded_by_the_analyze_stage(steady: Path, analyzer: Any) -> None:
    [plain] = route(steady, [SENTIMENT], "batch")
    winner = plain["model"]
    inject(winner, Counts(ok=15, errors=20, timeouts=5, rate_limited=100))
    [avoided] = route(steady, [SENTIMENT], "batch")
    mine = next(c for c in avoided["detail"]["candidates"] if c["model"] == winner)
    assert mine["excluded"] == "live error rate 0.62 over 40 calls"
    assert mine["live_error_rate"] == 0.625 and mine["live_calls"] == 40.0
    assert avoided["model"] not in (None, winner)
    assert f"avoided {winner} (live error rate 0.62 over 40 calls)" in avoided["reason"]
    lam, mu = weights_for("batch")
    assert avoided["model"] == rescore(avoided["detail"]["candidates"], lam, mu)


def test_feedback_moves_the_prior_and_changes_the_decision(steady: Path, analyzer: Any) -> None:
    from batchroute.analyzer import get_analyzer, reset_analyzer
    from batchroute.feedback import record_feedback
    from batchroute.jobfile import JobItem
    from batchroute.planner import plan_items
    from batchroute.providers.base import estimate_prompt_tokens
    from batchroute.registry import get_registry
    from batchroute.settings import get_settings

    reset_analyzer()  # a fresh index and priors: feedback from other tests' databases must not count
    try:
        get_analyzer()
        [before] = route(steady, [OTHER_SENTIMENT], "batch")
        winner = before["model"]
        cell = before["detail"]["labels"]
        first = next(c for c in before["detail"]["candidates"] if c["model"] == winner)
        assert first["feedback_n"] == 0 and first["prior"] == first["registry_prior"]

        # Poor outcomes for the winner on other prompts of the same (domain, complexity).
        scored = route(steady, FEEDBACK_PROMPTS, "batch")
        same_cell = [d["request_id"] for d in scored
                     if (d["detail"]["labels"]["domain"], d["detail"]["labels"]["complexity"])
                     == (cell["domain"], cell["complexity"])]
        assert len(same_cell) >= 2, (cell, [d["detail"]["labels"] for d in scored])
        n = 12
        for i in range(n):
            record_feedback(same_cell[i % len(same_cell)], 0.0, model=winner)

        [after] = route(steady, [OTHER_SENTIMENT], "batch")
        moved = next(c for c in after["detail"]["candidates"] if c["model"] == winner)
        registry = get_registry().model(winner).prior_quality(cell["domain"], cell["complexity"])
        k = get_settings().feedback_prior_pseudo_count
        assert moved["registry_prior"] == round(registry, 6) and moved["feedback_n"] == n
        assert moved["prior"] == round(k * registry / (n + k), 6)
        assert moved["quality"] < first["quality"]
        assert after["model"] != winner
        lam, mu = weights_for("batch")
        assert after["model"] == rescore(after["detail"]["candidates"], lam, mu)

        # The planner routes the same prompt the same way (same priors, same index).
        messages = [{"role": "user", "content": OTHER_SENTIMENT}]
        item = JobItem(line=1, custom_id="x", prompt=OTHER_SENTIMENT, messages=messages,
                       prompt_tokens_est=estimate_prompt_tokens(messages))
        plan = plan_items([item], 1, get_registry(), latency_class="batch")
        assert plan.chosen.share == {after["model"]: 1.0}
    finally:
        reset_analyzer()  # the in-memory feedback must not leak into later tests
