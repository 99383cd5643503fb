"""Consumers against a real broker and database: the inbox and the dead-letter path."""

from __future__ import annotations

import uuid

import pytest
import sqlalchemy as sa
from aiokafka import AIOKafkaProducer
from faststream.kafka import KafkaBroker
from sqlalchemy.ext.asyncio import create_async_engine

from tests.support.events import eventually
from tests.support.kafka import read_until
from turnout_events.ballots import Voted
from turnout_events.consumer import subscribe_events
from turnout_events.inbox import claim
from turnout_events.samples import sample_envelope
from turnout_events.serde import encode
from turnout_events.tables import metadata

pytestmark = pytest.mark.integration

# What the test consumer does for each event: one row per vote it was told about.
effects = sa.Table("votes_seen", sa.MetaData(),
                   sa.Column("event_id", sa.Uuid, primary_key=False),
                   sa.Column("member_id", sa.Uuid, nullable=False))


@pytest.fixture
async def engine(database_url):
    engine = create_async_engine(database_url)
    async with engine.begin() as conn:
        await conn.run_sync(metadata.create_all)
        await conn.run_sync(effects.metadata.create_all)
    yield engine
    await engine.dispose()


class Recorder:
    """The handler under test: applies each event once, through the inbox."""

    def __init__(self, engine) -> None:
        self.engine = engine
        self.deliveries: list[uuid.UUID] = []

    async def __call__(self, envelope, payload) -> None:
        self.deliveries.append(envelope.id)
        async with self.engine.begin() as conn:
            if await claim(conn, "test-consumer", envelope.id):
                await conn.execute(effects.insert().values(event_id=envelope.id,
                                                           member_id=payload.member_id))

    async def effect_count(self) -> int:
        async with self.engine.connect() as conn:
            query = sa.select(sa.func.count()).select_from(effects)
            return (await conn.execute(query)).scalar_one()


async def produce(bootstrap: str, topic: str, messages: list[tuple[bytes, bytes]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for key, value in messages:
            await producer.send_and_wait(topic, value=value, key=key)
    finally:
        await producer.stop()


@pytest.fixture
async def consumer(engine, topics, kafka_bootstrap):
    recorder = Recorder(engine)
    broker = KafkaBroker(kafka_bootstrap, enable_idempotence=True, acks="all")
    subscribe_events(broker, [topics.events("ballots")], group_id=f"g-{uuid.uuid4().hex[:8]}",
                     handler=recorder, dead_letter_topic=topics.dead_letter)
    await broker.start()
    yield recorder
    await broker.stop()


def voted_envelope(member_id: uuid.UUID):
    return sample_envelope(Voted, member_id=member_id)


async def test_a_redelivered_event_has_no_second_effect(consumer, topics, kafka_bootstrap):
    member = uuid.uuid4()
    first = voted_envelope(member)
    other = voted_envelope(uuid.uuid4())
    key = str(member).encode()
    # The same event twice (a relay that crashed before marking it published), then another.
    await produce(kafka_bootstrap, topics.events("ballots"),
                  [(key, encode(first)), (key, encode(first)),
                   (str(other.key).encode(), encode(other))])
    await eventually(lambda: len(consumer.deliveries) == 3, timeout=60,
                   what="three deliveries")
    assert consumer.deliveries.count(first.id) == 2
    assert await consumer.effect_count() == 2


async def test_malformed_events_go_to_the_dead_letter_topic_and_the_next_is_processed(
        consumer, topics, kafka_bootstrap):
    member = uuid.uuid4()
    key = str(member).encode()
    good = voted_envelope(member)
    not_json = b"\x00\xffnot json at all"
    bad_payload = encode(good).replace(str(member).encode(), b"07700 900123")
    await produce(kafka_bootstrap, topics.events("ballots"),
                  [(key, not_json), (key, bad_payload), (key, encode(good))])
    await eventually(lambda: good.id in consumer.deliveries, timeout=60,
                   what="the good event after two bad ones")
    assert await consumer.effect_count() == 1

    dead = await read_until(kafka_bootstrap, [topics.dead_letter], count=2, timeout=30)
    assert [r.value for r in dead] == [not_json, bad_payload]
    for record in dead:
        headers = {k: v.decode() for k, v in record.headers}
        assert headers["dead-letter-reason"] == "invalid"
        assert headers["dead-letter-topic"] == topics.events("ballots")
        assert headers["dead-letter-partition"].isdigit()
        assert headers["dead-letter-offset"].isdigit()
        assert record.key == key
    not_json_error = dict(dead[0].headers)["dead-letter-error"].decode()
    payload_error = dict(dead[1].headers)["dead-letter-error"].decode()
    assert "not UTF-8 JSON" in not_json_error
    assert "member_id" in payload_error
    assert "07700" not in payload_error  # the offending value is never echoed
    offsets = [int(dict(r.headers)["dead-letter-offset"]) for r in dead]
    assert offsets[1] == offsets[0] + 1


async def test_unknown_event_types_are_ignored_without_dead_lettering(
        consumer, topics, kafka_bootstrap):
    member = uuid.uuid4()
    future = sample_envelope(Voted, member_id=member).model_copy(
        update={"type": "ballots.something-new", "version": 1})
    newer = sample_envelope(Voted, member_id=member).model_copy(update={"version": 9})
    good = voted_envelope(member)
    key = str(member).encode()
    await produce(kafka_bootstrap, topics.events("ballots"),
                  [(key, encode(future)), (key, encode(newer)), (key, encode(good))])
    await eventually(lambda: good.id in consumer.deliveries, timeout=60, what="the known event")
    assert consumer.deliveries == [good.id]
    assert await read_until(kafka_bootstrap, [topics.dead_letter], count=0, timeout=2) == []
