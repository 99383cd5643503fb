"""The live stream: one LISTEN connection per process fanned out to every stream client,
and each client's events built from the change feed in the caller's scope.

One listener, not one per client: a campaign has hundreds of screens and phones open
during a ballot, and a database connection each would exhaust PostgreSQL's connections
long before the web server noticed. The hub (`ChangeHub`) holds the one connection,
reads each committed feed row once, and hands it to the clients watching that ballot;
each client filters it to its caller's scope and renders it (clients with the same scope
share the rendering).

What a client receives (`turnout_events`), in `seq` order with `seq` as the event id:
- `snapshot` first, unless it resumes (`Last-Event-ID`) from a point the feed still
  holds: every row of every level in its scope, as of one `seq`;
- then `turnout` for every committed batch that changed something in its scope: the
  changed rows in the shape of `GET /v1/ballots/{id}/turnout`, and the changed hourly
  buckets (their net votes after the batch);
- a new `snapshot` when it may have missed something (it fell too far behind, the hub's
  connection was down longer than the feed keeps) or when the ballot itself changed (its
  threshold changes every row's votes needed).

No gap and no repeat: the client subscribes before it reads the feed, then skips live
entries it already read. The feed's `seq` is in commit order (projections/changes.py),
so "everything after N" is well defined.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg
import sqlalchemy as sa
import structlog
from prometheus_client import Counter, Gauge
from sse_starlette import ServerSentEvent

from turnout_kit.auth import Caller

from ..context import ReportingContext
from ..db.tables import ballots, turnout, turnout_changes
from ..projections.changes import CHANNEL
from . import queries

log = structlog.get_logger("turnout_reporting.stream")

STREAM_CLIENTS = Gauge("turnout_reporting_stream_clients",
                       "Server-sent event clients connected to this process.")
LISTENER_RECONNECTS = Counter("turnout_reporting_stream_listener_reconnects_total",
                              "Times the stream's LISTEN connection was lost and reopened.")

# Feed rows read per query, when the hub catches up and when a client replays.
FETCH_PAGE = 500
# Entries a client may fall behind by before it is sent a snapshot instead.
QUEUE_LIMIT = 1000
# With no notification for this long, the hub reads the feed anyway: it proves the
# connection is alive (a silently dropped TCP connection hears nothing forever) and
# catches anything a lost notification would have announced.
KEEPALIVE_S = 10.0
RETRY_INITIAL_S = 0.5
RETRY_MAX_S = 10.0
# How long a new client waits for the hub's connection before giving up (its browser
# then reconnects by itself).
LISTEN_WAIT_S = 30.0
# The reconnection delay EventSource is told to use.
RETRY_MS = 3000


@dataclass(slots=True)
class FeedEntry:
    seq: int
    ballot_id: uuid.UUID
    changes: Mapping[str, Any]
    # The ballot as it stood when the hub read the entry (None for replayed entries): a
    # batch that folded ballot-opened changes the threshold of every row, not only of
    # the rows it touched.
    info: queries.BallotInfo | None = None
    # The event as sent to each scope (and threshold): identical screens share one
    # rendering. Only touched in the event loop's thread.
    rendered: dict[tuple[Any, ...], str | None] = field(default_factory=dict)


class Resync:
    """Put in a client's queue when it may have missed entries: send a snapshot."""


RESYNC = Resync()


class Subscription:
    """One client's queue of feed entries for one ballot."""

    def __init__(self, ballot_id: uuid.UUID, limit: int) -> None:
        self.ballot_id = ballot_id
        self._limit = limit
        self._queue: asyncio.Queue[FeedEntry | Resync] = asyncio.Queue()

    def offer(self, item: FeedEntry | Resync) -> None:
        if self._queue.qsize() >= self._limit:
            # Too far behind to replay: drop what it has not read, and let it start
            # over from a snapshot (a slow phone must not hold memory without bound).
            while not self._queue.empty():
                self._queue.get_nowait()
            item = RESYNC
        self._queue.put_nowait(item)

    async def get(self) -> FeedEntry | Resync:
        return await self._queue.get()


class ChangeHub:
    """The process's one LISTEN connection on the change feed, fanned out.

    Started by its first subscriber and stopped when the last one leaves, so an idle
    instance holds no connection (and a test's app leaves none behind); `close()` stops
    it at shutdown. When the connection drops, it reconnects with backoff and reads what
    was committed meanwhile; if the feed no longer holds all of that, every client gets
    a snapshot.
    """

    def __init__(self, dsn: str, *, keepalive_s: float = KEEPALIVE_S,
                 retry_initial_s: float = RETRY_INITIAL_S,
                 retry_max_s: float = RETRY_MAX_S, queue_limit: int = QUEUE_LIMIT) -> None:
        self._dsn = dsn
        self.keepalive_s = keepalive_s
        self.retry_initial_s = retry_initial_s
        self.retry_max_s = retry_max_s
        self.queue_limit = queue_limit
        self._subscribers: dict[uuid.UUID, set[Subscription]] = defaultdict(set)
        self._task: asyncio.Task[None] | None = None
        self._listening = asyncio.Event()
        self._wake = asyncio.Event()
        # The last feed row handed out; None until the first connection reads the head.
        self.last_seq: int | None = None
        self.connection: asyncpg.Connection | None = None

    @property
    def clients(self) -> int:
        return sum(len(s) for s in self._subscribers.values())

    @contextlib.asynccontextmanager
    async def subscribe(self, ballot_id: uuid.UUID) -> AsyncIterator[Subscription]:
        subscription = Subscription(ballot_id, self.queue_limit)
        self._subscribers[ballot_id].add(subscription)
        STREAM_CLIENTS.inc()
        self._ensure_running()
        try:
            yield subscription
        finally:
            STREAM_CLIENTS.dec()
            watching = self._subscribers.get(ballot_id)
            if watching is not None:
                watching.discard(subscription)
                if not watching:
                    del self._subscribers[ballot_id]
            if not self._subscribers:
                self._stop()

    async def wait_listening(self, timeout: float = LISTEN_WAIT_S) -> bool:
        """Whether the hub is (or within `timeout` becomes) connected and listening.
        A client must not read the feed before: entries committed between its read
        and the hub's first look at the feed's head would reach neither."""
        try:
            async with asyncio.timeout(timeout):
                await self._listening.wait()
        except TimeoutError:
            return False
        return True

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _ensure_running(self) -> None:
        if self._task is None or self._task.done() or self._task.cancelling():
            # A fresh start: nobody was watching, so nobody needs what was committed
            # meanwhile; and a fresh event, so that a stopping predecessor's cannot
            # pass for this one's.
            self.last_seq = None
            self._listening = asyncio.Event()
            self._task = asyncio.create_task(self._run(self._listening),
                                             name="stream-listener")

    def _stop(self) -> None:
        # Not awaited: the last client is leaving from inside a cancelled response.
        # The task's `finally` closes the connection.
        if self._task is not None:
            self._task.cancel()
            self._task = None

    # -- the connection ----------------------------------------------------------------

    async def _run(self, listening: asyncio.Event) -> None:
        delay = self.retry_initial_s
        while True:
            conn: asyncpg.Connection | None = None
            try:
                conn = await asyncpg.connect(
                    self._dsn, server_settings={"application_name": "reporting-stream"})
                conn.add_termination_listener(lambda _conn: self._wake.set())
                await conn.add_listener(CHANNEL, self._on_notify)
                if self.last_seq is None:
                    self.last_seq = await conn.fetchval(
                        "SELECT coalesce(max(seq), 0) FROM turnout_changes")
                else:
                    await self._catch_up(conn)  # what was committed while we were away
                self.connection = conn
                listening.set()
                delay = self.retry_initial_s
                log.info("stream_listening", clients=self.clients)
                while not conn.is_closed():
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(self.keepalive_s):
                            await self._wake.wait()
                    self._wake.clear()
                    async with asyncio.timeout(max(self.keepalive_s, 5.0)):
                        await self._catch_up(conn)
                raise ConnectionError("the listening connection was closed")
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                LISTENER_RECONNECTS.inc()
                log.warning("stream_listener_lost", error=type(exc).__name__,
                            retry_in_s=delay, clients=self.clients)
            finally:
                listening.clear()
                if self.connection is conn:
                    self.connection = None
                if conn is not None:
                    conn.terminate()
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.retry_max_s)

    def _on_notify(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        try:
            seq = int(payload)
        except ValueError:
            seq = None
        # Equal: read already. Lower: the feed may have started over (see _catch_up).
        if seq is None or self.last_seq is None or seq != self.last_seq:
            self._wake.set()

    async def _catch_up(self, conn: asyncpg.Connection) -> None:
        """Hand out every feed row after the last one handed out."""
        assert self.last_seq is not None
        while True:
            rows = await conn.fetch(
                "SELECT seq, ballot_id, changes::text AS changes FROM turnout_changes "
                "WHERE seq > $1 ORDER BY seq LIMIT $2", self.last_seq, FETCH_PAGE)
            if not rows:
                newest = await conn.fetchval(
                    "SELECT coalesce(max(seq), 0) FROM turnout_changes")
                if newest < self.last_seq:
                    # The feed started over (a rebuild recreated it): everybody resyncs
                    # and the hub follows the new numbering.
                    self.last_seq = newest
                    self._broadcast_resync()
                return
            if rows[0]["seq"] > self.last_seq + 1:
                oldest = await conn.fetchval("SELECT min(seq) FROM turnout_changes")
                if oldest is not None and oldest > self.last_seq + 1:
                    # Rows after ours were pruned before we read them (or a rebuild
                    # started the feed over): nobody can replay, everybody resyncs.
                    self._broadcast_resync()
            infos = await _ballot_infos(conn, {r["ballot_id"] for r in rows
                                               if r["ballot_id"] in self._subscribers})
            for row in rows:
                watching = self._subscribers.get(row["ballot_id"])
                if watching:
                    entry = FeedEntry(row["seq"], row["ballot_id"], json.loads(row["changes"]),
                                      infos[row["ballot_id"]])
                    for subscription in list(watching):
                        subscription.offer(entry)
            self.last_seq = rows[-1]["seq"]
            if len(rows) < FETCH_PAGE:
                return

    def _broadcast_resync(self) -> None:
        for watching in self._subscribers.values():
            for subscription in watching:
                subscription.offer(RESYNC)


async def _ballot_infos(conn: asyncpg.Connection, ballot_ids: set[uuid.UUID]
                        ) -> dict[uuid.UUID, queries.BallotInfo]:
    """The watched ballots as they stand, one query per catch-up for all clients."""
    if not ballot_ids:
        return {}
    found = {r["ballot_id"]: queries.BallotInfo(
        r["ballot_id"], r["name"], r["turnout_threshold"], r["opens_at"], r["closes_at"],
        r["closed_at"]) for r in await conn.fetch(
            "SELECT ballot_id, name, turnout_threshold, opens_at, closes_at, closed_at "
            "FROM ballots WHERE ballot_id = ANY($1::uuid[])", list(ballot_ids))}
    return {b: found.get(b) or queries.BallotInfo(b, None, None, None, None, None)
            for b in ballot_ids}


# -- one client's events ---------------------------------------------------------------

def _scope_key(caller: Caller) -> tuple[Any, ...]:
    if caller.unscoped:
        return ("all",)
    return (caller.role.value, caller.branch_codes, caller.group_codes)


def _json(data: Any) -> str:
    return json.dumps(data, separators=(",", ":"), default=_json_default)


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    raise TypeError(f"not serialisable: {type(value).__name__}")


def ballot_view(info: queries.BallotInfo) -> dict[str, Any]:
    return {"ballot_id": info.ballot_id, "name": info.name, "threshold": info.threshold,
            "opens_at": info.opens_at, "closes_at": info.closes_at,
            "closed_at": info.closed_at}


def hour_view(bucket: Mapping[str, Any]) -> dict[str, Any]:
    unit, parent = queries.unit_of(bucket["level"], bucket)
    return {"level": bucket["level"], "unit": unit, "parent": parent,
            "hour": bucket["hour"], "votes": bucket["votes"]}


def render_changes(entry: FeedEntry, caller: Caller, threshold: float | None) -> str | None:
    """The `turnout` event's data for this caller, or None when nothing in the entry
    is in their scope."""
    key = (_scope_key(caller), threshold)
    if key in entry.rendered:
        return entry.rendered[key]
    rows = [queries.turnout_row(threshold, r) for r in entry.changes.get("rows", ())
            if queries.in_scope(caller, r["level"], r["group_code"], r["branch_code"])]
    hours = [hour_view(h) for h in entry.changes.get("hours", ())
             if queries.in_scope(caller, h["level"], h["group_code"], h["branch_code"])]
    data = None
    if rows or hours:
        queries.sort_rows(rows)
        data = _json({"ballot_id": entry.ballot_id, "seq": entry.seq, "rows": rows,
                      "hours": hours})
    entry.rendered[key] = data
    return data


def _replaces_everything(changes: Mapping[str, Any]) -> bool:
    """A feed row marked `reset` says the projections were replaced (a rebuild): every
    row the client holds is stale."""
    return bool(changes.get("reset"))


async def snapshot(ctx: ReportingContext, caller: Caller, ballot_id: uuid.UUID
                   ) -> tuple[int, list[dict[str, Any]], queries.BallotInfo]:
    """Every row of every level in the caller's scope, and the feed's `seq` they are
    as of, read in one REPEATABLE READ transaction: the fold writes its rows and its
    feed row together, so these rows are exactly the state after that `seq`.

    The ballot's scope is not checked again: `turnout_events` is only ever started for
    a ballot found in scope when the stream opened (once, not per snapshot). Should the
    caller's members all move away later, the rows in scope simply become none."""
    engine = ctx.engine
    if engine is None:
        raise RuntimeError("the reporting service has not started")
    async with engine.connect() as conn:
        conn = await conn.execution_options(isolation_level="REPEATABLE READ")
        async with conn.begin():
            seq = await conn.scalar(sa.select(sa.func.coalesce(sa.func.max(
                turnout_changes.c.seq), 0)))
            found = (await conn.execute(
                sa.select(turnout).where(turnout.c.ballot_id == ballot_id,
                                         turnout.c.eligible > 0,
                                         queries.any_level_in_scope(caller, turnout)))).all()
            # In the same transaction: the threshold the rows' votes needed are computed
            # with is the one as of `seq`.
            info = queries.BallotInfo.of(ballot_id, (await conn.execute(
                sa.select(ballots).where(ballots.c.ballot_id == ballot_id))).first())
    rows = [queries.turnout_row(info.threshold, r._mapping) for r in found]
    queries.sort_rows(rows)
    return int(seq or 0), rows, info


async def feed_after(ctx: ReportingContext, ballot_id: uuid.UUID, after: int,
                     limit: int = FETCH_PAGE) -> list[FeedEntry] | None:
    """The ballot's feed rows after `after` (up to `limit`), or None when the feed may
    no longer hold all of them (pruned past `after`, or `after` is from another feed)."""
    async with ctx.session() as session:
        found = (await session.execute(
            sa.select(turnout_changes.c.seq, turnout_changes.c.changes)
            .where(turnout_changes.c.ballot_id == ballot_id, turnout_changes.c.seq > after)
            .order_by(turnout_changes.c.seq).limit(limit))).all()
        # Checked after the read: pruning only ever deletes a prefix, so if nothing
        # after `after` is missing now, nothing was missing when the rows were read.
        oldest, newest = (await session.execute(
            sa.select(sa.func.min(turnout_changes.c.seq),
                      sa.func.max(turnout_changes.c.seq)))).one()
    if oldest is None or oldest > after + 1 or after > newest:
        return None
    return [FeedEntry(r.seq, ballot_id, r.changes) for r in found]


async def turnout_events(ctx: ReportingContext, hub: ChangeHub, caller: Caller,
                         info: queries.BallotInfo, *, last_event_id: int | None,
                         expires_at: float | None = None) -> AsyncIterator[ServerSentEvent]:
    """One client's events, until it disconnects (the response cancels this) or its
    token expires at `expires_at` (a Unix time): the browser then reconnects, is
    refused, and asks its user to sign in again.

    `info` is the ballot as `queries.ballot_info` found it for this caller: the scope
    check, made once before the stream opens, covers the snapshot and a resumption."""
    ballot_id = info.ballot_id
    ballot = info  # as the client's rows show it
    first = True

    def event(kind: str, seq: int, data: str) -> ServerSentEvent:
        nonlocal first
        retry = RETRY_MS if first else None
        first = False
        return ServerSentEvent(data=data, event=kind, id=str(seq), retry=retry)

    async def fresh_snapshot() -> tuple[int, ServerSentEvent]:
        nonlocal ballot
        seq, rows, ballot = await snapshot(ctx, caller, ballot_id)
        data = _json({"ballot": ballot_view(ballot), "seq": seq, "rows": rows})
        return seq, event("snapshot", seq, data)

    async with hub.subscribe(ballot_id) as subscription:
        if not await hub.wait_listening():
            log.warning("stream_listener_unavailable")
            return
        last = last_event_id
        # Resuming: replay what the client missed, while the feed still holds it (with
        # the ballot's threshold as it is now: the rows end as they are now).
        while last is not None:
            page = await feed_after(ctx, ballot_id, last)
            if page is None:
                last = None
                break
            for entry in page:
                if entry.seq <= last:
                    continue  # covered by a snapshot sent for an earlier entry
                if _replaces_everything(entry.changes):
                    last, sent = await fresh_snapshot()
                    yield sent
                    continue
                last = entry.seq
                data = render_changes(entry, caller, ballot.threshold)
                if data is not None:
                    yield event("turnout", entry.seq, data)
            if len(page) < FETCH_PAGE:
                break
        if last is None:
            last, sent = await fresh_snapshot()
            yield sent

        while True:
            try:
                async with asyncio.timeout(
                        None if expires_at is None else max(0.0, expires_at - time.time())):
                    item = await subscription.get()
            except TimeoutError:
                log.info("stream_token_expired")
                return
            if isinstance(item, Resync):
                last, sent = await fresh_snapshot()
                yield sent
                continue
            if item.seq <= last:
                continue  # read already, from the feed or in the snapshot
            if _replaces_everything(item.changes) or (
                    item.info is not None and item.info != ballot):
                # The ballot changed (ballot-opened folded: a threshold for every row).
                last, sent = await fresh_snapshot()
                yield sent
                continue
            last = item.seq
            data = render_changes(item, caller, ballot.threshold)
            if data is not None:
                yield event("turnout", item.seq, data)
