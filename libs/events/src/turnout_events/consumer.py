"""Event subscribers on FastStream: decode, dead-letter what is invalid, skip what is
unknown, retry what is transient, and hand typed events to the service's handler.

    subscribe_events(broker, [topics.events("contacts")], group_id="ballots",
                     handler=on_contacts_event, dead_letter_topic=topics.dead_letter)

The handler gets `(envelope, payload)` for every event type the registry knows and does
its work in its own transaction with the inbox (`inbox.claim`), so a redelivery after a
crash has no second effect. Offsets are committed after the handler returns
(`AckPolicy.NACK_ON_ERROR`): a failure rewinds to the message instead of skipping it.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import structlog
from faststream import AckPolicy
from faststream.kafka import KafkaBroker
from faststream.kafka.annotations import KafkaMessage
from prometheus_client import Counter

from .envelope import Envelope, EventData, InvalidEvent
from .registry import parse_payload
from .serde import decode

log = structlog.get_logger("turnout.consumer")

Handler = Callable[[Envelope, EventData], Awaitable[None]]
BatchHandler = Callable[[list[tuple[Envelope, EventData]]], Awaitable[None]]

CONSUMED = Counter("events_consumed_total", "Events handled by a consumer", ["group", "type"])
DEAD_LETTERED = Counter("events_dead_lettered_total", "Events sent to the dead-letter topic",
                        ["group", "reason"])

# Errors worth waiting out (the database restarting, a network blip) rather than
# dead-lettering: the event is fine, the world is not.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (OSError, TimeoutError, ConnectionError)
try:  # sqlalchemy and asyncpg are dependencies of this package, but keep the import local
    import asyncpg
    from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

    TRANSIENT_ERRORS += (OperationalError, InterfaceError, asyncpg.PostgresConnectionError,
                         asyncpg.CannotConnectNowError)
except ImportError:  # pragma: no cover
    DBAPIError = None  # type: ignore[assignment,misc]


def is_transient(exc: BaseException) -> bool:
    if isinstance(exc, TRANSIENT_ERRORS):
        return True
    return DBAPIError is not None and isinstance(exc, DBAPIError) and exc.connection_invalidated


async def dead_letter(broker: KafkaBroker, dead_letter_topic: str, record: Any, *,
                      group_id: str, reason: str, error: str) -> None:
    """Copy the record as it was to the dead-letter topic, with why and where in headers."""
    headers = {k: v.decode(errors="replace") for k, v in (record.headers or ())}
    headers.update({
        "dead-letter-reason": reason,
        "dead-letter-error": error[:1000],
        "dead-letter-topic": record.topic,
        "dead-letter-partition": str(record.partition),
        "dead-letter-offset": str(record.offset),
        "dead-letter-consumer-group": group_id,
    })
    await broker.publish(record.value if record.value is not None else b"",
                         topic=dead_letter_topic, key=record.key, headers=headers)
    DEAD_LETTERED.labels(group_id, reason).inc()
    log.warning("consumer.dead_lettered", group=group_id, reason=reason, error=error[:300],
                topic=record.topic, partition=record.partition, offset=record.offset)


def subscribe_events(
    broker: KafkaBroker,
    topics: Sequence[str],
    *,
    group_id: str,
    handler: Handler,
    dead_letter_topic: str,
    handler_attempts: int = 3,
    transient_retry_seconds: float = 60.0,
    **subscriber_options: Any,
) -> Any:
    """Register a subscriber for `topics` in consumer group `group_id`."""

    async def on_message(msg: KafkaMessage) -> None:
        record = msg.raw_message
        assert not isinstance(record, tuple), "subscribe_events registers one-by-one subscribers"
        try:
            envelope = decode(record.value)
            payload = parse_payload(envelope)
        except InvalidEvent as exc:
            await dead_letter(broker, dead_letter_topic, record, group_id=group_id,
                              reason="invalid", error=str(exc))
            return
        if payload is None:
            return  # an event type or version we do not know: ignored by contract
        structlog.contextvars.bind_contextvars(correlation_id=envelope.correlation_id)
        try:
            await _handle_with_retries(envelope, payload)
        except _HandlerFailed as exc:
            await dead_letter(broker, dead_letter_topic, record, group_id=group_id,
                              reason="handler-failed", error=str(exc))
        finally:
            structlog.contextvars.unbind_contextvars("correlation_id")
        CONSUMED.labels(group_id, envelope.type).inc()

    async def _handle_with_retries(envelope: Envelope, payload: EventData) -> None:
        failures = 0
        backoff = _TransientBackoff(group_id, transient_retry_seconds)
        while True:
            try:
                await handler(envelope, payload)
                return
            except Exception as exc:
                if is_transient(exc):
                    if backoff.spent:
                        raise  # NACK: rewind and let the next poll try again
                    await backoff.sleep(exc)
                    continue
                failures += 1
                log.exception("consumer.handler_error", group=group_id, event_id=str(envelope.id),
                              event_type=envelope.type, attempt=failures)
                if failures >= handler_attempts:
                    raise _HandlerFailed(f"{type(exc).__name__} after {failures} attempts "
                                         f"handling {envelope.type} {envelope.id}") from exc

    options: dict[str, Any] = {
        "group_id": group_id,
        "auto_offset_reset": "earliest",  # a new consumer group starts from history
        "ack_policy": AckPolicy.NACK_ON_ERROR,
    }
    options.update(subscriber_options)
    return broker.subscriber(*topics, **options)(on_message)


class _HandlerFailed(Exception):
    pass


async def _retry_transient(call: Callable[[], Awaitable[None]], *, group_id: str,
                           budget_seconds: float) -> None:
    """Run `call`, waiting out transient errors (backoff) up to the budget; anything else,
    or a transient error past the budget, propagates."""
    backoff = _TransientBackoff(group_id, budget_seconds)
    while True:
        try:
            await call()
            return
        except Exception as exc:
            if not is_transient(exc) or backoff.spent:
                raise
            await backoff.sleep(exc)


class _TransientBackoff:
    """Waits between attempts while transient errors last: 0.1 s doubling to 5 s, until
    `budget_seconds` of waiting is spent."""

    def __init__(self, group_id: str, budget_seconds: float) -> None:
        self.group_id = group_id
        self.budget_seconds = budget_seconds
        self.delay = 0.1
        self.waited = 0.0

    @property
    def spent(self) -> bool:
        return self.waited >= self.budget_seconds

    async def sleep(self, exc: BaseException) -> None:
        log.warning("consumer.transient_error", group=self.group_id,
                    error=type(exc).__name__, retry_in=self.delay)
        await asyncio.sleep(self.delay)  # backoff between attempts, not a race fix
        self.waited += self.delay
        self.delay = min(self.delay * 2, 5.0)


def subscribe_event_batches(
    broker: KafkaBroker,
    topics: Sequence[str],
    *,
    group_id: str,
    handler: BatchHandler,
    dead_letter_topic: str,
    max_records: int = 500,
    batch_timeout_ms: int = 100,
    transient_retry_seconds: float = 60.0,
    **subscriber_options: Any,
) -> Any:
    """Like `subscribe_events`, but the handler gets up to `max_records` decoded events at
    a time and applies them in one transaction (`inbox.claim_many`): a commit per batch
    instead of per event is what lets a consumer keep up with a ballot opening for a
    million members.

    Events are handed over in log order per partition. If the handler fails for a reason
    that is not transient, the batch is retried one event at a time so that only the
    event that fails is dead-lettered and the rest are applied.
    """

    async def on_batch(msg: KafkaMessage) -> None:
        records = msg.raw_message
        if not isinstance(records, tuple):
            records = (records,)
        good: list[tuple[Envelope, EventData, Any]] = []
        seen: set[Any] = set()
        for record in records:
            try:
                envelope = decode(record.value)
                payload = parse_payload(envelope)
            except InvalidEvent as exc:
                await dead_letter(broker, dead_letter_topic, record, group_id=group_id,
                                  reason="invalid", error=str(exc))
                continue
            # A duplicate inside one batch is dropped here; duplicates across batches are
            # the inbox's to catch.
            if payload is not None and envelope.id not in seen:
                seen.add(envelope.id)
                good.append((envelope, payload, record))
        if not good:
            return
        try:
            await _retry_transient(lambda: handler([(e, p) for e, p, _ in good]),
                                   group_id=group_id, budget_seconds=transient_retry_seconds)
        except Exception as exc:
            if is_transient(exc):
                raise  # NACK: rewind and let the next poll try the batch again
            log.exception("consumer.batch_failed", group=group_id, size=len(good))
            await _one_by_one(good)
        for envelope, _payload, _record in good:
            CONSUMED.labels(group_id, envelope.type).inc()

    async def _one_by_one(items: list[tuple[Envelope, EventData, Any]]) -> None:
        for envelope, payload, record in items:
            try:
                await _retry_transient(functools.partial(handler, [(envelope, payload)]),
                                       group_id=group_id,
                                       budget_seconds=transient_retry_seconds)
            except Exception as exc:
                if is_transient(exc):
                    raise
                await dead_letter(broker, dead_letter_topic, record, group_id=group_id,
                                  reason="handler-failed",
                                  error=f"{type(exc).__name__} handling {envelope.type} "
                                        f"{envelope.id}")

    options: dict[str, Any] = {
        "group_id": group_id,
        "auto_offset_reset": "earliest",
        "ack_policy": AckPolicy.NACK_ON_ERROR,
        "batch": True,
        "max_records": max_records,
        "batch_timeout_ms": batch_timeout_ms,
    }
    options.update(subscriber_options)
    return broker.subscriber(*topics, **options)(on_batch)
