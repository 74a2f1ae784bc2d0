"""The ``batchroute`` command line: thin; it parses, calls the library and prints."""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from batchroute.console import err, fail, handles_errors, load_bench, out
from batchroute.errors import ConfigError, InputError
from batchroute.tags import parse_tags

app = typer.Typer(help="batchroute: route large LLM workloads to the right model.", no_args_is_help=True,
                  pretty_exceptions_enable=False, add_completion=False)
registry_app = typer.Typer(help="Validate and inspect model registries.", no_args_is_help=True)
worker_app = typer.Typer(help="Start Celery workers (thin wrappers over `celery worker`).", no_args_is_help=True)
bench_app = typer.Typer(help="Benchmarks; each prints JSON.", no_args_is_help=True)
app.add_typer(registry_app, name="registry")
app.add_typer(worker_app, name="worker")
app.add_typer(bench_app, name="bench")



def _print_status(st: dict[str, Any]) -> None:
    t = Table(title=f"job {st['job_id']} — {st['state']}", show_header=True)
    t.add_column("state")
    t.add_column("requests", justify="right")
    for state, n in st["by_state"].items():
        t.add_row(state, str(n))
    t.add_row("invalid lines", str(st["invalid_lines"]))
    out.print(t)
    out.print(f"attempts {st['attempts']}  tokens {st['prompt_tokens']}+{st['completion_tokens']}  "
              f"cost ${st['cost_usd']:.6f}", highlight=False)
    if st.get("predicted_cost_usd") is not None:
        out.print(f"predicted cost ${st['predicted_cost_usd']:.6f}  predicted quality "
                  f"{st['predicted_quality']:.3f}", highlight=False)
    for model, row in st["by_model"].items():
        out.print(f"  {model}: {row['requests']} results, ${row['cost_usd']:.6f}", highlight=False)


def _watch(job_id: str, interval_s: float = 1.0) -> dict[str, Any]:
    from batchroute.jobs import job_status
    from batchroute.tables import JobState

    st = job_status(job_id)
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("${task.fields[cost]:.4f}"), TimeElapsedColumn(), console=err) as bar:
        task = bar.add_task(job_id, total=st["requests"] or None, cost=st["cost_usd"])
        while True:
            bar.update(task, completed=st["done"], total=st["requests"] or None, cost=st["cost_usd"])
            if st["state"] in JobState.TERMINAL or st["state"] == JobState.PAUSED:
                return st
            time.sleep(interval_s)
            st = job_status(job_id)


@app.command()
@handles_errors
def submit(
    file: Annotated[Path, typer.Argument(help="JSONL of prompts or OpenAI Batch input lines", exists=True,
                                         dir_okay=False, readable=True)],
    latency: Annotated[str, typer.Option(help="realtime | standard | batch")] = "standard",
    tag: Annotated[list[str] | None, typer.Option(help="key=value, repeatable")] = None,
    tenant: Annotated[str, typer.Option(help="who pays")] = "default",
    name: Annotated[str | None, typer.Option(help="a name for the job")] = None,
    objective: Annotated[str, typer.Option(help="cost | balanced | quality")] = "balanced",
    budget: Annotated[float | None, typer.Option(help="job budget in USD")] = None,
    min_quality: Annotated[float | None, typer.Option(help="quality relative to the strongest model")] = None,
    model: Annotated[list[str] | None, typer.Option(help="allow only these models (repeatable)")] = None,
    ignore_model: Annotated[bool, typer.Option(help="route every line, whatever model it names")] = False,
    job_id: Annotated[str | None, typer.Option(help="resume this job (same file)")] = None,
    wait: Annotated[bool, typer.Option(help="wait and show progress until the job ends")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Submit a job file; prints the job id (and, with --wait, the final status)."""
    from batchroute.dispatch import get_dispatcher
    from batchroute.jobs import JobOptions, job_status, submit_job
    from batchroute.settings import get_settings

    opts = JobOptions(latency_class=latency, tenant=tenant, name=name, tags=parse_tags(tag or []),
                      objective=objective, budget_usd=budget, min_quality=min_quality,
                      allowed_models=model or None, ignore_model=ignore_model)
    embedded = get_settings().embedded
    with Progress(TextColumn("[bold]reading {task.fields[file]}"), TextColumn("{task.completed} lines"),
                  TimeElapsedColumn(), console=err, transient=True) as bar:
        task = bar.add_task("submit", total=None, file=file.name)
        report = submit_job(file, opts, job_id=job_id,
                            on_progress=lambda r: bar.update(task, completed=r.lines))
    if embedded:
        get_dispatcher().drain()
    for line in report.errors:
        err.print(f"[yellow]skipped[/] {line}", highlight=False)
    if report.invalid > len(report.errors):
        err.print(f"... and {report.invalid - len(report.errors)} more invalid lines "
                  f"(see `batchroute results {report.job_id}`)")
    st = _watch(report.job_id) if wait and not embedded else job_status(report.job_id)
    if as_json:
        out.print_json(data={"job_id": report.job_id, "lines": report.lines, "requests": report.requests,
                             "invalid": report.invalid, "status": st})
        return
    out.print(f"job [bold]{report.job_id}[/]: {report.requests} requests, {report.invalid} invalid lines")
    if wait or embedded:
        _print_status(st)


@app.command()
@handles_errors
def status(
    job_id: str,
    watch: Annotated[bool, typer.Option(help="show a progress bar until the job ends")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Counts by state, attempts, tokens and cost so far."""
    from batchroute.jobs import job_status

    st = _watch(job_id) if watch else job_status(job_id)
    if as_json:
        out.print_json(data=st)
    else:
        _print_status(st)


@app.command()
@handles_errors
def results(
    job_id: str,
    output: Annotated[Path | None, typer.Option("-o", "--output", help="write JSONL here")] = None,
) -> None:
    """Every request's result as JSONL (OpenAI Batch output shape + model, tokens, cost, latency)."""
    from batchroute.jobs import write_results

    if output is None:
        write_results(job_id, sys.stdout)
        return
    with output.open("w", encoding="utf-8") as fh:
        n = write_results(job_id, fh)
    err.print(f"wrote {n} lines to {output}")


@app.command()
@handles_errors
def analyze(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True)],
    latency: Annotated[str, typer.Option(help="realtime | standard | batch")] = "standard",
    output: Annotated[Path | None, typer.Option("-o", "--output")] = None,
) -> None:
    """Label and route each line without calling any model: one JSON line per input."""
    from batchroute.analyze_file import analyze_file

    fh = output.open("w", encoding="utf-8") if output else sys.stdout
    # A progress line only when the results do not go to the same terminal (it would tear them).
    show = output is not None or not sys.stdout.isatty()
    try:
        with Progress(TextColumn("[bold]analyzing {task.fields[file]}"), TextColumn("{task.completed} lines"),
                      TimeElapsedColumn(), console=err, transient=True, disable=not show) as bar:
            task = bar.add_task("analyze", total=None, file=file.name)
            n, bad = analyze_file(file, fh, latency, on_progress=lambda lines: bar.update(task, completed=lines))
    finally:
        if output:
            fh.close()
    err.print(f"{n} lines analyzed, {bad} invalid", highlight=False)


@app.command()
@handles_errors
def demo(
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
    latency: Annotated[str, typer.Option(help="latency class of the demo jobs")] = "standard",
    time_scale: Annotated[float, typer.Option(help="scale the simulated latencies")] = 1.0,
    limit: Annotated[int | None, typer.Option(help="use only the first N prompts")] = None,
) -> None:
    """Run the bundled workload routed and all-to-the-strongest-model, and compare."""
    from batchroute.demo import run_demo

    with err.status("running the demo workload (routed, then monolithic)..."):
        res = run_demo(latency, time_scale, limit)
    if as_json:
        out.print_json(data=res)
        return
    from rich import box

    t = Table(title=f"{res['requests']} prompts: routed vs all-to-{res['strongest_model']} ({latency})",
              caption="rt: routed, mono: all to the strongest; $: cost in USD; ms: median latency; "
                      "q: mean predicted quality",
              box=box.SIMPLE_HEAD, padding=(0, 1), collapse_padding=True, show_edge=False)
    wide = out.width >= 100  # the model mix only fits a wide terminal (it is in --json too)
    cols = ["type", "n", "$ rt", "$ mono", "save", "ms rt", "ms mono", "q rt", "q mono"]
    for col in cols + (["mostly to"] if wide else []):
        t.add_column(col, justify="left" if col in ("type", "mostly to") else "right")
    rows = [*res["per_type"], {"type": "ALL", "requests": res["requests"],
                               "routed_cost_usd": res["routed_cost_usd"],
                               "monolithic_cost_usd": res["monolithic_cost_usd"],
                               "cost_saving_pct": res["cost_saving_pct"],
                               "routed_p50_latency_ms": res["routed_p50_latency_ms"],
                               "monolithic_p50_latency_ms": res["monolithic_p50_latency_ms"],
                               "routed_predicted_quality": res["routed_predicted_quality"],
                               "monolithic_predicted_quality": res["monolithic_predicted_quality"],
                               "routed_models": {}}]
    for r in rows:
        models = r["routed_models"]
        top = max(models, key=models.get) if models else ""
        mostly = f"{top.removeprefix('sim-')} {models[top] / r['requests']:.0%}" if top else ""
        t.add_row(r["type"], str(r["requests"]), f"{r['routed_cost_usd']:.3f}", f"{r['monolithic_cost_usd']:.3f}",
                  f"{r['cost_saving_pct']:.0f}%", f"{r['routed_p50_latency_ms']:.0f}",
                  f"{r['monolithic_p50_latency_ms']:.0f}", f"{r['routed_predicted_quality']:.3f}",
                  f"{r['monolithic_predicted_quality']:.3f}", *([mostly] if wide else []))
    out.print(t)
    out.print(f"completed {res['completed']}/{res['requests']} routed, {res['monolithic_completed']} monolithic "
              f"in {res['total_wall_s']} s", highlight=False)


@app.command()
@handles_errors
def serve(
    host: Annotated[str, typer.Option(help="interface to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port", min=1, max=65535)] = 8600,
) -> None:
    """Serve the HTTP producer API (POST /v1/jobs, GET /v1/jobs/ID, GET /v1/jobs/ID/results)."""
    from batchroute.api import serve as run

    err.print(f"batchroute API on http://{host}:{port} (Ctrl-C stops)", highlight=False)
    run(host, port)


@app.command()
@handles_errors
def migrate() -> None:
    """Create or upgrade the database schema (Alembic)."""
    from batchroute.db import migrate as run
    from batchroute.db import safe_url
    from batchroute.settings import get_settings

    url = get_settings().effective_database_url
    run(url)
    out.print(f"migrated {safe_url(url)}")


@app.command()
@handles_errors
def reconcile(
    older_than: Annotated[float | None, typer.Option(help="seconds a request may sit before re-sending")] = None,
) -> None:
    """One reconciler pass: re-send stuck requests, expire late ones, close finished jobs."""
    from dataclasses import asdict

    from batchroute.reconciler import reconcile as run

    out.print_json(data=asdict(run(older_than)))


@app.command()
@handles_errors
def explain(
    request_id: str,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Why a request went where it went: labels, neighbours, every candidate's terms."""
    from batchroute.explain import explain_request, render_explanation

    data = explain_request(request_id)
    if as_json:
        out.print_json(data=data)
    else:
        render_explanation(data, out)


@app.command("sim-provider")
@handles_errors
def sim_provider(
    port: Annotated[int, typer.Option(help="port to listen on")] = 8700,
    host: Annotated[str, typer.Option(help="address to bind")] = "127.0.0.1",
    time_scale: Annotated[float, typer.Option(help="multiply every latency (0 = none)")] = 1.0,
    rpm: Annotated[int | None, typer.Option(help="override every model's requests/min limit")] = None,
    tpm: Annotated[int | None, typer.Option(help="override every model's tokens/min limit")] = None,
    rate_429: Annotated[float, typer.Option(help="share of calls answered 429")] = 0.0,
    rate_5xx: Annotated[float, typer.Option(help="share of calls answered 5xx")] = 0.0,
    rate_hang: Annotated[float, typer.Option(help="share of calls that hang")] = 0.0,
    rate_malformed: Annotated[float, typer.Option(help="share of calls with malformed JSON")] = 0.0,
    rate_reset: Annotated[float, typer.Option(help="share of calls whose connection is reset")] = 0.0,
    seed: Annotated[int | None, typer.Option(help="seed for the fault draws")] = None,
) -> None:
    """Serve the registry's simulated models (OpenAI and Anthropic wire formats)."""
    from batchroute.registry import get_registry
    from batchroute.simprovider import SimConfig, run_sim_server

    cfg = SimConfig(time_scale=time_scale, rpm_override=rpm, tpm_override=tpm, rate_429=rate_429,
                    rate_5xx=rate_5xx, rate_hang=rate_hang, rate_malformed=rate_malformed,
                    rate_reset=rate_reset, seed=seed)
    err.print(f"simulated provider on http://{host}:{port} (time scale {time_scale})")
    run_sim_server(get_registry(), cfg, host, port)


@registry_app.command("validate")
def registry_validate(file: Annotated[Path, typer.Argument(help="registry YAML")]) -> None:
    """Check a registry file; prints every bad field by path and exits 2 if any."""
    from batchroute.registry import load_registry

    try:
        reg = load_registry(file)
    except ConfigError as exc:
        raise fail(exc, 2) from exc
    out.print(f"{file}: ok — {len(reg.models)} models, providers {', '.join(reg.provider_names())}")


@registry_app.command("show")
@handles_errors
def registry_show() -> None:
    """Print the registry in force (BATCHROUTE_REGISTRY or the bundled one)."""
    from batchroute.registry import get_registry

    t = Table()
    for col in ("model", "provider", "api", "context", "in $/Mtok", "out $/Mtok", "rpm", "tpm"):
        t.add_column(col)
    for m in get_registry().models:
        t.add_row(m.name, m.provider, m.api, str(m.context_window_tokens), str(m.input_price_per_mtok_usd),
                  str(m.output_price_per_mtok_usd), str(m.rpm), str(m.tpm))
    out.print(t)


def _exec_celery(args: list[str]) -> None:
    argv = [sys.executable, "-m", "celery", "-A", "workers.app", *args]
    err.print(" ".join(argv[1:]), highlight=False)
    os.execv(sys.executable, argv)


@worker_app.command("analyze")
def worker_analyze(
    concurrency: Annotated[int, typer.Option(help="processes (each loads the embedding model)")] = 1,
    loglevel: Annotated[str, typer.Option()] = "INFO",
) -> None:
    """Start an analyzer worker on queue `analyze` (embeds, labels, routes, dispatches)."""
    pool = ["-P", "solo"] if concurrency == 1 else ["-P", "prefork", "-c", str(concurrency)]
    _exec_celery(["worker", "-Q", "analyze", *pool, "-l", loglevel, "-n", "analyze@%h"])


@worker_app.command("provider")
@handles_errors
def worker_provider(
    provider: Annotated[str, typer.Option(help="provider name from the registry")],
    concurrency: Annotated[int, typer.Option(help="chunks in flight (x chunk size = calls in flight)")] = 16,
    loglevel: Annotated[str, typer.Option()] = "INFO",
) -> None:
    """Start a provider worker on queue `provider.NAME` (many calls in flight per process)."""
    from batchroute.dispatch import provider_queue
    from batchroute.registry import get_registry

    known = get_registry().provider_names()
    if provider not in known:
        raise InputError(f"unknown provider {provider!r}; known: {', '.join(known)}", field="provider")
    _exec_celery(["worker", "-Q", provider_queue(provider), "-P", "threads", "-c", str(concurrency),
                  "-l", loglevel, "-n", f"{provider}@%h"])


@worker_app.command("beat")
def worker_beat(loglevel: Annotated[str, typer.Option()] = "INFO") -> None:
    """Start celery beat (schedules the reconciler)."""
    _exec_celery(["beat", "-l", loglevel])


@bench_app.command("pipeline")
@handles_errors
def bench_pipeline(
    prompts: Annotated[int, typer.Option(help="prompts in the job")] = 10_000,
    database_url: Annotated[str, typer.Option(help="Postgres database to (re)create for the run")] =
        "postgresql://postgres@127.0.0.1:5432/batchroute_bench_pipeline",
    broker_url: Annotated[str, typer.Option(help="Redis broker (its database is flushed)")] = "redis://127.0.0.1:6379/14",
    provider_workers: Annotated[int, typer.Option(help="provider worker processes")] = 1,
    concurrency: Annotated[int, typer.Option(help="threads per provider worker")] = 16,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = True,
) -> None:
    """A job end to end on Redis + Postgres + real workers, simulated provider at zero latency."""
    res = load_bench("pipeline_bench").run(prompts, database_url, broker_url, provider_workers, concurrency)
    out.print_json(data=res) if as_json else out.print(res)


@bench_app.command("inflight")
@handles_errors
def bench_inflight(
    calls: Annotated[int, typer.Option(help="provider calls to make", min=1)] = 6000,
    concurrency: Annotated[int, typer.Option(help="threads of the one provider worker", min=1)] = 16,
    latency_ms: Annotated[float, typer.Option(help="simulated latency of every call", min=0)] = 1000.0,
) -> None:
    """Calls/s of one provider worker process against a fixed-latency simulated provider (vs bare aiohttp)."""
    out.print_json(data=load_bench("inflight_bench").run(calls=calls, concurrency=concurrency, latency_ms=latency_ms))


@bench_app.command("ratelimit")
@handles_errors
def bench_ratelimit(
    duration_s: Annotated[float, typer.Option(help="measured seconds per side", min=5)] = 60.0,
    processes: Annotated[int, typer.Option(help="worker processes sharing one provider limit", min=1)] = 4,
) -> None:
    """Share of a provider's rpm/tpm used and share of 429s: shared limiter vs Celery's per-worker rate_limit."""
    out.print_json(data=load_bench("ratelimit_bench").run(duration_s=duration_s, processes=processes))


def _register_extensions() -> None:
    from batchroute.cost_cli import register as register_costs
    from batchroute.cost_cli import register_bench as register_cost_bench
    from batchroute.eval_cli import register as register_eval
    from batchroute.profile_cli import register as register_profile
    from batchroute.routing_cli import register as register_routing

    register_routing(app)
    register_profile(app)
    register_costs(app)
    register_cost_bench(bench_app)
    register_eval(app)


_register_extensions()


class _StderrHandler(logging.Handler):
    """Writes to whatever ``sys.stderr`` is at the time, so a notice printed while a rich
    spinner or progress bar redirects stderr lands above it instead of through it."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(self.format(record) + "\n")
            sys.stderr.flush()
        except Exception:  # logging must never break the command
            self.handleError(record)


def show_notices() -> None:
    """Print the library's notices (logger ``batchroute.notice``: a first index build or model
    export takes minutes) on stderr, and only there: other INFO records stay where they were."""
    logger = logging.getLogger("batchroute.notice")
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):  # called twice: still one line each
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False


def main() -> None:
    """Console-script entry point."""
    show_notices()
    app()


if __name__ == "__main__":
    main()
