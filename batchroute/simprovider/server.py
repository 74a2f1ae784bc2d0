"""The aiohttp application of the simulated provider and the ways to run it.

In a coroutine (tests, the embedded runtime)::

    server = await start_sim_server(load_registry(), SimConfig(time_scale=0))
    ...                                 # POST f"{server.url}/v1/chat/completions"
    await server.close()

From synchronous code, in a daemon thread::

    with SimServerThread(load_registry(), SimConfig(time_scale=0)) as sim:
        sim.url, sim.stats(), sim.configure(rate_429=1.0)

As a process (``batchroute sim-provider``): :func:`run_sim_server`.

Routes: ``POST /v1/chat/completions`` (OpenAI), ``POST /v1/messages`` (Anthropic),
``GET /v1/models``, ``GET /health``, ``GET /stats``, ``POST /stats/reset`` (zeroes counters and
refills rate-limit budgets), ``GET|POST /admin/faults`` (read / change :class:`SimConfig` fields).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import math
import os
import socket
import struct
import threading
import time
from collections.abc import Mapping
from typing import Any

from aiohttp import web
from pydantic import ValidationError

from batchroute.registry import ModelSpec, Registry
from batchroute.simprovider.config import SimConfig
from batchroute.simprovider.faults import FaultPicker, Limiter, Stats
from batchroute.simprovider.wire import (
    ANTHROPIC,
    INVALID,
    OPENAI,
    Wire,
    WireError,
    count_prompt_tokens,
    simulate_completion,
)

MAX_BODY_BYTES = 64 * 1024 * 1024
# Long simulated latencies must not hold a shutdown for a minute (aiohttp's default).
SHUTDOWN_TIMEOUT_S = 1.0


class SimState:
    """Everything one server knows: served models, config, rate-limit budgets, fault draws, counters."""

    def __init__(self, registry: Registry, config: SimConfig) -> None:
        self.models: dict[str, ModelSpec] = {m.wire_name: m for m in registry.models if m.sim is not None}
        # A model's own name wins over another model's wire name.
        self.models.update({m.name: m for m in registry.models if m.sim is not None})
        self.limiter = Limiter()
        self.stats = Stats()
        self.closing = asyncio.Event()
        self._ids = itertools.count(1)
        self._id_prefix = os.urandom(4).hex()
        self.config = SimConfig.model_validate(config.model_dump())
        self.faults = self._picker(self.config)

    @staticmethod
    def _picker(cfg: SimConfig) -> FaultPicker:
        return FaultPicker({"429": cfg.rate_429, "5xx": cfg.rate_5xx, "hang": cfg.rate_hang,
                            "malformed": cfg.rate_malformed, "reset": cfg.rate_reset}, cfg.fault_models, cfg.seed)

    def configure(self, changes: Mapping[str, Any]) -> SimConfig:
        """Apply changed :class:`SimConfig` fields (ValidationError if invalid); restarts the seeded draws."""
        self.config = SimConfig.model_validate({**self.config.model_dump(), **changes})
        self.faults = self._picker(self.config)
        return self.config

    def reset(self) -> None:
        """Zero the counters and refill every rate-limit budget."""
        self.stats.reset()
        self.limiter.reset()

    def next_id(self) -> str:
        """A request id unique within this server."""
        return f"{self._id_prefix}{next(self._ids):012x}"


STATE = web.AppKey("simprovider_state", SimState)


def _json(data: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.Response(body=json.dumps(data).encode(), status=status, headers=headers,
                        content_type="application/json")


def _error(wire: Wire, err: WireError, headers: dict[str, str]) -> web.Response:
    return _json(wire.error_body(err), err.status, headers)


def _retry_headers(seconds: float) -> dict[str, str]:
    return {"retry-after": str(max(1, math.ceil(seconds))), "retry-after-ms": str(max(0, math.ceil(seconds * 1000)))}


def _abort(request: web.Request) -> web.Response:
    transport = request.transport
    if transport is not None:
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            # Linger 0 turns the close into a TCP RST, what a crashed load balancer sends.
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()
    # Writing this to the aborted transport fails; aiohttp then drops the connection silently.
    return web.Response(status=500)


def _client_gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


async def _hang(state: SimState, seconds: float) -> bool:
    """Wait ``seconds``; True when the server is shutting down instead."""
    if state.closing.is_set():
        return True
    try:
        await asyncio.wait_for(state.closing.wait(), seconds)
    except TimeoutError:
        return False
    return True


async def _complete(request: web.Request, wire: Wire) -> web.Response:
    state = request.app[STATE]
    cfg = state.config
    rid = state.next_id()
    headers = {wire.request_id_header: f"req_{rid}"}
    try:
        wire.check_headers(request.headers, cfg.require_auth)
        try:
            data = json.loads(await request.read())
        except ValueError:
            raise wire.bad_json() from None
        except web.HTTPRequestEntityTooLarge:
            raise WireError(413, INVALID, f"Request body is larger than {MAX_BODY_BYTES} bytes.") from None
        call = wire.parse(data)
    except WireError as err:
        state.stats.invalid += 1
        return _error(wire, err, headers)
    model = state.models.get(call.model)
    if model is None or model.sim is None:
        state.stats.invalid += 1
        return _error(wire, wire.not_found(call.model), headers)
    sim = model.sim
    counts = state.stats.of(model.name)
    counts["calls"] += 1
    prompt_tokens = count_prompt_tokens(call.messages)
    try:
        wire.check_fit(model, call, prompt_tokens)
    except WireError as err:
        counts["status_4xx"] += 1
        return _error(wire, err, headers)
    now = time.monotonic()
    bucket = state.limiter.bucket(model.name, cfg.rpm_override or model.rpm, cfg.tpm_override or model.tpm, now)
    fault = None
    if model.name in cfg.down_models or model.wire_name in cfg.down_models:
        status = 503
    else:
        fault = state.faults.draw(model.name, model.wire_name)
        status = 429 if fault == "429" else state.faults.server_status(wire.anthropic) if fault == "5xx" else 0
    if fault == "reset":
        counts["resets"] += 1
        return _abort(request)
    if status:
        counts["status_429" if status == 429 else "status_5xx"] += 1
        headers.update(wire.limit_headers(bucket.peek(now)))
        if status == 429:
            headers.update(_retry_headers(cfg.retry_after_ms / 1000.0))
        return _error(wire, wire.fault(model, status), headers)
    # Like OpenAI, the token budget is charged for the prompt plus the most the answer may use.
    tokens = prompt_tokens + (call.max_tokens or min(sim.output_tokens_max, model.max_output_tokens))
    limit = bucket.take(tokens, now)
    headers.update(wire.limit_headers(limit))
    if limit.exceeded:
        counts["status_429"] += 1
        headers.update(_retry_headers(limit.retry_after_s))
        return _error(wire, wire.rate_limited(model, limit, tokens), headers)
    if fault == "hang":
        counts["hangs"] += 1
        if await _hang(state, cfg.hang_s):
            return _abort(request)
    n, text, truncated = simulate_completion(model, call.messages, call.max_tokens)
    delay = (sim.base_latency_ms + sim.per_output_token_ms * n) * state.config.time_scale / 1000.0
    if delay > 0:
        await asyncio.sleep(delay)
    if _client_gone(request):
        # The client gave up (its timeout) while we hung or computed: nothing is delivered, so
        # nothing more is counted; a hung call stays counted as a hang only.
        return web.Response(status=499)
    body = json.dumps(wire.success(model, call, rid, prompt_tokens, n, text, truncated)).encode()
    if fault == "malformed":
        counts["malformed"] += 1
        body = body[: len(body) // 2]
    else:
        counts["ok"] += 1
        counts["prompt_tokens"] += prompt_tokens
        counts["completion_tokens"] += n
    return web.Response(body=body, headers=headers, content_type="application/json")


async def _openai(request: web.Request) -> web.Response:
    return await _complete(request, OPENAI)


async def _anthropic(request: web.Request) -> web.Response:
    return await _complete(request, ANTHROPIC)


async def _models(request: web.Request) -> web.Response:
    served = {m.name: m for m in request.app[STATE].models.values()}.values()
    return _json({"object": "list", "data": [{"id": m.wire_name, "object": "model", "created": 0,
                                              "owned_by": m.provider} for m in served]})


async def _health(request: web.Request) -> web.Response:
    return _json({"status": "ok"})


async def _stats(request: web.Request) -> web.Response:
    return _json(request.app[STATE].stats.snapshot())


async def _stats_reset(request: web.Request) -> web.Response:
    request.app[STATE].reset()
    return _json({"status": "ok"})


async def _faults_get(request: web.Request) -> web.Response:
    return _json(request.app[STATE].config.model_dump(mode="json"))


async def _faults_post(request: web.Request) -> web.Response:
    state = request.app[STATE]
    try:
        changes = json.loads(await request.read())
        if not isinstance(changes, dict):
            raise ValueError("expected a JSON object of SimConfig fields")
        cfg = state.configure(changes)
    except ValidationError as exc:
        return _json({"error": [f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()]}, 400)
    except ValueError as exc:
        return _json({"error": str(exc)}, 400)
    return _json(cfg.model_dump(mode="json"))


async def _on_shutdown(app: web.Application) -> None:
    app[STATE].closing.set()


def create_app(registry: Registry, config: SimConfig | None = None) -> web.Application:
    """The aiohttp app serving every model of ``registry`` that has a ``sim`` profile.

    Models are found by ``name`` or ``wire_model``. Run it with :func:`start_sim_server`,
    :class:`SimServerThread`, :func:`run_sim_server` or ``aiohttp.test_utils.TestServer``; its
    :class:`SimState` is ``app[STATE]``.
    """
    app = web.Application(client_max_size=MAX_BODY_BYTES)
    app[STATE] = SimState(registry, config or SimConfig())
    app.router.add_post("/v1/chat/completions", _openai)
    app.router.add_post("/v1/messages", _anthropic)
    app.router.add_get("/v1/models", _models)
    app.router.add_get("/health", _health)
    app.router.add_get("/stats", _stats)
    app.router.add_post("/stats/reset", _stats_reset)
    app.router.add_get("/admin/faults", _faults_get)
    app.router.add_post("/admin/faults", _faults_post)
    app.on_shutdown.append(_on_shutdown)
    return app


class SimServer:
    """A running simulated provider; get one from :func:`start_sim_server`.

    ``url`` is the root (``"http://127.0.0.1:54321"``) that replaces ``{sim}`` in base URLs.
    """

    def __init__(self, runner: web.AppRunner, app: web.Application, host: str, port: int) -> None:
        self._runner = runner
        self.app = app
        self.host = host
        self.port = port
        self.url = f"http://{'[' + host + ']' if ':' in host else host}:{port}"

    @property
    def state(self) -> SimState:
        """Config, counters and budgets of this server (touch only from its event loop)."""
        return self.app[STATE]

    def configure(self, **changes: Any) -> SimConfig:
        """Change :class:`SimConfig` fields while serving, e.g. ``configure(rate_429=1.0)``."""
        return self.state.configure(changes)

    def stats(self) -> dict[str, Any]:
        """The counters ``GET /stats`` returns."""
        return self.state.stats.snapshot()

    async def close(self) -> None:
        """Stop listening, release hanging calls and wait (briefly) for in-flight ones."""
        await self._runner.cleanup()


async def start_sim_server(registry: Registry, config: SimConfig | None = None, host: str = "127.0.0.1",
                           port: int = 0) -> SimServer:
    """Serve ``registry``'s simulated models on ``host:port`` (0 = a free port) in the running loop."""
    app = create_app(registry, config)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT_S)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    bound = runner.addresses[0][1] if runner.addresses else port
    return SimServer(runner, app, host, int(bound))


def run_sim_server(registry: Registry, config: SimConfig | None = None, host: str = "127.0.0.1",
                   port: int = 8700) -> None:
    """Serve until interrupted (Ctrl-C / SIGTERM); what ``batchroute sim-provider`` runs."""
    web.run_app(create_app(registry, config), host=host, port=port, access_log=None, print=None,
                shutdown_timeout=SHUTDOWN_TIMEOUT_S)


class SimServerThread:
    """A simulated provider on its own event loop in a daemon thread, for synchronous callers::

        sim = SimServerThread(registry, SimConfig(time_scale=0)).start()
        os.environ["BATCHROUTE_SIM_URL"] = sim.url
        ...
        sim.stop()

    Also a context manager (starts on enter, stops on exit).
    """

    def __init__(self, registry: Registry, config: SimConfig | None = None, host: str = "127.0.0.1",
                 port: int = 0) -> None:
        self._args = (registry, config, host, port)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._run, name="batchroute-sim", daemon=True)
        self._ready = threading.Event()
        self._server: SimServer | None = None
        self._error: BaseException | None = None

    def _run(self) -> None:
        loop = self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            self._server = loop.run_until_complete(start_sim_server(*self._args))
        except BaseException as exc:
            self._error = exc
        self._ready.set()
        try:
            if self._server is not None:
                loop.run_forever()
                loop.run_until_complete(self._server.close())
        finally:
            loop.close()

    def start(self, timeout_s: float = 10.0) -> SimServerThread:
        """Start serving and wait until the port is bound; re-raises a bind failure."""
        self._thread.start()
        if not self._ready.wait(timeout_s):
            raise TimeoutError(f"simulated provider did not start within {timeout_s}s")
        if self._error is not None:
            raise self._error
        return self

    @property
    def server(self) -> SimServer:
        """The running :class:`SimServer` (after :meth:`start`)."""
        if self._server is None:
            raise RuntimeError("SimServerThread is not started")
        return self._server

    @property
    def url(self) -> str:
        """The server root, e.g. ``"http://127.0.0.1:54321"``."""
        return self.server.url

    @property
    def port(self) -> int:
        """The bound port."""
        return self.server.port

    def _on_loop(self, fn: Any, timeout_s: float = 10.0) -> Any:
        async def call() -> Any:
            return fn()
        if self._loop is None:
            raise RuntimeError("SimServerThread is not started")
        return asyncio.run_coroutine_threadsafe(call(), self._loop).result(timeout_s)

    def configure(self, **changes: Any) -> SimConfig:
        """Change :class:`SimConfig` fields while serving (thread-safe)."""
        server = self.server
        result: SimConfig = self._on_loop(lambda: server.configure(**changes))
        return result

    def stats(self) -> dict[str, Any]:
        """The counters ``GET /stats`` returns (thread-safe)."""
        server = self.server
        result: dict[str, Any] = self._on_loop(server.stats)
        return result

    def reset(self) -> None:
        """Zero the counters and refill every rate-limit budget, like ``POST /stats/reset`` (thread-safe)."""
        state = self.server.state
        self._on_loop(state.reset)

    def exhaust(self, *models: str) -> None:
        """Empty the rate-limit budgets of ``models`` (thread-safe): a provider whose limit another
        client has just used up, rather than one starting with a full minute's budget."""
        state = self.server.state

        def run() -> None:
            now = time.monotonic()
            cfg = state.config
            for name in models:
                m = state.models[name]
                state.limiter.bucket(m.name, cfg.rpm_override or m.rpm, cfg.tpm_override or m.tpm, now)
            state.limiter.exhaust(now)

        self._on_loop(run)

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop serving and join the thread (safe to call twice)."""
        loop = self._loop
        if loop is None or not self._thread.is_alive():
            return
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            loop.call_soon_threadsafe(loop.stop)
        self._thread.join(timeout_s)

    def __enter__(self) -> SimServerThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
