"""Reporting fold throughput, against a bare consumer reading the same topics, in one run.

    uv run python bench/reporting_fold.py [--members 1000000] [--batch 5000]

Fills a fresh topic set with a synthetic ballot (`turnout_reporting.synthetic`: about
4.5 events per member across the contacts, ballots and notifications topics, with
moves, retractions, reminders and duplicates), then measures:
(a) a bare aiokafka consumer that only reads and decodes the topics (envelope + payload);
(b) the reporting fold (`FoldConsumer`: decode, fold, one transaction per batch with the
    offsets) from an empty database until it has committed every record;
(c) the folded numbers against the generator's ground truth, unit by unit, and hour by hour.
Prints (a) and (b) in events/s, their ratio, and whether (c) matched exactly, beside the
limits. Uses the servers named by KAFKA_BOOTSTRAP_SERVERS / DATABASE_URL, else the local
runtime.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import asyncpg  # noqa: E402
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition  # noqa: E402
from turnout_reporting.main import MIGRATIONS  # noqa: E402
from turnout_reporting.messaging.consumer import FoldConsumer, source_topics  # noqa: E402
from turnout_reporting.projections.fold import COUNTS  # noqa: E402
from turnout_reporting.settings import ReportingSettings  # noqa: E402
from turnout_reporting.synthetic import generate_ballot  # noqa: E402

from tests.support.infra import provide_infra  # noqa: E402
from tests.support.isolation import (  # noqa: E402
    create_database,
    create_topics,
    delete_topics,
    drop_database,
)
from turnout_events.registry import parse_payload  # noqa: E402
from turnout_events.relay import asyncpg_dsn  # noqa: E402
from turnout_events.serde import decode  # noqa: E402
from turnout_kit.db import run_migrations  # noqa: E402

MIN_FOLD_RATE = 50_000
MIN_RATIO = 0.6


async def fill(bootstrap: str, topics, events: list[dict]) -> int:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=20,
                                max_batch_size=512 * 1024, compression_type=None)
    await producer.start()
    try:
        pending = []
        for event in events:
            pending.append(await producer.send(
                topics.events(event["source"]), json.dumps(event).encode(),
                key=event["key"].encode()))
            if len(pending) >= 20_000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return len(events)


async def bare_read(bootstrap: str, topics, total: int, batch: int) -> float:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                auto_offset_reset="earliest", group_id=None,
                                max_partition_fetch_bytes=4 * 1024 * 1024)
    await consumer.start()
    try:
        partitions = [TopicPartition(t, p) for t in source_topics(topics)
                      for p in range(topics.partitions)]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        started = time.perf_counter()
        read = 0
        while read < total:
            for records in (await consumer.getmany(timeout_ms=200,
                                                   max_records=batch)).values():
                for record in records:
                    parse_payload(decode(record.value))
                read += len(records)
        return read / (time.perf_counter() - started)
    finally:
        await consumer.stop()


async def fold_rate(database_url: str, bootstrap: str, topics, total: int,
                    batch: int) -> tuple[float, asyncpg.Pool]:
    await run_migrations(MIGRATIONS, database_url)
    settings = ReportingSettings(database_url=database_url, kafka_bootstrap_servers=bootstrap,
                                 topic_namespace=topics.namespace,
                                 topic_partitions=topics.partitions, fold_batch_size=batch)
    pool = await asyncpg.create_pool(asyncpg_dsn(database_url), min_size=1, max_size=2)
    consumer = FoldConsumer(settings, topics, pool)
    started = time.perf_counter()
    await consumer.start()
    try:
        last, last_at = 0, time.monotonic()
        while consumer.folded < total:
            await asyncio.sleep(0.05)  # sampling the counter, not a race fix
            if consumer.folded != last:
                last, last_at = consumer.folded, time.monotonic()
            elif time.monotonic() - last_at > 120:
                raise RuntimeError(f"the fold stalled at {last} of {total} records")
        elapsed = time.perf_counter() - started
    finally:
        await consumer.stop()
    return total / elapsed, pool


async def compare(pool: asyncpg.Pool, ballot) -> tuple[bool, str]:
    async with pool.acquire() as conn:
        rows = await conn.fetch("SELECT * FROM turnout WHERE eligible > 0")
        hours = await conn.fetch("SELECT * FROM turnout_hourly WHERE votes <> 0")
    folded = {(r["ballot_id"], r["level"], r["group_code"], r["branch_code"],
               r["workplace_code"]): [r[c] for c in COUNTS] for r in rows}
    hourly = {((r["ballot_id"], r["level"], r["group_code"], r["branch_code"],
                r["workplace_code"]), r["hour"]): r["votes"] for r in hours}
    units_ok = folded == ballot.truth
    hours_ok = hourly == {k: v for k, v in ballot.hourly_truth.items() if v}
    differing = sum(1 for k in ballot.truth.keys() | folded.keys()
                    if folded.get(k) != ballot.truth.get(k))
    return units_ok and hours_ok, (f"{len(folded)} units, {len(hourly)} unit-hours; "
                                   f"{differing} units differ; hourly "
                                   f"{'equal' if hours_ok else 'DIFFERENT'}")


async def measure(infra, members: int, batch: int) -> int:
    started = time.perf_counter()
    ballot = generate_ballot(members, groups=6, branches=120, workplaces=600, seed=1)
    total = len(ballot.events)
    print(f"members: {members:,}, events: {total:,} ({ballot.duplicates:,} duplicates), "
          f"generated in {time.perf_counter() - started:.1f}s; infra: {infra.how}")
    topics = await create_topics(infra.kafka_bootstrap_servers, partitions=6)
    database_url = await create_database(infra.database_url)
    pool = None
    try:
        started = time.perf_counter()
        await fill(infra.kafka_bootstrap_servers, topics, ballot.events)
        print(f"topics filled in {time.perf_counter() - started:.1f}s")
        bare = await bare_read(infra.kafka_bootstrap_servers, topics, total, batch)
        folded, pool = await fold_rate(database_url, infra.kafka_bootstrap_servers, topics,
                                       total, batch)
        exact, detail = await compare(pool, ballot)
    finally:
        if pool is not None:
            await pool.close()
        await delete_topics(infra.kafka_bootstrap_servers, topics)
        await drop_database(infra.database_url, database_url)
    ratio = folded / bare
    ok_rate, ok_ratio = folded >= MIN_FOLD_RATE, ratio >= MIN_RATIO
    print(f"(a) bare consumer (read + decode):       {bare:>10,.0f} events/s")
    print(f"(b) reporting fold (empty -> caught up): {folded:>10,.0f} events/s  "
          f"(limit >= {MIN_FOLD_RATE:,})  {'ok' if ok_rate else 'BELOW LIMIT'}")
    print(f"(b)/(a): {ratio:.2f}  (limit >= {MIN_RATIO:.2f})  "
          f"{'ok' if ok_ratio else 'BELOW LIMIT'}")
    print(f"(c) numbers equal to the ground truth: {'yes, exactly' if exact else 'NO'} "
          f"({detail})")
    return 0 if (ok_rate and ok_ratio and exact) else 1


def main(members: int, batch: int) -> int:
    with provide_infra() as infra:
        return asyncio.run(measure(infra, members, batch))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=5_000)
    args = parser.parse_args()
    sys.exit(main(args.members, args.batch))
