"""One batch, one transaction: lock the partitions' stored offsets, drop what is already
applied, load the state the batch touches, fold, write the changed state and each
touched aggregate once, store the new offsets, commit.

Plain asyncpg rather than SQLAlchemy: this is the hot path (tens of thousands of events a
second), and every statement is one round trip with whole columns passed as arrays
(`unnest`), whatever the batch size.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

from turnout_events.envelope import Envelope, EventData

from .changes import record_changes
from .fold import COUNTS, BallotMemberState, Enrolments, FoldResult, MemberState, fold


@dataclass(frozen=True, slots=True)
class Position:
    """Where one record sits in the log."""

    topic: str
    partition: int
    offset: int


Decoded = tuple[Envelope, EventData] | None
# Turns a record into its event, or None for a record the fold does not use (invalid:
# dead-lettered by the decoder; of a type nobody here knows): such records still move
# the offset on. Called only for records not applied before, so a record seen again
# after a rebalance is not dead-lettered twice.
Decoder = Callable[[Any], Awaitable[Decoded]]
BatchItem = tuple[Position, Any]  # a record's position and the record


async def stored_offsets(conn: asyncpg.Connection, group: str,
                         partitions: Sequence[tuple[str, int]]) -> dict[tuple[str, int], int]:
    rows = await conn.fetch(
        'SELECT topic, "partition", next_offset FROM consumer_offsets '
        'WHERE "group" = $1 AND (topic, "partition") IN '
        '(SELECT * FROM unnest($2::text[], $3::int[]))',
        group, [t for t, _ in partitions], [p for _, p in partitions])
    return {(r["topic"], r["partition"]): r["next_offset"] for r in rows}


async def apply_batch(conn: asyncpg.Connection, group: str, items: Sequence[BatchItem],
                      decode: Decoder) -> tuple[FoldResult | None, int]:
    """Fold `items` and store the offsets after them, in one transaction; returns the
    fold's result and how many records were new. Records at offsets already stored are
    skipped (a stale fetch after a rebalance, a retry), so applying the same batch twice
    has the effect of applying it once."""
    if not items:
        return None, 0
    ends: dict[tuple[str, int], int] = {}
    for position, _ in items:
        key = (position.topic, position.partition)
        ends[key] = max(ends.get(key, 0), position.offset + 1)
    partitions = sorted(ends)
    async with conn.transaction():
        # The offset rows are the lock: a second instance that still thinks it owns a
        # partition (a zombie after a rebalance) waits here, then sees the offsets moved.
        await conn.execute(
            'INSERT INTO consumer_offsets ("group", topic, "partition", next_offset) '
            'SELECT $1, t, p, 0 FROM unnest($2::text[], $3::int[]) AS x(t, p) '
            'ON CONFLICT DO NOTHING',
            group, [t for t, _ in partitions], [p for _, p in partitions])
        rows = await conn.fetch(
            'SELECT topic, "partition", next_offset FROM consumer_offsets '
            'WHERE "group" = $1 AND (topic, "partition") IN '
            '(SELECT * FROM unnest($2::text[], $3::int[])) '
            'ORDER BY topic, "partition" FOR UPDATE',
            group, [t for t, _ in partitions], [p for _, p in partitions])
        stored = {(r["topic"], r["partition"]): r["next_offset"] for r in rows}
        moved = {k: end for k, end in ends.items() if end > stored[k]}
        if not moved:
            return None, 0
        events = []
        new = 0
        for position, record in items:
            if position.offset >= stored[(position.topic, position.partition)]:
                new += 1
                event = await decode(record)
                if event is not None:
                    events.append(event)
        result = None
        if events:
            member_ids = list({e.member_id for _, e in events if hasattr(e, "member_id")})
            members, enrolments = await load_states(conn, member_ids)
            result = fold(members, enrolments, events)
            await write_result(conn, result)
        keys = sorted(moved)
        await conn.execute(
            'UPDATE consumer_offsets o SET next_offset = x.n, updated_at = now() '
            'FROM unnest($2::text[], $3::int[], $4::bigint[]) AS x(t, p, n) '
            'WHERE o."group" = $1 AND o.topic = x.t AND o."partition" = x.p',
            group, [t for t, _ in keys], [p for _, p in keys], [moved[k] for k in keys])
        return result, new


async def load_states(conn: asyncpg.Connection, member_ids: list[uuid.UUID]
                      ) -> tuple[dict[uuid.UUID, MemberState], Enrolments]:
    members: dict[uuid.UUID, MemberState] = {}
    enrolments: Enrolments = {}
    if not member_ids:
        return members, enrolments
    for r in await conn.fetch("SELECT * FROM member_states WHERE member_id = ANY($1::uuid[])",
                              member_ids):
        members[r["member_id"]] = MemberState(
            r["member_id"], r["contact_version"], r["has_mobile"], r["has_email"],
            r["sms_consent"], r["placement_version"], r["group_code"], r["branch_code"],
            r["workplace_code"])
    for r in await conn.fetch("SELECT * FROM ballot_members WHERE member_id = ANY($1::uuid[])",
                              member_ids):
        enrolments.setdefault(r["member_id"], {})[r["ballot_id"]] = BallotMemberState(
            r["member_id"], r["ballot_id"], r["enrolled"], r["group_code"], r["branch_code"],
            r["workplace_code"], r["voted"], r["vote_changed_at"], r["voted_at"],
            r["contacted"], set(r["replacement_requests"]), set(r["reminders"]))
    return members, enrolments


def _uuid_array(ids: set[uuid.UUID]) -> str:
    # Sets of different sizes cannot travel as one 2-D array; each goes as the text of a
    # uuid[] and is cast back in SQL.
    return "{" + ",".join(sorted(str(i) for i in ids)) + "}"


async def write_result(conn: asyncpg.Connection, result: FoldResult) -> None:
    if result.members:
        states = sorted(result.members.values(), key=lambda s: s.member_id)
        await conn.execute(
            "INSERT INTO member_states (member_id, contact_version, has_mobile, has_email, "
            "sms_consent, placement_version, group_code, branch_code, workplace_code) "
            "SELECT * FROM unnest($1::uuid[], $2::int[], $3::bool[], $4::bool[], $5::bool[], "
            "$6::int[], $7::text[], $8::text[], $9::text[]) "
            "ON CONFLICT (member_id) DO UPDATE SET contact_version = excluded.contact_version, "
            "has_mobile = excluded.has_mobile, has_email = excluded.has_email, "
            "sms_consent = excluded.sms_consent, "
            "placement_version = excluded.placement_version, "
            "group_code = excluded.group_code, branch_code = excluded.branch_code, "
            "workplace_code = excluded.workplace_code",
            [s.member_id for s in states], [s.contact_version for s in states],
            [s.has_mobile for s in states], [s.has_email for s in states],
            [s.sms_consent for s in states], [s.placement_version for s in states],
            [s.group_code for s in states], [s.branch_code for s in states],
            [s.workplace_code for s in states])
    if result.enrolments:
        rows = sorted(result.enrolments, key=lambda s: (s.member_id, s.ballot_id))
        await conn.execute(
            "INSERT INTO ballot_members (member_id, ballot_id, enrolled, group_code, "
            "branch_code, workplace_code, voted, vote_changed_at, voted_at, contacted, "
            "replacement_requests, reminders) "
            "SELECT m, b, e, g, br, w, v, vc, va, c, rr::uuid[], rm::uuid[] FROM unnest("
            "$1::uuid[], $2::uuid[], $3::bool[], $4::text[], $5::text[], $6::text[], "
            "$7::bool[], $8::timestamptz[], $9::timestamptz[], $10::bool[], $11::text[], "
            "$12::text[]) AS x(m, b, e, g, br, w, v, vc, va, c, rr, rm) "
            "ON CONFLICT (member_id, ballot_id) DO UPDATE SET enrolled = excluded.enrolled, "
            "group_code = excluded.group_code, branch_code = excluded.branch_code, "
            "workplace_code = excluded.workplace_code, voted = excluded.voted, "
            "vote_changed_at = excluded.vote_changed_at, voted_at = excluded.voted_at, "
            "contacted = excluded.contacted, "
            "replacement_requests = excluded.replacement_requests, "
            "reminders = excluded.reminders",
            [s.member_id for s in rows], [s.ballot_id for s in rows],
            [s.enrolled for s in rows], [s.group_code for s in rows],
            [s.branch_code for s in rows], [s.workplace_code for s in rows],
            [s.voted for s in rows], [s.vote_changed_at for s in rows],
            [s.voted_at for s in rows], [s.contacted for s in rows],
            [_uuid_array(s.replacement_requests) for s in rows],
            [_uuid_array(s.reminders) for s in rows])
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
    turnout_rows: list[asyncpg.Record] = []
    hourly_rows: list[asyncpg.Record] = []
    if result.deltas:
        # Sorted, so two instances folding at once lock shared rows (national, groups)
        # in the same order and cannot deadlock each other.
        keys = sorted(result.deltas)
        columns = ", ".join(COUNTS)
        turnout_rows = await conn.fetch(
            f"INSERT INTO turnout (ballot_id, level, group_code, branch_code, workplace_code, "
            f"{columns}) SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], "
            f"$5::text[], "
            + ", ".join(f"${i + 6}::bigint[]" for i in range(len(COUNTS)))
            + ") ON CONFLICT (ballot_id, level, group_code, branch_code, workplace_code) "
            "DO UPDATE SET "
            + ", ".join(f"{c} = turnout.{c} + excluded.{c}" for c in COUNTS)
            + ", updated_at = now() RETURNING *",
            *([k[i] for k in keys] for i in range(5)),
            *([result.deltas[k][i] for k in keys] for i in range(len(COUNTS))))
    if result.hourly:
        hours = sorted(result.hourly)
        hourly_rows = await conn.fetch(
            "INSERT INTO turnout_hourly (ballot_id, level, group_code, branch_code, "
            "workplace_code, hour, votes) SELECT * FROM unnest($1::uuid[], $2::text[], "
            "$3::text[], $4::text[], $5::text[], $6::timestamptz[], $7::bigint[]) "
            "ON CONFLICT (ballot_id, level, group_code, branch_code, workplace_code, hour) "
            "DO UPDATE SET votes = turnout_hourly.votes + excluded.votes RETURNING *",
            *([unit[i] for unit, _ in hours] for i in range(5)),
            [hour for _, hour in hours], [result.hourly[k] for k in hours])
    await record_changes(conn, turnout_rows, hourly_rows, sorted(result.ballots))
