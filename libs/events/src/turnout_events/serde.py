"""Envelopes to and from bytes (UTF-8 JSON), and the Kafka headers that go with them."""

from __future__ import annotations

import json

from pydantic import ValidationError

from .envelope import Envelope, InvalidEvent

MAX_EVENT_BYTES = 1_000_000


def encode(envelope: Envelope) -> bytes:
    return envelope.model_dump_json().encode()


def decode(raw: bytes | None) -> Envelope:
    """Bytes to an envelope. Raises `InvalidEvent` (and only that) for anything else.

    The message names the failing fields and the reason, never the offending values: a
    malformed event might carry personal data that must not reach a log or a header.
    """
    if raw is None:
        raise InvalidEvent("empty message (tombstone): no envelope")
    if len(raw) > MAX_EVENT_BYTES:
        raise InvalidEvent(f"message of {len(raw)} bytes exceeds the {MAX_EVENT_BYTES} byte limit")
    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidEvent(f"not UTF-8 JSON: {type(exc).__name__} at position "
                           f"{getattr(exc, 'pos', getattr(exc, 'start', '?'))}") from None
    if not isinstance(doc, dict):
        raise InvalidEvent(f"envelope must be a JSON object, got {type(doc).__name__}")
    try:
        return Envelope.model_validate(doc)
    except ValidationError as exc:
        raise InvalidEvent(describe_validation_error("envelope", exc)) from None


def describe_validation_error(what: str, exc: ValidationError) -> str:
    problems = "; ".join(
        f"{'.'.join(str(p) for p in err['loc']) or '(root)'}: {err['msg']}" for err in exc.errors()
    )
    return f"invalid {what}: {problems}"


def headers_for(envelope: Envelope) -> list[tuple[str, bytes]]:
    """Headers let consumers route and filter without parsing the body."""
    return event_headers(envelope.id, envelope.type, envelope.version, envelope.correlation_id)


def event_headers(event_id: object, event_type: str, version: int,
                  correlation_id: str | None) -> list[tuple[str, bytes]]:
    """The same headers from their parts (the relay has them as outbox columns)."""
    headers = [
        ("event-id", str(event_id).encode()),
        ("event-type", event_type.encode()),
        ("event-version", str(version).encode()),
    ]
    if correlation_id:
        headers.append(("correlation-id", correlation_id.encode()))
    return headers
