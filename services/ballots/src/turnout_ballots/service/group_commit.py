"""Group commit: commands that arrive together are written in one transaction.

Why: every first vote mark is a commit, and a commit waits for its WAL to reach the disk
(fdatasync). PostgreSQL shares one flush among commits that arrive together, but a
transaction that notifies the outbox relay (`pg_notify`) holds a database-wide lock from
its commit until its flush is done, so notifying commits go one at a time: a few hundred
a second on an ordinary disk, short of the 1,500 marks/s the service must take. And one
statement per mark costs a round trip and a plan each. So marks waiting at the same
moment are written together (`write`, set-based): one transaction, a few statements,
one flush and one notification for the lot.

Nobody waits for a batch to fill: a worker takes whatever is queued when it comes free.
When marks are few each one goes alone, as fast as before; under load, batches grow by
themselves while earlier ones commit. Each result goes back to its caller only once its
batch is committed.

A batch is written in a fixed order (`order`, e.g. ballot then member), so two batches
waiting on each other's rows always wait in the same direction: no deadlocks. If a batch
fails, its commands are written again one by one, so one bad command fails only itself.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import asyncpg
import structlog
from prometheus_client import Histogram

log = structlog.get_logger("turnout.ballots.group_commit")

# How full the shared transactions are: one command each when the service is quiet, tens
# under load. Shown in /metrics, and read by bench/mark_votes.py.
BATCH_SIZE = Histogram("ballots_group_commit_batch_size",
                       "Commands written by one group-commit transaction.",
                       buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000))

Command = TypeVar("Command")
Result = TypeVar("Result")
Write = Callable[[asyncpg.Connection, Sequence[Command]], Awaitable[list[Result]]]


@dataclass(order=True)
class _Pending(Generic[Command, Result]):
    order: tuple[Any, ...]
    command: Command = field(compare=False)
    result: asyncio.Future[Result] = field(compare=False)


class GroupCommit(Generic[Command, Result]):
    """Writes commands with `write(connection, commands)` (one result per command) inside
    transactions shared by whoever is waiting at the time."""

    def __init__(self, pool: asyncpg.Pool, write: Write, *, workers: int = 4,
                 max_batch: int = 100) -> None:
        self.pool = pool
        self.write = write
        self.workers = workers
        self.max_batch = max_batch
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self._tasks: list[asyncio.Task] = []
        self.batches = 0  # for benchmarks and metrics: commits, and commands in them
        self.commands = 0

    async def submit(self, command: Command, *, order: tuple[Any, ...]) -> Result:
        """The command's result, once the transaction that wrote it has committed."""
        if not self._tasks:
            raise RuntimeError("the group commit has not started")
        pending: _Pending = _Pending(order, command,
                                     asyncio.get_running_loop().create_future())
        self._queue.put_nowait(pending)
        return await pending.result

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._work(), name=f"group-commit-{i}")
                       for i in range(self.workers)]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        while not self._queue.empty():
            _fail([self._queue.get_nowait()], RuntimeError("the service is stopping"))

    async def _work(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < self.max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            batch.sort()
            try:
                await self._write(batch)
            except asyncio.CancelledError:
                _fail(batch, RuntimeError("the service is stopping"))
                raise
            except Exception as exc:  # a bug in `write`: its callers get the error
                log.exception("group_commit.write_failed", size=len(batch))
                _fail(batch, exc)

    async def _write(self, batch: list[_Pending]) -> None:
        try:
            async with self.pool.acquire() as conn, conn.transaction():
                results = await self.write(conn, [p.command for p in batch])
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
            if len(batch) == 1:
                _fail(batch, exc)
                return
            log.warning("group_commit.batch_failed", size=len(batch), error=type(exc).__name__)
            for pending in batch:
                await self._write([pending])
            return
        self.batches += 1
        self.commands += len(batch)
        BATCH_SIZE.observe(len(batch))
        for pending, result in zip(batch, results, strict=True):
            if not pending.result.done():  # its caller may have gone away
                pending.result.set_result(result)


def _fail(batch: list[_Pending], exc: BaseException) -> None:
    for pending in batch:
        if not pending.result.done():
            with contextlib.suppress(asyncio.InvalidStateError):
                pending.result.set_exception(exc)
