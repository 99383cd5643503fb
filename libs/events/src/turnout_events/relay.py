"""The outbox relay: publishes committed outbox rows to Kafka, in order, and marks them.

- Wakes on `LISTEN turnout_outbox` (the NOTIFY sent by `add_events` on commit), and polls
  every `poll_interval` seconds in case a notification was missed.
- Publishes with an idempotent producer (`acks=all`); rows are marked published only after
  the broker acknowledged them, so a crash republishes (consumers dedupe by event id) but
  never loses.
- While the broker is down it backs off exponentially (capped), without busy looping;
  HTTP commands keep writing to the outbox meanwhile, and the backlog drains on return.
- Only one relay per database publishes at a time: a session-level advisory lock elects a
  leader. Two relays could each take different rows with SKIP LOCKED, but then two rows of
  one key could race each other to the broker; one publisher keeps per-key order simple.
- Batches are published strictly one after another, but the work around them overlaps,
  because a row's time to the broker is what the live dashboard waits for (a vote should
  show on it within 150 ms): the next batch is read while the broker acknowledges this
  one (if a notification says there is one: no read is spent on finding nothing), and
  this one is marked published while the next is sent. A batch is sent the moment it is
  read (`linger_ms` 0): it is all handed to the producer at once, so the producer has
  nothing to wait for.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
import zlib
from dataclasses import dataclass

import asyncpg
import structlog
from aiokafka import AIOKafkaProducer
from prometheus_client import Counter, Gauge

from .database_url import asyncpg_dsn
from .serde import event_headers
from .tables import OUTBOX_CHANNEL

log = structlog.get_logger("turnout.relay")

PUBLISHED = Counter("outbox_events_published_total", "Outbox events published to Kafka",
                    ["service"])
BACKLOG = Gauge("outbox_backlog", "Outbox events committed but not yet published", ["service"])
PUBLISH_FAILURES = Counter("outbox_publish_failures_total",
                           "Failed attempts to publish an outbox batch", ["service"])


@dataclass
class RelaySettings:
    batch_size: int = 5000
    poll_interval: float = 1.0
    standby_interval: float = 2.0
    backoff_initial: float = 0.2
    backoff_max: float = 15.0
    purge_after_seconds: float = 24 * 3600.0
    # The producer's wait for more records before sending a batch. The relay hands it a
    # whole batch without yielding in between, so waiting only delays it (5 ms cost 5 ms
    # per vote on its way to the dashboard, and batched nothing).
    linger_ms: int = 0


# A range of outbox seqs (lo, hi) and how many rows of it a batch holds; (0, -1, 0) is none.
Span = tuple[int, int, int]
NO_SPAN: Span = (0, -1, 0)


def span(seqs: list[int]) -> Span:
    return (seqs[0], seqs[-1], len(seqs)) if seqs else NO_SPAN


def hides_nothing(s: Span) -> bool:
    """Whether excluding the span's range can hide a row not in its batch: a gap in it may
    be a row that committed after the batch was read."""
    return s[1] - s[0] + 1 == s[2]


class OutboxRelay:
    def __init__(self, database_url: str, bootstrap_servers: str, *, service: str,
                 settings: RelaySettings | None = None) -> None:
        self.dsn = asyncpg_dsn(database_url)
        self.bootstrap_servers = bootstrap_servers
        self.service = service
        self.settings = settings or RelaySettings()
        # One lock id per service: two services sharing a database (tests, small installs)
        # each get their own leader.
        self.lock_id = zlib.crc32(f"turnout-outbox-relay:{service}".encode())
        self._stop = asyncio.Event()
        self._wake = asyncio.Event()
        self._producer: AIOKafkaProducer | None = None
        self._task: asyncio.Task | None = None
        self.is_leader = False
        self._server_settings = {"application_name": f"{service}-outbox-relay"}
        self._last_purge = self._last_backlog = 0.0
        self.published = 0
        self.publish_failures = 0

    # -- lifecycle -------------------------------------------------------------------
    def start(self) -> asyncio.Task:
        self._task = asyncio.create_task(self.run(), name=f"outbox-relay-{self.service}")
        return self._task

    async def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._close_producer()

    async def run(self) -> None:
        backoff = _Backoff(self.settings.backoff_initial, self.settings.backoff_max)
        while not self._stop.is_set():
            try:
                conn = await asyncpg.connect(self.dsn, server_settings=self._server_settings)
            except (OSError, asyncpg.PostgresError) as exc:
                log.warning("relay.database_unavailable", error=type(exc).__name__)
                await self._sleep(backoff.next())
                continue
            try:
                if await conn.fetchval("SELECT pg_try_advisory_lock($1)", self.lock_id):
                    self.is_leader = True
                    log.info("relay.leader", service=self.service)
                    backoff.reset()
                    await self._lead(conn)
                else:
                    await self._sleep(self.settings.standby_interval)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("relay.database_error", error=type(exc).__name__)
                await self._sleep(backoff.next())
            finally:
                self.is_leader = False
                with contextlib.suppress(Exception):
                    await conn.close(timeout=5)
        await self._close_producer()

    # -- leading ---------------------------------------------------------------------
    async def _lead(self, conn: asyncpg.Connection) -> None:
        await conn.add_listener(OUTBOX_CHANNEL, self._on_notify)
        # Marking a batch published runs on a second connection while the next batch is
        # being sent; only one mark is outstanding. Reads skip the seq ranges of the batch
        # in flight and of the one being marked.
        mark_conn = await asyncpg.connect(self.dsn, server_settings=self._server_settings)
        marking: asyncio.Task | None = None
        marked = NO_SPAN  # the batch `marking` marks
        # The next batch, read while the broker acknowledged the last one; [] when there
        # was nothing to read, None when it is not known.
        ahead: list[asyncpg.Record] | None = None
        # Whether the last read may have left rows behind: it was cut at the batch size,
        # or a range it skipped has gaps (rows that committed after theirs were read).
        left_behind = False
        backoff = _Backoff(self.settings.backoff_initial, self.settings.backoff_max)
        self._last_purge = self._last_backlog = 0.0
        try:
            while not self._stop.is_set():
                if ahead:
                    rows, ahead = ahead, None
                else:
                    idle = ahead is not None and not left_behind and not self._wake.is_set()
                    ahead = None
                    if marking is not None and (idle or marking.done()):
                        await marking
                        marking, marked = None, NO_SPAN
                    if idle:
                        # Nothing committed since the last read, which hid nothing.
                        await self._idle(conn)
                        continue
                    self._wake.clear()
                    rows = await self._fetch(conn, marked, NO_SPAN)
                    left_behind = self._left_behind(rows, marked)
                    if not rows:
                        if marking is not None:
                            await marking  # then look again, with nothing skipped
                            marking, marked = None, NO_SPAN
                            continue
                        await self._idle(conn)
                        continue
                await self._measure_backlog(conn)
                sent = span([r["seq"] for r in rows])
                try:
                    acks = await self._send(rows)
                except Exception as exc:  # the broker is away or refused: back off, keep rows
                    await self._publish_failed(exc, len(rows), backoff)
                    continue
                # While the broker acknowledges, read the next batch, if there can be one:
                # a notification came since the last read began, or it left rows behind.
                ahead = []
                try:
                    if self._wake.is_set() or left_behind:
                        self._wake.clear()
                        ahead = await self._fetch(conn, sent, marked)
                        left_behind = self._left_behind(ahead, sent, marked)
                finally:
                    # Every row acknowledged (acks=all) before any is marked.
                    outcome = await asyncio.gather(*acks, return_exceptions=True)
                failure = next((o for o in outcome if isinstance(o, BaseException)), None)
                if failure is not None:
                    ahead = None  # read with this batch skipped: read again
                    await self._publish_failed(failure, len(rows), backoff)
                    continue
                backoff.reset()
                if marking is not None:
                    await marking
                marking = asyncio.create_task(self._mark(mark_conn, [r["seq"] for r in rows]))
                marked = sent
            if marking is not None:
                await marking
        finally:
            if marking is not None and not marking.done():
                marking.cancel()
            with contextlib.suppress(Exception):
                await mark_conn.close(timeout=5)

    def _left_behind(self, rows: list[asyncpg.Record], *skipped: Span) -> bool:
        return len(rows) == self.settings.batch_size or not all(map(hides_nothing, skipped))

    async def _fetch(self, conn: asyncpg.Connection, skip: Span, also_skip: Span
                     ) -> list[asyncpg.Record]:
        """The next unpublished rows in seq order, outside the two skipped ranges."""
        return await conn.fetch(
            "SELECT seq, topic, key, payload, event_id, event_type, event_version, "
            "correlation_id FROM outbox WHERE published_at IS NULL "
            "AND seq NOT BETWEEN $2 AND $3 AND seq NOT BETWEEN $4 AND $5 "
            "ORDER BY seq LIMIT $1",
            self.settings.batch_size, skip[0], skip[1], also_skip[0], also_skip[1])

    async def _idle(self, conn: asyncpg.Connection) -> None:
        """Nothing to publish: the chores, then wait for a notification (or the poll)."""
        now = time.monotonic()
        if now - self._last_backlog > 5:
            BACKLOG.labels(self.service).set(0)
            self._last_backlog = now
        if now - self._last_purge > 600:
            await self._purge(conn)
            self._last_purge = now
        await self._wait_for_work(self.settings.poll_interval)

    async def _measure_backlog(self, conn: asyncpg.Connection) -> None:
        now = time.monotonic()
        if now - self._last_backlog > 5:
            BACKLOG.labels(self.service).set(await conn.fetchval(
                "SELECT count(*) FROM outbox WHERE published_at IS NULL"))
            self._last_backlog = now

    async def _publish_failed(self, exc: BaseException, pending: int,
                              backoff: _Backoff) -> None:
        PUBLISH_FAILURES.labels(self.service).inc()
        self.publish_failures += 1
        delay = backoff.next()
        log.warning("relay.publish_failed", error=type(exc).__name__, pending=pending,
                    retry_in=round(delay, 2))
        await self._close_producer()
        await self._sleep(delay)

    async def _mark(self, conn: asyncpg.Connection, seqs: list[int]) -> None:
        await conn.execute(
            "UPDATE outbox SET published_at = now() WHERE seq = ANY($1::bigint[])", seqs)
        self.published += len(seqs)
        PUBLISHED.labels(self.service).inc(len(seqs))

    async def _send(self, rows: list[asyncpg.Record]) -> list[asyncio.Future]:
        """Hand every row to the producer; the futures of their acknowledgements."""
        producer = await self._ensure_producer()
        futures = []
        for r in rows:
            headers = event_headers(r["event_id"], r["event_type"], r["event_version"],
                                    r["correlation_id"])
            futures.append(await producer.send(
                r["topic"], value=bytes(r["payload"]), key=r["key"].encode(), headers=headers))
        return futures

    async def _ensure_producer(self) -> AIOKafkaProducer:
        if self._producer is None:
            producer = AIOKafkaProducer(
                bootstrap_servers=self.bootstrap_servers,
                enable_idempotence=True,
                acks="all",
                linger_ms=self.settings.linger_ms,
                request_timeout_ms=15000,
                max_batch_size=256 * 1024,
                client_id=f"{self.service}-outbox-relay",
            )
            try:
                await producer.start()
            except Exception:
                await producer.stop()
                raise
            self._producer = producer
        return self._producer

    async def _close_producer(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(producer.stop(), 10)

    async def _purge(self, conn: asyncpg.Connection) -> None:
        deleted = await conn.execute(
            "DELETE FROM outbox WHERE published_at < now() - make_interval(secs => $1)",
            self.settings.purge_after_seconds,
        )
        log.debug("relay.purged", result=deleted)

    # -- waiting ---------------------------------------------------------------------
    def _on_notify(self, *_args: object) -> None:
        self._wake.set()

    async def _wait_for_work(self, timeout: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout)

    async def _sleep(self, seconds: float) -> None:
        # Stoppable sleep: returns early when the relay is asked to stop.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), seconds)


class _Backoff:
    def __init__(self, initial: float, maximum: float) -> None:
        self.initial, self.maximum, self.current = initial, maximum, initial

    def next(self) -> float:
        delay = self.current * random.uniform(0.8, 1.2)
        self.current = min(self.current * 2, self.maximum)
        return delay

    def reset(self) -> None:
        self.current = self.initial
