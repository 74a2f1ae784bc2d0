"""The HTTP producer API: submit job files, follow jobs, stream results (aiohttp).

``batchroute serve --port 8600`` runs it. Routes (JSON unless said otherwise)::

    POST /v1/jobs?latency=batch&tag=team=legal&budget=25     body: JSONL (plain or OpenAI Batch lines)
         -> 201 {"job_id", "lines", "requests", "invalid", "errors": [first line errors]}
    GET  /v1/jobs/{job_id}                                    -> the same dict as `batchroute status --json`
    GET  /v1/jobs/{job_id}/results                            -> JSONL, one line per request (streamed)
    GET  /healthz                                             -> {"ok": true}

The body is spooled to a temporary file as it arrives (never held whole), then submitted exactly
as ``batchroute submit`` would. Bad options and bad files answer 400 with
``{"error": {"type", "message", "field", "line"}}``; an unknown job 404. One bad line fails that line,
not the job: it is reported in ``errors`` and stored against the job.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from batchroute.errors import BatchrouteError, InputError, NotFoundError

# Request bodies up to this size are accepted (a JSONL job file).
MAX_BODY_BYTES = 10 * 1024**3
_SPOOL_CHUNK = 1 << 20
_RESULT_BATCH = 500
_STALL_S = 300.0


def _error(status: int, exc: BatchrouteError) -> web.Response:
    body: dict[str, Any] = {"type": type(exc).__name__, "message": str(exc)}
    for attr in ("field", "line"):
        if getattr(exc, attr, None) is not None:
            body[attr] = getattr(exc, attr)
    return web.json_response({"error": body}, status=status)


@web.middleware
async def _errors(request: web.Request, handler: Callable[[web.Request], Any]) -> web.StreamResponse:
    try:
        response: web.StreamResponse = await handler(request)
        return response
    except InputError as exc:
        return _error(400, exc)
    except NotFoundError as exc:
        return _error(404, exc)
    except BatchrouteError as exc:
        return _error(500, exc)


def _options(query: Any) -> Any:
    """JobOptions from the query string; InputError naming the bad parameter."""
    from batchroute.jobs import JobOptions
    from batchroute.tags import parse_tags

    def number(name: str) -> float | None:
        raw = query.get(name)
        if raw is None:
            return None
        try:
            return float(raw)
        except ValueError as exc:
            raise InputError(f"not a number: {raw!r}", field=name) from exc

    return JobOptions(latency_class=query.get("latency", "standard"), tenant=query.get("tenant", "default"),
                      name=query.get("name"), tags=parse_tags(query.getall("tag", [])),
                      objective=query.get("objective", "balanced"),
                      budget_usd=number("budget"), min_quality=number("min_quality"),
                      allowed_models=query.getall("model", []) or None,
                      ignore_model=query.get("ignore_model", "false").lower() in ("1", "true", "yes"))


async def submit(request: web.Request) -> web.Response:
    """POST /v1/jobs: spool the JSONL body, submit it, answer with the submit report."""
    from batchroute.dispatch import get_dispatcher
    from batchroute.jobfile import OPEN_ERRORS
    from batchroute.jobs import submit_job

    options = _options(request.query)
    options.validate()
    with tempfile.TemporaryDirectory(prefix="batchroute-api-") as tmp:
        path = Path(tmp) / "job.jsonl"
        with path.open("wb") as fh:
            async for chunk in request.content.iter_chunked(_SPOOL_CHUNK):
                fh.write(chunk)
        if path.stat().st_size == 0:
            raise InputError("empty body: send the job's JSONL lines", field="body")
        job_id = request.query.get("job_id")
        # Submitted as a stream: line errors then name the line, not this temporary file.
        with path.open(encoding="utf-8", errors=OPEN_ERRORS) as stream:
            report = await asyncio.to_thread(submit_job, stream, options, job_id=job_id)
        # In-process queues (the embedded default) run the job here; a real broker's drain is a no-op.
        await asyncio.to_thread(get_dispatcher().drain)
    return web.json_response({"job_id": report.job_id, "lines": report.lines, "requests": report.requests,
                              "invalid": report.invalid, "errors": report.errors}, status=201)


async def status(request: web.Request) -> web.Response:
    """GET /v1/jobs/{job_id}."""
    from batchroute.jobs import job_status

    return web.json_response(await asyncio.to_thread(job_status, request.match_info["job_id"]))


async def results(request: web.Request) -> web.StreamResponse:
    """GET /v1/jobs/{job_id}/results: JSONL, streamed in line order."""
    from batchroute.jobs import iter_results, job_status

    job_id = request.match_info["job_id"]
    await asyncio.to_thread(job_status, job_id)  # 404 before the stream starts
    response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
    await response.prepare(request)
    # One thread reads the results (a DB cursor stays on the thread that opened it) and hands
    # batches of lines over a small queue, so a big job streams with bounded memory.
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[str | None] = asyncio.Queue(maxsize=4)

    def put(item: str | None) -> None:
        # A client that went away stops reading: give up after a while instead of blocking forever.
        asyncio.run_coroutine_threadsafe(queue.put(item), loop).result(timeout=_STALL_S)

    def produce() -> None:
        try:
            batch: list[str] = []
            for row in iter_results(job_id):
                batch.append(json.dumps(row, ensure_ascii=False))
                if len(batch) == _RESULT_BATCH:
                    put("\n".join(batch) + "\n")
                    batch = []
            if batch:
                put("\n".join(batch) + "\n")
        finally:
            put(None)

    reader = loop.run_in_executor(None, produce)
    while (chunk := await queue.get()) is not None:
        await response.write(chunk.encode("utf-8"))
    await reader
    await response.write_eof()
    return response


async def health(_: web.Request) -> web.Response:
    """GET /healthz."""
    return web.json_response({"ok": True})


def make_app() -> web.Application:
    """The aiohttp application (for ``web.run_app`` or an aiohttp test client)."""
    app = web.Application(middlewares=[_errors], client_max_size=MAX_BODY_BYTES)
    app.router.add_post("/v1/jobs", submit)
    app.router.add_get("/v1/jobs/{job_id}", status)
    app.router.add_get("/v1/jobs/{job_id}/results", results)
    app.router.add_get("/healthz", health)
    return app


def serve(host: str = "127.0.0.1", port: int = 8600) -> None:
    """Run the API until interrupted."""
    web.run_app(make_app(), host=host, port=port, print=None)
