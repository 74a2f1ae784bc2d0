"""``batchroute profile``: the profiler's live per-model figures, or their stored history (thin).

Registered by ``cli.py`` with :func:`register`::

    batchroute profile                                   # live: latency ratio, p50/p95/p99, error and 429 rates
    batchroute profile --json
    batchroute profile --history --model sim-gpt-4 --hours 6      # snapshots stored by provider workers
    batchroute profile --history --since 2026-11-28T09:00 --json
    batchroute profile --prune                           # delete snapshots older than the retention (30 days)
    batchroute profile --prune --older-than-days 7 --json          # -> {"deleted": 1234}
"""

from __future__ import annotations

from datetime import UTC
from typing import Annotated, Any

import typer
from rich.table import Table

from batchroute.console import err, handles_errors, out
from batchroute.errors import InputError


def profile_report() -> dict[str, Any]:
    """The profiler's live figures per registry model, as ``batchroute profile --json`` prints them."""
    from batchroute.profiler import backend_name, bucket_bounds, get_profiler, live_model
    from batchroute.profiler.stats import SCALAR_FIELDS
    from batchroute.registry import get_registry
    from batchroute.settings import get_settings

    settings = get_settings()
    prof = get_profiler()
    counts = prof.counts([m.name for m in get_registry().models])
    return {
        "backend": backend_name(settings), "half_life_s": settings.profile_half_life_s,
        "min_samples": settings.profile_min_samples, "min_calls": settings.profile_min_calls,
        "unhealthy_error_rate": settings.unhealthy_error_rate,
        "models": {m: {"counts": {k: round(getattr(c, k), 3) for k in SCALAR_FIELDS},
                       **live_model(c, prof.policy).to_dict(),
                       "latency_buckets": [{"low_ms": round(lo, 3), "high_ms": None if hi is None else round(hi, 3),
                                            "weight": round(w, 3)}
                                           for i, w in enumerate(c.latency_hist) if w > 0
                                           for lo, hi in [bucket_bounds(i)]]}
                   for m, c in counts.items()},
    }


def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def _print_live(report: dict[str, Any]) -> None:
    t = Table(title=f"live profile ({report['backend']}, half-life {report['half_life_s']:g}s)")
    cols = ("model", "calls", "err rate", "timeouts", "429 rate", "samples", "p50 ms", "p95 ms", "p99 ms", "ratio",
            "factor", "routing")
    for col in cols:
        t.add_column(col, justify="left" if col in ("model", "routing") else "right")
    for name, m in report["models"].items():
        t.add_row(name, f"{m['calls']:.1f}", _num(m["observed_error_rate"], ".2f"), f"{m['counts']['timeouts']:.1f}",
                  _num(m["rate_limited_rate"], ".2f"), f"{m['latency_samples']:.1f}", _num(m["p50_ms"], ".0f"),
                  _num(m["p95_ms"], ".0f"), _num(m["p99_ms"], ".0f"), _num(m["observed_ratio"], ".2f"),
                  f"{m['latency_factor']:.2f}", "avoided" if m["unhealthy"] else "used")
    out.print(t)
    out.print(f"ratio and percentiles after {report['min_samples']} recent successes, error rate after "
              f"{report['min_calls']} calls; avoided at {report['unhealthy_error_rate']:g}", highlight=False)
    for name, m in report["models"].items():
        if m["unhealthy"]:
            out.print(f"{name}: {m['unhealthy']}", highlight=False)
    if report["backend"] == "memory":
        err.print("in-process profile: it holds only this process's calls (set BATCHROUTE_REDIS_URL to share one)")


def history_report(model: str | None, since: str | None, hours: float | None, limit: int) -> dict[str, Any]:
    """Stored snapshots as ``batchroute profile --history --json`` prints them (oldest first)."""
    from batchroute.profiler.snapshots import history_since, snapshot_history
    from batchroute.settings import get_settings

    start = history_since(since, hours)
    rows = snapshot_history(model=model, since=start, limit=limit)
    return {"since": start.isoformat(), "model": model, "limit": limit,
            "snapshot_s": get_settings().profile_snapshot_s, "snapshots": rows}


def _print_history(report: dict[str, Any]) -> None:
    from datetime import datetime

    rows = report["snapshots"]
    what = f" of {report['model']}" if report["model"] else ""
    since = datetime.fromisoformat(report["since"]).strftime("%Y-%m-%d %H:%M:%S UTC")
    if not rows:
        out.print(f"no profile snapshots{what} since {since}", highlight=False)
        if not report["snapshot_s"]:
            err.print("snapshots are off (BATCHROUTE_PROFILE_SNAPSHOT_S=0)")
        return
    from rich import box

    t = Table(title=f"{len(rows)} profile snapshots{what} since {since}",
              caption="times in UTC, p50/p95 in ms; decayed figures, as `batchroute profile` showed them",
              box=box.SIMPLE_HEAD, padding=(0, 1), collapse_padding=True, show_edge=False)
    for col in ("time", "model", "calls", "p50", "p95", "err", "429", "ratio", "health"):
        t.add_column(col, justify="left" if col in ("time", "model", "health") else "right", no_wrap=True)
    for r in rows:
        when = datetime.fromisoformat(r["taken_at"]).astimezone(UTC).strftime("%m-%d %H:%M:%S")
        t.add_row(when, r["model"], f"{r['ok'] + r['errors'] + r['timeouts']:.1f}", _num(r["p50_ms"], ".0f"),
                  _num(r["p95_ms"], ".0f"), _num(r["error_rate"], ".2f"), _num(r["rate_429"], ".2f"),
                  _num(r["latency_ratio"], ".2f"), "avoided" if r["unhealthy"] else "ok")
    out.print(t)
    if len(rows) == report["limit"]:
        err.print(f"showing the newest {report['limit']} snapshots (--limit)")


def prune_report(older_than_days: float | None) -> dict[str, Any]:
    """Delete old snapshots for ``batchroute profile --prune``: ``deleted``, and the ``cutoff`` used (None: none)."""
    from batchroute.profiler.snapshots import prune_cutoff, prune_snapshots

    cutoff = prune_cutoff(older_than_days)
    return {"deleted": 0 if cutoff is None else prune_snapshots(cutoff), "cutoff": cutoff}


def _print_prune(report: dict[str, Any]) -> None:
    cutoff = report["cutoff"]
    if cutoff is None:
        out.print("deleted 0 profile snapshots", highlight=False)
        return
    n = report["deleted"]
    out.print(f"deleted {n} profile snapshot{'' if n == 1 else 's'} taken before "
              f"{cutoff.astimezone(UTC).strftime('%Y-%m-%d %H:%M:%S UTC')}", highlight=False)


@handles_errors
def profile(
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
    history: Annotated[bool, typer.Option("--history", help="stored snapshots instead of the live figures")] = False,
    model: Annotated[str | None, typer.Option(help="with --history: only this model")] = None,
    since: Annotated[str | None, typer.Option(
        help="with --history: from this time on, ISO 8601 (UTC unless an offset is given)")] = None,
    hours: Annotated[float | None, typer.Option(help="with --history: the last N hours (default 24)")] = None,
    limit: Annotated[int, typer.Option(help="with --history: at most the newest N snapshots")] = 1000,
    prune: Annotated[bool, typer.Option(
        "--prune", help="delete stored snapshots older than the retention, print how many")] = False,
    older_than_days: Annotated[float | None, typer.Option(
        help="with --prune: older than N days (default: BATCHROUTE_PROFILE_SNAPSHOT_RETENTION_DAYS)")] = None,
) -> None:
    """Live per-model figures: latency ratio, p50/p95/p99 ms, error and 429 rates, health (--history: stored).

    With --history, the snapshots provider workers store every BATCHROUTE_PROFILE_SNAPSHOT_S; with
    --prune, delete those older than BATCHROUTE_PROFILE_SNAPSHOT_RETENTION_DAYS (or --older-than-days).
    """
    if prune:
        given = [name for name, v in (("--history", history or None), ("--model", model), ("--since", since),
                                      ("--hours", hours)) if v is not None]
        if given:
            raise InputError(f"{', '.join(given)}: not with --prune", field=given[0].lstrip("-"))
        pruned = prune_report(older_than_days)
        if as_json:
            out.print_json(data={"deleted": pruned["deleted"]})
        else:
            _print_prune(pruned)
        if pruned["cutoff"] is None and older_than_days is None:
            err.print("snapshot retention is off (BATCHROUTE_PROFILE_SNAPSHOT_RETENTION_DAYS=0): "
                      "give --older-than-days N to prune")
        return
    if older_than_days is not None:
        raise InputError("--older-than-days: only with --prune", field="older_than_days")
    if not history:
        given = [name for name, v in (("--model", model), ("--since", since), ("--hours", hours)) if v is not None]
        if given:
            raise InputError(f"{', '.join(given)}: only with --history", field=given[0].lstrip("-"))
        report = profile_report()
        if as_json:
            out.print_json(data=report)
        else:
            _print_live(report)
        return
    hist = history_report(model, since, hours, limit)
    if as_json:
        out.print_json(data=hist)
    else:
        _print_history(hist)


def register(app: typer.Typer) -> None:
    """Add ``profile`` to the ``batchroute`` app."""
    app.command("profile")(profile)
