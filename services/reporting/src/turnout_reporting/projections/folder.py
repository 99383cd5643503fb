"""The fold's batch pipeline: records in, one transaction per batch out, with one batch
committing while the next is prepared.

    folder = Folder(pool, group, topics, dead_letter)
    await folder.own(partitions)        # from their stored offsets
    batch = await folder.prepare(fetched)  # load what the keys name; decode and fold
    await folder.settle()               # the batch before it committed (or raise)
    folder.start_commit(batch)          # commit it in the background

Not Kafka-aware beyond the records it is handed: the fold consumer
(`messaging/consumer.py`) and a rebuild (`service/rebuild.py`) feed it what they fetch.

Batches overlap: while one batch commits, the next is fetched, decoded and folded — from
the committing batch's resulting states for the members it changed (kept in memory),
and from the database for everyone else (whom the committing batch does not write). It
is committed only once the one before it has, and its transaction checks that the
stored offsets are where that one left them, so the overlap changes no guarantee.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from operator import attrgetter

import asyncpg
import structlog
from aiokafka import ConsumerRecord, TopicPartition
from prometheus_client import Counter, Histogram

from turnout_events.envelope import InvalidEvent

from .decode import Event, EventDecoder
from .fold import FoldResult, MemberStates, fold
from .store import (
    PartitionKey,
    Stored,
    commit_batch,
    load_states,
    stored_member_ids,
    take_offsets,
)

log = structlog.get_logger("turnout.reporting.folder")

FOLDED = Counter("reporting_events_folded_total", "Records folded (committed) by reporting")
BATCH_SECONDS = Histogram("reporting_fold_batch_seconds", "One batch: decode, fold, commit",
                          buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))

# Up to this many stored states, a folder taking partitions that others folded reads
# every stored member id rather than asking about each member it meets (StoredMembers):
# on a first fold, partitions change hands while the fold processes and instances join,
# and most members met after that have no state yet.
FRESH_LOAD_LIMIT = 250_000

_RECORD_KEY = attrgetter("key")
MISKEYED = ("the record's key is not the event's key: reporting folds a member's events "
            "from the partition of their key, as the publishing service's relay sends them")


def _record_keys(records: list[ConsumerRecord]) -> list[str]:
    """The records' keys as text ('' for a record without one, or one not UTF-8: no
    event has that key, so its record is dead-lettered)."""
    try:
        return list(map(bytes.decode, map(_RECORD_KEY, records)))  # in C
    except (TypeError, UnicodeDecodeError):
        return [key.decode(errors="replace") if isinstance(key, bytes) else ""
                for key in map(_RECORD_KEY, records)]

OnBatch = Callable[[FoldResult], Awaitable[None]]
DeadLetter = Callable[[ConsumerRecord, str], Awaitable[None]]
Fetched = Mapping[TopicPartition, list[ConsumerRecord]]


@dataclass
class Batch:
    """A batch folded and ready to commit."""

    result: FoldResult
    expected: Stored  # every owned partition, at its stored offset
    ends: dict[PartitionKey, int]  # the same, after this batch
    records: int  # records it moves past (including ignored and dead-lettered ones)
    started: float  # perf_counter when it was fetched


class Folder:
    """Decodes, folds and commits batches for the partitions it is told it owns, one
    batch committing while the next is prepared. Not Kafka-aware: the fold consumer and
    a rebuild feed it what they fetch.

    Callers serialise `own`, `release`, `prepare`, `start_commit` and `settle` (the fold
    consumer's batch lock); `settle` raises what the batch in flight failed with, after
    which the caller calls `own` again to go back to the stored offsets.
    """

    def __init__(self, pool: asyncpg.Pool, group: str, topics: list[str],
                 dead_letter: DeadLetter, *, feed: bool = True,
                 on_batch: OnBatch | None = None, recent_limit: int = 100_000) -> None:
        self.pool = pool
        self.group = group
        self.topics = topics
        self.feed = feed
        self.on_batch = on_batch
        self._dead_letter = dead_letter
        self._decode = EventDecoder().decode
        # Next offset to fold per owned partition, past the batches prepared so far.
        self.positions: dict[PartitionKey, int] = {}
        # The states of members folded lately, as they are once the batches prepared
        # so far commit.
        self._recent = RecentStates(recent_limit)
        self._in_flight: asyncio.Task[None] | None = None
        self._stored = StoredMembers()
        self._released: dict[PartitionKey, int] = {}
        # The publish time (ms) of the last record prepared, per owned partition.
        self.times: dict[PartitionKey, int] = {}
        # Counts the times the positions were replaced (see messaging.consumer.Prefetch).
        self.generation = 0
        self._table = 0  # the oid of the consumer_offsets table the positions are from
        self.folded = 0  # records committed by this folder

    async def own(self, partitions: list[PartitionKey]) -> dict[PartitionKey, int]:
        """Take these partitions (and only these) from their stored offsets; returns them.
        Call with no batch in flight (after `settle`)."""
        self._recent.forget()
        numbers = {p for _, p in partitions}
        async with self.pool.acquire() as conn:
            taken = await take_offsets(conn, self.group, partitions)
            stored = taken.offsets
            # A partition number stays or becomes fresh (see StoredMembers) if nobody
            # folded any of its topics since: from nothing, or from where this folder
            # let them go.
            fresh = set()
            before = self._released or self.positions
            for number in numbers:
                keys = [(topic, number) for topic in self.topics]
                if all(key in stored and stored[key] == (
                        before.get(key, -1) if number in self._stored.fresh else 0)
                       for key in keys):
                    fresh.add(number)
            # Or if few states are stored yet: then every one of them goes into the
            # filter, and it is complete for these partition numbers too.
            if numbers - fresh:
                every = await stored_member_ids(conn, FRESH_LOAD_LIMIT)
                if every is not None:
                    self._stored.add(every)
                    fresh = numbers
        self._stored.fresh = fresh
        self._released = {}
        self.positions = dict(stored)
        self._table = taken.table
        self.times = {}
        # Last, with no await after it: the caller seeks the consumer to `stored` before
        # any fetch can return (see messaging.consumer.Prefetch).
        self.generation += 1
        return stored

    def forget(self) -> None:
        """Assume nothing about what is stored (the projections were replaced under
        this folder: a rebuild); call `own` next."""
        self._stored.fresh = set()
        self._released = {}
        self.positions = {}
        self._recent.forget()
        self.generation += 1

    def release(self) -> None:
        """Give up every partition (revoked); call with no batch in flight."""
        self._released = self.positions
        self.positions = {}
        self._recent.forget()

    def owns(self) -> bool:
        return bool(self.positions)

    def ahead(self, highwater: Callable[[PartitionKey], int | None], slack_ms: int
              ) -> tuple[set[PartitionKey], set[PartitionKey]]:
        """Which owned partitions to pause and which to read, so that events are folded
        in about the order they were published, across topics.

        A member's events travel on three topics at different rates (a registration
        and several contact events here, an enrolment and a vote there, a reminder or
        two on the third): read at the same rate in records, the topics drift apart in
        time, and a member's events come batches apart — each needing the state the
        earlier one left, from the database. Catching up (a restart, a rebuild), a
        partition more than `slack_ms` of publish time ahead of the furthest-behind one
        that still has records to give waits for it. Caught up, nothing waits.
        """
        behind: dict[PartitionKey, int | None] = {}
        for key, position in self.positions.items():
            high = highwater(key)
            if high is None or position < high:
                behind[key] = self.times.get(key)
        if not behind:
            return set(), set(self.positions)
        known = [t for t in behind.values() if t is not None]
        # A partition that has given nothing yet may be furthest behind of all.
        floor = min(known) if len(known) == len(behind) else None
        pause = {key for key, t in behind.items() if t is not None and (
            floor is None or t > floor + slack_ms)}
        return pause, set(self.positions) - pause

    async def prepare(self, fetched: Fetched) -> Batch | None:
        """Decode the records past the positions and fold them onto the current states;
        None when nothing is new. Invalid records are dead-lettered here."""
        started = time.perf_counter()
        expected = Stored(dict(self.positions), self._table)
        ends = dict(self.positions)
        # The records to fold with their keys, and the members they name per partition
        # number: the records' keys, which the relay sets to the events' keys — a
        # member's id (the decoder checks that it is), or for the odd ballot-opened or
        # -closed its ballot's id, under which no state is stored (a lookup that finds
        # nothing). Read from the records, before decoding, so that each event is folded
        # as it is decoded (below).
        parts: list[tuple[list[ConsumerRecord], list[str]]] = []
        members: dict[int, set[str]] = {}
        records = 0
        times: dict[PartitionKey, int] = {}
        for tp, batch in fetched.items():
            key = (tp.topic, tp.partition)
            position = ends.get(key)
            if position is None or not batch or batch[-1].offset < position:
                continue  # not ours (revoked since the fetch), or seen already
            if batch[0].offset < position:
                batch = [r for r in batch if r.offset >= position]
            keys = _record_keys(batch)
            parts.append((batch, keys))
            members.setdefault(tp.partition, set()).update(keys)
            records += len(batch)
            ends[key] = batch[-1].offset + 1
            times[key] = batch[-1].timestamp
        if not records:
            return None
        invalid: list[tuple[ConsumerRecord, str]] = []
        result = await self._fold(self._events(parts, invalid), members)
        for record, error in invalid:
            await self._dead_letter(record, error)
        self.positions = ends
        self.times.update(times)
        return Batch(result, expected, ends, records, started)

    def _events(self, parts: list[tuple[list[ConsumerRecord], list[str]]],
                invalid: list[tuple[ConsumerRecord, str]]) -> Iterator[Event]:
        """The records' events, decoded one at a time as the fold asks for them; the
        invalid records go to `invalid`. One at a time because a batch's tens of
        thousands of events, decoded into a list first, were out of the CPU's caches by
        the time the fold read them and again when they were freed: folding each as it
        is decoded took 9.0 against 10.7 µs an event, decoding included."""
        decode = self._decode
        for batch, keys in parts:
            for record, key in zip(batch, keys, strict=True):
                try:
                    event = decode(record.value)
                except InvalidEvent as exc:
                    invalid.append((record, str(exc)))
                    continue
                if event is None:
                    continue  # a type or version nobody here knows
                if event.key != key:
                    # Its member's state was looked up by the record's key: folded, it
                    # would count from a state that may not be theirs.
                    invalid.append((record, MISKEYED))
                    continue
                yield event

    async def _fold(self, events: Iterable[Event], members: dict[int, set[str]]
                    ) -> FoldResult:
        stored = self._stored
        states: dict[str, MemberStates] = {}
        missing: list[str] = []
        for number, ids in members.items():
            fresh = number in stored.fresh
            found, unknown = self._recent.find(ids)
            states.update(found)
            missing += unknown if not fresh else filter(stored.maybe, unknown)
            if fresh:
                # Before the commit: a failed one only costs a load. Only the members
                # not held in memory: a partition's freshness is decided when it is
                # taken, and what is held was folded since, so is in the filter already.
                stored.add(unknown)
        if missing:
            async with self.pool.acquire() as conn:
                loaded = await load_states(conn, missing)
            states.update(loaded)
            self._recent.keep(loaded)
        result = fold(states, events)
        self._recent.left(result.states)
        return result

    def start_commit(self, batch: Batch) -> None:
        """Commit `batch` in the background. Call after `settle`."""
        assert self._in_flight is None or self._in_flight.done()
        self._in_flight = asyncio.create_task(self._commit(batch), name="reporting-commit")

    async def _commit(self, batch: Batch) -> None:
        async with self.pool.acquire() as conn:
            await commit_batch(conn, self.group, batch.result, batch.expected, batch.ends,
                               feed=self.feed)
        self.folded += batch.records
        FOLDED.inc(batch.records)
        BATCH_SECONDS.observe(time.perf_counter() - batch.started)
        if self.on_batch is not None:
            try:
                await self.on_batch(batch.result)
            except Exception:
                log.exception("fold_on_batch_failed", group=self.group)

    async def settle(self) -> None:
        """Wait for the batch in flight; raise what it failed with (nothing was stored,
        and the positions and states prepared since are void: call `own` again)."""
        task, self._in_flight = self._in_flight, None
        if task is None:
            return
        try:
            await task
        except BaseException:
            self.positions = {}
            self._recent.forget()
            # Whatever went wrong, assume nothing about what is stored.
            self._stored.fresh = set()
            raise

    async def abandon(self) -> None:
        """Settle, swallowing a failure (it is logged): for a revocation or a stop."""
        try:
            await self.settle()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("fold_batch_abandoned", group=self.group, error=type(exc).__name__)


class RecentStates:
    """The states batches left lately, so that the next batches need not load them: a
    member's events come close together (a rep's visit, a vote and its reminder; on a
    first fold, their registration and enrolment) but travel on three topics, so often
    in neighbouring batches rather than in one; and days apart in publish time (an
    enrolment and the vote, the reminders), so catching up they are folded many batches
    apart too. Loading a state back costs far more than keeping it (a query, a row
    decoded, a Struct built), so with room for every member an owned partition has, a
    catch-up never loads at all.

    Exact as long as the folder owns the members' partitions without a break: only its
    own batches write these states then, and they all pass through here before they
    commit (a failed commit, a rebalance or a rewind forgets everything). The last
    batch's states are always kept: it may not be committed when the next batch loads
    what it does not find here. Older ones are kept up to about `limit`.

    Kept in two generations rather than in order of use: each batch's states go into
    the current one, which, once it would hold more than half the limit, becomes the
    previous one, and the previous one is forgotten. A lookup tries three dicts at most
    (latest, current, previous) and a batch costs one dict update, where a true LRU
    would move every state it touches.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._latest: Mapping[str, MemberStates] = {}
        self._current: dict[str, MemberStates] = {}
        self._previous: dict[str, MemberStates] = {}

    def forget(self) -> None:
        self._latest = {}
        self._current = {}
        self._previous = {}

    def get(self, member_id: str) -> MemberStates | None:
        found, _ = self.find((member_id,))
        return found.get(member_id)

    def find(self, member_ids: Iterable[str]
             ) -> tuple[dict[str, MemberStates], list[str]]:
        """The states held of these members, and the members of whom none is."""
        found: dict[str, MemberStates] = {}
        unknown: list[str] = []
        latest, current, previous = self._latest.get, self._current.get, self._previous.get
        for member_id in member_ids:
            known = latest(member_id)
            if known is None:
                known = current(member_id)
                if known is None:
                    known = previous(member_id)
                    if known is None:
                        unknown.append(member_id)
                        continue
            found[member_id] = known
        return found, unknown

    def keep(self, states: Mapping[str, MemberStates]) -> None:
        """States loaded from the database (none of them held here)."""
        self._push(states)

    def left(self, states: Mapping[str, MemberStates]) -> None:
        """The states the batch just prepared left (not committed yet)."""
        latest, self._latest = self._latest, states
        self._push(latest)  # committed by the time the next batch folds

    def _push(self, states: Mapping[str, MemberStates]) -> None:
        if not states or self.limit <= 0:
            return
        if len(self._current) + len(states) > max(1, self.limit // 2):
            self._previous, self._current = self._current, {}
        self._current.update(states)  # newer states overwrite


class StoredMembers:
    """Which members the database may hold states for, so that a batch does not ask it
    about members it has surely never seen — on a first fold (a rebuild, a new install)
    that is almost all of them, and asking costs more than folding.

    Exact where it matters, and cheap: a member's events all travel on one partition
    number (every topic is keyed by member id with the same partition count), so only a
    fold of that partition number ever writes their state. A partition number is
    *fresh* while this process has folded it without a break since it knew every member
    stored for it (`Folder.own` decides): since nothing was folded from it, or since it
    read every stored member id into the filter on taking it (while there are few: see
    FRESH_LOAD_LIMIT). For a fresh partition number, the members in the filter are all
    that can be stored; the filter is a Bloom filter: "maybe stored" is sometimes wrong
    (the state is loaded and found missing, at the cost of a query), "not stored" never
    is. 2 MiB; at a million members one in seventy answers is a needless "maybe".
    """

    BITS = 1 << 24
    MASK = BITS - 1

    def __init__(self) -> None:
        self.fresh: set[int] = set()  # partition numbers
        self._bits = bytearray(self.BITS // 8)

    def maybe(self, member_id: str) -> bool:
        h = hash(member_id)
        a, b = h & self.MASK, (h >> 24) & self.MASK
        bits = self._bits
        return bool(bits[a >> 3] & (1 << (a & 7))) and bool(bits[b >> 3] & (1 << (b & 7)))

    def add(self, member_ids: Iterable[str | None]) -> None:
        bits, mask = self._bits, self.MASK
        for member_id in member_ids:
            h = hash(member_id)
            a, b = h & mask, (h >> 24) & mask
            bits[a >> 3] |= 1 << (a & 7)
            bits[b >> 3] |= 1 << (b & 7)


