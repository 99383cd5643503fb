"""Putting events on the test topics the way the services' relays do, and waiting for
their effects with a deadline."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable, Iterable
from datetime import datetime
from typing import Any

from aiokafka import AIOKafkaProducer

from turnout_events.envelope import Envelope, EventData
from turnout_events.samples import sample_envelope
from turnout_events.serde import encode, headers_for


def event(model: type[EventData], *, occurred_at: datetime | None = None,
          **data: Any) -> Envelope:
    """A sample event with these payload fields, optionally stamped with `occurred_at`."""
    envelope = sample_envelope(model, **data)
    return envelope.model_copy(update={"occurred_at": occurred_at}) if occurred_at else envelope


async def produce(bootstrap: str, topic: str, envelopes: Iterable[Envelope]) -> None:
    """Publish as the services' relays do: keyed by the event's partition key, with the
    same headers."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all",
                                enable_idempotence=True)
    await producer.start()
    try:
        for envelope in envelopes:
            await producer.send_and_wait(topic, value=encode(envelope),
                                         key=envelope.key.encode(),
                                         headers=headers_for(envelope))
    finally:
        await producer.stop()


async def eventually(check: Callable[[], Awaitable[Any] | Any], *, what: str,
                     timeout: float = 60.0) -> Any:
    """Poll `check` (plain or async) until it returns something truthy; fail after the
    deadline."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)
