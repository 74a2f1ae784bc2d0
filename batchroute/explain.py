"""``batchroute explain REQUEST_ID``: every routing decision of a request, readable or as JSON."""

from __future__ import annotations

from typing import Any

from rich import box
from rich.console import Console
from rich.table import Column, Table
from sqlalchemy import select
from sqlmodel import Session, col

from batchroute.db import get_engine
from batchroute.errors import NotFoundError
from batchroute.tables import Attempt, Request, RoutingDecision


def explain_request(request_id: str) -> dict[str, Any]:
    """The request, its decisions (labels, neighbours, candidates) and its attempts."""
    with Session(get_engine()) as s:
        req = s.get(Request, request_id)
        if req is None:
            raise NotFoundError(f"no request {request_id!r} (ids look like <job id>-<line>)")
        decisions = list(s.execute(select(RoutingDecision).where(
            col(RoutingDecision.request_id) == request_id).order_by(col(RoutingDecision.seq))).scalars())
        attempts = list(s.execute(select(Attempt).where(
            col(Attempt.request_id) == request_id).order_by(col(Attempt.created_at))).scalars())
    return {
        "request_id": req.id, "job_id": req.job_id, "custom_id": req.custom_id, "state": req.state,
        "model": req.model, "provider": req.provider, "error": req.error,
        "prompt_head": req.prompt[:200],
        "decisions": [{"seq": d.seq, "model": d.model, "provider": d.provider, "reason": d.reason,
                       "detail": d.detail} for d in decisions],
        "attempts": [{"attempt_no": a.attempt_no, "model": a.model, "status": a.status,
                      "http_status": a.http_status, "error_kind": a.error_kind,
                      "latency_ms": round(a.latency_ms, 1), "cost_usd": a.cost_usd} for a in attempts],
    }


def render_explanation(data: dict[str, Any], console: Console) -> None:
    """Print an explanation readably."""
    console.print(f"[bold]{data['request_id']}[/] ({data['custom_id']}): {data['state']} on "
                  f"{data['model']} / {data['provider']}")
    console.print(f"prompt: {data['prompt_head']!r}", highlight=False)
    for d in data["decisions"]:
        det = d["detail"]
        console.print(f"\n[bold]decision {d['seq']}[/]: {d['reason']}", highlight=False)
        if "labels" in det:
            conf = det.get("confidence", {})
            console.print("labels: " + ", ".join(f"{k}={v} ({conf.get(k, 0):.2f})"
                                                 for k, v in det["labels"].items()), highlight=False)
        for n in det.get("neighbours", []):
            console.print(f"  neighbour {n['id']} sim {n['similarity']:.3f}: {n['domain']}/{n['complexity']}",
                          highlight=False)
        if det.get("template_lines_stripped"):
            console.print(f"  predicted quality from outcome neighbours of the prompt without its "
                          f"{det['template_lines_stripped']} template lines", highlight=False)
        t = Table(*_candidate_columns(), box=box.SIMPLE_HEAD)
        for c in det.get("candidates", []):
            t.add_row(c["model"], f"{c['quality']:.3f}", _prior_cell(c), f"{c['cost_usd']:.6f}",
                      f"{c['latency_ms']:.0f}", _live_cell(c),
                      "excluded" if c["excluded"] else "-" if c["score"] is None else f"{c['score']:.4f}")
        console.print(t)
        # Below the table, one line each: a reason squeezed into a column is what narrow terminals cut.
        for c in det.get("candidates", []):
            if c["excluded"]:
                console.print(f"  {c['model']} excluded: {c['excluded']}", highlight=False)
    for a in data["attempts"]:
        console.print(f"attempt {a['attempt_no']} {a['model']}: {a['status']} {a['http_status'] or ''} "
                      f"{a['error_kind'] or ''} {a['latency_ms']} ms ${a['cost_usd']:.6f}", highlight=False)


def _candidate_columns() -> list[Column]:
    # Numbers never wrap and the model name is never cut ("sim-gpt…" would hide which of two GPTs);
    # on a narrow terminal the free-text columns (prior, live, excluded) wrap instead. Fresh
    # columns per table: a rich Column holds its table's cells.
    return [Column("model", no_wrap=True), Column("quality", no_wrap=True), Column("prior", min_width=5),
            Column("cost $", no_wrap=True), Column("latency ms", no_wrap=True), Column("live", min_width=5),
            Column("score", no_wrap=True)]


def _prior_cell(c: dict[str, Any]) -> str:
    # Decisions stored before priors were recorded have no prior fields.
    if c.get("prior") is None:
        return "-"
    if c.get("feedback_n"):
        return f"{c['prior']:.3f} (registry {c['registry_prior']:.3f}, {c['feedback_n']} feedback)"
    return f"{c['prior']:.3f}"


def _live_cell(c: dict[str, Any]) -> str:
    if c.get("live_latency_ratio") is None:
        return "-"
    return (f"x{c['live_latency_ratio']:.2f} of {c['expected_latency_ms']:.0f} ms, "
            f"err {c['live_error_rate']:.2f} / {c['live_calls']:.0f} calls")
