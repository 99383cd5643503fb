"""Putting a synthetic ballot's events on the test's topics."""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from aiokafka import AIOKafkaProducer

from turnout_events.envelope import Envelope
from turnout_events.registry import model_for
from turnout_events.samples import sample_envelope
from turnout_events.serde import encode, headers_for


def as_envelope(wire: dict[str, Any]) -> Envelope:
    """A generated event as the publishing service would have built it: its payload
    model from the sample catalogue with every field given, then the generator's id and
    times (a vote's order depends on them)."""
    model = model_for(wire["type"], wire["version"])
    envelope = sample_envelope(model, **wire["data"])
    return envelope.model_copy(update={
        "id": uuid.UUID(wire["id"]),
        "occurred_at": datetime.fromisoformat(wire["occurred_at"]),
        "recorded_at": datetime.fromisoformat(wire["recorded_at"]),
    })


async def publish(kafka_bootstrap: str, topics, envelopes: Iterable[Envelope]) -> int:
    """Send events to their service's topic, keyed as the relay keys them, in the order
    given (shuffle first to mix topics and members)."""
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, linger_ms=5,
                                enable_idempotence=True)
    await producer.start()
    sent = 0
    try:
        for envelope in envelopes:
            await producer.send(topics.events(envelope.source), encode(envelope),
                                key=envelope.key.encode(), headers=headers_for(envelope))
            sent += 1
        await producer.flush()
    finally:
        await producer.stop()
    return sent


async def publish_raw(kafka_bootstrap: str, topic: str, value: bytes, key: bytes | None
                      ) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    await producer.start()
    try:
        await producer.send_and_wait(topic, value, key=key)
    finally:
        await producer.stop()


def shuffled(items: list, seed: int = 5) -> list:
    copy = list(items)
    random.Random(seed).shuffle(copy)
    return copy
