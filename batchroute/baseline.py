"""The counterfactual baseline: what a successful request would have cost on its job's baseline model.

Each job names a baseline model (``jobs.baseline_model``; the registry's strongest model when unset).
For a successful attempt the baseline cost is the baseline's prices *at the moment of the call* x
the prompt tokens the provider really counted x the baseline's expected output length for the
prompt's style (:func:`batchroute.pricing.expected_output_tokens`). Cached-token discounts are not
applied to the baseline. It is stored on the successful attempt row (``attempts.baseline_cost_usd``),
so savings = baseline - actual is a plain sum over the ledger or its rollups.

From the execution stage, when the job and request are at hand (saves the ledger a lookup)::

    row["baseline_cost_usd"] = baseline_for(job, request, resp.prompt_tokens)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, Table, select

from batchroute.errors import NotFoundError
from batchroute.pricing import PriceSnapshot, expected_output_tokens
from batchroute.registry import ModelSpec, Registry, get_registry
from batchroute.tables import Job, Request

JOBS: Table = Job.__table__  # type: ignore[attr-defined]
REQUESTS: Table = Request.__table__  # type: ignore[attr-defined]
_LOOKUP_CHUNK = 1_000


def baseline_model(registry: Registry, name: str | None) -> ModelSpec:
    """The model called ``name``, or the registry's strongest when unset or no longer listed."""
    if name:
        try:
            return registry.model(name)
        except NotFoundError:
            pass
    return registry.strongest()


def baseline_cost_usd(model: ModelSpec, prompt_tokens: int, style: str | None, max_tokens: int | None = None) -> float:
    """What ``model`` would cost for a prompt of ``prompt_tokens`` and ``style`` at its current prices."""
    return PriceSnapshot.of(model).cost_usd(prompt_tokens, expected_output_tokens(model, style, max_tokens))


def baseline_for(job: Job, request: Request, prompt_tokens: int, registry: Registry | None = None) -> float:
    """The baseline cost of one successful call of ``request`` (a row of ``job``) that used ``prompt_tokens``."""
    model = baseline_model(registry or get_registry(), job.baseline_model)
    return baseline_cost_usd(model, prompt_tokens, request.style, request.max_tokens)


def fill_baseline_costs(conn: Connection, rows: Sequence[dict[str, Any]], registry: Registry | None = None) -> None:
    """Set ``baseline_cost_usd`` on attempt rows that lack it: successful ones from a lookup, others 0.

    One query per 1,000 successful rows reads each request's style and max_tokens and its job's
    baseline model. A row whose request is not stored gets 0 (nothing to compare with).
    """
    todo = [r for r in rows if r.get("baseline_cost_usd") is None]
    for r in todo:
        r["baseline_cost_usd"] = 0.0
    ok = [r for r in todo if r.get("status") == "ok"]
    if not ok:
        return
    registry = registry or get_registry()
    ids = sorted({r["request_id"] for r in ok})
    info: dict[str, tuple[str | None, int | None, str | None]] = {}
    for i in range(0, len(ids), _LOOKUP_CHUNK):
        q = (select(REQUESTS.c.id, REQUESTS.c.style, REQUESTS.c.max_tokens, JOBS.c.baseline_model)
             .join(JOBS, JOBS.c.id == REQUESTS.c.job_id).where(REQUESTS.c.id.in_(ids[i:i + _LOOKUP_CHUNK])))
        for rid, style, max_tokens, base in conn.execute(q):
            info[rid] = (style, max_tokens, base)
    models: dict[str | None, ModelSpec] = {}
    for r in ok:
        found = info.get(r["request_id"])
        if found is None:
            continue
        style, max_tokens, base = found
        if base not in models:
            models[base] = baseline_model(registry, base)
        r["baseline_cost_usd"] = baseline_cost_usd(models[base], int(r.get("prompt_tokens") or 0), style, max_tokens)
