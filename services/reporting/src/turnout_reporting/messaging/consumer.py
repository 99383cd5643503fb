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
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable

import asyncpg
import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from prometheus_client import Counter, Histogram

from turnout_events.envelope import InvalidEvent
from turnout_events.registry import parse_payload
from turnout_events.serde import decode
from turnout_events.topics import TopicRegistry

from ..projections.fold import FoldResult
from ..projections.store import BatchItem, Position, apply_batch, stored_offsets
from ..settings import ReportingSettings

log = structlog.get_logger("turnout.reporting.consumer")

FOLDED = Counter("reporting_events_folded_total", "Records folded (committed) by reporting")
DEAD_LETTERED = Counter("reporting_events_dead_lettered_total",
                        "Records sent to the dead-letter topic by reporting")
BATCH_SECONDS = Histogram("reporting_fold_batch_seconds", "One batch: decode, fold, commit",
                          buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))

OnBatch = Callable[[FoldResult], Awaitable[None]]

# Back off between attempts when the database or the broker fails under us.
RETRY_INITIAL_DELAY = 0.2
RETRY_MAX_DELAY = 10.0


def group_id(topics: TopicRegistry) -> str:
    return f"{topics.namespace}.reporting"


def source_topics(topics: TopicRegistry) -> list[str]:
    return [topics.events("contacts"), topics.events("ballots"),
            topics.events("notifications")]


class FoldConsumer:
    def __init__(self, settings: ReportingSettings, topics: TopicRegistry,
                 pool: asyncpg.Pool, *, on_batch: OnBatch | None = None) -> None:
        self.settings = settings
        self.topics = topics
        self.group = group_id(topics)
        self.pool = pool
        self.on_batch = on_batch
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        self._task: asyncio.Task[None] | None = None
        # Held while a batch is folded and committed: a revocation waits for it, so the
        # next owner of a partition starts from offsets that are already stored.
        self._batch_lock = asyncio.Lock()
        # Records this instance applied and committed (not counting records it fetched
        # that were already applied): for tests and the benchmark.
        self.folded = 0

    async def start(self) -> None:
        self._producer = AIOKafkaProducer(
            bootstrap_servers=self.settings.kafka_bootstrap_servers,
            client_id="reporting-dead-letter", acks="all", enable_idempotence=True)
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=self.settings.kafka_bootstrap_servers,
            group_id=self.group,
            client_id="reporting",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            # A batch of a few thousand events commits well within this; the margin is
            # for a database that is slow for a while.
            max_poll_interval_ms=300_000,
            max_partition_fetch_bytes=4 * 1024 * 1024,
        )
        await self._producer.start()
        try:
            await self._consumer.start()
        except Exception:
            await self._producer.stop()
            raise
        self._consumer.subscribe(source_topics(self.topics), listener=_Listener(self))
        self._task = asyncio.create_task(self._run(), name="reporting-fold")
        log.info("fold_consumer_started", group=self.group)

    async def stop(self) -> None:
        if self._task is not None:
            # Not mid-batch: a cancelled commit would be safe (it rolls back and is
            # refolded) but wasteful.
            async with self._batch_lock:
                self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._consumer is not None:
            await self._consumer.stop()  # leaves the group: the partitions move on now
            self._consumer = None
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None
        log.info("fold_consumer_stopped", group=self.group, folded=self.folded)

    # -- the loop ---------------------------------------------------------------------

    async def _run(self) -> None:
        assert self._consumer is not None
        delay = RETRY_INITIAL_DELAY
        while True:
            fetched = await self._consumer.getmany(timeout_ms=self.settings.fold_poll_ms,
                                                   max_records=self.settings.fold_batch_size)
            if not fetched:
                continue
            try:
                async with self._batch_lock:
                    await self._fold(fetched)
                delay = RETRY_INITIAL_DELAY
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # Nothing was stored; go back to what was and try again. A fault in the
                # fold itself (a bug) holds the partition here, loudly, rather than
                # skipping events and reporting wrong numbers.
                log.exception("fold_batch_failed", group=self.group,
                              error=type(exc).__name__, retry_in_s=delay)
                await asyncio.sleep(delay)  # backoff between attempts, not a race fix
                delay = min(delay * 2, RETRY_MAX_DELAY)
                await self._rewind()

    async def _fold(self, fetched: dict[TopicPartition, list[ConsumerRecord]]) -> None:
        assert self._consumer is not None
        started = time.perf_counter()
        # Partitions revoked since the fetch belong to someone else now.
        assigned = self._consumer.assignment()
        items: list[BatchItem] = []
        for tp, records in fetched.items():
            if tp not in assigned:
                continue
            items.extend((Position(r.topic, r.partition, r.offset), r) for r in records)
        async with self.pool.acquire() as conn:
            result, new = await apply_batch(conn, self.group, items, self._decode)
        self.folded += new
        FOLDED.inc(new)
        BATCH_SECONDS.observe(time.perf_counter() - started)
        if result is not None and self.on_batch is not None:
            try:
                await self.on_batch(result)
            except Exception:
                log.exception("fold_on_batch_failed", group=self.group)

    async def _decode(self, record: ConsumerRecord):  # -> (Envelope, EventData) | None
        try:
            envelope = decode(record.value)
            payload = parse_payload(envelope)
        except InvalidEvent as exc:
            await self._dead_letter(record, str(exc))
            return None
        if payload is None:
            return None  # a type or version we do not know: ignored by contract
        return envelope, payload

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

    async def _rewind(self) -> None:
        """Seek every assigned partition back to its stored offset."""
        assert self._consumer is not None
        partitions = list(self._consumer.assignment())
        if partitions:
            await self.seek_to_stored(partitions)

    async def seek_to_stored(self, partitions: list[TopicPartition]) -> None:
        assert self._consumer is not None
        async with self.pool.acquire() as conn:
            stored = await stored_offsets(conn, self.group,
                                          [(tp.topic, tp.partition) for tp in partitions])
        fresh = []
        for tp in partitions:
            offset = stored.get((tp.topic, tp.partition))
            if offset is None:
                fresh.append(tp)
            else:
                self._consumer.seek(tp, offset)
        if fresh:
            await self._consumer.seek_to_beginning(*fresh)
        log.info("fold_partitions_positioned", group=self.group, partitions=len(partitions),
                 from_beginning=len(fresh))


class _Listener(ConsumerRebalanceListener):
    def __init__(self, owner: FoldConsumer) -> None:
        self.owner = owner

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        # Wait for the batch in flight to commit (or fail): its offsets are then stored
        # and the partitions' next owner starts right after it.
        async with self.owner._batch_lock:
            pass

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        # Under the batch lock, so no batch folds while positions change under it.
        # Records fetched from the old positions may still arrive; the stored offsets,
        # checked in the batch's transaction, make them no-ops.
        if assigned:
            async with self.owner._batch_lock:
                await self.owner.seek_to_stored(list(assigned))
