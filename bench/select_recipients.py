"""Choosing a reminder's recipients for a 1,000,000-member ballot (limit: 5 s).

    uv run python bench/select_recipients.py [--members 1000000]

On a database of its own (migrated like the service's), fills the notifications state by
SQL — the roll (10% voted), contact flags (90% with a mobile, 80% with SMS consent), 1%
opted out, 2% texted in the last 24 hours by another campaign — then times the service's
own `audience.select_slot`: the one statement that classifies every enrolled member and
queues a message (with its idempotency key) for each recipient, committed. Tables are
ANALYZEd first, as autovacuum would have done on a live system.

Uses the server named by DATABASE_URL, else the local runtime.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import asyncpg  # noqa: E402
from turnout_notifications.main import MIGRATIONS  # noqa: E402
from turnout_notifications.service.audience import select_slot  # noqa: E402

from tests.support.infra import provide_infra  # noqa: E402
from tests.support.isolation import create_database, drop_database  # noqa: E402
from turnout_events.relay import asyncpg_dsn  # noqa: E402
from turnout_kit.db import create_engine, run_migrations  # noqa: E402
from turnout_kit.logging import configure_logging  # noqa: E402

LIMIT_SECONDS = 5.0
NOW = datetime(2026, 3, 20, 12, 0, tzinfo=UTC)


async def fill(dsn: str, members: int, ballot_id: uuid.UUID, campaign_id: uuid.UUID) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(
            "INSERT INTO ballots (ballot_id, name, opens_at, closes_at) "
            "VALUES ($1, 'Bench ballot', $2, $3)",
            ballot_id, NOW - timedelta(days=18), NOW + timedelta(days=3))
        await conn.execute(
            "CREATE TEMP TABLE ids AS SELECT i, gen_random_uuid() AS member_id "
            "FROM generate_series(1, $1) AS i", members)
        await conn.execute(
            "INSERT INTO roll (ballot_id, member_id, enrolled, group_code, branch_code, "
            "workplace_code, voted, voted_changed_at) "
            "SELECT $1, member_id, true, 'G' || (i % 12), 'B' || (i % 400), "
            "'W' || (i % 5000), i % 10 = 0, CASE WHEN i % 10 = 0 THEN $2::timestamptz END FROM ids",
            ballot_id, NOW - timedelta(days=1))
        await conn.execute(
            "INSERT INTO member_contact (member_id, member_version, has_mobile, sms_consent, "
            "has_email, email_consent) "
            "SELECT member_id, 1, i % 10 <> 1, i % 5 <> 2, false, false FROM ids")
        await conn.execute(
            "INSERT INTO opt_outs (member_id, channel, received_at) "
            "SELECT member_id, 'sms', $1 FROM ids WHERE i % 100 = 3", NOW - timedelta(days=2))
        # Another campaign texted 2% of the members in the last day (the cap applies).
        await conn.execute(
            "INSERT INTO campaigns (campaign_id, ballot_id, channel, template, quiet_start, "
            "quiet_end, timezone, max_per_day, status, created_by) VALUES "
            "($1, $2, 'sms', 'Hi', '21:00', '09:00', 'Europe/London', 1, 'active', "
            "'national:bench')", campaign_id, ballot_id)
        await conn.execute(
            "INSERT INTO messages (message_id, idempotency_key, campaign_id, slot, ballot_id, "
            "member_id, channel, status, attempted_at) "
            "SELECT gen_random_uuid(), member_id::text || ':earlier', $1, 0, $2, member_id, "
            "'sms', 'sent', $3 FROM ids WHERE i % 50 = 9",
            uuid.uuid4(), ballot_id, NOW - timedelta(hours=5))
        await conn.execute("ANALYZE")
    finally:
        await conn.close()


async def main(server_url: str, members: int) -> int:
    url = await create_database(server_url)
    try:
        await run_migrations(MIGRATIONS, url)
        ballot_id, campaign_id = uuid.uuid4(), uuid.uuid4()
        started = time.perf_counter()
        await fill(asyncpg_dsn(url), members, ballot_id, campaign_id)
        print(f"filled the state for {members:,} members in "
              f"{time.perf_counter() - started:.1f} s")
        engine = create_engine(url)
        try:
            async with engine.begin() as conn:
                started = time.perf_counter()
                counts = await select_slot(conn, campaign_id=campaign_id, slot=1,
                                           ballot_id=ballot_id, cap=1, now=NOW)
            elapsed = time.perf_counter() - started  # the commit included
        finally:
            await engine.dispose()
    finally:
        await drop_database(server_url, url)
    total = sum(counts.values())
    print("selected: " + ", ".join(f"{k} {v:,}" for k, v in sorted(counts.items())))
    ok = total == members and elapsed < LIMIT_SECONDS
    print(f"audience selection for {members:,} members: {elapsed:.2f} s "
          f"(limit {LIMIT_SECONDS:.0f} s; {elapsed / LIMIT_SECONDS:.2f} of the limit) "
          f"{'OK' if ok else 'FAILED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=1_000_000)
    args = parser.parse_args()
    configure_logging("bench", "WARNING", json=True)
    with provide_infra() as infra:  # sync: it may start the local runtime
        code = asyncio.run(main(infra.database_url, args.members))
    sys.exit(code)
