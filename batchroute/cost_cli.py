"""Command-line commands for costs, budgets and resuming paused jobs (thin: parse, call, print).

``cli.py`` adds them with ``register(app)`` (``costs``, ``budget set|list|remove``, ``resume``) and
``register_bench(bench_app)`` (``bench ledger``)::

    batchroute costs --by model --by day --since 2026-11-01 --until 2026-11-07
    batchroute costs --job JOB_ID --by model --format csv
    batchroute costs --by tag:team --format json
    batchroute budget set --tag team=legal --usd 10
    batchroute budget list
    batchroute resume JOB_ID --budget 25
    batchroute bench ledger --rows 200000 --json
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer
from rich.table import Table

from batchroute.console import err, handles_errors, load_bench, out
from batchroute.errors import InputError


@handles_errors
def costs(
    by: Annotated[list[str] | None, typer.Option(
        "--by", help="job | model | provider | tenant | day | latency | domain | tag:KEY (repeatable); "
                     "default: job, or model with --job")] = None,
    job: Annotated[str | None, typer.Option(help="only this job (read from the ledger itself)")] = None,
    since: Annotated[str | None, typer.Option(help="first UTC day, YYYY-MM-DD")] = None,
    until: Annotated[str | None, typer.Option(help="last UTC day (inclusive), YYYY-MM-DD")] = None,
    tenant: Annotated[str | None, typer.Option(help="only this tenant")] = None,
    fmt: Annotated[str, typer.Option("--format", help="table | csv | json")] = "table",
) -> None:
    """Spend, tokens and savings against the baseline model, grouped by --by."""
    from batchroute.costs import FORMATS, cost_report, render_report, report_table

    if fmt not in FORMATS:
        raise InputError(f"unknown format {fmt!r}; allowed: {', '.join(FORMATS)}", field="format")
    groups = by or (["model"] if job else ["job"])
    rows = cost_report(groups, job=job, since=since, until=until, tenant=tenant)
    if fmt == "table":
        where = [f"job {job}" if job else None, f"tenant {tenant}" if tenant else None,
                 f"{since or '…'} to {until or '…'}" if since or until else None]
        title = "cost by " + ", ".join(groups) + "".join(f" — {w}" for w in where if w)
        out.print(report_table(rows, groups, title))
        if not rows:
            err.print("no attempts match")
        return
    sys.stdout.write(render_report(rows, groups, fmt) + ("\n" if fmt == "json" else ""))


budget_app = typer.Typer(help="Spending limits per tag value or per job.", no_args_is_help=True)


@budget_app.command("set")
@handles_errors
def budget_set(
    usd: Annotated[float, typer.Option(help="the limit in USD")],
    tag: Annotated[str | None, typer.Option(help="KEY=VALUE: limit everything with this tag value")] = None,
    job: Annotated[str | None, typer.Option(help="limit this job instead")] = None,
) -> None:
    """Set the limit of a tag value (--tag team=legal) or of a job (--job ID)."""
    from batchroute.budgets import set_job_budget, set_tag_budget
    from batchroute.tags import parse_tag

    if (tag is None) == (job is None):
        raise InputError("give exactly one of --tag KEY=VALUE or --job ID", field="tag")
    if tag is not None:
        key, value = parse_tag(tag)
        set_tag_budget(key, value, usd)
        out.print(f"budget tag:{key}={value} set to ${usd:.2f}", highlight=False)
    else:
        set_job_budget(str(job), usd)
        out.print(f"budget of job {job} set to ${usd:.2f}", highlight=False)


@budget_app.command("list")
@handles_errors
def budget_list(as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False) -> None:
    """Every tag budget and every open job's budget: limit, spent, reserved, remaining."""
    from batchroute.budgets import list_budgets

    rows = list_budgets()
    if as_json:
        out.print_json(data=rows)
        return
    t = Table(title="budgets")
    for col in ("budget", "limit $", "spent $", "reserved $", "remaining $"):
        t.add_column(col, justify="left" if col == "budget" else "right")
    for b in rows:
        t.add_row(b["budget"], f"{b['limit_usd']:.4f}", f"{b['spent_usd']:.4f}", f"{b['reserved_usd']:.4f}",
                  f"{b['remaining_usd']:.4f}", style="red" if b["remaining_usd"] < 0 else None)
    out.print(t)


@budget_app.command("remove")
@handles_errors
def budget_remove(tag: Annotated[str, typer.Option(help="KEY=VALUE")]) -> None:
    """Remove the limit of a tag value."""
    from batchroute.budgets import remove_tag_budget
    from batchroute.tags import parse_tag

    key, value = parse_tag(tag)
    if not remove_tag_budget(key, value):
        raise InputError(f"no budget for tag {key}={value}", field="tag")
    out.print(f"removed budget tag:{key}={value}", highlight=False)


@handles_errors
def resume(
    job_id: Annotated[str, typer.Argument(help="the paused job")],
    budget: Annotated[float | None, typer.Option(help="a new job budget in USD")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Resume a paused job (optionally with a new budget): its waiting requests are queued again."""
    from dataclasses import asdict

    from batchroute.budgets import resume_job
    from batchroute.dispatch import get_dispatcher

    report = resume_job(job_id, new_budget_usd=budget)
    get_dispatcher().drain()  # runs the job in-process on the embedded default; no-op on a broker
    if as_json:
        out.print_json(data=asdict(report))
        return
    limit = f"${report.budget_usd:.4f}" if report.budget_usd is not None else "none"
    out.print(f"job {job_id} {report.state}: {report.requeued} requests queued again; "
              f"budget {limit}, spent ${report.spent_usd:.4f}", highlight=False)
    for b in report.budgets:
        if b["remaining_usd"] <= 0:
            err.print(f"[yellow]warning:[/] {b['budget']} has no room left (${b['remaining_usd']:.4f}); "
                      "the job will pause again", highlight=False)


def register(app: typer.Typer) -> None:
    """Add ``costs``, ``budget ...`` and ``resume`` to the ``batchroute`` app."""
    app.command("costs")(costs)
    app.add_typer(budget_app, name="budget")
    app.command("resume")(resume)


@handles_errors
def bench_ledger(
    rows: Annotated[int, typer.Option(help="synthetic attempts to load", min=1)] = 200_000,
    runs: Annotated[int, typer.Option(help="runs of each query", min=1)] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Load N synthetic attempts into a fresh `batchroute_bench` Postgres database; time the cost queries."""
    load_bench("ledger_bench").bench_ledger(rows, as_json, runs)


def register_bench(bench_app: typer.Typer) -> None:
    """Add ``bench ledger`` to the ``batchroute bench`` group."""
    bench_app.command("ledger")(bench_ledger)
