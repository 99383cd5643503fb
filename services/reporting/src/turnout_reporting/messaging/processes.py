"""The fold in processes of its own (`fold_processes` of 2 or more).

One Python process folds on one core, and the fold is CPU-bound when it catches up (a
restart after a while, a new install, a rebuild): decoding and folding take about three
quarters of a core per event where PostgreSQL takes a quarter. With `fold_processes` N,
the service process only serves HTTP and N child processes fold, each a `FoldConsumer`
in the service's consumer group: exactly what N reporting instances would be, so the
guarantees are theirs (a member's partitions go to one process with the range
assignor; each batch commits with its offsets; a process that dies leaves its partitions
to the others until it is restarted).

    workers = FoldProcesses(settings)
    await workers.start()   # spawns them, and restarts any that dies (the service starts)
    await workers.stop()    # SIGTERM, then SIGKILL after a grace period (it stops)

A child stops by itself when its parent is gone (killed without a chance to stop it):
no fold is left running unsupervised. The children's fold metrics (records folded, batch
times) are on the service's `/metrics`, and the fold's consumer lag too, measured here
from the offsets the children committed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator

import structlog
from aiokafka import AIOKafkaConsumer, TopicPartition
from prometheus_client import REGISTRY
from prometheus_client.multiprocess import MultiProcessCollector
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from ..projections.folder import BATCH_SECONDS, FOLDED
from ..settings import ReportingSettings
from . import fold_process
from .consumer import DEAD_LETTERED, group_id, source_topics

log = structlog.get_logger("turnout.reporting.processes")

STOP_GRACE_S = 20.0  # a batch in flight commits or is abandoned well within this
RESTART_INITIAL_DELAY_S = 1.0
RESTART_MAX_DELAY_S = 30.0
CHECK_S = 1.0
# The fold's own metrics (records folded, dead-lettered; batch times), which the children
# count: on the service's /metrics through prometheus_client's multiprocess mode (files
# in a folder of the parent's).
CHILD_METRICS = (FOLDED, BATCH_SECONDS, DEAD_LETTERED)


class FoldProcesses:
    """Starts `settings.fold_processes` fold processes and keeps them running."""

    def __init__(self, settings: ReportingSettings) -> None:
        self.settings = settings
        self.count = settings.fold_processes
        self._processes: list[subprocess.Popen[bytes] | None] = [None] * self.count
        self._spawned_at = [0.0] * self.count
        self._supervisor: asyncio.Task[None] | None = None
        self._stopping = False
        self.restarts = 0
        self._metrics_dir: str | None = None
        self._metrics: MultiProcessCollector | None = None

    def pids(self) -> list[int | None]:
        return [p.pid if p is not None and p.poll() is None else None
                for p in self._processes]

    async def start(self) -> None:
        self._metrics_dir = tempfile.mkdtemp(prefix="reporting-fold-metrics-")
        for metric in CHILD_METRICS:  # the parent's own stay at zero: the children's count
            with contextlib.suppress(KeyError):
                REGISTRY.unregister(metric)
        self._metrics = MultiProcessCollector(REGISTRY, path=self._metrics_dir)
        for index in range(self.count):
            self._spawn(index)
        self._supervisor = asyncio.create_task(self._supervise(), name="fold-processes")
        log.info("fold_processes_started", processes=self.count)

    def _spawn(self, index: int) -> None:
        """A fresh interpreter running `fold_process` (not fork: the parent runs an event
        loop, threads and open connections that a child must not inherit; and not
        multiprocessing's spawn either, which re-imports the service's main module, with
        FastAPI and SQLAlchemy, before the child can start: a second or two of start-up
        in which the first child folds every partition alone). The settings go through
        a pipe, not the command line or the environment, where other users could see
        the database password; the metrics folder through the environment, as
        prometheus_client reads it when it is imported."""
        environment = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": self._metrics_dir or ""}
        # -P: nothing importable from the working directory shadows the installed code.
        process = subprocess.Popen(
            [sys.executable, "-P", "-m", fold_process.__name__, str(index), str(os.getpid())],
            stdin=subprocess.PIPE, env=environment)
        assert process.stdin is not None
        with contextlib.suppress(BrokenPipeError), process.stdin:
            # A few KB, within the pipe's buffer: does not wait for the child to read.
            process.stdin.write(pickle.dumps(self.settings))
        # (A child that died before reading is restarted by _supervise.)
        self._processes[index] = process
        self._spawned_at[index] = time.monotonic()

    async def _supervise(self) -> None:
        """Restart a process that died (a crash, an OOM kill, kill -9), backing off if it
        keeps dying; its partitions go to the others meanwhile."""
        delays = [RESTART_INITIAL_DELAY_S] * self.count
        while not self._stopping:
            await asyncio.sleep(CHECK_S)  # polling the children, not a race fix
            for index, process in enumerate(self._processes):
                if self._stopping or process is None or process.poll() is None:
                    continue
                if time.monotonic() - self._spawned_at[index] > RESTART_MAX_DELAY_S:
                    delays[index] = RESTART_INITIAL_DELAY_S  # it had been running a while
                log.warning("fold_process_died", index=index, exitcode=process.returncode,
                            restart_in_s=delays[index])
                self._processes[index] = None
                await asyncio.sleep(delays[index])  # backoff before a restart
                if self._stopping:
                    return
                self._spawn(index)
                self.restarts += 1
                delays[index] = min(delays[index] * 2, RESTART_MAX_DELAY_S)

    async def stop(self) -> None:
        self._stopping = True
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
        running = [p for p in self._processes if p is not None]
        for process in running:
            if process.poll() is None:
                process.terminate()  # SIGTERM: the child stops its consumer cleanly
        deadline = time.monotonic() + STOP_GRACE_S
        for process in running:
            try:
                await asyncio.to_thread(process.wait, max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("fold_process_killed", pid=process.pid)
                process.kill()
                await asyncio.to_thread(process.wait, 5)
        self._processes = [None] * self.count
        if self._metrics is not None:
            REGISTRY.unregister(self._metrics)
            self._metrics = None
            for metric in CHILD_METRICS:
                with contextlib.suppress(ValueError):  # registered again already
                    REGISTRY.register(metric)
        if self._metrics_dir is not None:
            shutil.rmtree(self._metrics_dir, ignore_errors=True)
            self._metrics_dir = None
        log.info("fold_processes_stopped", restarts=self.restarts)


class CommittedLag:
    """Consumer lag of the fold when it runs in other processes: the log end offsets
    (asked of Kafka) minus the offsets the fold committed with its effects (read from
    `consumer_offsets`), refreshed every few seconds in the background; what a scrape
    of `/metrics` reports is the last refresh."""

    REFRESH_S = 5.0

    def __init__(self, settings: ReportingSettings,
                 session_factory: async_sessionmaker[AsyncSession]) -> None:
        self.settings = settings
        topics = settings.topic_registry()
        self.group = group_id(topics)
        self.partitions = [TopicPartition(topic, p) for topic in source_topics(topics)
                           for p in range(topics.partitions)]
        self._sessions = session_factory
        self._lag: dict[TopicPartition, int] = {}
        self._task: asyncio.Task[None] | None = None
        self._kafka: AIOKafkaConsumer | None = None

    def __call__(self) -> Iterator[tuple[str, str, int]]:
        for tp, records in list(self._lag.items()):
            yield self.group, tp.topic, records

    async def start(self) -> None:
        self._task = asyncio.create_task(self._refresh_forever(), name="fold-lag")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._kafka is not None:
            with contextlib.suppress(Exception):
                await self._kafka.stop()
            self._kafka = None

    async def _refresh_forever(self) -> None:
        while True:
            try:
                await self.refresh()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Kafka or the database away: keep the last figures
                log.debug("fold_lag_refresh_failed", error=type(exc).__name__)
                if self._kafka is not None:
                    with contextlib.suppress(Exception):
                        await self._kafka.stop()
                    self._kafka = None
            await asyncio.sleep(self.REFRESH_S)  # a refresh period, not a race fix

    async def refresh(self) -> None:
        if self._kafka is None:
            kafka = AIOKafkaConsumer(bootstrap_servers=self.settings.kafka_bootstrap_servers,
                                     group_id=None, client_id="reporting-lag")
            await kafka.start()
            self._kafka = kafka
        ends = await self._kafka.end_offsets(self.partitions)
        async with self._sessions() as session:
            rows = (await session.execute(text(
                'SELECT topic, "partition", next_offset FROM consumer_offsets '
                'WHERE "group" = :group'), {"group": self.group})).all()
        stored = {(topic, partition): offset for topic, partition, offset in rows}
        self._lag = {tp: max(0, end - stored.get((tp.topic, tp.partition), 0))
                     for tp, end in ends.items()}
