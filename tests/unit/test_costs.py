"""Pure parts of the cost ledger: group-by whitelist, dates, tag sets, budget decisions, rendering."""

from __future__ import annotations

import csv
import io
import json
from datetime import date
from typing import Any

import pytest

from batchroute.budgets import Ask, BudgetState, admit, fits
from batchroute.costs import GroupBy, parse_day, parse_group_by, render_report
from batchroute.errors import InputError
from batchroute.rollups import tag_set_id
from batchroute.tags import parse_tag


def test_group_by_whitelist_and_tags() -> None:
    assert parse_group_by(["job", "model", "tag:team", "day", "model"]) == [
        GroupBy("job"), GroupBy("model"), GroupBy("tag:team", "team"), GroupBy("day")]
    assert parse_group_by([]) == []


@pytest.mark.parametrize("bad", ["customer", "JOB", "cost_usd; drop table attempts", "tag:", "tag:a b",
                                 "tag:x'--", "tag:" + "k" * 65, "tag:team=legal"])
def test_group_by_rejects_what_is_not_allowed(bad: str) -> None:
    with pytest.raises(InputError) as exc:
        parse_group_by(["job", bad])
    msg = str(exc.value)
    for allowed in ("job", "model", "provider", "tenant", "day", "latency", "domain", "tag:KEY"):
        assert allowed in msg


def test_parse_day() -> None:
    assert parse_day("2026-11-28", "since") == date(2026, 11, 28)
    assert parse_day(date(2026, 1, 2), "since") == date(2026, 1, 2)
    assert parse_day(None, "since") is None
    for bad in ("2026-13-01", "2026-02-30", "20261128", "28/11/2026", "2026-11-28T00:00", "yesterday", ""):
        with pytest.raises(InputError, match="YYYY-MM-DD") as exc:
            parse_day(bad, "until")
        assert exc.value.field == "until"


def test_tag_set_id_is_canonical() -> None:
    assert tag_set_id({}) == tag_set_id(None) == ""
    a = tag_set_id({"team": "legal", "env": "prod"})
    assert a == tag_set_id({"env": "prod", "team": "legal"})
    assert len(a) == 32
    assert a != tag_set_id({"team": "legal"})
    assert a != tag_set_id({"team": "legal", "env": "dev"})


def test_fits_boundary() -> None:
    assert fits(1.0, 0.5, 0.25, 0.25)  # exactly at the limit is allowed
    assert not fits(1.0, 0.5, 0.25, 0.2500001)
    assert not fits(1.0, 1.2, 0.0, 0.0)


def test_admit_reserves_in_order_and_blocks_after_first_rejection() -> None:
    states = {"job:a": BudgetState("job:a", limit_usd=1.0, spent_usd=0.3, reserved_usd=0.2)}
    asks = [Ask("r1", 0.25, ("job:a",)), Ask("r2", 0.2, ("job:a",)), Ask("r3", 0.1, ("job:a",)),
            Ask("r4", 0.01, ("job:a",))]
    admitted, rejected = admit(states, asks)
    # 0.3 + 0.2 + 0.25 = 0.75; + 0.2 = 0.95; + 0.1 = 1.05 > 1 -> r3 rejected, r4 blocked behind it.
    assert admitted == ["r1", "r2"]
    assert set(rejected) == {"r3", "r4"}
    assert "job:a" in rejected["r3"]


def test_admit_checks_every_budget_of_a_request() -> None:
    states = {"job:a": BudgetState("job:a", 10.0), "job:b": BudgetState("job:b", 10.0),
              "tag:team=legal": BudgetState("tag:team=legal", 1.0, spent_usd=0.5)}
    asks = [Ask("a1", 0.3, ("job:a", "tag:team=legal")), Ask("b1", 0.3, ("job:b", "tag:team=legal")),
            Ask("b2", 0.1, ("job:b",))]
    admitted, rejected = admit(states, asks)
    assert admitted == ["a1", "b2"]  # the tag's room (0.5) is shared by both jobs
    assert list(rejected) == ["b1"]
    assert "tag:team=legal" in rejected["b1"]


def test_admit_without_budgets_admits_everything() -> None:
    admitted, rejected = admit({}, [Ask("r1", 5.0, ()), Ask("r2", 5.0, ())])
    assert admitted == ["r1", "r2"] and rejected == {}


def test_budget_state_remaining() -> None:
    assert BudgetState("job:x", 2.0, 0.5, 0.25).remaining_usd == pytest.approx(1.25)


def test_parse_tag() -> None:
    assert parse_tag("team=legal") == ("team", "legal")
    assert parse_tag("team=") == ("team", "")
    for bad in ("team", "=legal", "te am=x"):
        with pytest.raises(InputError, match="KEY=VALUE"):
            parse_tag(bad)


ROWS: list[dict[str, Any]] = [
    {"model": "m1", "tag:team": None, "attempts": 3, "requests": 2, "failed_attempts": 1, "estimated_attempts": 0,
     "prompt_tokens": 30, "completion_tokens": 20, "cached_tokens": 0, "cost_usd": 0.5, "baseline_cost_usd": 1.0,
     "savings_usd": 0.5, "savings_pct": 50.0},
    {"model": "m2", "tag:team": "legal", "attempts": 1, "requests": 0, "failed_attempts": 1,
     "estimated_attempts": 0, "prompt_tokens": 0, "completion_tokens": 0, "cached_tokens": 0, "cost_usd": 0.0,
     "baseline_cost_usd": 0.0, "savings_usd": 0.0, "savings_pct": None},
]


def test_render_csv_json_table() -> None:
    by = ["model", "tag:team"]
    parsed = list(csv.DictReader(io.StringIO(render_report(ROWS, by, "csv"))))
    assert [r["model"] for r in parsed] == ["m1", "m2"]
    assert parsed[0]["tag:team"] == "" and parsed[1]["tag:team"] == "legal"
    assert float(parsed[0]["savings_usd"]) == 0.5 and parsed[1]["savings_pct"] == ""
    assert json.loads(render_report(ROWS, by, "json")) == ROWS
    table = render_report(ROWS, by, "table")
    assert "m1" in table and "TOTAL" in table and "50.0%" in table
    with pytest.raises(InputError, match="table, csv, json"):
        render_report(ROWS, by, "xml")
