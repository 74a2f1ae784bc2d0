"""Real Celery worker processes on this machine, for benchmarks and integration tests.

    with LocalCluster(env) as cluster:
        cluster.start("analyze", queues="analyze", pool="solo")
        cluster.start("providers", queues="provider.openai-sim,provider.together-sim", pool="threads",
                      concurrency=16)
        cluster.wait_ready()
        ...

Each worker is ``python -m celery -A workers.app worker`` in its own process group, with the given
environment on top of this process's, logging to a file in ``log_dir``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

ROOT = Path(__file__).resolve().parent.parent


class WorkerProcess:
    """One `celery worker` subprocess."""

    def __init__(self, name: str, queues: str, pool: str, concurrency: int, env: dict[str, str],
                 log_dir: Path) -> None:
        self.name = name
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = log_dir / f"worker-{name}-{os.getpid()}.log"
        self._log = self.log_path.open("w")
        cmd = [sys.executable, "-m", "celery", "-A", "workers.app", "worker", "-Q", queues, "-P", pool,
               "-c", str(concurrency), "-n", f"{name}-{os.getpid()}@%h", "-l", "INFO", "--without-gossip",
               "--without-mingle", "--without-heartbeat"]
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, **env}, stdout=self._log,
                                     stderr=subprocess.STDOUT, start_new_session=True)

    @property
    def alive(self) -> bool:
        """True while the process runs."""
        return self.proc.poll() is None

    def wait_ready(self, timeout_s: float = 180) -> None:
        """Block until celery logs that it is ready; raises with the log tail if it dies or stalls."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if " ready." in self.log_path.read_text(errors="replace"):
                return
            if not self.alive:
                raise RuntimeError(f"worker {self.name} exited {self.proc.returncode}:\n{self.tail()}")
            time.sleep(0.2)
        raise RuntimeError(f"worker {self.name} not ready after {timeout_s}s:\n{self.tail()}")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to the worker's whole process group and reap it."""
        if self.alive:
            os.killpg(self.proc.pid, sig)
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        """Warm shutdown, then kill if it does not go within 20 s."""
        if self.alive:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()
        self._log.close()

    def tail(self, n_chars: int = 3000) -> str:
        """The end of the worker's log."""
        return self.log_path.read_text(errors="replace")[-n_chars:]


class LocalCluster:
    """A set of worker processes sharing one environment; stops them all on exit."""

    def __init__(self, env: dict[str, str], log_dir: Path) -> None:
        self.env = env
        self.log_dir = log_dir
        self.workers: dict[str, WorkerProcess] = {}

    def start(self, name: str, queues: str, pool: str = "threads", concurrency: int = 8) -> WorkerProcess:
        """Start one worker process consuming ``queues`` (comma-separated)."""
        w = WorkerProcess(name, queues, pool, concurrency, self.env, self.log_dir)
        self.workers[name] = w
        return w

    def wait_ready(self, timeout_s: float = 180) -> None:
        """Wait until every started worker is ready."""
        for w in self.workers.values():
            w.wait_ready(timeout_s)

    def stop(self) -> None:
        """Stop every worker."""
        for w in self.workers.values():
            w.stop()

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
