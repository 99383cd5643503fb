"""What a consumer sees for broken events: always `InvalidEvent` (so the event can be
dead-lettered), with a message that names the field and never echoes the value."""

from __future__ import annotations

import json

import pytest

from turnout_events.ballots import BallotOpened, Voted
from turnout_events.contacts import MemberContacted, MemberRegistered
from turnout_events.envelope import EventData, InvalidEvent
from turnout_events.registry import parse_payload
from turnout_events.samples import sample_envelope
from turnout_events.serde import MAX_EVENT_BYTES, decode, encode

pytestmark = pytest.mark.unit


def _parse(doc: dict) -> EventData | None:
    return parse_payload(decode(json.dumps(doc).encode()))


def _wire(model: type[EventData]) -> dict:
    return json.loads(encode(sample_envelope(model)))


def _with(model: type[EventData], path: str, value: object) -> dict:
    """The sample envelope of `model` with data.<path> set (or removed, for ...)."""
    doc = _wire(model)
    *parents, last = path.split(".")
    target = doc["data"]
    for part in parents:
        target = target[part]
    if value is ...:
        del target[last]
    else:
        target[last] = value
    return doc


@pytest.mark.parametrize(("model", "path", "value", "named"), [
    (Voted, "vote_source", "telepathy", "vote_source"),
    (Voted, "member_id", ..., "member_id"),
    (Voted, "member_id", "not-a-uuid", "member_id"),
    (Voted, "voted_at", "2026-03-05T19:40:00", "voted_at"),  # naive timestamps are refused
    (BallotOpened, "turnout_threshold", 1.5, "turnout_threshold"),
    (BallotOpened, "turnout_threshold", 0, "turnout_threshold"),
    (BallotOpened, "eligible_count", -1, "eligible_count"),
    (BallotOpened, "kind", "referendum", "kind"),
    (BallotOpened, "closes_at", "2026-03-01T09:00:00Z", "closes_at"),
    (BallotOpened, "scope.branch_codes", ["B1", "has space"], "scope.branch_codes.1"),
    (MemberRegistered, "placement.branch_code", "", "placement.branch_code"),
    (MemberRegistered, "placement.group_code", "x" * 41, "placement.group_code"),
    (MemberRegistered, "member_version", 0, "member_version"),
    (MemberRegistered, "contact", ..., "contact"),
    (MemberContacted, "outcome", "maybe", "outcome"),
])
def test_invalid_payload_names_the_field(model, path, value, named):
    with pytest.raises(InvalidEvent) as caught:
        _parse(_with(model, path, value))
    message = str(caught.value)
    assert message.startswith(f"invalid {model.event_type} v1 payload: ")
    assert named in message
    if isinstance(value, str) and len(value) > 3:
        assert value not in message


def test_envelope_key_must_match_the_key_field():
    doc = _wire(Voted)
    doc["key"] = doc["data"]["ballot_id"]
    with pytest.raises(InvalidEvent, match="envelope key does not match data.member_id"):
        _parse(doc)


def test_envelope_source_must_match_the_event():
    doc = _wire(Voted)
    doc["source"] = "contacts"
    with pytest.raises(InvalidEvent, match="source must be 'ballots'"):
        _parse(doc)


@pytest.mark.parametrize(("raw", "expected"), [
    (b"not json at all", "not UTF-8 JSON"),
    (b"\xff\xfe{}", "not UTF-8 JSON"),
    (b'{"id": ', "not UTF-8 JSON"),
    (b"[1, 2, 3]", "must be a JSON object, got list"),
    (b'"ballots.voted"', "must be a JSON object, got str"),
    (b"null", "must be a JSON object, got NoneType"),
    (None, "tombstone"),
    (b" " * (MAX_EVENT_BYTES + 1), "exceeds"),
])
def test_bytes_that_are_no_envelope(raw, expected):
    with pytest.raises(InvalidEvent, match=expected):
        decode(raw)


def test_missing_envelope_fields_are_named():
    doc = _wire(Voted)
    for name in ("id", "occurred_at", "actor", "data"):
        del doc[name]
    with pytest.raises(InvalidEvent) as caught:
        decode(json.dumps(doc).encode())
    message = str(caught.value)
    assert message.startswith("invalid envelope: ")
    for name in ("id", "occurred_at", "actor", "data"):
        assert f"{name}: Field required" in message


def test_an_empty_object_is_no_envelope():
    with pytest.raises(InvalidEvent, match="type: Field required"):
        decode(b"{}")


def test_data_that_is_not_an_object():
    doc = _wire(Voted)
    doc["data"] = ["ballot", "voted"]
    with pytest.raises(InvalidEvent, match="data: "):
        decode(json.dumps(doc).encode())
