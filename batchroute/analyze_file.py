"""``batchroute analyze FILE``: label and route every line of a job file without calling a model.

Output, one JSON line per input line: ``id, domain, complexity, style, confidence, model, provider,
reason`` (an invalid line gets ``id``, ``line`` and ``error`` instead). Prompts are analysed in
batches of the analyze stage's chunk size and routed as the analyze stage would route them now:
with the feedback learned so far (index and priors) and the profiler's live figures.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from batchroute.feedback import feedback_priors, sync_feedback
from batchroute.jobfile import OPEN_ERRORS, JobItem, iter_job_lines
from batchroute.pipeline import route_input
from batchroute.profiler import get_profiler
from batchroute.registry import get_registry
from batchroute.routing import RoutePolicy, decide, weights_for
from batchroute.settings import get_settings
from batchroute.tables import Request


def _flush(items: list[JobItem], latency: str, out: IO[str]) -> None:
    if not items:
        return
    from batchroute.analyzer import get_analyzer

    registry = get_registry()
    analyzer = get_analyzer()
    sync_feedback(analyzer)
    priors = feedback_priors(analyzer)
    live = get_profiler().snapshot(m.name for m in registry.models)
    analyses = analyzer.analyze([i.prompt for i in items])
    for item, a in zip(items, analyses, strict=True):
        lat = item.latency_class or latency
        lam, mu = weights_for(lat)
        req = Request(id=str(item.line), job_id="", line=item.line, custom_id=item.custom_id,
                      prompt=item.prompt, latency_class=lat, prompt_tokens_est=item.prompt_tokens_est,
                      max_tokens=item.max_tokens)
        d = decide(route_input(req, a, registry, priors), registry,
                   RoutePolicy(cost_weight=lam, latency_weight=mu, pinned=item.model, live=live))
        row: dict[str, Any] = {"id": item.custom_id, "domain": a.domain, "complexity": a.complexity,
                               "style": a.style, "confidence": round(float(a.confidence), 4),
                               "model": d.model, "provider": d.provider, "reason": d.reason}
        out.write(json.dumps(row, ensure_ascii=False) + "\n")
    items.clear()


def analyze_file(path: Path, out: IO[str], latency: str = "standard",
                 on_progress: Callable[[int], None] | None = None) -> tuple[int, int]:
    """Write one JSON line per input line of ``path`` to ``out``; returns (lines, invalid).

    ``on_progress(lines)`` is called with the number of input lines written so far after each
    batch (every ``analyze_chunk_size`` prompts) and at the end.
    """
    registry = get_registry()
    chunk = get_settings().analyze_chunk_size
    lines = bad = 0
    batch: list[JobItem] = []
    with path.open(encoding="utf-8", errors=OPEN_ERRORS) as fh:
        for item in iter_job_lines(fh, (m.name for m in registry.models), source=str(path)):
            lines += 1
            if isinstance(item, JobItem):
                batch.append(item)
                if len(batch) >= chunk:
                    _flush(batch, latency, out)
                    if on_progress is not None:
                        on_progress(lines)
            else:
                _flush(batch, latency, out)
                bad += 1
                out.write(json.dumps({"id": None, "line": item.line, "error": str(item)}) + "\n")
    _flush(batch, latency, out)
    if on_progress is not None:
        on_progress(lines)
    return lines, bad
