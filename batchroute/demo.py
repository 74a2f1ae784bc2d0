"""``batchroute demo``: a bundled mixed workload through the whole pipeline, routed vs monolithic.

Runs on the embedded default (SQLite in a temporary directory, in-process queues, the in-process
simulated provider): the same workload is submitted twice, once routed and once pinned to the
strongest model, and the two are compared per task type on cost, latency and predicted quality.
Latencies are the simulated provider's (see the registry's latency profiles), measured end to end.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

DEMO_DIR = Path(__file__).parent / "data" / "demo"


def demo_prompts() -> list[dict[str, Any]]:
    """The bundled demo workload (id, prompt and its hand label)."""
    rows: list[dict[str, Any]] = []
    for path in sorted(DEMO_DIR.glob("*.jsonl")):
        with path.open(encoding="utf-8") as fh:
            rows.extend(json.loads(line) for line in fh if line.strip())
    return rows


@contextmanager
def embedded_environment(time_scale: float) -> Iterator[Path]:
    """Point settings at a fresh SQLite file and in-process queues for the duration."""
    from batchroute.runtime import settings_override

    with tempfile.TemporaryDirectory(prefix="batchroute-demo-") as tmp, settings_override({
            "BATCHROUTE_DATABASE_URL": f"sqlite:///{tmp}/demo.db", "BATCHROUTE_BROKER_URL": "memory://",
            "BATCHROUTE_SIM_URL": "", "BATCHROUTE_SIM_TIME_SCALE": str(time_scale), "BATCHROUTE_REDIS_URL": ""}):
        yield Path(tmp)


def _job_rows(job_id: str) -> list[dict[str, Any]]:
    from sqlalchemy import select
    from sqlmodel import Session, col

    from batchroute.db import get_engine
    from batchroute.tables import Request, Result, RoutingDecision

    with Session(get_engine()) as s:
        q = (select(col(Request.custom_id), col(Request.domain), col(Request.state), col(Result.model),
                    col(Result.cost_usd), col(Result.latency_ms), col(RoutingDecision.detail))
             .join(Result, col(Result.request_id) == col(Request.id), isouter=True)
             .join(RoutingDecision, (col(RoutingDecision.request_id) == col(Request.id))
                   & (col(RoutingDecision.seq) == 0), isouter=True)
             .where(col(Request.job_id) == job_id))
        rows = []
        for cid, domain, state, model, cost, lat, detail in s.execute(q):
            quality = None
            for c in (detail or {}).get("candidates", []):
                if c["model"] == model:
                    quality = c["quality"]
            rows.append({"id": cid, "domain": domain, "state": state, "model": model,
                         "cost_usd": cost or 0.0, "latency_ms": lat, "quality": quality})
        return rows


def _p50(values: list[float]) -> float | None:
    return round(statistics.median(values), 1) if values else None


def _summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    done = [r for r in rows if r["state"] == "succeeded"]
    quals = [r["quality"] for r in done if r["quality"] is not None]
    return {"requests": len(rows), "completed": len(done),
            "cost_usd": round(sum(r["cost_usd"] for r in rows), 6),
            "p50_latency_ms": _p50([r["latency_ms"] for r in done if r["latency_ms"] is not None]),
            "mean_predicted_quality": round(statistics.fmean(quals), 4) if quals else None}


def _pct(new: float | None, old: float | None) -> float | None:
    if new is None or not old:
        return None
    return round(100.0 * (old - new) / old, 1)


def run_demo(latency_class: str = "standard", time_scale: float = 1.0, limit: int | None = None) -> dict[str, Any]:
    """Run the demo and return the comparison (what ``--json`` prints)."""
    from batchroute.dispatch import get_dispatcher
    from batchroute.jobs import JobOptions, submit_job
    from batchroute.registry import get_registry

    prompts = demo_prompts()[:limit] if limit else demo_prompts()
    started = time.perf_counter()
    with embedded_environment(time_scale) as tmp:
        src = tmp / "workload.jsonl"
        with src.open("w", encoding="utf-8") as fh:
            for p in prompts:
                fh.write(json.dumps({"id": p["id"], "prompt": p["prompt"]}, ensure_ascii=False) + "\n")
        strongest = get_registry().strongest().name
        t0 = time.perf_counter()
        routed = submit_job(src, JobOptions(latency_class=latency_class, name="demo-routed"))
        get_dispatcher().drain()
        routed_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        mono = submit_job(src, JobOptions(latency_class=latency_class, name="demo-monolithic",
                                          allowed_models=[strongest]))
        get_dispatcher().drain()
        mono_s = time.perf_counter() - t0
        r_rows, m_rows = _job_rows(routed.job_id), _job_rows(mono.job_id)

    m_by_id = {r["id"]: r for r in m_rows}
    groups: dict[str, list[tuple[dict[str, Any], dict[str, Any]]]] = defaultdict(list)
    for r in r_rows:
        groups[r["domain"] or "unknown"].append((r, m_by_id[r["id"]]))
    per_type = []
    for domain in sorted(groups):
        rs = _summary([a for a, _ in groups[domain]])
        ms = _summary([b for _, b in groups[domain]])
        models: dict[str, int] = defaultdict(int)
        for a, _ in groups[domain]:
            models[a["model"] or "-"] += 1
        per_type.append({
            "type": domain, "requests": rs["requests"],
            "routed_cost_usd": rs["cost_usd"], "monolithic_cost_usd": ms["cost_usd"],
            "cost_saving_pct": _pct(rs["cost_usd"], ms["cost_usd"]),
            "routed_p50_latency_ms": rs["p50_latency_ms"], "monolithic_p50_latency_ms": ms["p50_latency_ms"],
            "latency_improvement_pct": _pct(rs["p50_latency_ms"], ms["p50_latency_ms"]),
            "routed_predicted_quality": rs["mean_predicted_quality"],
            "monolithic_predicted_quality": ms["mean_predicted_quality"],
            "routed_models": dict(sorted(models.items(), key=lambda kv: -kv[1])),
        })
    rs, ms = _summary(r_rows), _summary(m_rows)
    return {
        "requests": rs["requests"], "completed": rs["completed"], "monolithic_completed": ms["completed"],
        "strongest_model": strongest, "latency_class": latency_class, "time_scale": time_scale,
        "routed_cost_usd": rs["cost_usd"], "monolithic_cost_usd": ms["cost_usd"],
        "cost_saving_pct": _pct(rs["cost_usd"], ms["cost_usd"]),
        "routed_p50_latency_ms": rs["p50_latency_ms"], "monolithic_p50_latency_ms": ms["p50_latency_ms"],
        "routed_predicted_quality": rs["mean_predicted_quality"],
        "monolithic_predicted_quality": ms["mean_predicted_quality"],
        "routed_wall_s": round(routed_s, 2), "monolithic_wall_s": round(mono_s, 2),
        "total_wall_s": round(time.perf_counter() - started, 2),
        "per_type": per_type,
    }
