"""Rate-limit benchmark: several worker processes sharing one provider limit, batchroute's way vs Celery's.

One simulated provider enforces ``rpm`` requests/min and ``tpm`` tokens/min on a model (the way
OpenAI meters: a 60 s budget that refills continuously; prompt + max_tokens counted at admission).

1. batchroute: ``processes`` OS processes, each with ``callers`` concurrent coroutines that loop
   ``RedisRateLimiter.acquire`` -> the real OpenAI client -> ``settle`` (and ``penalize`` on a 429),
   exactly as the provider stage does, all sharing the limit through Redis.
2. Celery: ``processes`` real ``celery worker`` processes whose task (one call each) carries
   Celery's own ``rate_limit`` equal to the provider's limit, as users commonly configure it;
   Celery enforces it per worker, so together they offer ``processes`` times the limit. (Set
   ``celery_share`` to 1/processes to give each worker its slice instead: right only while exactly
   that many workers run and all stay busy.)

Figures come from the simulator's counters, over the window after ``warmup_s`` (so the burst a
fresh 60 s budget allows is not counted as sustained throughput) and over the whole run:
``achieved_share`` = successful calls per second / the limit (target >= 0.95) and
``share_429`` = 429 answers / calls (target <= 0.01).

    batchroute bench ratelimit --json
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from itertools import pairwise
from pathlib import Path
from typing import Any

DEFAULT_REDIS = "redis://127.0.0.1:6379/11"
MODEL = "sim-llama-3-8b"
MAX_TOKENS = 100
HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def write_registry(path: Path, rpm: int, tpm: int) -> Path:
    """The bundled registry with ``MODEL`` limited to rpm/tpm and its provider-wide limits removed."""
    import yaml

    from batchroute.registry import BUNDLED_REGISTRY, load_registry

    data = yaml.safe_load(Path(BUNDLED_REGISTRY).read_text())
    provider = next(m["provider"] for m in data["models"] if m["name"] == MODEL)
    data["providers"] = [{"name": p["name"]} for p in data.get("providers", [])]
    for m in data["models"]:
        if m["name"] == MODEL:
            m["rpm"], m["tpm"] = rpm, tpm
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    assert load_registry(path).model(MODEL).provider == provider
    return path


# -- the batchroute side: one process of callers ---------------------------------------------------


async def _callers(cfg: dict[str, Any]) -> dict[str, int]:
    from batchroute.errors import ProviderError, ProviderRateLimited
    from batchroute.providers import ChatRequest, client_for, new_session
    from batchroute.providers.base import estimate_prompt_tokens
    from batchroute.ratelimit import limit_keys_for
    from batchroute.registry import load_registry
    from batchroute.runtime import new_limiter

    registry = load_registry(cfg["registry"])
    model = registry.model(MODEL)
    keys = limit_keys_for(model, registry.provider(model.provider))
    limiter = new_limiter(cfg["redis_url"], prefix=cfg["prefix"])  # configured as the provider stage's
    counts = {"calls": 0, "ok": 0, "status_429": 0, "errors": 0}
    session = new_session()
    client = client_for(model, session, cfg["sim_url"])
    await asyncio.sleep(max(0.0, cfg["start_at"] - time.time()))

    async def caller(n: int) -> None:
        i = 0
        while time.time() < cfg["end_at"]:
            i += 1
            messages = [{"role": "user", "content": f"Rate limit probe {n}-{i}."}]
            est = estimate_prompt_tokens(messages) + MAX_TOKENS
            try:
                res = await limiter.acquire(keys, est, timeout_s=max(0.0, cfg["end_at"] - time.time()))
            except TimeoutError:
                return
            counts["calls"] += 1
            try:
                resp = await client.complete(ChatRequest(model=model, messages=messages, max_tokens=MAX_TOKENS))
            except ProviderRateLimited as exc:
                counts["status_429"] += 1
                await limiter.settle(res, 0)
                await limiter.penalize(keys[-1].name, exc.retry_after_s)
                continue
            except ProviderError:
                counts["errors"] += 1
                await limiter.settle(res, 0)
                continue
            counts["ok"] += 1
            await limiter.settle(res, resp.prompt_tokens + max(MAX_TOKENS, resp.completion_tokens))

    try:
        await asyncio.gather(*(caller(n) for n in range(cfg["callers"])))
    finally:
        await session.close()
        await limiter.aclose()
    return counts


def _spawn_callers(cfg: dict[str, Any], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "_callers", json.dumps(cfg)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=log.open("ab"))


# -- measuring -------------------------------------------------------------------------------------


def _totals(sim: Any) -> dict[str, int]:
    return dict(sim.stats()["totals"])


def _window(before: dict[str, int], after: dict[str, int], seconds: float, rpm: int) -> dict[str, Any]:
    calls = after["calls"] - before["calls"]
    ok = after["ok"] - before["ok"]
    r429 = after["status_429"] - before["status_429"]
    return {"seconds": round(seconds, 2), "calls": calls, "ok": ok, "status_429": r429,
            "ok_per_min": round(ok * 60.0 / seconds, 1) if seconds else 0.0,
            "achieved_share": round(ok / (rpm / 60.0 * seconds), 4) if seconds else 0.0,
            "share_429": round(r429 / calls, 4) if calls else 0.0}


def _measure(sim: Any, start_at: float, warmup_s: float, end_at: float, rpm: int, drained: bool) -> dict[str, Any]:
    time.sleep(max(0.0, start_at - time.time()))
    if drained:
        sim.exhaust(MODEL)
    samples = [(time.time(), _totals(sim))]
    while samples[-1][0] < end_at:
        time.sleep(max(0.0, min(1.0, end_at - time.time())))
        samples.append((time.time(), _totals(sim)))
    warm = next(i for i, (t, _) in enumerate(samples) if t >= start_at + warmup_s or i == len(samples) - 1)
    (t0, first), (tw, at_warm), (te, last) = samples[0], samples[warm], samples[-1]
    steady = _window(at_warm, last, te - tw, rpm)
    # The busiest second: what a provider whose budget is not fresh would have to absorb.
    peak = max(((b["calls"] - a["calls"]) / (tb - ta) for (ta, a), (tb, b) in pairwise(samples)
                if tb > ta), default=0.0)
    return {"achieved_share": steady["achieved_share"], "share_429": steady["share_429"], "steady": steady,
            "whole_run": _window(first, last, te - t0, rpm), "peak_calls_per_s": round(peak, 1),
            "limit_per_s": round(rpm / 60.0, 2)}


def _run_batchroute(sim: Any, registry: Path, redis_url: str, processes: int, callers: int, duration_s: float,
                    warmup_s: float, rpm: int, logs: Path, drained: bool) -> dict[str, Any]:
    sim.reset()
    start_at = time.time() + 3.0  # every process imported and connected before the clock starts
    cfg = {"registry": str(registry), "redis_url": redis_url, "prefix": f"bench-rl-{uuid.uuid4().hex[:8]}",
           "sim_url": sim.url, "callers": callers, "start_at": start_at, "end_at": start_at + duration_s}
    procs = [_spawn_callers(cfg, logs / f"ratelimit-callers-{i}.log") for i in range(processes)]
    figures = _measure(sim, start_at, warmup_s, start_at + duration_s, rpm, drained)
    per_process = []
    for p in procs:
        out, _ = p.communicate(timeout=120)
        per_process.append(json.loads(out.decode().strip().splitlines()[-1]) if p.returncode == 0 else
                           {"exit": p.returncode})
    return {**figures, "processes": processes, "callers_per_process": callers, "per_process": per_process}


def _run_celery(sim: Any, registry: Path, redis_url: str, processes: int, pool: str, concurrency: int,
                duration_s: float, warmup_s: float, rpm: int, share: float, logs: Path,
                drained: bool) -> dict[str, Any]:
    import redis

    sys.path.insert(0, str(HERE))
    import ratelimit_celery_app as celery_side

    per_worker = max(1, round(rpm * share))
    env = {**os.environ, "BENCH_RL_BROKER": redis_url, "BENCH_RL_RATE": f"{per_worker}/m", "BENCH_RL_MODEL": MODEL,
           "BENCH_RL_MAX_TOKENS": str(MAX_TOKENS), "BATCHROUTE_SIM_URL": sim.url, "BATCHROUTE_REGISTRY": str(registry),
           "PYTHONPATH": os.pathsep.join([str(HERE), str(ROOT), os.environ.get("PYTHONPATH", "")])}
    redis.Redis.from_url(redis_url).flushdb()
    celery_side.app.conf.broker_url = redis_url
    # More work than every worker together can take in the run: the queue never runs dry.
    n_tasks = int(processes * per_worker / 60.0 * (duration_s + 10) * 1.2) + 100
    with celery_side.app.producer_or_acquire() as producer:
        for i in range(n_tasks):
            celery_side.call.apply_async((i,), queue=celery_side.QUEUE, producer=producer)
    procs = []
    for i in range(processes):
        log = (logs / f"ratelimit-celery-{i}.log").open("w")
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "ratelimit_celery_app", "worker", "-Q", celery_side.QUEUE,
             "-P", pool, "-c", str(concurrency), "-n", f"rl{i}-{os.getpid()}@%h", "-l", "WARNING",
             "--without-gossip", "--without-mingle", "--without-heartbeat"],
            cwd=HERE, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
    try:
        # Workers start consuming as soon as they are up; the clock starts once all have called.
        deadline = time.monotonic() + 120
        while _totals(sim)["calls"] < processes and time.monotonic() < deadline:
            time.sleep(0.1)
        sim.reset()
        start_at = time.time()
        figures = _measure(sim, start_at, warmup_s, start_at + duration_s, rpm, drained)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
        redis.Redis.from_url(redis_url).flushdb()
    return {**figures, "workers": processes, "pool": pool, "concurrency_per_worker": concurrency,
            "rate_limit_per_worker": f"{per_worker}/m", "offered_per_min": processes * per_worker}


def run(duration_s: float = 60.0, processes: int = 4, callers: int = 32, rpm: int = 600, tpm: int = 80_000,
        redis_url: str = DEFAULT_REDIS, time_scale: float = 0.02, warmup_s: float | None = None,
        celery: bool = True, celery_share: float = 1.0, celery_pool: str = "prefork",
        celery_concurrency: int = 4, drained: bool = True) -> dict[str, Any]:
    """Run both sides and return their figures (see the module docstring); the top-level
    ``achieved_share`` / ``share_429`` are batchroute's, ``celery_rate_limit`` holds Celery's."""
    import redis

    from batchroute.registry import load_registry
    from batchroute.settings import get_settings
    from batchroute.simprovider import SimConfig, SimServerThread

    workdir = Path(get_settings().data_dir) / "bench"
    logs = workdir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    registry = write_registry(workdir / "ratelimit-registry.yaml", rpm, tpm)
    warm = min(15.0, duration_s / 4) if warmup_s is None else warmup_s
    redis.Redis.from_url(redis_url).flushdb()
    sim = SimServerThread(load_registry(registry), SimConfig(time_scale=time_scale, rpm_override=rpm,
                                                             tpm_override=tpm)).start()
    try:
        ours = _run_batchroute(sim, registry, redis_url, processes, callers, duration_s, warm, rpm, logs, drained)
        result: dict[str, Any] = {
            "achieved_share": ours["achieved_share"], "share_429": ours["share_429"],
            "target": {"achieved_share": ">= 0.95", "share_429": "<= 0.01"},
            "limit": {"rpm": rpm, "tpm": tpm, "model": MODEL, "max_tokens": MAX_TOKENS},
            "duration_s": duration_s, "warmup_s": warm, "provider_budget_drained_at_start": drained,
            "batchroute": ours,
        }
        if celery:
            result["celery_rate_limit"] = _run_celery(sim, registry, redis_url, processes, celery_pool,
                                                      celery_concurrency, duration_s, warm, rpm, celery_share, logs,
                                                      drained)
    finally:
        sim.stop()
        redis.Redis.from_url(redis_url).flushdb()
    result["machine"] = {"cpus": os.cpu_count(), "loadavg_1m": round(os.getloadavg()[0], 2)}
    return result


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "_callers":
        print(json.dumps(asyncio.run(_callers(json.loads(sys.argv[2])))))
        sys.exit(0)
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=60.0)
    ap.add_argument("--processes", type=int, default=4)
    ap.add_argument("--callers", type=int, default=32)
    ap.add_argument("--rpm", type=int, default=600)
    ap.add_argument("--tpm", type=int, default=80_000)
    ap.add_argument("--redis-url", default=DEFAULT_REDIS)
    ap.add_argument("--no-celery", action="store_true")
    ap.add_argument("--celery-share", type=float, default=1.0)
    ap.add_argument("--celery-pool", default="prefork")
    ap.add_argument("--celery-concurrency", type=int, default=4)
    ap.add_argument("--fresh-budget", action="store_true", help="start with the provider's full 60 s budget")
    args = ap.parse_args()
    print(json.dumps(run(args.duration, args.processes, args.callers, args.rpm, args.tpm, args.redis_url,
                         celery=not args.no_celery, celery_share=args.celery_share, celery_pool=args.celery_pool,
                         celery_concurrency=args.celery_concurrency, drained=not args.fresh_budget), indent=2))
