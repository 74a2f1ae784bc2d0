"""A group-commit writer: many coroutines hand it small writes; one thread commits them in batches.

Hundreds of calls finish per second in one worker process; committing each on its own would make
the database the bottleneck. The writer drains whatever is queued (up to ``max_batch`` ops) into one
transaction. If that transaction fails, each op is retried alone so one bad write cannot fail its
neighbours. A caller's future resolves only after its op is committed, so a task is acknowledged
only once its rows are durable.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError

from batchroute.errors import StorageError

log = logging.getLogger(__name__)
T = TypeVar("T")
Op = Callable[[Connection], Any]


class GroupCommitWriter:
    """Commits ops (functions of a Connection) in batches on one background thread."""

    def __init__(self, engine: Engine, max_batch: int = 500) -> None:
        self._engine = engine
        self._max_batch = max_batch
        self._queue: queue.Queue[tuple[Op, Future[Any]] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="batchroute-writer", daemon=True)
        self._thread.start()

    def submit(self, op: Callable[[Connection], T]) -> Future[T]:
        """Queue ``op``; the future holds its return value once committed (or its StorageError)."""
        fut: Future[T] = Future()
        self._queue.put((op, fut))
        return fut

    async def write(self, op: Callable[[Connection], T]) -> T:
        """Await ``op``'s commit from a coroutine without blocking the event loop."""
        return await asyncio.wrap_future(self.submit(op))

    def close(self) -> None:
        """Commit what is queued, then stop the thread."""
        self._queue.put(None)
        self._thread.join(timeout=30)

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            stop = False
            while len(batch) < self._max_batch:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                batch.append(nxt)
            self._commit(batch)
            if stop:
                return

    def _commit(self, batch: list[tuple[Op, Future[Any]]]) -> None:
        try:
            with self._engine.begin() as conn:
                results = [op(conn) for op, _ in batch]
        except Exception:
            if len(batch) == 1:
                self._commit_one(*batch[0])
                return
            for op, fut in batch:
                self._commit_one(op, fut)
            return
        for (_, fut), res in zip(batch, results, strict=True):
            _resolve(fut, res)

    def _commit_one(self, op: Op, fut: Future[Any]) -> None:
        try:
            with self._engine.begin() as conn:
                res = op(conn)
        except SQLAlchemyError as exc:
            log.warning("ledger write failed: %s", exc)
            _resolve(fut, error=StorageError(f"database write failed: {exc}"))
        except Exception as exc:
            _resolve(fut, error=exc)
        else:
            _resolve(fut, res)


def _resolve(fut: Future[Any], result: Any = None, error: BaseException | None = None) -> None:
    """Settle ``fut`` unless its caller gave up on it (a cancelled task): the op is committed either
    way, and setting a cancelled future would raise and kill the writer thread."""
    if fut.cancelled():
        return
    try:
        if error is not None:
            fut.set_exception(error)
        else:
            fut.set_result(result)
    except InvalidStateError:  # cancelled between the check and the set
        pass
