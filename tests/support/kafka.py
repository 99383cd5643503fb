"""Reading topics back in tests: everything on a topic set, with a deadline."""

from __future__ import annotations

import time

from aiokafka import AIOKafkaConsumer, ConsumerRecord


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
