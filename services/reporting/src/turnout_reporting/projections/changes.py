"""The change feed: what each committed batch changed, for the live stream.

Every batch that changes a turnout row or an hourly bucket writes one `turnout_changes`
row per ballot it touched — the rows' values *after* the batch — and a NOTIFY, both in
the batch's own transaction: a listener is woken only by committed changes, and the feed
holds exactly what was committed, whichever reporting instance folded it. A stream
client resumes from the last `seq` it saw (`Last-Event-ID`) by reading the feed.

The feed is ordered by `seq` in commit order: each writer takes one transaction-level
advisory lock just before drawing its `seq`, held until it commits, so a reader that has
seen seq N will never later find a smaller committed seq it missed (with two instances
folding at once, a bare sequence could commit 11 before 10).
"""

from __future__ import annotations

import json
import uuid
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import asyncpg

from .fold import COUNTS

CHANNEL = "turnout_changes"
# pg_advisory_xact_lock key serialising feed writers: any fixed bigint unique to it.
FEED_LOCK = 0x7475726E6F7574  # "turnout"
# Rows kept for clients that reconnect; older resumptions get a full snapshot instead.
KEEP_LATEST = 10_000
PRUNE_EVERY = 500  # feed rows written between two prunes


def _unit(row: asyncpg.Record | dict[str, Any]) -> dict[str, Any]:
    return {"level": row["level"], "group_code": row["group_code"],
            "branch_code": row["branch_code"], "workplace_code": row["workplace_code"]}


async def record_changes(conn: asyncpg.Connection, turnout_rows: Sequence[asyncpg.Record],
                         hourly_rows: Sequence[asyncpg.Record],
                         ballots_changed: Sequence[uuid.UUID] = ()) -> list[int]:
    """Append one feed row per touched ballot and notify; returns the new seqs.

    `turnout_rows` are full `turnout` rows after the batch and `hourly_rows` full
    `turnout_hourly` rows (both as returned by the upserts' RETURNING)."""
    per_ballot: dict[uuid.UUID, dict[str, list[dict[str, Any]]]] = defaultdict(
        lambda: {"rows": [], "hours": []})
    for r in turnout_rows:
        per_ballot[r["ballot_id"]]["rows"].append(
            {**_unit(r), **{name: r[name] for name in COUNTS}})
    for r in hourly_rows:
        per_ballot[r["ballot_id"]]["hours"].append(
            {**_unit(r), "hour": r["hour"].isoformat(), "votes": r["votes"]})
    for ballot_id in ballots_changed:
        per_ballot[ballot_id]  # the ballot's name, threshold or dates changed
    if not per_ballot:
        return []
    await conn.execute("SELECT pg_advisory_xact_lock($1)", FEED_LOCK)
    ballot_ids = sorted(per_ballot)
    seqs = await conn.fetch(
        "INSERT INTO turnout_changes (ballot_id, changes) "
        "SELECT * FROM unnest($1::uuid[], $2::jsonb[]) RETURNING seq",
        ballot_ids, [json.dumps(per_ballot[b]) for b in ballot_ids])
    numbers = [r["seq"] for r in seqs]
    await conn.execute("SELECT pg_notify($1, $2)", CHANNEL, str(max(numbers)))
    if any(n % PRUNE_EVERY == 0 for n in numbers):
        await conn.execute("DELETE FROM turnout_changes WHERE seq <= $1",
                           max(numbers) - KEEP_LATEST)
    return numbers
