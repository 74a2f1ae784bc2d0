"""``batchroute eval ...``: the router benchmark on the command line (thin: parse, call, print).

Registered by ``cli.py`` with :func:`register`::

    batchroute eval labels FILE [FILE...] [--json]
    batchroute eval routing --train F [--train F...] --test F [--test F...] [--max-train N] [--max-test N] [--json]
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from batchroute.console import handles_errors, out


def _fmt(x: Any, digits: int = 4) -> str:
    if x is None:
        return "-"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, list):
        return "[" + ", ".join(_fmt(v, digits) for v in x) + "]"
    if isinstance(x, float):
        return f"{x:.{digits}g}" if abs(x) < 1e-2 and x != 0 else f"{x:.{digits}f}"
    return str(x)


def short_labels(labels: list[str], width: int = 4) -> dict[str, str]:
    """Each label cut to its shortest distinct prefix of at least ``width`` characters, so a
    confusion matrix of nine domains fits 80 columns (``reasoning`` -> ``reas``)."""
    out: dict[str, str] = {}
    for lab in labels:
        n = width
        while n < len(lab) and any(o != lab and o[:n] == lab[:n] for o in labels):
            n += 1
        out[lab] = lab[:n]
    return out


def print_labels(report: dict[str, Any]) -> None:
    """Rich tables of an :func:`~batchroute.evaluation.eval_labels` report."""
    out.print(f"[bold]{', '.join(report['files'])}[/]: {report['rows']} rows, "
              f"{report.get('prompts_per_s') or '-'} prompts/s"
              + (f", {report['in_exemplars']} also in the exemplars" if report.get("in_exemplars") else ""),
              highlight=False)
    for axis, rep in report["axes"].items():
        true_f1 = rep.get("macro_f1_true_labels")
        out.print(f"[bold]{axis}[/]: n={rep['n']}  accuracy {_fmt(rep['accuracy'])}  macro-F1 {_fmt(rep['macro_f1'])}"
                  + (f" ({_fmt(true_f1)} over true labels)"
                     if true_f1 is not None and true_f1 != rep["macro_f1"] else ""), highlight=False)
        t = Table()
        for col in ("label", "precision", "recall", "F1", "support", "predicted"):
            t.add_column(col, justify="left" if col == "label" else "right")
        for lab, pc in rep["per_class"].items():
            t.add_row(lab, _fmt(pc["precision"], 3), _fmt(pc["recall"], 3), _fmt(pc["f1"], 3),
                      str(pc["support"]), str(pc["predicted"]))
        out.print(t)
        labels, matrix = rep["confusion"]["labels"], rep["confusion"]["matrix"]
        if len(labels) > 1:
            short = short_labels(labels)
            cm = Table(title=f"{axis} confusion (rows: true, columns: predicted)")
            cm.add_column("")
            for lab in labels:
                cm.add_column(short[lab], justify="right")
            for lab, row in zip(labels, matrix, strict=True):
                cm.add_row(short[lab], *(str(v) if v else "." for v in row))
            out.print(cm)
            legend = [f"{short[lab]} = {lab}" for lab in labels if short[lab] != lab]
            for start in range(0, len(legend), 3):  # three to a line: never wrapped inside one
                out.print("  " + ", ".join(legend[start:start + 3]), highlight=False)
    scripts = report.get("domain_accuracy_by_script") or {}
    if len(scripts) > 1:
        out.print("  domain accuracy by script: " + "  ".join(
            f"{k} {_fmt(v['accuracy'])} (n={v['n']})" for k, v in scripts.items()), highlight=False)
    for name, axes in (report.get("by_file") or {}).items():
        out.print(f"  {name}: " + "  ".join(f"{a} acc {_fmt(r['accuracy'])} F1 {_fmt(r['macro_f1'])} (n={r['n']})"
                                            for a, r in axes.items()), highlight=False)


def print_routing(report: dict[str, Any]) -> None:
    """Rich tables of an :func:`~batchroute.evaluation.eval_routing` report."""
    p = report["params"]
    out.print(f"[bold]train[/] {', '.join(report['train_files'])}: {report['train_rows']} rows "
              f"({report['train_rows_dropped_overlap']} dropped: shared id/prompt with a test row); "
              f"cost: {report['cost_mode']}; kNN k={p['k']} strength={p['strength']} "
              f"temperature={p['temperature']}; {report['boilerplate_lines_stripped']} template lines left out; "
              f"{report['timing_s']['total']}s", highlight=False)
    hint = f"BATCHROUTE_ANALYZER_OUTCOME_K={p['k']} BATCHROUTE_ANALYZER_OUTCOME_STRENGTH={p['strength']}"
    if p["temperature"] is not None:
        hint += f" (the analyzer weights neighbours by similarity, not temperature {p['temperature']})"
    out.print(f"to route with these kNN settings: {hint}", highlight=False)
    if report.get("price_note"):
        out.print(f"[yellow]{report['price_note']}[/]")
    for name, res in report["tests"].items():
        if not res.get("n_test"):
            out.print(f"[red]{name}: {res.get('error')}[/]")
            continue
        t = Table(title=f"{name} (n={res['n_test']}, cost = {res['cost_unit']})")
        t.add_column("router / model")
        t.add_column("cost", justify="right")
        t.add_column("quality", justify="right")
        rows = sorted(res["single_models"].items(), key=lambda kv: kv[1]["cost"])
        for model, v in rows:
            t.add_row(model, _fmt(v["cost"]), _fmt(v["quality"]))
        t.add_row("[italic]random[/]", _fmt(res["random"]["cost"]), _fmt(res["random"]["quality"]))
        t.add_row("[italic]oracle[/]", _fmt(res["oracle"]["cost"]), _fmt(res["oracle"]["quality"]))
        for pt in res["router_hull"]:
            t.add_row("[bold]router (hull point)[/]", _fmt(pt["cost"]), _fmt(pt["quality"]))
        out.print(t)
        s = Table(show_header=False)
        s.add_column("metric")
        s.add_column("value", justify="right")
        keys = ["aiq_router", "aiq_single_hull", "aiq_gain", "aiq_gain_ci95", "router_beats_single_hull",
                "best_single_model", "best_single_quality", "router_max_quality", "cost_ratio_at_best_quality",
                "best_quality_at_half_cost", "apgr", "cpt50", "cpt80", "strong_share_at_95pct",
                "strong_share_at_95pct_random"]
        for k in keys:
            if k in res:
                s.add_row(k, _fmt(res[k]))
        # Shuffled predictions lift AIQ above the single-model hull too: the gain is skill only
        # where it clears this null.
        chance = res.get("chance") or {}
        for k in ("aiq_gain_p95", "aiq_gain_p_value", "apgr_p95", "apgr_p_value", "router_beats_chance"):
            if k in chance:
                s.add_row(f"chance.{k}", _fmt(chance[k]))
        if res.get("quality_auc"):
            s.add_row("quality_auc.mean", _fmt(res["quality_auc"]["mean"]))
        oracle = (res.get("upper_bounds") or {}).get("oracle")
        if oracle:
            s.add_row("oracle.cost_ratio_at_best_quality", _fmt(oracle["cost_ratio_at_best_quality"]))
        out.print(s)
        out.print(f"[dim]{res['reference']}[/]")


def register(app: typer.Typer) -> None:
    """Add the ``eval`` sub-app (``eval labels``, ``eval routing``) to ``app``."""
    eval_app = typer.Typer(help="Benchmark the analyzer's labels and the router on your own data.",
                           no_args_is_help=True)

    @eval_app.command("labels")
    @handles_errors
    def labels(
        files: Annotated[list[Path], typer.Argument(help="labeled JSONL: {prompt, domain?, complexity?, style?}",
                                                    exists=True, dir_okay=False, readable=True)],
        as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
    ) -> None:
        """Accuracy, macro-F1, per-class P/R/F1 and confusion matrix of the analyzer's labels."""
        from batchroute.evaluation import eval_labels

        report = eval_labels(files if len(files) > 1 else files[0])
        if as_json:
            print(json.dumps(report, indent=2))
        else:
            print_labels(report)

    @eval_app.command("routing")
    @handles_errors
    def routing(
        train: Annotated[list[Path], typer.Option("--train", help="outcome JSONL (train rows), repeatable",
                                                  exists=True, dir_okay=False, readable=True)],
        test: Annotated[list[Path], typer.Option("--test", help="outcome JSONL (test rows), repeatable",
                                                 exists=True, dir_okay=False, readable=True)],
        max_train: Annotated[int | None, typer.Option(help="use at most N train rows (seeded sample)")] = None,
        max_test: Annotated[int | None, typer.Option(help="use at most N test rows (seeded sample)")] = None,
        seed: Annotated[int, typer.Option(help="seed for sampling and CV folds")] = 0,
        tune: Annotated[bool, typer.Option(help="choose k / strength / temperature by CV on train rows")] = True,
        bootstrap: Annotated[int, typer.Option(
            min=0, help="resamples for the AIQ-gain interval and shuffles for the chance level (0: none)")] = 200,
        strip_templates: Annotated[bool, typer.Option(
            help="search neighbours on prompts without their template lines, as the analyzer does")] = True,
        as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
    ) -> None:
        """Cost-quality curve of the kNN router vs single models, random and oracle: AIQ, APGR, CPT."""
        from batchroute.evaluation import eval_routing

        report = eval_routing(train, test, seed=seed, max_train=max_train, max_test=max_test, tune=tune,
                              bootstrap=bootstrap, strip_boilerplate=strip_templates)
        if as_json:
            print(json.dumps(report, indent=2))
        else:
            print_routing(report)

    app.add_typer(eval_app, name="eval")


__all__ = ["print_labels", "print_routing", "register"]
