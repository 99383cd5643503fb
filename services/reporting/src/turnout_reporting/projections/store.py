"""The fold's state and numbers in PostgreSQL: loading what a batch touches, and writing
a batch's effects with the offsets after it in one transaction.

Exactly once rests on that transaction: the effects of a batch and the position after
it are committed together or not at all, so after a crash, a rebalance or a retry the
consumer resumes from a position that matches the numbers exactly.

The consumer prepares a batch (decode, load, fold) while the one before it commits, so
a batch's transaction does not read the stored offsets to decide what to apply: it
*checks* them. `commit_batch` updates the offsets of every partition the consumer owns
from the values it expects to the values after the batch, in one statement that locks
those rows; if any row is not at the expected value, someone else folded there since
(an instance that still thought it owned the partition), the states this batch was
folded from may be stale, and the whole transaction is rolled back (`StaleOffsets`):
the consumer goes back to the stored offsets and folds again.

Every table's share of a batch goes in at once: states new to the database by binary
COPY straight into their table, everything else by COPY into a temporary stage and one
INSERT ... ON CONFLICT from it, in key order, so two instances folding at once lock
shared rows (national, group) in the same order and cannot deadlock each other.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import asyncpg
from msgspec.structs import astuple

from turnout_events.database_url import asyncpg_dsn

from .changes import HOURLY_RETURNING, TURNOUT_RETURNING, record_changes
from .decode import CANONICAL_ID
from .fold import COUNTS, BallotMemberState, FoldResult, MemberState, MemberStates

PartitionKey = tuple[str, int]  # (topic, partition)


class StaleOffsets(Exception):
    """The stored offsets are not where this consumer left them: another instance
    folded these partitions since. Nothing was written."""


async def fold_pool(database_url: str, application_name: str, *,
                    search_path: str | None = None, durable: bool = True) -> asyncpg.Pool:
    """The fold's connections: one commits a batch while the other loads the states for
    the next. JIT is off: the batch statements are big `unnest`s and COPYs with trivial
    plans, and compiling them would cost more than running them.

    `synchronous_commit` stays on (`durable`) for the live projections: a commit that a
    PostgreSQL crash took back would lose no event — its offsets would go with its
    effects, and the fold would fold the same records again — but stream clients are
    told of a commit as it happens, and would have seen numbers and feed seqs that then
    never were. Only a rebuild's shadow tables, which nobody sees until they are
    swapped in (durably), fold with it off.
    """
    settings = {"application_name": application_name, "jit": "off"}
    if search_path is not None:
        settings["search_path"] = search_path
    if not durable:
        settings["synchronous_commit"] = "off"
    return await asyncpg.create_pool(asyncpg_dsn(database_url), min_size=1, max_size=2,
                                     server_settings=settings, init=create_stages)


@dataclass(frozen=True)
class Stored:
    """Where the fold stands: the next offset per partition (0 where nothing was folded
    yet), and which `consumer_offsets` table says so."""

    offsets: dict[PartitionKey, int]
    table: int  # the offsets table's oid: a rebuild replaces the table (service/rebuild.py)


async def take_offsets(conn: asyncpg.Connection, group: str,
                       partitions: Iterable[PartitionKey]) -> Stored:
    """The stored offsets of these partitions, with a row made for each that has none
    (a batch's transaction only updates rows, and checks it updated them all)."""
    keys = sorted(partitions)
    async with conn.transaction():
        await conn.execute(
            'INSERT INTO consumer_offsets ("group", topic, "partition", next_offset) '
            'SELECT $1, t, p, 0 FROM unnest($2::text[], $3::int[]) AS x(t, p) '
            'ON CONFLICT DO NOTHING',
            group, [t for t, _ in keys], [p for _, p in keys])
        rows = await conn.fetch(
            'SELECT topic, "partition", next_offset, tableoid FROM consumer_offsets '
            'WHERE "group" = $1 AND (topic, "partition") IN '
            '(SELECT * FROM unnest($2::text[], $3::int[]))',
            group, [t for t, _ in keys], [p for _, p in keys])
        table = await conn.fetchval("SELECT 'consumer_offsets'::regclass::oid")
    stored = {(r["topic"], r["partition"]): r["next_offset"] for r in rows}
    return Stored({k: stored.get(k, 0) for k in keys}, table)


async def stored_member_ids(conn: asyncpg.Connection, limit: int) -> list[str] | None:
    """Every member id the states are stored for (some maybe twice), or None if there
    are more than `limit` of either kind of state."""
    # The planner's row estimates first, so that a large install (a restart, a
    # rebalance) is not read `limit` rows deep for nothing; -1 until first analysed.
    estimate = await conn.fetchval(
        "SELECT max(reltuples) FROM pg_class "
        "WHERE oid IN ('member_states'::regclass, 'ballot_members'::regclass)")
    if estimate is not None and estimate > 2 * limit:
        return None
    ids: list[str] = []
    for table in ("member_states", "ballot_members"):
        rows = await conn.fetch(f"SELECT member_id::text FROM {table} LIMIT $1", limit + 1)
        if len(rows) > limit:
            return None
        ids += [r[0] for r in rows]
    return ids


async def load_states(conn: asyncpg.Connection, member_ids: list[str]) -> dict[str, MemberStates]:
    """Everything stored about these members (absent: nothing stored)."""
    states: dict[str, MemberStates] = {}
    # One string rather than an array of ids: asyncpg checks every element of an array
    # parameter in Python, which costs more than the query. Only ids: a record's key that
    # is none (a malformed record, being dead-lettered) names no state, and cast to uuid
    # it would fail the whole batch.
    ids = ",".join(filter(CANONICAL_ID.fullmatch, member_ids))
    if not ids:
        return states
    members: dict[str, MemberState] = {}
    for r in await conn.fetch(
            "SELECT member_id, contact_version, has_mobile, has_email, sms_consent, "
            "placement_version, group_code, branch_code, workplace_code FROM member_states "
            "WHERE member_id = ANY(string_to_array($1, ',')::uuid[])", ids):
        member_id = str(r[0])
        members[member_id] = MemberState(member_id, r[1], r[2], r[3], r[4], r[5], r[6], r[7],
                                         r[8])
    ballots: dict[str, dict[str, BallotMemberState]] = {}
    for r in await conn.fetch(
            "SELECT member_id, ballot_id, enrolled, group_code, branch_code, workplace_code, "
            "voted, vote_changed_at, voted_at, contacted, replacement_requests, reminders "
            "FROM ballot_members WHERE member_id = ANY(string_to_array($1, ',')::uuid[])", ids):
        member_id, ballot_id = str(r[0]), str(r[1])
        ballots.setdefault(member_id, {})[ballot_id] = BallotMemberState(
            member_id, ballot_id, r[2], r[3], r[4], r[5], r[6], r[7], r[8], r[9],
            r[10], r[11])
    for member_id in members.keys() | ballots.keys():
        states[member_id] = (members.get(member_id), ballots.get(member_id, {}))
    return states


async def commit_batch(conn: asyncpg.Connection, group: str, result: FoldResult | None,
                       expected: Stored, ends: Mapping[PartitionKey, int],
                       *, feed: bool = True) -> list[int]:
    """Write `result` and move the offsets from `expected` to `ends`, in one transaction.

    `expected` holds every partition the caller owns, at the offsets it believes are
    stored, in the table it read them from; `ends` the offsets after this batch (the
    same keys). Raises `StaleOffsets` if the stored offsets are elsewhere, or in another
    table (a rebuild swapped the projections in: states folded from the old ones must
    not touch the new). With `feed`, the changed rows go to the change feed (not for a
    rebuild's shadow tables, which nobody watches); returns its seqs."""
    keys = sorted(expected.offsets)
    seqs: list[int] = []
    async with conn.transaction():
        # Locks the rows and checks them in one go: an instance that still thinks it
        # owns a partition waits here, then finds the offsets moved.
        moved = await conn.fetchval(
            "WITH x AS (SELECT * FROM unnest($2::text[], $3::int[], $4::bigint[], "
            "$5::bigint[]) AS x(t, p, e, n)), "
            "u AS (UPDATE consumer_offsets o SET next_offset = x.n, "
            "updated_at = CASE WHEN x.n <> x.e THEN now() ELSE o.updated_at END "
            'FROM x WHERE o."group" = $1 AND o.topic = x.t AND o."partition" = x.p '
            "AND o.next_offset = x.e AND o.tableoid = $6 RETURNING 1) SELECT count(*) FROM u",
            group, [t for t, _ in keys], [p for _, p in keys],
            [expected.offsets[k] for k in keys], [ends[k] for k in keys], expected.table)
        if moved != len(keys):
            raise StaleOffsets(f"{len(keys) - moved} of {len(keys)} partitions were folded "
                               "by another consumer since, or the projections were rebuilt")
        if result is not None:
            seqs = await write_result(conn, result, feed=feed)
    return seqs


# Temporary tables, one per connection, that a batch's rows are copied into (binary
# COPY: asyncpg encodes a row of values far faster than it encodes one array per column,
# which checks every element's type in Python) before one statement merges them into
# their table. Emptied at every commit.
MEMBER_COLUMNS = ("member_id", "contact_version", "has_mobile", "has_email", "sms_consent",
                  "placement_version", "group_code", "branch_code", "workplace_code")
ENROLMENT_COLUMNS = ("member_id", "ballot_id", "enrolled", "group_code", "branch_code",
                     "workplace_code", "voted", "vote_changed_at", "voted_at", "contacted",
                     "replacement_requests", "reminders")
UNIT_COLUMNS = ("ballot_id", "level", "group_code", "branch_code", "workplace_code")
TURNOUT_COLUMNS = (*UNIT_COLUMNS, *COUNTS)
HOURLY_COLUMNS = (*UNIT_COLUMNS, "hour", "votes")


@dataclass(frozen=True)
class _Stage:
    name: str
    table: str
    columns: tuple[str, ...]
    key: tuple[str, ...]
    update: str  # the ON CONFLICT update

    def create(self) -> str:
        return (f"CREATE TEMP TABLE IF NOT EXISTS {self.name} ON COMMIT DELETE ROWS AS "
                f"SELECT {', '.join(self.columns)} FROM {self.table} WITH NO DATA")

    def merge(self) -> str:
        """The stage into its table, in key order (two instances then lock shared rows in
        the same order and cannot deadlock each other)."""
        columns = ", ".join(self.columns)
        return (f"INSERT INTO {self.table} ({columns}) SELECT {columns} "
                f"FROM {self.name} ORDER BY {', '.join(self.key)} "
                f"ON CONFLICT ({', '.join(self.key)}) DO UPDATE SET {self.update}")


def _from_excluded(columns: Iterable[str]) -> str:
    return ", ".join(f"{c} = excluded.{c}" for c in columns)


MEMBERS = _Stage("member_states_stage", "member_states", MEMBER_COLUMNS, ("member_id",),
                 _from_excluded(MEMBER_COLUMNS[1:]))
ENROLMENTS = _Stage("ballot_members_stage", "ballot_members", ENROLMENT_COLUMNS,
                    ("member_id", "ballot_id"), _from_excluded(ENROLMENT_COLUMNS[2:]))
TURNOUT = _Stage("turnout_stage", "turnout", TURNOUT_COLUMNS, UNIT_COLUMNS, ", ".join(
    [f"{c} = turnout.{c} + excluded.{c}" for c in COUNTS] + ["updated_at = now()"]))
HOURLY = _Stage("turnout_hourly_stage", "turnout_hourly", HOURLY_COLUMNS,
                (*UNIT_COLUMNS, "hour"), "votes = turnout_hourly.votes + excluded.votes")
_STAGES = (MEMBERS, ENROLMENTS, TURNOUT, HOURLY)


async def create_stages(conn: asyncpg.Connection) -> None:
    """The connection's staging tables (the fold pool's `init`)."""
    for stage in _STAGES:
        await conn.execute(stage.create())


async def write_result(conn: asyncpg.Connection, result: FoldResult, *,
                       feed: bool = True) -> list[int]:
    # States new to the database go straight into their tables; changed ones through the
    # stage. (New: the batch created them, nothing was loaded — see FoldResult.)
    if result.new_members:
        await conn.copy_records_to_table(
            "member_states", columns=MEMBER_COLUMNS,
            records=map(astuple, result.new_members))
    if result.members:
        await conn.copy_records_to_table(MEMBERS.name, columns=MEMBER_COLUMNS,
                                         records=map(astuple, result.members))
        await conn.execute(MEMBERS.merge())
    if result.new_enrolments:
        await conn.copy_records_to_table("ballot_members", columns=ENROLMENT_COLUMNS,
                                         records=map(astuple, result.new_enrolments))
    if result.enrolments:
        await conn.copy_records_to_table(ENROLMENTS.name, columns=ENROLMENT_COLUMNS,
                                         records=map(astuple, result.enrolments))
        await conn.execute(ENROLMENTS.merge())
    for ballot_id, info in sorted(result.ballots.items()):
        opened = "name" in info
        await conn.execute(
            "INSERT INTO ballots (ballot_id, name, kind, turnout_threshold, opens_at, "
            "closes_at, closed_at) VALUES ($1, $2, $3, $4, $5, $6, $7) "
            "ON CONFLICT (ballot_id) DO UPDATE SET "
            "name = COALESCE(excluded.name, ballots.name), "
            "kind = COALESCE(excluded.kind, ballots.kind), "
            # NULL is a threshold too ("none"): take it only from a ballot-opened.
            "turnout_threshold = CASE WHEN $8 THEN excluded.turnout_threshold "
            "ELSE ballots.turnout_threshold END, "
            "opens_at = COALESCE(excluded.opens_at, ballots.opens_at), "
            "closes_at = COALESCE(excluded.closes_at, ballots.closes_at), "
            "closed_at = COALESCE(excluded.closed_at, ballots.closed_at)",
            ballot_id, info.get("name"), info.get("kind"), info.get("turnout_threshold"),
            info.get("opens_at"), info.get("closes_at"), info.get("closed_at"), opened)
    if result.deltas:
        await conn.copy_records_to_table(
            TURNOUT.name, columns=TURNOUT_COLUMNS,
            records=[(*unit, *counts) for unit, counts in result.deltas.items()])
    if result.hourly:
        await conn.copy_records_to_table(
            HOURLY.name, columns=HOURLY_COLUMNS,
            records=[(*unit, hour, votes) for (unit, hour), votes in result.hourly.items()])
    turnout = TURNOUT.merge() if result.deltas else None
    hourly = HOURLY.merge() if result.hourly else None
    if not feed:
        for statement in (turnout, hourly):
            if statement is not None:
                await conn.execute(statement)
        return []
    if turnout is None and hourly is None and not result.ballots:
        return []
    return await record_changes(
        conn, turnout and f"{turnout} {TURNOUT_RETURNING}",
        hourly and f"{hourly} {HOURLY_RETURNING}", sorted(result.ballots))
