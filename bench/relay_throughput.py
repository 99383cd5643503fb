"""Outbox relay throughput, against the bare producer on the same machine, in one run.

    uv run python bench/relay_throughput.py [--events 50000] [--keys 5000]

(a) a bare aiokafka producer (idempotent, acks=all) sends N pre-encoded events;
(b) the relay drains N events that were committed to the outbox beforehand
    (read, publish, mark published).
Prints both rates and the ratio (b)/(a) beside the limit it is held to. Uses the servers
named by KAFKA_BOOTSTRAP_SERVERS / DATABASE_URL, else the local runtime.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aiokafka import AIOKafkaProducer  # noqa: E402
from sqlalchemy.ext.asyncio import create_async_engine  # noqa: E402

from tests.support.infra import provide_infra  # noqa: E402
from tests.support.isolation import (  # noqa: E402
    create_database,
    create_topics,
    delete_topics,
    drop_database,
)
from turnout_events.envelope import Envelope  # noqa: E402
from turnout_events.outbox import outbox_rows  # noqa: E402
from turnout_events.relay import OutboxRelay  # noqa: E402
from turnout_events.tables import metadata, outbox  # noqa: E402

# The relay does strictly more than the bare producer (a database read and an update per
# batch); it is held to at least half the producer's rate.
MIN_RATIO = 0.5


def envelopes(n: int, keys: int) -> list[Envelope]:
    key_ids = [str(uuid.uuid4()) for _ in range(keys)]
    return [
        Envelope(id=uuid.uuid4(), type="ballots.voted", version=1,
                 occurred_at="2026-11-25T10:00:00Z", recorded_at="2026-11-25T10:00:00Z",
                 source="ballots", key=key_ids[i % keys], actor="rep:" + key_ids[0],
                 data={"ballot_id": key_ids[1], "member_id": key_ids[i % keys],
                       "vote_source": "rep", "voted_at": "2026-11-25T10:00:00Z"})
        for i in range(n)
    ]


async def bare_producer(bootstrap: str, topic: str, rows: list[dict]) -> float:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=True,
                                acks="all", linger_ms=5, max_batch_size=256 * 1024)
    await producer.start()
    try:
        started = time.perf_counter()
        futures = [await producer.send(topic, value=r["payload"], key=r["key"].encode())
                   for r in rows]
        await asyncio.gather(*futures)
        return len(rows) / (time.perf_counter() - started)
    finally:
        await producer.stop()


async def relay_rate(database_url: str, bootstrap: str, rows: list[dict]) -> float:
    engine = create_async_engine(database_url)
    async with engine.begin() as conn:
        await conn.run_sync(metadata.create_all)
        for i in range(0, len(rows), 5000):
            await conn.execute(outbox.insert(), rows[i:i + 5000])
    await engine.dispose()
    relay = OutboxRelay(database_url, bootstrap, service="ballots")
    started = time.perf_counter()
    relay.start()
    while relay.published < len(rows):  # noqa: ASYNC110 - a benchmark's finish line
        await asyncio.sleep(0.01)
    elapsed = time.perf_counter() - started
    await relay.stop()
    return len(rows) / elapsed


def main(n: int, keys: int) -> int:
    with provide_infra() as infra:
        bare, relayed = asyncio.run(measure(infra, n, keys))
    ratio = relayed / bare
    print(f"events: {n}, keys: {keys}, infra: {infra.how}")
    print(f"bare producer (idempotent, acks=all): {bare:>10,.0f} events/s")
    print(f"outbox relay (read, publish, mark):   {relayed:>10,.0f} events/s")
    verdict = "ok" if ratio >= MIN_RATIO else "BELOW LIMIT"
    print(f"relay / bare producer: {ratio:.2f}  (limit >= {MIN_RATIO:.2f})  {verdict}")
    return 0 if ratio >= MIN_RATIO else 1


async def measure(infra, n: int, keys: int) -> tuple[float, float]:
    topics = await create_topics(infra.kafka_bootstrap_servers, partitions=6)
    database_url = await create_database(infra.database_url)
    try:
        rows = outbox_rows(envelopes(n, keys), topics)
        bare_topic = topics.events("notifications")  # a separate, empty topic
        bare = await bare_producer(infra.kafka_bootstrap_servers, bare_topic, rows)
        relayed = await relay_rate(database_url, infra.kafka_bootstrap_servers, rows)
    finally:
        await delete_topics(infra.kafka_bootstrap_servers, topics)
        await drop_database(infra.database_url, database_url)
    return bare, relayed


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--keys", type=int, default=5_000)
    args = parser.parse_args()
    sys.exit(main(args.events, args.keys))
