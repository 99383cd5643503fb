"""The batch consumer: one transaction per batch, duplicates applied once, invalid and
failing events dead-lettered without holding back the rest."""

from __future__ import annotations

import uuid

import pytest
import sqlalchemy as sa
from aiokafka import AIOKafkaProducer
from faststream.kafka import KafkaBroker
from sqlalchemy.ext.asyncio import create_async_engine

from tests.support.events import eventually
from tests.support.kafka import read_to_end
from turnout_events.ballots import Voted
from turnout_events.consumer import subscribe_event_batches
from turnout_events.inbox import claim_many
from turnout_events.samples import sample_envelope
from turnout_events.serde import encode
from turnout_events.tables import metadata

pytestmark = pytest.mark.integration

effects = sa.Table("votes_seen", sa.MetaData(), sa.Column("event_id", sa.Uuid),
                   sa.Column("member_id", sa.Uuid, nullable=False))
POISON = uuid.UUID(int=13)


@pytest.fixture
async def engine(database_url):
    engine = create_async_engine(database_url)
    async with engine.begin() as conn:
        await conn.run_sync(metadata.create_all)
        await conn.run_sync(effects.metadata.create_all)
    yield engine
    await engine.dispose()


class BatchRecorder:
    def __init__(self, engine) -> None:
        self.engine = engine
        self.batches: list[int] = []

    async def __call__(self, items) -> None:
        async with self.engine.begin() as conn:
            new = await claim_many(conn, "batch-test", [e.id for e, _ in items])
            rows = [{"event_id": e.id, "member_id": p.member_id}
                    for e, p in items if e.id in new]
            if any(p.member_id == POISON for _, p in items):
                raise ValueError("this member's events cannot be applied")
            if rows:
                await conn.execute(effects.insert(), rows)
        self.batches.append(len(items))

    async def applied(self) -> int:
        async with self.engine.connect() as conn:
            query = sa.select(sa.func.count()).select_from(effects)
            return (await conn.execute(query)).scalar_one()


async def test_batches_apply_each_event_once_and_isolate_failures(engine, topics,
                                                                  kafka_bootstrap):
    recorder = BatchRecorder(engine)
    broker = KafkaBroker(kafka_bootstrap)
    subscribe_event_batches(broker, [topics.events("ballots")], group_id=f"g-{uuid.uuid4()}",
                            handler=recorder, dead_letter_topic=topics.dead_letter,
                            max_records=200)
    members = [uuid.uuid4() for _ in range(40)]
    envelopes = [sample_envelope(Voted, member_id=members[i % 40]) for i in range(1000)]
    poison = sample_envelope(Voted, member_id=POISON)
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    await producer.start()
    try:
        for i, env in enumerate(envelopes):
            await producer.send(topics.events("ballots"), encode(env), key=env.key.encode())
            if i == 500:  # a duplicate, an invalid message and a poison event mid-stream
                await producer.send(topics.events("ballots"), encode(env), key=env.key.encode())
                await producer.send(topics.events("ballots"), b"{}", key=env.key.encode())
                await producer.send(topics.events("ballots"), encode(poison),
                                    key=poison.key.encode())
        await producer.flush()
    finally:
        await producer.stop()

    await broker.start()
    try:
        await eventually(lambda: applied_at_least(recorder, 1000), timeout=60,
                       what="1000 events applied")
        dead = []

        async def two_dead_letters() -> bool:
            dead[:] = await read_to_end(kafka_bootstrap, [topics.dead_letter])
            return len(dead) >= 2

        await eventually(two_dead_letters, timeout=30, what="two dead letters")
    finally:
        await broker.stop()
    assert await recorder.applied() == 1000
    reasons = sorted(dict(r.headers)["dead-letter-reason"].decode() for r in dead)
    assert reasons == ["handler-failed", "invalid"]
    assert any(r.value == encode(poison) for r in dead)
    assert max(recorder.batches) > 1, "events were not handed over in batches"


async def applied_at_least(recorder: BatchRecorder, n: int) -> bool:
    return await recorder.applied() >= n
