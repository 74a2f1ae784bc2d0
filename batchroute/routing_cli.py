"""Commands about routing decisions: ``plan``, ``feedback`` and ``index build`` (thin).

Registered by ``cli.py`` with :func:`register`::

    batchroute plan prompts.jsonl --budget 25              # predicted cost/quality curve, chosen λ
    batchroute feedback JOB_ID-42 --score 0.2              # an observed outcome; learned at once
    batchroute index build --from outcomes.jsonl           # add labeled prompts / outcomes to the index

``batchroute profile`` (the profiler's live figures and history) lives in :mod:`batchroute.profile_cli`.
"""

from __future__ import annotations

import hashlib
import shutil
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from batchroute.console import err, handles_errors, out
from batchroute.errors import InputError

index_app = typer.Typer(help="Build and inspect the analyzer's exemplar index.", no_args_is_help=True)


@handles_errors
def plan(
    file: Annotated[Path, typer.Argument(help="JSONL of prompts or OpenAI Batch input lines", exists=True,
                                         dir_okay=False, readable=True)],
    latency: Annotated[str, typer.Option(help="realtime | standard | batch")] = "standard",
    objective: Annotated[str, typer.Option(help="cost | balanced | quality")] = "balanced",
    budget: Annotated[float | None, typer.Option(help="job budget in USD")] = None,
    min_quality: Annotated[float | None, typer.Option(help="quality relative to the strongest model")] = None,
    model: Annotated[list[str] | None, typer.Option(help="allow only these models (repeatable)")] = None,
    ignore_model: Annotated[bool, typer.Option(help="route every line, whatever model it names")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Predict the job's cost/quality curve and the point meeting its goal; spends nothing."""
    from batchroute.jobs import JobOptions, plan_file

    opts = JobOptions(latency_class=latency, objective=objective, budget_usd=budget, min_quality=min_quality,
                      allowed_models=model or None, ignore_model=ignore_model)
    with err.status(f"analyzing a sample of {file.name}..."):
        result = plan_file(file, opts)
    if as_json:
        out.print_json(data=result.to_dict())
        return
    for line in result.line_errors:
        err.print(f"[yellow]would be skipped[/] {line}", highlight=False)
    if result.invalid_lines > len(result.line_errors):
        err.print(f"... and {result.invalid_lines - len(result.line_errors)} more invalid lines")
    invalid = f", {result.invalid_lines} invalid lines" if result.invalid_lines else ""
    t = Table(title=f"plan for {file.name}: {result.requests} requests{invalid} ({result.sampled} sampled), "
                    f"all-to-{result.strongest_model} ${result.strongest_cost_usd:.4f}")
    for col in ("λ", "predicted $", "quality", "vs strongest", "models"):
        t.add_column(col, justify="left" if col == "models" else "right")
    seen: set[tuple[float, float]] = set()
    for p in result.points:
        key = (round(p.cost_usd, 6), round(p.quality, 6))
        if key in seen and p is not result.chosen:
            continue  # a λ that routes exactly like a smaller one adds nothing to the curve
        seen.add(key)
        mark = " ◀" if p is result.chosen else ""
        share = ", ".join(f"{m} {s:.0%}" for m, s in sorted(p.share.items(), key=lambda x: -x[1]))
        t.add_row(f"{p.cost_weight:g}{mark}", f"{p.cost_usd:.4f}", f"{p.quality:.3f}",
                  f"{p.relative_quality:.3f}", share)
    out.print(t)
    (out if result.met else err).print(("goal met: " if result.met else "[yellow]goal not met:[/] ")
                                       + result.note, highlight=False)


@handles_errors
def feedback(
    request_id: Annotated[str, typer.Argument(help="the request (<job id>-<line>)")],
    score: Annotated[float, typer.Option(help="observed quality in [0, 1]")],
    model: Annotated[str | None, typer.Option(help="the model scored (default: the one that answered)")] = None,
) -> None:
    """Record an observed outcome; the analyzer uses it from the next decision on."""
    from batchroute.feedback import record_feedback

    row = record_feedback(request_id, score, model)
    out.print(f"feedback {row['id']}: {row['request_id']} on {row['model']} scored {row['score']:.3f}",
              highlight=False)


@index_app.command("build")
@handles_errors
def index_build(
    sources: Annotated[list[Path] | None, typer.Option(
        "--from", help="JSONL of labeled prompts and/or outcomes to add (repeatable)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Add exemplar/outcome files to the index and build it (cached by content hash)."""
    from batchroute.analyzer import Embedder, index_paths, reset_analyzer
    from batchroute.analyzer.index import ExemplarIndex, read_files, read_rows
    from batchroute.settings import get_settings

    settings = get_settings()
    added: list[str] = []
    problems: list[str] = []
    for src in sources or []:
        if not src.is_file():
            raise InputError(f"{src}: not a file", field="from")
        rows, _, bad = read_rows(read_files([src]))
        problems.extend(bad)
        if not rows:
            raise InputError(f"{src}: no usable exemplar lines ({len(bad)} bad; first: "
                             f"{bad[0] if bad else 'empty file'})", field="from")
        digest = hashlib.sha256(src.read_bytes()).hexdigest()[:12]
        target = settings.user_exemplar_dir / f"{src.stem}-{digest}.jsonl"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, target)
        added.append(str(target))
    reset_analyzer()
    embedder = Embedder.from_settings()
    cache = settings.data_dir / "index"
    t0 = time.perf_counter()
    index = ExemplarIndex.load_or_build(index_paths(), embedder, cache)
    build_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    ExemplarIndex.load_or_build(index_paths(), embedder, cache)
    load_s = time.perf_counter() - t0
    report: dict[str, Any] = {
        "added": added, "exemplars": len(index), "with_outcomes": len(index.outcome_rows),
        "outcome_models": list(index.models), "template_lines": len(index.template_lines),
        "key": index.key, "build_s": round(build_s, 3),
        "load_s": round(load_s, 3), "skipped_lines": len(problems), "paths": [str(p) for p in index_paths()]}
    if as_json:
        out.print_json(data=report)
        return
    for p in problems[:20]:
        err.print(f"[yellow]skipped[/] {p}", highlight=False)
    out.print(f"index {report['key']}: {report['exemplars']} exemplars, {report['with_outcomes']} with outcomes "
              f"({len(report['outcome_models'])} models, {report['template_lines']} template lines); "
              f"built in {build_s:.2f}s, loads in {load_s:.3f}s", highlight=False)


def register(app: typer.Typer) -> None:
    """Add ``plan``, ``feedback`` and ``index build`` to the ``batchroute`` app."""
    app.command("plan")(plan)
    app.command("feedback")(feedback)
    app.add_typer(index_app, name="index")
