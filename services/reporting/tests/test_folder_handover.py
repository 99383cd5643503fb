"""Partitions that change hands early in a first fold, as they do while fold processes
or instances join one after the other: the folder taking them over reads every stored
member id (there are few yet) instead of asking the database about each member it
meets, and the numbers stay exact — with the ids read, and without (too many stored)."""

from __future__ import annotations

import zlib
from collections import defaultdict

import asyncpg
import pytest
from aiokafka import ConsumerRecord, TopicPartition
from turnout_reporting.main import MIGRATIONS
from turnout_reporting.projections import folder as folder_module
from turnout_reporting.projections.fold import COUNTS
from turnout_reporting.projections.folder import Folder
from turnout_reporting.projections.store import fold_pool, stored_member_ids
from turnout_reporting.synthetic import generate_ballot

from services.reporting.tests.events import as_envelope
from turnout_events.database_url import asyncpg_dsn
from turnout_events.serde import encode
from turnout_kit.db import run_migrations

pytestmark = pytest.mark.integration

GROUP = "handover.reporting"
PARTITIONS = 2
SOURCES = ("contacts", "ballots", "notifications")
TOPICS = [f"handover.{source}.events" for source in SOURCES]
CHUNK = 150  # records per partition per batch


def records_by_partition(ballot) -> dict[TopicPartition, list[ConsumerRecord]]:
    """The ballot's events as a broker would hold them: keyed by member (or ballot), a
    key on the same partition number of every topic."""
    by_partition: dict[TopicPartition, list[ConsumerRecord]] = defaultdict(list)
    for wire in ballot.events:
        envelope = as_envelope(wire)
        key = envelope.key.encode()
        tp = TopicPartition(f"handover.{envelope.source}.events",
                            zlib.crc32(key) % PARTITIONS)
        records = by_partition[tp]
        records.append(record(tp, len(records), int(envelope.occurred_at.timestamp() * 1000),
                              key, encode(envelope)))
    return by_partition


def record(tp: TopicPartition, offset: int, timestamp: int, key: bytes | None,
           value: bytes) -> ConsumerRecord:
    return ConsumerRecord(tp.topic, tp.partition, offset, timestamp, 0, key, value, None,
                          len(key or b""), len(value), ())


async def fold_through(folder: Folder, records: dict[TopicPartition, list[ConsumerRecord]],
                       number: int, start: float, end: float) -> None:
    """Fold partition `number`'s records from `start` to `end` (fractions of each
    topic's records), in batches, each committed before the next is prepared."""
    spans = {tp: (int(len(rs) * start), int(len(rs) * end))
             for tp, rs in records.items() if tp.partition == number}
    while any(lo < hi for lo, hi in spans.values()):
        fetched = {}
        for tp, (lo, hi) in spans.items():
            if lo < hi:
                fetched[tp] = records[tp][lo:min(hi, lo + CHUNK)]
                spans[tp] = (lo + len(fetched[tp]), hi)
        batch = await folder.prepare(fetched)
        await folder.settle()
        if batch is not None:
            folder.start_commit(batch)
    await folder.settle()


async def numbers(database_url: str) -> dict[tuple, list[int]]:
    conn = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        rows = await conn.fetch("SELECT * FROM turnout WHERE eligible > 0")
    finally:
        await conn.close()
    return {(r["ballot_id"], r["level"], r["group_code"], r["branch_code"],
             r["workplace_code"]): [r[c] for c in COUNTS] for r in rows}


async def no_dead_letters(record, error) -> None:
    raise AssertionError(f"dead-lettered: {error}")


@pytest.mark.parametrize("load_limit", [folder_module.FRESH_LOAD_LIMIT, 1],
                         ids=["ids-read", "too-many-to-read"])
async def test_partitions_taken_over_early_are_folded_exactly(database_url, monkeypatch,
                                                              load_limit):
    monkeypatch.setattr(folder_module, "FRESH_LOAD_LIMIT", load_limit)
    ballot = generate_ballot(members=400, seed=11)
    records = records_by_partition(ballot)
    await run_migrations(MIGRATIONS, database_url)
    pools = [await fold_pool(database_url, f"handover-{n}") for n in (1, 2)]
    try:
        first = Folder(pools[0], GROUP, TOPICS, no_dead_letters)
        await first.own([(t, p) for t in TOPICS for p in range(PARTITIONS)])
        assert first._stored.fresh == {0, 1}  # nothing folded yet
        for number in range(PARTITIONS):
            await fold_through(first, records, number, 0.0, 0.4)

        # A second folder joins: partition number 1 moves to it.
        first.release()
        await first.own([(t, 0) for t in TOPICS])
        second = Folder(pools[1], GROUP, TOPICS, no_dead_letters)
        await second.own([(t, 1) for t in TOPICS])
        assert first._stored.fresh == {0}  # its own, folded by nobody else since
        # Folded by the first: fresh again only if every stored id could be read.
        assert second._stored.fresh == ({1} if load_limit > 1 else set())

        await fold_through(first, records, 0, 0.4, 1.0)
        await fold_through(second, records, 1, 0.4, 1.0)
    finally:
        for pool in pools:
            await pool.close()
    assert await numbers(database_url) == ballot.truth


async def test_stored_ids_are_read_only_while_few(database_url):
    await run_migrations(MIGRATIONS, database_url)
    conn = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        await conn.execute(
            "INSERT INTO member_states SELECT gen_random_uuid(), 1, true, false, false, 1, "
            "'G1', 'B1', NULL FROM generate_series(1, 50)")
        assert len(await stored_member_ids(conn, 100)) == 50
        assert await stored_member_ids(conn, 49) is None  # read, and found too many
        # Estimated (by the last ANALYZE) at more than twice the limit: not read at all,
        # even though most have gone since.
        await conn.execute("ANALYZE member_states")
        await conn.execute("DELETE FROM member_states WHERE member_id IN "
                           "(SELECT member_id FROM member_states LIMIT 45)")
        assert await stored_member_ids(conn, 20) is None
        assert len(await stored_member_ids(conn, 30)) == 5  # 50 is not above 60
    finally:
        await conn.close()


async def test_records_of_no_member_are_dead_lettered_where_states_are_looked_up(
        database_url, monkeypatch):
    """A folder that took over partitions it cannot know the stored members of asks the
    database about every key it meets — including a malformed record's, which names no
    member: it is dead-lettered, and the batch around it still counts."""
    monkeypatch.setattr(folder_module, "FRESH_LOAD_LIMIT", 1)
    ballot = generate_ballot(members=200, seed=12)
    records = records_by_partition(ballot)
    await run_migrations(MIGRATIONS, database_url)
    pool = await fold_pool(database_url, "handover-bad-keys")
    partitions = [(t, p) for t in TOPICS for p in range(PARTITIONS)]
    dead: list[str] = []

    async def dead_letter(record, error) -> None:
        dead.append(error)

    try:
        first = Folder(pool, GROUP, TOPICS, no_dead_letters)
        await first.own(partitions)
        for number in range(PARTITIONS):
            await fold_through(first, records, number, 0.0, 0.5)
        first.release()
        second = Folder(pool, GROUP, TOPICS, dead_letter)
        await second.own(partitions)
        assert second._stored.fresh == set()  # more stored than it may read: it asks

        for number in range(PARTITIONS):
            await fold_through(second, records, number, 0.5, 1.0)
        # Then a batch of records that no member's events are: one not an event at all,
        # and a vote keyed by nothing, by '' and by another member.
        tp = TopicPartition(TOPICS[1], 0)  # ballots
        vote = next(r for r in records[tp] if b'"ballots.voted"' in r.value)
        other = next(r.key for r in records[tp] if r.key != vote.key)
        bad = [(b"k1", b"{not json"), (None, vote.value), (b"", vote.value),
               (other, vote.value)]
        end = len(records[tp])
        fetched = {tp: [record(tp, end + n, vote.timestamp, key, value)
                        for n, (key, value) in enumerate(bad)]}
        batch = await second.prepare(fetched)
        await second.settle()
        assert batch is not None
        second.start_commit(batch)
        await second.settle()
    finally:
        await pool.close()
    assert len(dead) == len(bad)
    assert sum(error == folder_module.MISKEYED for error in dead) == 3
    assert await numbers(database_url) == ballot.truth
