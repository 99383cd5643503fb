"""Rebuilding the projections: every event refolded from the beginning of the topics
into shadow tables while the old numbers keep being served, then swapped in at once.

    rebuild_id = await start_rebuild(ctx, requested_by=caller.actor)  # or RebuildRunning
    status = await rebuild_status(ctx, rebuild_id)                     # None if unknown

How, and why nothing is lost or counted twice:

1. The shadow: a schema `reporting_rebuild` with empty copies of the fold's tables
   (`LIKE ... INCLUDING ALL`), `consumer_offsets` included.
2. Folding: the fold's own `Folder` (same decoder, fold and store) on connections whose
   search_path is the shadow schema, fed by a consumer that assigns itself every
   partition from the beginning. Its offsets go into the shadow's `consumer_offsets`
   under the live fold's group, so that once swapped in they are where the live fold
   stands. It is a first fold of everything: fresh partitions (no loads), aligned in
   publish time, and with `synchronous_commit` off — a crash can only lose shadow
   batches nobody has seen, with their shadow offsets, and fails the rebuild.
3. Catching up: once the shadow is within a batch of the topics' ends, the swap's
   transaction locks the live `consumer_offsets` (EXCLUSIVE: the numbers can still be
   read, but no fold — of this instance or another — can commit a batch), reads where
   the live fold stands, and the shadow folds on until it stands there too (or beyond:
   then the numbers step forward, never back).
4. The swap, in that transaction: the live tables move to a retired schema and the
   shadow's take their place; a change-feed row per ballot marked `reset` carries the
   new numbers to stream clients; the retired tables are dropped. Readers see the old
   tables up to the commit and the new ones after it.
5. After: this instance's fold, paused from step 3, starts again from the new stored
   offsets. Another instance's fold, whose commit was waiting on the lock, finds that
   the offsets table is no longer the one its positions came from (store.commit_batch
   checks its oid) and goes back to the stored offsets: deltas folded from the old
   states never reach the new tables.

One at a time: the coordinating instance holds a session advisory lock for the whole
run. If it dies, the lock goes with its connection, its row says `folding` or
`swapping` until the next rebuild marks it failed, and the shadow schema is dropped
by the next rebuild (nothing was swapped: the live numbers are as they were).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from dataclasses import dataclass
from datetime import datetime

import asyncpg
import structlog
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

from turnout_events.database_url import asyncpg_dsn
from turnout_kit.collector import CollectorPause

from ..context import ReportingContext
from ..messaging.consumer import Prefetch, align, consumer_options, group_id, source_topics
from ..projections.changes import record_reset
from ..projections.folder import Folder
from ..projections.store import fold_pool

log = structlog.get_logger("turnout.reporting.rebuild")

REBUILD_LOCK = 0x72656275696C64  # "rebuild": pg_advisory_lock key, one rebuild at a time
SHADOW = "reporting_rebuild"
RETIRED = "reporting_retired"
# The fold's tables: everything a rebuild replaces. (Not the change feed: its seqs go on.)
TABLES = ("member_states", "ballot_members", "ballots", "turnout", "turnout_hourly",
          "consumer_offsets")
RUNNING = ("folding", "swapping")
PROGRESS_EVERY_S = 0.5
# The swap's lock stops every fold's commits while the shadow folds its last records:
# if the shadow cannot get there in this long (Kafka away), the rebuild gives up.
CATCH_UP_TIMEOUT_S = 120.0
# Taking the live tables for the swap (see Rebuild._lock_live_tables): each attempt waits
# this long, under PostgreSQL's deadlock_timeout (1 s by default), and the attempts give
# up after the second figure.
SWAP_LOCK_WAIT_MS = 200
SWAP_LOCK_TIMEOUT_S = 60.0


class RebuildRunning(Exception):
    def __init__(self, rebuild_id: uuid.UUID | None) -> None:
        super().__init__("a rebuild is already running")
        self.rebuild_id = rebuild_id


@dataclass(frozen=True)
class RebuildStatus:
    rebuild_id: uuid.UUID
    state: str  # folding, swapping, done, failed
    requested_by: str
    events_folded: int
    events_total: int
    error: str | None
    started_at: datetime
    updated_at: datetime
    finished_at: datetime | None


async def start_rebuild(ctx: ReportingContext, requested_by: str) -> uuid.UUID:
    """Start a rebuild in this instance; raises `RebuildRunning` if one runs anywhere."""
    settings = ctx.settings
    conn = await asyncpg.connect(asyncpg_dsn(settings.database_url),
                                 server_settings={"application_name": "reporting-rebuild"})
    try:
        if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", REBUILD_LOCK):
            raise RebuildRunning(await conn.fetchval(
                "SELECT rebuild_id FROM rebuilds WHERE state = ANY($1::text[]) "
                "ORDER BY started_at DESC LIMIT 1", list(RUNNING)))
        # Holding the lock, no other rebuild runs: a row that says one does was cut short.
        await conn.execute(
            "UPDATE rebuilds SET state = 'failed', error = 'interrupted', "
            "finished_at = now(), updated_at = now() WHERE state = ANY($1::text[])",
            list(RUNNING))
        rebuild_id = uuid.uuid4()
        await conn.execute("INSERT INTO rebuilds (rebuild_id, state, requested_by) "
                           "VALUES ($1, 'folding', $2)", rebuild_id, requested_by)
    except BaseException:
        await conn.close()
        raise
    ctx.rebuild = asyncio.create_task(Rebuild(ctx, rebuild_id, conn).run(),
                                      name=f"reporting-rebuild-{rebuild_id}")
    log.info("rebuild_started", rebuild_id=str(rebuild_id), requested_by=requested_by)
    return rebuild_id


async def rebuild_status(ctx: ReportingContext, rebuild_id: uuid.UUID) -> RebuildStatus | None:
    conn = await asyncpg.connect(asyncpg_dsn(ctx.settings.database_url))
    try:
        row = await conn.fetchrow(
            "SELECT rebuild_id, state, requested_by, events_folded, events_total, error, "
            "started_at, updated_at, finished_at FROM rebuilds WHERE rebuild_id = $1",
            rebuild_id)
    finally:
        await conn.close()
    return RebuildStatus(**dict(row)) if row is not None else None


class Rebuild:
    """One run, from the shadow's creation to the swap (see the module docstring)."""

    def __init__(self, ctx: ReportingContext, rebuild_id: uuid.UUID,
                 conn: asyncpg.Connection) -> None:
        self.ctx = ctx
        self.settings = ctx.settings
        self.rebuild_id = rebuild_id
        self.conn = conn  # holds the lock; keeps the row up to date
        self.group = group_id(ctx.topics)
        self.live = ""  # the live tables' schema
        self._pool: asyncpg.Pool | None = None
        self._kafka: AIOKafkaConsumer | None = None
        self._folder: Folder | None = None
        self._prefetch: Prefetch | None = None
        # Automatic garbage collection off while folding, as in the live fold, and a
        # full collection every 10 s (the default): a rebuild runs in the service
        # process, beside its requests.
        self._collector = CollectorPause()
        self._reported = 0.0
        self.skipped = 0  # invalid records (dead-lettered by the live fold already)

    async def run(self) -> None:
        state, error = "failed", None
        try:
            await self._make_shadow()
            await self._start_folding()
            await self._fold_to_the_end()
            await self._swap()
            state = "done"
        except asyncio.CancelledError:
            error = "interrupted"
            raise
        except Exception as exc:
            error = type(exc).__name__
            log.exception("rebuild_failed", rebuild_id=str(self.rebuild_id), error=error)
        finally:
            await self._stop_folding()
            await self._finish(state, error)
        log.info("rebuild_finished", rebuild_id=str(self.rebuild_id), state=state,
                 skipped_invalid=self.skipped)

    # -- the shadow ---------------------------------------------------------------------

    async def _make_shadow(self) -> None:
        conn = self.conn
        self.live = await conn.fetchval("SELECT current_schema()")
        async with conn.transaction():
            # Left by a rebuild that died: nothing of it was swapped in.
            await conn.execute(f"DROP SCHEMA IF EXISTS {SHADOW} CASCADE")
            await conn.execute(f"DROP SCHEMA IF EXISTS {RETIRED} CASCADE")
            await conn.execute(f"CREATE SCHEMA {SHADOW}")
            for table in TABLES:
                await conn.execute(f"CREATE TABLE {SHADOW}.{table} "
                                   f"(LIKE {self.live}.{table} INCLUDING ALL)")
                # LIKE copies columns, constraints and indexes, not storage parameters
                # (the fold's fillfactor).
                options = await conn.fetchval(
                    "SELECT reloptions FROM pg_class WHERE oid = $1::regclass",
                    f"{self.live}.{table}")
                if options:
                    await conn.execute(
                        f"ALTER TABLE {SHADOW}.{table} SET ({', '.join(options)})")

    async def _start_folding(self) -> None:
        settings = self.settings
        self._pool = await fold_pool(settings.database_url, "reporting-rebuild-fold",
                                     search_path=SHADOW, durable=False)
        self._kafka = AIOKafkaConsumer(**consumer_options(settings), group_id=None,
                                       client_id="reporting-rebuild")
        await self._kafka.start()
        topics = source_topics(self.ctx.topics)
        await self._kafka.topics()  # the cluster's metadata, with every topic's partitions
        partitions = []
        for topic in topics:
            numbers = self._kafka.partitions_for_topic(topic) or range(
                self.ctx.topics.partitions)
            partitions += [TopicPartition(topic, p) for p in sorted(numbers)]
        self._kafka.assign(partitions)
        self._folder = Folder(self._pool, self.group, topics, self._skip, feed=False,
                              recent_limit=settings.fold_recent_states)
        stored = await self._folder.own([(tp.topic, tp.partition) for tp in partitions])
        for tp in partitions:
            self._kafka.seek(tp, stored[(tp.topic, tp.partition)])
        self._prefetch = Prefetch(self._kafka, self._folder, settings)
        self._collector.start()
        log.info("rebuild_folding", rebuild_id=str(self.rebuild_id), partitions=len(partitions))

    async def _skip(self, record: ConsumerRecord, error: str) -> None:
        # The live fold dead-lettered it when it first came; once is enough.
        self.skipped += 1

    async def _step(self) -> None:
        """Fetch, fold and start committing one batch (the previous one committed)."""
        kafka, folder, prefetch = self._kafka, self._folder, self._prefetch
        assert kafka is not None and folder is not None and prefetch is not None
        _, fetched = await prefetch.next()  # no seek after the first: all usable
        batch = await folder.prepare(fetched) if fetched else None
        await folder.settle()
        if batch is not None:
            folder.start_commit(batch)
        align(kafka, folder, self.settings.fold_align_ms)
        await self._report()

    def _lag(self) -> int | None:
        """Records between the shadow's positions and the topics' ends (None until the
        ends of every partition are known)."""
        kafka, folder = self._kafka, self._folder
        assert kafka is not None and folder is not None
        lag = 0
        for tp in kafka.assignment():
            end = kafka.highwater(tp)
            if end is None:
                return None
            lag += max(0, end - folder.positions.get((tp.topic, tp.partition), 0))
        return lag

    async def _fold_to_the_end(self) -> None:
        while True:
            lag = self._lag()
            if lag is not None and lag <= self.settings.fold_batch_size:
                return
            await self._step()

    # -- the swap -----------------------------------------------------------------------

    async def _swap(self) -> None:
        live_fold = self.ctx.consumer
        if live_fold is not None:
            await live_fold.pause()
        try:
            swap = await asyncpg.connect(
                asyncpg_dsn(self.settings.database_url),
                server_settings={"application_name": "reporting-rebuild-swap"})
            try:
                async with swap.transaction():
                    await swap.execute(
                        f"LOCK TABLE {self.live}.consumer_offsets IN EXCLUSIVE MODE")
                    await self._set_state("swapping")
                    await self._catch_up(swap)
                    await self._replace(swap)
            finally:
                await swap.close()
            log.info("rebuild_swapped", rebuild_id=str(self.rebuild_id))
            if live_fold is not None:
                await live_fold.restart_from_stored()
        finally:
            if live_fold is not None:
                live_fold.resume()

    async def _catch_up(self, swap: asyncpg.Connection) -> None:
        """Fold the shadow up to where the live fold stands (now it cannot move)."""
        folder = self._folder
        assert folder is not None
        live = {(r["topic"], r["partition"]): r["next_offset"] for r in await swap.fetch(
            f'SELECT topic, "partition", next_offset FROM {self.live}.consumer_offsets '
            'WHERE "group" = $1', self.group)}
        deadline = time.monotonic() + CATCH_UP_TIMEOUT_S
        while any(folder.positions.get(key, offset) < offset for key, offset in live.items()):
            if time.monotonic() > deadline:
                raise TimeoutError("the shadow did not reach the live fold's position")
            await self._step()
        await folder.settle()  # the last shadow batch is committed
        await self._report(force=True)

    async def _lock_live_tables(self, swap: asyncpg.Connection) -> None:
        """Every live table, exclusively, all at once or none: reads of the numbers take
        several of them (a ballot's row and its turnout rows), in whatever order their
        plan names them; a swap that held one table while it waited for another could
        wait on a read that waits on it — a deadlock, which PostgreSQL would end by
        failing one side. So each attempt waits at most SWAP_LOCK_WAIT for the lot
        (well under the server's deadlock check), and if it cannot have them all it
        lets go of what it took (a savepoint) and tries again shortly."""
        tables = ", ".join(f"{self.live}.{table}" for table in TABLES)
        deadline = time.monotonic() + SWAP_LOCK_TIMEOUT_S
        delay = 0.05
        while True:
            try:
                async with swap.transaction():  # a savepoint: a failed try takes nothing
                    await swap.execute(f"SET LOCAL lock_timeout = '{SWAP_LOCK_WAIT_MS}ms'")
                    await swap.execute(f"LOCK TABLE {tables} IN ACCESS EXCLUSIVE MODE")
                await swap.execute("SET LOCAL lock_timeout = 0")
                return
            except asyncpg.LockNotAvailableError:
                if time.monotonic() > deadline:
                    raise TimeoutError("the live tables stayed busy; nothing was swapped"
                                       ) from None
                await asyncio.sleep(delay)  # backoff between attempts, not a race fix
                delay = min(delay * 2, 1.0)

    async def _replace(self, swap: asyncpg.Connection) -> None:
        live = self.live
        await self._lock_live_tables(swap)
        await swap.execute(f"CREATE SCHEMA {RETIRED}")
        for table in TABLES:
            await swap.execute(f"ALTER TABLE {live}.{table} SET SCHEMA {RETIRED}")
            await swap.execute(f"ALTER TABLE {SHADOW}.{table} SET SCHEMA {live}")
        # Every ballot either side knows: one the rebuild no longer has is reset to empty.
        ballots = [r[0] for r in await swap.fetch(
            f"SELECT ballot_id FROM {live}.turnout UNION SELECT ballot_id FROM {live}.ballots "
            f"UNION SELECT ballot_id FROM {RETIRED}.turnout "
            f"UNION SELECT ballot_id FROM {RETIRED}.ballots")]
        await record_reset(swap, ballots)
        await swap.execute(f"DROP SCHEMA {RETIRED} CASCADE")
        await swap.execute(f"DROP SCHEMA {SHADOW} CASCADE")

    # -- bookkeeping --------------------------------------------------------------------

    async def _stop_folding(self) -> None:
        await self._collector.stop()
        if self._prefetch is not None:
            self._prefetch.cancel()
        if self._folder is not None:
            with contextlib.suppress(Exception):
                await self._folder.settle()
        if self._kafka is not None:
            with contextlib.suppress(Exception):
                await self._kafka.stop()
        if self._pool is not None:
            with contextlib.suppress(Exception):
                await self._pool.close()

    async def _report(self, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._reported < PROGRESS_EVERY_S:
            return
        self._reported = now
        kafka, folder = self._kafka, self._folder
        assert kafka is not None and folder is not None
        total = sum(end for tp in kafka.assignment()
                    if (end := kafka.highwater(tp)) is not None)
        folded = sum(folder.positions.values())
        await self.conn.execute(
            "UPDATE rebuilds SET events_folded = $2::bigint, "
            "events_total = GREATEST($3::bigint, $2::bigint), "
            "updated_at = now() WHERE rebuild_id = $1", self.rebuild_id, folded, total)

    async def _set_state(self, state: str) -> None:
        await self.conn.execute("UPDATE rebuilds SET state = $2, updated_at = now() "
                                "WHERE rebuild_id = $1", self.rebuild_id, state)

    async def _finish(self, state: str, error: str | None) -> None:
        conn = self.conn
        try:
            if state != "done":
                # Nothing was swapped in (the swap is one transaction): drop the shadow.
                await conn.execute(f"DROP SCHEMA IF EXISTS {SHADOW} CASCADE")
            await conn.execute(
                "UPDATE rebuilds SET state = $2::text, error = $3, finished_at = now(), "
                "updated_at = now(), events_total = CASE WHEN $2::text = 'done' "
                "THEN events_folded ELSE events_total END "
                "WHERE rebuild_id = $1", self.rebuild_id, state, error)
        except Exception:
            log.exception("rebuild_bookkeeping_failed", rebuild_id=str(self.rebuild_id))
        finally:
            with contextlib.suppress(Exception):
                await conn.execute("SELECT pg_advisory_unlock($1)", REBUILD_LOCK)
            await conn.close()
