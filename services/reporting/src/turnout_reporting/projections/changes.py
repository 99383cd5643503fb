"""The change feed: what each committed batch changed, for the live stream.

Every batch that changes a turnout row or an hourly bucket writes one `turnout_changes`
row per ballot it touched — the rows' values *after* the batch — and a NOTIFY, both in
the batch's own transaction: a listener is woken only by committed changes, and the feed
holds exactly what was committed, whichever reporting instance folded it. A stream
client resumes from the last `seq` it saw (`Last-Event-ID`) by reading the feed.

A feed row's `changes`: `{"rows": [turnout rows], "hours": [hourly buckets]}`, each row
its unit (`level`, `group_code`, `branch_code`, `workplace_code`) and its counts, each
bucket its unit, `hour` (ISO 8601, UTC) and `votes`. A row with neither says the ballot
itself changed (name, threshold, dates); one with `"reset": true` (a rebuild) holds
every row and bucket of the ballot, and replaces whatever a client held.

The feed is ordered by `seq` in commit order: each writer takes one transaction-level
advisory lock just before drawing its `seq`, held until it commits, so a reader that has
seen seq N will never later find a smaller committed seq it missed (with two instances
folding at once, a bare sequence could commit 11 before 10).

The rows are turned into JSON by PostgreSQL, from the upserts' own RETURNING, in the
statement that writes them: a batch catching up touches tens of thousands of hourly
buckets, and building their JSON in Python would cost more than folding the events. As
json text, not jsonb: the feed is only ever read back whole and sent on as text, and
jsonb's binary form costs about three times as much to build.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

import asyncpg

from .fold import COUNTS

CHANNEL = "turnout_changes"
# pg_advisory_xact_lock key serialising feed writers: any fixed bigint unique to it.
FEED_LOCK = 0x7475726E6F7574  # "turnout"
# Rows kept for clients that reconnect; older resumptions get a full snapshot instead.
KEEP_LATEST = 10_000
PRUNE_EVERY = 500  # feed rows written between two prunes

_UNIT = ("'level', level, 'group_code', group_code, 'branch_code', branch_code, "
         "'workplace_code', workplace_code")
_ROW_JSON = (f"json_build_object({_UNIT}, "
             + ", ".join(f"'{c}', {c}" for c in COUNTS) + ")")
# As Python's datetime.isoformat() writes a UTC hour: 2026-03-05T19:00:00+00:00.
_HOUR_JSON = (f"json_build_object({_UNIT}, 'hour', "
              "to_char(hour AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"+00:00\"'), "
              "'votes', votes)")
TURNOUT_RETURNING = ("RETURNING ballot_id, level, group_code, branch_code, workplace_code, "
                     + ", ".join(COUNTS))
HOURLY_RETURNING = ("RETURNING ballot_id, level, group_code, branch_code, workplace_code, "
                    "hour, votes")


async def record_changes(conn: asyncpg.Connection, turnout_upsert: str | None,
                         hourly_upsert: str | None,
                         ballots_changed: Sequence[uuid.UUID | str] = ()) -> list[int]:
    """Run the batch's upserts of `turnout` and `turnout_hourly` (statements without
    parameters, each ending in `TURNOUT_RETURNING` / `HOURLY_RETURNING`, or None), and
    append one feed row per ballot they touched or `ballots_changed` names, and notify.
    Returns the new seqs."""
    parts = []
    touched = ["SELECT unnest($1::uuid[]) AS ballot_id"]
    if turnout_upsert is not None:
        parts.append(f"t AS ({turnout_upsert})")
        touched.append("SELECT ballot_id FROM t")
    if hourly_upsert is not None:
        parts.append(f"h AS ({hourly_upsert})")
        touched.append("SELECT ballot_id FROM h")
    rows = (f"(SELECT json_agg({_ROW_JSON}) FROM t WHERE t.ballot_id = b.ballot_id)"
            if turnout_upsert is not None else "NULL")
    hours = (f"(SELECT json_agg({_HOUR_JSON}) FROM h WHERE h.ballot_id = b.ballot_id)"
             if hourly_upsert is not None else "NULL")
    ballot_ids = [b if isinstance(b, uuid.UUID) else uuid.UUID(b) for b in ballots_changed]
    await conn.execute("SELECT pg_advisory_xact_lock($1)", FEED_LOCK)
    statement = (
        "WITH " + ", ".join([*parts, f"b AS ({' UNION '.join(touched)})"])
        + " INSERT INTO turnout_changes (ballot_id, changes) "
        f"SELECT b.ballot_id, json_build_object('rows', COALESCE({rows}, '[]'::json), "
        f"'hours', COALESCE({hours}, '[]'::json)) FROM b ORDER BY b.ballot_id "
        "RETURNING seq")
    numbers = sorted(r[0] for r in await conn.fetch(statement, ballot_ids))
    await _announce(conn, numbers)
    return numbers


async def record_reset(conn: asyncpg.Connection, ballot_ids: Sequence[uuid.UUID | str]
                       ) -> list[int]:
    """Append, per ballot, a feed row marked `reset` with every turnout row and hourly
    bucket it has now (after a rebuild replaced them), and notify."""
    if not ballot_ids:
        return []
    ids = sorted(b if isinstance(b, uuid.UUID) else uuid.UUID(b) for b in ballot_ids)
    await conn.execute("SELECT pg_advisory_xact_lock($1)", FEED_LOCK)
    numbers = sorted(r[0] for r in await conn.fetch(
        "INSERT INTO turnout_changes (ballot_id, changes) "
        "SELECT b.ballot_id, json_build_object('reset', true, "
        f"'rows', COALESCE((SELECT json_agg({_ROW_JSON}) FROM turnout t "
        "WHERE t.ballot_id = b.ballot_id), '[]'::json), "
        f"'hours', COALESCE((SELECT json_agg({_HOUR_JSON}) FROM turnout_hourly h "
        "WHERE h.ballot_id = b.ballot_id), '[]'::json)) "
        "FROM unnest($1::uuid[]) AS b(ballot_id) ORDER BY b.ballot_id RETURNING seq", ids))
    await _announce(conn, numbers)
    return numbers


async def _announce(conn: asyncpg.Connection, numbers: list[int]) -> None:
    if not numbers:
        return
    await conn.execute("SELECT pg_notify($1, $2)", CHANNEL, str(numbers[-1]))
    if any(n % PRUNE_EVERY == 0 for n in numbers):
        await conn.execute("DELETE FROM turnout_changes WHERE seq <= $1",
                           numbers[-1] - KEEP_LATEST)
