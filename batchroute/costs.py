"""Cost reports: spend, tokens and savings against the baseline, grouped the way the user asks.

Group by any of ``job, model, provider, tenant, day, latency, domain`` and ``tag:KEY`` (the value of
tag KEY; attempts without it group under null). Filters: one job, a tenant, an inclusive day range
(``YYYY-MM-DD``, UTC days). Whole-system reports read the daily rollups; a report on one job reads
the ledger itself. Names are checked against a whitelist and tag keys travel as bound parameters:
user input never becomes SQL text.

Each row holds its group values plus ``attempts, requests`` (successful calls), ``failed_attempts,
prompt_tokens, completion_tokens, cached_tokens, cost_usd, baseline_cost_usd, savings_usd``
(baseline - actual) and ``savings_pct`` (of the baseline; null without a baseline)::

    from batchroute.costs import cost_report, render_report
    rows = cost_report(["model", "day"], since="2026-11-01", until="2026-11-07")
    print(render_report(rows, ["model", "day"], "csv"))
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from sqlalchemy import Table, case, func, literal, select
from sqlalchemy.sql.elements import ColumnElement

from batchroute.errors import InputError
from batchroute.ledger import ATTEMPTS
from batchroute.rollups import ROLLUP, SUM_COLUMNS, TAG_ITEMS
from batchroute.tags import TAG_KEY_RE

GROUP_BYS: tuple[str, ...] = ("job", "model", "provider", "tenant", "day", "latency", "domain")
TAG_PREFIX = "tag:"
DAY_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
FORMATS: tuple[str, ...] = ("table", "csv", "json")
METRICS: tuple[str, ...] = (*SUM_COLUMNS, "savings_usd", "savings_pct")
ALLOWED_TEXT = f"{', '.join(GROUP_BYS)}, {TAG_PREFIX}KEY (KEY of 1-64 letters, digits, _ . -)"
_COLUMN = {"job": "job_id", "model": "model", "provider": "provider", "tenant": "tenant",
           "latency": "latency_class", "domain": "domain"}


@dataclass(frozen=True)
class GroupBy:
    """One validated grouping: a whitelisted dimension, or a tag key."""

    name: str  # as the user wrote it, e.g. "model" or "tag:team"
    tag_key: str | None = None


def parse_group_by(by: Sequence[str]) -> list[GroupBy]:
    """Validate group-by names (duplicates dropped, order kept); raises InputError listing what is allowed."""
    out: list[GroupBy] = []
    seen: set[str] = set()
    for raw in by:
        name = raw.strip()
        if name.startswith(TAG_PREFIX):
            key = name[len(TAG_PREFIX):]
            if not TAG_KEY_RE.match(key):
                raise InputError(f"bad tag key {key!r} in {raw!r}; allowed group-by: {ALLOWED_TEXT}", field="by")
            g = GroupBy(name, key)
        elif name in GROUP_BYS:
            g = GroupBy(name)
        else:
            raise InputError(f"unknown group-by {raw!r}; allowed: {ALLOWED_TEXT}", field="by")
        if g.name not in seen:
            seen.add(g.name)
            out.append(g)
    return out


def parse_day(value: str | date | None, field: str) -> date | None:
    """``YYYY-MM-DD`` (or a date) -> date; None passes through. Raises InputError naming the field."""
    if value is None or (isinstance(value, date) and not isinstance(value, datetime)):
        return value
    if isinstance(value, str) and DAY_RE.match(value.strip()):
        try:
            return date.fromisoformat(value.strip())
        except ValueError:
            pass
    raise InputError(f"bad date {value!r}: expected YYYY-MM-DD (a UTC day), e.g. 2026-11-28", field=field)


def _day_of(source: Table, dialect: str) -> ColumnElement[Any]:
    if source is ROLLUP:
        return source.c.day
    if dialect == "postgresql":
        return func.date(func.timezone("UTC", source.c.created_at))
    return func.date(source.c.created_at)


def _sums(source: Table) -> list[ColumnElement[Any]]:
    if source is ROLLUP:
        return [func.coalesce(func.sum(source.c[c]), 0).label(c) for c in SUM_COLUMNS]
    a = source.c
    ok = case((a.status == "ok", 1), else_=0)
    exprs = {
        "attempts": func.count(), "requests": func.sum(ok), "failed_attempts": func.sum(1 - ok),
        "estimated_attempts": func.sum(case((a.usage_estimated, 1), else_=0)),
        **{c: func.sum(a[c]) for c in ("prompt_tokens", "completion_tokens", "cached_tokens", "cost_usd",
                                        "baseline_cost_usd")},
    }
    return [func.coalesce(exprs[c], 0).label(c) for c in SUM_COLUMNS]


def _finish(row: dict[str, Any]) -> dict[str, Any]:
    for c in SUM_COLUMNS:
        row[c] = float(row[c]) if c in ("cost_usd", "baseline_cost_usd") else int(row[c])
    row["savings_usd"] = row["baseline_cost_usd"] - row["cost_usd"]
    base = row["baseline_cost_usd"]
    row["savings_pct"] = round(100.0 * row["savings_usd"] / base, 4) if base > 0 else None
    return row


def cost_report(by: Sequence[str], job: str | None = None, since: str | date | None = None,
                until: str | date | None = None, tenant: str | None = None, *,
                url: str | None = None) -> list[dict[str, Any]]:
    """Totals grouped by ``by`` (see the module doc); one row per group, sorted by the group values.

    ``since``/``until`` are inclusive UTC days (``YYYY-MM-DD``). With ``job`` the ledger is read
    (exact, per attempt); otherwise the daily rollups. ``url`` overrides the configured database.
    """
    from batchroute.db import get_engine

    groups = parse_group_by(by)
    start, end = parse_day(since, "since"), parse_day(until, "until")
    if start and end and start > end:
        raise InputError(f"--since {start} is after --until {end}", field="since")
    source = ATTEMPTS if job is not None else ROLLUP
    engine = get_engine(url)
    cols: list[ColumnElement[Any]] = []
    frm: Any = source
    for i, g in enumerate(groups):
        if g.tag_key is not None:
            item = TAG_ITEMS.alias(f"tag{i}")
            # The key is a bound parameter: user text is never spliced into SQL.
            frm = frm.outerjoin(item, (item.c.tag_set == source.c.tag_set) & (item.c.key == literal(g.tag_key)))
            cols.append(item.c.value.label(f"g{i}"))
        elif g.name == "day":
            cols.append(_day_of(source, engine.dialect.name).label(f"g{i}"))
        elif source is ROLLUP and g.name in ("latency", "domain"):
            cols.append(func.nullif(source.c[_COLUMN[g.name]], "").label(f"g{i}"))
        else:
            cols.append(source.c[_COLUMN[g.name]].label(f"g{i}"))
    q = select(*cols, *_sums(source)).select_from(frm)
    if job is not None:
        q = q.where(source.c.job_id == job)
    if tenant is not None:
        q = q.where(source.c.tenant == tenant)
    if source is ROLLUP:
        if start:
            q = q.where(source.c.day >= start)
        if end:
            q = q.where(source.c.day <= end)
    else:
        if start:
            q = q.where(source.c.created_at >= datetime.combine(start, time.min, UTC))
        if end:
            q = q.where(source.c.created_at < datetime.combine(end + timedelta(days=1), time.min, UTC))
    if cols:
        q = q.group_by(*cols)
    with engine.connect() as conn:
        raw = conn.execute(q).mappings().all()
    rows = []
    for r in raw:
        if not cols and not r["attempts"]:
            continue  # an empty selection: no rows rather than a row of zeros
        out = {g.name: _group_value(r[f"g{i}"]) for i, g in enumerate(groups)}
        out.update({c: r[c] for c in SUM_COLUMNS})
        rows.append(_finish(out))
    rows.sort(key=lambda row: tuple((row[g.name] is None, str(row[g.name] or "")) for g in groups))
    return rows


def _group_value(v: Any) -> Any:
    return v.isoformat() if isinstance(v, date) else v


def _fmt(col: str, v: Any) -> str:
    if v is None:
        return "-"
    if col in ("cost_usd", "baseline_cost_usd", "savings_usd"):
        return f"{v:.6f}"
    if col == "savings_pct":
        return f"{v:.1f}%"
    return str(v)


TABLE_METRICS = {"requests": "requests", "attempts": "attempts", "prompt_tokens": "prompt tok",
                 "completion_tokens": "output tok", "cached_tokens": "cached tok", "cost_usd": "cost $",
                 "baseline_cost_usd": "baseline $", "savings_usd": "savings $", "savings_pct": "saved"}


def report_table(rows: Sequence[dict[str, Any]], by: Sequence[str], title: str | None = None) -> Any:
    """A Rich table of a report (group columns, then the main totals, then a TOTAL row)."""
    from rich.table import Table as RichTable

    groups = [g.name for g in parse_group_by(by)]
    t = RichTable(title=title, show_header=True)
    for g in groups:
        t.add_column(g)
    for label in TABLE_METRICS.values():
        t.add_column(label, justify="right")
    for row in rows:
        t.add_row(*(_fmt(g, row[g]) for g in groups), *(_fmt(m, row[m]) for m in TABLE_METRICS))
    if groups and len(rows) > 1:
        total = _finish({c: sum(r[c] for r in rows) for c in SUM_COLUMNS})
        t.add_row(*(["TOTAL"] + [""] * (len(groups) - 1)), *(_fmt(m, total[m]) for m in TABLE_METRICS),
                  style="bold")
    return t


def render_report(rows: Sequence[dict[str, Any]], by: Sequence[str], fmt: str = "table") -> str:
    """The report as text: ``table`` (Rich), ``csv`` (header + one line per row) or ``json`` (a list)."""
    if fmt not in FORMATS:
        raise InputError(f"unknown format {fmt!r}; allowed: {', '.join(FORMATS)}", field="format")
    groups = [g.name for g in parse_group_by(by)]
    if fmt == "json":
        return json.dumps(list(rows), indent=2)
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=[*groups, *METRICS], extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
        return buf.getvalue()
    from rich.console import Console

    console = Console(file=io.StringIO(), width=200, record=True)
    console.print(report_table(rows, by))
    return console.export_text()
