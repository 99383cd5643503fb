"""Choosing a reminder's recipients for a 1,000,000-member ballot (limit: 5 s), and how
fast the dispatcher sends through the sandbox provider (against the provider rate it is
configured to keep to).

    uv run python bench/select_recipients.py [--members 1000000] [--send 2000]
                                             [--throttled 60]

On a database of its own (migrated like the service's), fills the notifications state by
SQL — the roll (10% voted), contact flags (90% with a mobile, 80% with SMS consent), 1%
opted out, 2% texted in the last 24 hours by another campaign — and ANALYZEs it, as
autovacuum would have done on a live system. Then:

1. selection: times the service's own `audience.select_slot` over the whole roll — the
   one statement that classifies every enrolled member, counts who is left out by branch
   and reason and freezes the recipients' ids — committed, and checks its counts against
   the same rules applied independently in Python to the generator's formulas;
2. taking: times `audience.take_batch`, which turns the next frozen recipients into
   queued messages (with their idempotency keys) as the dispatcher sends;
3. sending: a campaign over a few workplaces, run by the real dispatcher (re-checks,
   claim before the call, render, sandbox provider, reminder-sent into the outbox) with
   numbers from a fake contacts server over HTTP, first with no rate limit (what the
   dispatcher can do) and then at the configured provider rate (what it does).

Wall-clock figures are noisy on a shared machine, so CPU is reported too: this process
(the dispatcher, and the in-process fake contacts server and sandbox) and the PostgreSQL
backends serving it (read from /proc when the server runs on this machine).

Uses the server named by DATABASE_URL, else the local runtime.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import asyncpg  # noqa: E402
import sqlalchemy as sa  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402
from turnout_notifications.context import NotificationsContext  # noqa: E402
from turnout_notifications.db.tables import campaign_slots, campaigns  # noqa: E402
from turnout_notifications.main import MIGRATIONS  # noqa: E402
from turnout_notifications.providers.sandbox import SandboxProvider  # noqa: E402
from turnout_notifications.service.audience import select_slot, take_batch  # noqa: E402
from turnout_notifications.service.channels import ContactChannels  # noqa: E402
from turnout_notifications.service.dispatcher import Dispatcher, limiter_for  # noqa: E402
from turnout_notifications.settings import NotificationsSettings  # noqa: E402

from services.notifications.tests.support import fake_contacts_server  # noqa: E402
from tests.support.infra import provide_infra  # noqa: E402
from tests.support.isolation import create_database, drop_database  # noqa: E402
from turnout_events.database_url import asyncpg_dsn  # noqa: E402
from turnout_kit.db import create_engine, run_migrations, session_factory  # noqa: E402
from turnout_kit.logging import configure_logging  # noqa: E402

LIMIT_SECONDS = 5.0
NOW = datetime(2026, 3, 20, 12, 0, tzinfo=UTC)  # noon in London: outside quiet hours
WORKPLACES = 5000


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
            f"'W' || (i % {WORKPLACES}), i % 10 = 0, "
            "CASE WHEN i % 10 = 0 THEN $2::timestamptz END FROM ids",
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


def expected_counts(members: int, workplaces: set[int] | None = None) -> Counter[str]:
    """The generator's formulas, classified by the service's rules in their order."""
    counts: Counter[str] = Counter()
    for i in range(1, members + 1):
        if workplaces is not None and i % WORKPLACES not in workplaces:
            continue
        if i % 10 == 0:
            counts["voted"] += 1
        elif i % 100 == 3:
            counts["opted_out"] += 1
        elif i % 5 == 2:
            counts["no_consent"] += 1
        elif i % 10 == 1:
            counts["no_mobile"] += 1
        elif i % 50 == 9:
            counts["capped"] += 1
        else:
            counts["recipients"] += 1
    return counts


# -- CPU, ours and the database's ----------------------------------------------------------

_TICK = os.sysconf("SC_CLK_TCK")


def _proc_cpu(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None  # the server is elsewhere, or not ours to read
    return (int(fields[11]) + int(fields[12])) / _TICK


class DatabaseCpu:
    """CPU seconds of the PostgreSQL backends connected to one database."""

    def __init__(self, dsn: str, database: str) -> None:
        self.dsn, self.database = dsn, database

    async def sample(self) -> dict[int, float]:
        conn = await asyncpg.connect(self.dsn)
        try:
            pids = [r[0] for r in await conn.fetch(
                "SELECT pid FROM pg_stat_activity WHERE datname = $1 "
                "AND pid <> pg_backend_pid()", self.database)]
        finally:
            await conn.close()
        return {pid: cpu for pid in pids if (cpu := _proc_cpu(pid)) is not None}

    @staticmethod
    def used(before: dict[int, float], after: dict[int, float]) -> float | None:
        if not after:
            return None
        return sum(cpu - before.get(pid, 0.0) for pid, cpu in after.items())


def _cpu(seconds: float | None) -> str:
    return "n/a" if seconds is None else f"{seconds:.2f} s"


# -- the three measurements -----------------------------------------------------------------

async def measure_selection(url: str, ballot_id: uuid.UUID, campaign_id: uuid.UUID
                            ) -> tuple[float, float | None, dict[str, int]]:
    """Wall seconds (the commit included), the PostgreSQL backend's CPU seconds, and the
    counts."""
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            pid = await conn.scalar(sa.text("SELECT pg_backend_pid()"))
            await conn.commit()
            db_before, started = _proc_cpu(pid), time.perf_counter()
            async with conn.begin():
                counts = await select_slot(conn, campaign_id=campaign_id, slot=1,
                                           ballot_id=ballot_id, cap=1, now=NOW)
            elapsed = time.perf_counter() - started
            db_after = _proc_cpu(pid)
    finally:
        await engine.dispose()
    db = None if db_before is None or db_after is None else db_after - db_before
    return elapsed, db, counts


async def measure_taking(url: str, ballot_id: uuid.UUID, campaign_id: uuid.UUID) -> None:
    """What the dispatcher does a batch at a time as it sends."""
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            batches, n, taken = 25, 200, 0
            started, cpu_started = time.perf_counter(), time.process_time()
            for _ in range(batches):
                async with conn.begin():
                    taken += len(await take_batch(conn, campaign_id=campaign_id,
                                                  ballot_id=ballot_id, n=n))
            took = (time.perf_counter() - started) / batches
            took_cpu = (time.process_time() - cpu_started) / batches
            # This campaign was only for measuring: stop it before the sending runs.
            await conn.execute(sa.update(campaigns).where(
                campaigns.c.campaign_id == campaign_id).values(status="cancelled"))
            await conn.commit()
    finally:
        await engine.dispose()
    assert taken == batches * n, taken
    print(f"taking frozen recipients into queued messages, {batches} batches of {n}: "
          f"{took * 1000:.1f} ms per batch ({took_cpu * 1000:.1f} ms CPU here); at 20 "
          f"messages/s a batch of {n} lasts {n / 20:.0f} s")


class TimedSandbox(SandboxProvider):
    """The sandbox, noting when each call reached it."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.calls: list[float] = []

    async def send(self, **kwargs):
        self.calls.append(time.monotonic())
        return await super().send(**kwargs)

    def busiest_second(self) -> int:
        calls, busiest, first = sorted(self.calls), 0, 0
        for last, at in enumerate(calls):
            while at - calls[first] >= 1.0:
                first += 1
            busiest = max(busiest, last - first + 1)
        return busiest


async def measure_sending(url: str, server_url: str, ballot_id: uuid.UUID, *,
                          members: int, target: int, throttled: int) -> None:
    settings = NotificationsSettings()
    configured_rate = settings.provider_rate_per_second
    # Workplace w holds the members i = w (mod 5000), who all fall in the same class
    # (5000 is a multiple of 10, 50 and 100): take workplaces of recipients until each
    # run has about its number.
    per_workplace = members // WORKPLACES
    recipient_workplaces = iter(w for w in range(WORKPLACES)
                                if expected_counts(WORKPLACES, {w})["recipients"])
    groups = [[next(recipient_workplaces) for _ in range(max(1, round(n / per_workplace)))]
              for n in (10, target, throttled)]
    database = make_url(url).database
    cpu_probe = DatabaseCpu(asyncpg_dsn(server_url), database)
    async with fake_contacts_server() as contacts:
        contacts.everyone = True
        settings = settings.model_copy(update={"database_url": url,
                                               "contacts_url": contacts.url})
        ctx = NotificationsContext.from_settings(settings, clock=lambda: NOW)
        ctx.engine = create_engine(url)
        ctx.sessions = session_factory(ctx.engine)
        channels = ContactChannels(settings)
        try:
            # The warm-up loads what loads lazily (phone number metadata, prepared
            # statements), which is not the cost of a message.
            for label, workplaces, rate in (("warm-up", groups[0], 1e9),
                                            ("no rate limit", groups[1], 1e9),
                                            ("at the configured rate", groups[2],
                                             configured_rate)):
                if label == "at the configured rate" and throttled <= 0:
                    continue
                campaign_id = uuid.uuid4()
                async with ctx.engine.begin() as conn:
                    await conn.execute(sa.insert(campaigns).values(
                        campaign_id=campaign_id, ballot_id=ballot_id, channel="sms",
                        template="Hi {first_name}, {days_left} days left to vote in the "
                                 "{ballot_name}.",
                        quiet_start=settings.quiet_hours_start,
                        quiet_end=settings.quiet_hours_end, timezone=settings.timezone,
                        max_per_day=1, workplace_codes=[f"W{w}" for w in workplaces],
                        status="active", created_by="national:bench"))
                    await conn.execute(sa.insert(campaign_slots).values(
                        campaign_id=campaign_id, slot=0, spec="P3D", due_at=NOW))
                provider = TimedSandbox(ctx.sessions, ctx.clock)
                dispatcher = Dispatcher(ctx, provider, channels, limiter=limiter_for(rate))
                assert await dispatcher.select_due() == 1
                expected = expected_counts(members, set(workplaces))["recipients"]
                db_before = await cpu_probe.sample()
                started, cpu_started = time.perf_counter(), time.process_time()
                sent = await dispatcher.send_queued()
                elapsed = time.perf_counter() - started
                ours = time.process_time() - cpu_started
                db = DatabaseCpu.used(db_before, await cpu_probe.sample())
                assert sent == expected, (sent, expected)
                if label == "warm-up":
                    continue
                rate_seen = sent / elapsed
                db_ms = "n/a" if db is None else f"{db / sent * 1000:.2f} ms"
                print(f"sandbox send rate, {label}: {sent:,} messages in {elapsed:.1f} s = "
                      f"{rate_seen:,.1f} messages/s (configured provider rate "
                      f"{configured_rate:g}/s; {rate_seen / configured_rate:.2f}x it); "
                      f"at most {provider.busiest_second()} in any one second; "
                      f"CPU per message: this process {ours / sent * 1000:.2f} ms, "
                      f"PostgreSQL {db_ms}")
        finally:
            await channels.aclose()
            await ctx.engine.dispose()


async def main(server_url: str, members: int, send: int, throttled: int) -> int:
    url = await create_database(server_url)
    try:
        await run_migrations(MIGRATIONS, url)
        ballot_id, campaign_id = uuid.uuid4(), uuid.uuid4()
        started = time.perf_counter()
        await fill(asyncpg_dsn(url), members, ballot_id, campaign_id)
        print(f"filled the state for {members:,} members in "
              f"{time.perf_counter() - started:.1f} s")
        elapsed, db_cpu, counts = await measure_selection(url, ballot_id, campaign_id)
        exact = counts == expected_counts(members)
        print("selected: " + ", ".join(f"{k} {v:,}" for k, v in sorted(counts.items()))
              + (" (exactly as computed independently)" if exact else
                 f" — WRONG, expected {dict(expected_counts(members))}"))
        ok = exact and elapsed < LIMIT_SECONDS
        print(f"audience selection for {members:,} members: {elapsed:.2f} s "
              f"(limit {LIMIT_SECONDS:.0f} s; {elapsed / LIMIT_SECONDS:.2f} of the limit; "
              f"PostgreSQL CPU {_cpu(db_cpu)}) {'OK' if ok else 'FAILED'}")
        await measure_taking(url, ballot_id, campaign_id)
        if send > 0:
            await measure_sending(url, server_url, ballot_id, members=members,
                                  target=send, throttled=throttled)
    finally:
        await drop_database(server_url, url)
    return 0 if ok else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=1_000_000)
    parser.add_argument("--send", type=int, default=2000,
                        help="about how many messages the unthrottled send run sends")
    parser.add_argument("--throttled", type=int, default=60,
                        help="about how many the run at the configured rate sends (0: skip)")
    args = parser.parse_args()
    configure_logging("bench", "WARNING", json=True)
    with provide_infra() as infra:  # sync: it may start the local runtime
        code = asyncio.run(main(infra.database_url, args.members, args.send, args.throttled))
    sys.exit(code)
