"""The outbox relay against a real broker and a real database."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import defaultdict

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from tests.support.events import eventually
from tests.support.kafka import read_until
from turnout_events.envelope import Envelope
from turnout_events.outbox import add_events
from turnout_events.relay import OutboxRelay, RelaySettings
from turnout_events.serde import decode
from turnout_events.tables import metadata, outbox

pytestmark = pytest.mark.integration


def make_envelopes(n: int, keys: list[str], source: str = "ballots") -> list[Envelope]:
    return [
        Envelope(id=uuid.uuid4(), type=f"{source}.relay-test", version=1,
                 occurred_at="2026-11-25T10:00:00Z", recorded_at="2026-11-25T10:00:00Z",
                 source=source, key=keys[i % len(keys)], actor="system",
                 data={"n": i, "key": keys[i % len(keys)]})
        for i in range(n)
    ]


@pytest.fixture
async def engine(database_url):
    engine = create_async_engine(database_url)
    async with engine.begin() as conn:
        await conn.run_sync(metadata.create_all)
    yield engine
    await engine.dispose()


async def write_in_transactions(engine, envelopes, topics, per_tx: int = 50) -> None:
    for i in range(0, len(envelopes), per_tx):
        async with engine.begin() as conn:
            await add_events(conn, envelopes[i:i + per_tx], topics)


def assert_exactly_once_in_order(records, envelopes) -> None:
    seen = [decode(r.value) for r in records]
    ids = [e.id for e in seen]
    assert len(ids) == len(set(ids)), "an event was published more than once"
    assert set(ids) == {e.id for e in envelopes}, "an event is missing"
    # Per key, the topic order is the order the events were written in.
    written: dict[str, list[int]] = defaultdict(list)
    for e in envelopes:
        written[e.key].append(e.data["n"])
    published: dict[str, list[int]] = defaultdict(list)
    for r, e in sorted(zip(records, seen, strict=True),
                       key=lambda p: (p[0].topic, p[0].partition, p[0].offset)):
        assert r.key.decode() == e.key
        published[e.key].append(e.data["n"])
    assert published == written


async def unpublished(engine) -> int:
    async with engine.connect() as conn:
        return (await conn.execute(
            sa.select(sa.func.count()).select_from(outbox).where(outbox.c.published_at.is_(None))
        )).scalar_one()


async def test_relay_publishes_committed_events_in_order_per_key(engine, topics, kafka_bootstrap,
                                                                  database_url):
    keys = [str(uuid.uuid4()) for _ in range(7)]
    envelopes = make_envelopes(300, keys)
    relay = OutboxRelay(database_url, kafka_bootstrap, service="ballots")
    relay.start()
    try:
        await write_in_transactions(engine, envelopes, topics)
        records = await read_until(kafka_bootstrap, [topics.events("ballots")], count=300)
        assert_exactly_once_in_order(records, envelopes)
        await eventually(lambda: drained(engine), timeout=30,
                       what="every outbox row marked published")
    finally:
        await relay.stop()


async def test_rolled_back_events_are_never_published(engine, topics, kafka_bootstrap,
                                                      database_url):
    kept, dropped = make_envelopes(5, ["k1"]), make_envelopes(5, ["k2"])
    relay = OutboxRelay(database_url, kafka_bootstrap, service="ballots")
    relay.start()
    try:
        with pytest.raises(RuntimeError):
            async with engine.begin() as conn:
                await add_events(conn, dropped, topics)
                raise RuntimeError("the state change failed")
        await write_in_transactions(engine, kept, topics)
        records = await read_until(kafka_bootstrap, [topics.events("ballots")], count=5,
                                   timeout=30)
        assert {decode(r.value).id for r in records} == {e.id for e in kept}
    finally:
        await relay.stop()


async def test_broker_down_before_writes_then_back_delivers_exactly_once(
        engine, topics, kafka_bootstrap, database_url, infra):
    if "kafka:local-runtime" not in infra.how:
        pytest.skip("stopping the broker needs the local runtime's broker")
    from turnout_local.kafka import LocalKafka

    broker = LocalKafka()
    keys = [str(uuid.uuid4()) for _ in range(20)]
    envelopes = make_envelopes(1000, keys)
    relay = OutboxRelay(database_url, kafka_bootstrap, service="ballots",
                        settings=RelaySettings(backoff_max=2.0, batch_size=250))
    await asyncio.to_thread(broker.stop)
    try:
        down_since = time.monotonic()
        relay.start()
        # The state changes keep committing while the broker is away.
        await write_in_transactions(engine, envelopes, topics)
        assert await unpublished(engine) == 1000
        await eventually(lambda: relay.publish_failures >= 3, timeout=30,
                       what="the relay to try (and fail) to reach the stopped broker")
        # No busy loop while down: attempts are spaced by the backoff (>= 0.16 s at first,
        # doubling up to 2 s), so only a handful of attempts fit in the time it was down.
        down_for = time.monotonic() - down_since
        assert relay.publish_failures <= 3 + down_for / 0.16
        assert relay.published == 0
    finally:
        await asyncio.to_thread(broker.start)
    try:
        records = await read_until(kafka_bootstrap, [topics.events("ballots")], count=1000,
                                   timeout=90)
        assert_exactly_once_in_order(records, envelopes)
        await eventually(lambda: drained(engine), timeout=30,
                       what="the backlog to drain")
    finally:
        await relay.stop()


async def test_two_relays_never_publish_a_row_twice(engine, topics, kafka_bootstrap,
                                                    database_url):
    keys = [str(uuid.uuid4()) for _ in range(10)]
    envelopes = make_envelopes(1200, keys)
    first = OutboxRelay(database_url, kafka_bootstrap, service="ballots",
                        settings=RelaySettings(standby_interval=0.2, batch_size=100))
    second = OutboxRelay(database_url, kafka_bootstrap, service="ballots",
                         settings=RelaySettings(standby_interval=0.2, batch_size=100))
    first.start()
    second.start()
    try:
        await write_in_transactions(engine, envelopes[:600], topics)
        await eventually(lambda: first.published + second.published >= 300, timeout=60,
                       what="publishing to start")
        # The leader goes away mid-stream; the standby takes over where it stopped.
        leader = first if first.is_leader else second
        await leader.stop()
        await write_in_transactions(engine, envelopes[600:], topics)
        records = await read_until(kafka_bootstrap, [topics.events("ballots")], count=1200,
                                   timeout=90)
        assert_exactly_once_in_order(records, envelopes)
        await eventually(lambda: drained(engine), timeout=30,
                       what="every row marked published")
        assert first.published + second.published == 1200
    finally:
        await first.stop()
        await second.stop()


async def drained(engine) -> bool:
    return await unpublished(engine) == 0
