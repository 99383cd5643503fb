"""Reading topics back in tests: everything on a topic set, with a deadline."""

from __future__ import annotations

import time

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition


async def read_until(bootstrap_servers: str, topics: list[str], *, count: int,
                     timeout: float = 60.0) -> list[ConsumerRecord]:
    """Read from the beginning of `topics` until `count` records arrived or the deadline
    passes; then keep reading briefly so a surplus (a duplicate) would be seen too."""
    consumer = AIOKafkaConsumer(*topics, bootstrap_servers=bootstrap_servers,
                                auto_offset_reset="earliest", enable_auto_commit=False,
                                group_id=None)
    await consumer.start()
    records: list[ConsumerRecord] = []
    try:
        deadline = time.monotonic() + timeout
        while len(records) < count and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500)
            for part in batch.values():
                records.extend(part)
        # Surplus check: anything beyond `count` that is already on the topic shows up in
        # a couple more polls once every partition has been fetched to its end.
        end = await consumer.end_offsets(list(consumer.assignment()))
        while await _behind(consumer, end) and time.monotonic() < deadline + 10:
            batch = await consumer.getmany(timeout_ms=500)
            for part in batch.values():
                records.extend(part)
        return records
    finally:
        await consumer.stop()


async def _behind(consumer: AIOKafkaConsumer, end: dict) -> bool:
    for tp, offset in end.items():
        if await consumer.position(tp) < offset:
            return True
    return False


async def read_to_end(bootstrap_servers: str, topics: list[str], *,
                      timeout: float = 30.0) -> list[ConsumerRecord]:
    """Everything on `topics` right now: reads every partition up to its current end."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap_servers, enable_auto_commit=False,
                                auto_offset_reset="earliest", group_id=None)
    await consumer.start()
    try:
        partitions = [TopicPartition(t, p) for t in topics
                      for p in (consumer.partitions_for_topic(t)
                                or await _partitions(consumer, t))]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        end = await consumer.end_offsets(partitions)
        records: list[ConsumerRecord] = []
        deadline = time.monotonic() + timeout
        while await _behind(consumer, end):
            if time.monotonic() > deadline:
                raise AssertionError(f"could not read {topics} to the end within {timeout}s")
            for part in (await consumer.getmany(timeout_ms=200)).values():
                records.extend(part)
        return sorted(records, key=lambda r: (r.topic, r.partition, r.offset))
    finally:
        await consumer.stop()


async def _partitions(consumer: AIOKafkaConsumer, topic: str) -> set[int]:
    await consumer._client.force_metadata_update()  # noqa: SLF001 - no public way to wait
    return consumer.partitions_for_topic(topic) or set()
