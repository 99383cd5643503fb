"""The fold's consumer: a plain aiokafka consumer, not FastStream, because exactly-once
needs what FastStream does not give: offsets stored in *our* database in the same
transaction as the effects, a seek to them on every assignment, and a revocation that
waits for the batch in flight.

    consumer = FoldConsumer(settings, topics, pool)
    await consumer.start()   # joins "<namespace>.reporting", folds in the background
    await consumer.stop()    # lets the batch in flight commit, then leaves the group

Kafka's committed offsets are never used (enable_auto_commit=False, nothing committed):
the database is the only record of where the fold is, so the effects and the position
cannot disagree after a crash at any point.

Batches overlap (`projections.folder.Folder`): while one commits, the next is fetched
(`Prefetch`), decoded and folded. Catching up, partitions that run ahead in publish time
wait for the others (`align`), so that a member's events from three topics are folded
together.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from typing import Any

import asyncpg
import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.coordinator.assignors.range import RangePartitionAssignor
from prometheus_client import Counter

from turnout_events.lag import aiokafka_lag
from turnout_events.topics import METADATA_MAX_AGE_MS, TopicRegistry
from turnout_kit.collector import COLLECT_EVERY_S_BESIDE_REQUESTS, CollectorPause

from ..projections.folder import Fetched, Folder, OnBatch
from ..settings import ReportingSettings

log = structlog.get_logger("turnout.reporting.consumer")

DEAD_LETTERED = Counter("reporting_events_dead_lettered_total",
                        "Records sent to the dead-letter topic by reporting")

# Back off between attempts when the database or the broker fails under us.
RETRY_INITIAL_DELAY = 0.2
RETRY_MAX_DELAY = 10.0


def group_id(topics: TopicRegistry) -> str:
    return f"{topics.namespace}.reporting"


def source_topics(topics: TopicRegistry) -> list[str]:
    return [topics.events("contacts"), topics.events("ballots"),
            topics.events("notifications")]


def consumer_options(settings: ReportingSettings) -> dict[str, Any]:
    """How the fold reads Kafka; the benchmark's bare consumer reads the same way."""
    return {
        "bootstrap_servers": settings.kafka_bootstrap_servers,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        # Room for about a batch to be prefetched while the one before folds.
        "max_partition_fetch_bytes": settings.fold_fetch_partition_bytes,
        "fetch_max_bytes": 8 * settings.fold_fetch_partition_bytes,
        "metadata_max_age_ms": METADATA_MAX_AGE_MS,
    }


class Prefetch:
    """Keeps one fetch ahead: the next batch's records come in while this one is folded
    and the one before it commits, rather than after.

    Each fetch is labelled with the folder's generation when it returned: records
    fetched before the folder's positions were replaced (a rebalance, a rewind, a
    rebuild's swap) may not follow on from the new positions, and are not folded.
    (Fetches after a seek start from it: aiokafka drops what it fetched before.)"""

    def __init__(self, consumer: AIOKafkaConsumer, folder: Folder,
                 settings: ReportingSettings) -> None:
        self.consumer = consumer
        self.folder = folder
        self.settings = settings
        self._ahead: asyncio.Task[tuple[int, Fetched]] | None = None

    async def _fetch(self) -> tuple[int, Fetched]:
        fetched = await self.consumer.getmany(timeout_ms=self.settings.fold_poll_ms,
                                              max_records=self.settings.fold_batch_size)
        return self.folder.generation, fetched

    async def next(self) -> tuple[int, Fetched]:
        ahead = self._ahead or asyncio.create_task(self._fetch())
        try:
            result = await ahead
        finally:
            self._ahead = None
        self._ahead = asyncio.create_task(self._fetch(), name="reporting-prefetch")
        return result

    def cancel(self) -> None:
        if self._ahead is not None:
            self._ahead.cancel()
            self._ahead = None


def align(consumer: AIOKafkaConsumer, folder: Folder, slack_ms: int) -> None:
    """Pause the partitions that ran ahead in publish time, resume the others (see
    `Folder.ahead`)."""
    if slack_ms <= 0:
        return
    assigned = {(tp.topic, tp.partition): tp for tp in consumer.assignment()}
    pause, read = folder.ahead(
        lambda key: consumer.highwater(assigned[key]) if key in assigned else None, slack_ms)
    paused = {(tp.topic, tp.partition) for tp in consumer.paused()}
    if pause - paused:
        consumer.pause(*(assigned[k] for k in pause - paused if k in assigned))
    if paused & read:
        consumer.resume(*(assigned[k] for k in paused & read if k in assigned))


class FoldConsumer:
    def __init__(self, settings: ReportingSettings, topics: TopicRegistry,
                 pool: asyncpg.Pool, *, on_batch: OnBatch | None = None,
                 collect_every_s: float = COLLECT_EVERY_S_BESIDE_REQUESTS) -> None:
        self.settings = settings
        self.topics = topics
        self.group = group_id(topics)
        self.pool = pool
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        self._task: asyncio.Task[None] | None = None
        self.folder = Folder(pool, self.group, source_topics(topics), self._dead_letter,
                             on_batch=on_batch, recent_limit=settings.fold_recent_states)
        # Held while a batch is prepared and handed over, and by a revocation, an
        # assignment and a rebuild's swap: none of them happens in the middle of another.
        self.batch_lock = asyncio.Lock()
        # Automatic garbage collection off while folding, and a full collection on a
        # schedule instead: how often depends on what else the process does (see
        # turnout_kit.collector).
        self._collector = CollectorPause(collect_every_s)

    def lag(self) -> Iterator[tuple[str, str, int]]:
        """(group, topic, records not folded yet) per owned partition, for the
        `kafka_consumer_lag_records` gauge (turnout_events.lag): measured from the
        positions the fold has reached, not from Kafka's committed offsets (never
        used)."""
        if self._consumer is None:
            return
        positions = self.folder.positions
        yield from aiokafka_lag(self._consumer, self.group,
                                lambda tp: positions.get((tp.topic, tp.partition)))()

    @property
    def folded(self) -> int:
        """Records this instance applied and committed (not counting records it fetched
        that were already applied): for tests and the benchmark."""
        return self.folder.folded

    async def start(self) -> None:
        self._producer = AIOKafkaProducer(
            bootstrap_servers=self.settings.kafka_bootstrap_servers,
            client_id="reporting-dead-letter", acks="all", enable_idempotence=True)
        self._consumer = AIOKafkaConsumer(
            **consumer_options(self.settings),
            group_id=self.group,
            client_id="reporting",
            # A batch commits well within this; the margin is for a database that is
            # slow for a while.
            max_poll_interval_ms=300_000,
            # Told of a rebalance within a quarter of a second rather than three: when
            # fold processes or instances start together, the first to join folds every
            # partition alone until it hears of the others (a heartbeat is one small
            # request to the group's coordinator).
            heartbeat_interval_ms=250,
            # Partition n of every topic to the same instance: a member's events, on
            # partition n of each topic, are all folded by one instance (the default,
            # round robin, can split them, and two instances would write one member).
            partition_assignment_strategy=(RangePartitionAssignor,),
        )
        await self._producer.start()
        try:
            await self._consumer.start()
        except Exception:
            await self._producer.stop()
            raise
        self._consumer.subscribe(source_topics(self.topics), listener=_Listener(self))
        self._collector.start()
        self._task = asyncio.create_task(self._run(), name="reporting-fold")
        log.info("fold_consumer_started", group=self.group)

    async def stop(self) -> None:
        if self._task is not None:
            # Not mid-batch: a cancelled commit would be safe (it rolls back and is
            # refolded) but wasteful.
            async with self.batch_lock:
                self._task.cancel()
                await self.folder.abandon()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._consumer is not None:
            await self._consumer.stop()  # leaves the group: the partitions move on now
            self._consumer = None
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None
        await self._collector.stop()
        log.info("fold_consumer_stopped", group=self.group, folded=self.folded)

    async def pause(self) -> None:
        """Hold the fold between batches with nothing in flight (for a rebuild's swap):
        returns with the batch lock held; `resume` releases it."""
        await self.batch_lock.acquire()
        try:
            await self.folder.settle()
        except Exception:
            # The next batch finds the folder without positions and goes back to the
            # stored offsets.
            log.warning("fold_batch_failed_before_pause", group=self.group)

    def resume(self) -> None:
        self.batch_lock.release()

    # -- the loop ---------------------------------------------------------------------

    async def _run(self) -> None:
        assert self._consumer is not None
        delay = RETRY_INITIAL_DELAY
        prefetch = Prefetch(self._consumer, self.folder, self.settings)
        try:
            while True:
                generation, fetched = await prefetch.next()
                try:
                    async with self.batch_lock:
                        await self._fold(generation, fetched)
                    delay = RETRY_INITIAL_DELAY
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    # Nothing was stored; go back to what was and try again. A fault in
                    # the fold itself (a bug) holds the partition here, loudly, rather
                    # than skipping events and reporting wrong numbers.
                    log.exception("fold_batch_failed", group=self.group,
                                  error=type(exc).__name__, retry_in_s=delay)
                    await asyncio.sleep(delay)  # backoff between attempts, not a race fix
                    delay = min(delay * 2, RETRY_MAX_DELAY)
                    async with self.batch_lock:
                        await self.folder.abandon()
                        await self._rewind()
        finally:
            prefetch.cancel()

    async def _fold(self, generation: int, fetched: Fetched) -> None:
        """Prepare a batch from `fetched`, and commit it once the one before has."""
        assert self._consumer is not None
        if not self.folder.owns() and self._consumer.assignment():
            await self._rewind()
        # Fetched from positions since replaced (a rebalance, a rewind): its records
        # may not follow on from where the folder now stands.
        usable = fetched and generation == self.folder.generation
        batch = await self.folder.prepare(fetched) if usable else None
        await self.folder.settle()
        if batch is not None:
            self.folder.start_commit(batch)
        self._align()

    def _align(self) -> None:
        assert self._consumer is not None
        align(self._consumer, self.folder, self.settings.fold_align_ms)

    async def restart_from_stored(self) -> None:
        """Call while paused, after the projections were replaced (a rebuild's swap):
        forget everything folded in memory and take every partition from the new
        stored offsets."""
        self.folder.forget()
        if self._consumer is not None:
            await self._rewind()

    async def _rewind(self) -> None:
        """Take every assigned partition from its stored offset."""
        assert self._consumer is not None
        await self.seek_to_stored(list(self._consumer.assignment()))

    async def seek_to_stored(self, partitions: list[TopicPartition]) -> None:
        assert self._consumer is not None
        stored = await self.folder.own([(tp.topic, tp.partition) for tp in partitions])
        for tp in partitions:
            self._consumer.seek(tp, stored[(tp.topic, tp.partition)])
        log.info("fold_partitions_positioned", group=self.group, partitions=len(partitions),
                 from_beginning=sum(1 for offset in stored.values() if offset == 0))

    async def _dead_letter(self, record: ConsumerRecord, error: str) -> None:
        """Copy the record as it was to the dead-letter topic, with why and where in
        headers (as `turnout_events.consumer.dead_letter` does). Sent before the batch
        commits: if the commit fails the record may be dead-lettered twice, never lost."""
        assert self._producer is not None
        headers = list(record.headers or ())
        headers += [(name, value.encode()) for name, value in (
            ("dead-letter-reason", "invalid"),
            ("dead-letter-error", error[:1000]),
            ("dead-letter-topic", record.topic),
            ("dead-letter-partition", str(record.partition)),
            ("dead-letter-offset", str(record.offset)),
            ("dead-letter-consumer-group", self.group),
        )]
        await self._producer.send_and_wait(
            self.topics.dead_letter, record.value if record.value is not None else b"",
            key=record.key, headers=headers)
        DEAD_LETTERED.inc()
        log.warning("consumer.dead_lettered", group=self.group, reason="invalid",
                    error=error[:300], topic=record.topic, partition=record.partition,
                    offset=record.offset)


class _Listener(ConsumerRebalanceListener):
    def __init__(self, owner: FoldConsumer) -> None:
        self.owner = owner

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        # Wait for the batch in flight to commit (or fail): its offsets are then stored
        # and the partitions' next owner starts right after it.
        async with self.owner.batch_lock:
            await self.owner.folder.abandon()
            self.owner.folder.release()

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        # Under the batch lock, so no batch folds while positions change under it.
        # Records fetched from the old positions may still arrive; the positions make
        # them no-ops.
        async with self.owner.batch_lock:
            await self.owner.folder.abandon()
            await self.owner.seek_to_stored(list(assigned))
