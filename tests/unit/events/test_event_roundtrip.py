"""Every event survives the wire: payload -> envelope -> bytes -> envelope -> payload;
and consumers tolerate what they do not know (new fields, new types, new versions)."""

from __future__ import annotations

import json
import uuid

import pytest

from turnout_events.envelope import Envelope, EventData
from turnout_events.registry import all_events, parse_payload
from turnout_events.samples import sample, sample_envelope
from turnout_events.serde import decode, encode, headers_for

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("model", all_events(), ids=lambda m: m.event_type)
def test_round_trip_through_bytes(model: type[EventData]):
    payload = sample(model)
    envelope = Envelope.wrap(payload, actor="rep:6b1f", correlation_id="req-42",
                             causation_id=uuid.uuid4())
    decoded = decode(encode(envelope))
    assert decoded == envelope
    assert decoded.type == model.event_type and decoded.version == model.version
    assert decoded.source == model.source
    assert decoded.key == str(getattr(payload, model.key_field))
    parsed = parse_payload(decoded)
    assert type(parsed) is model
    assert parsed == payload
    assert dict(headers_for(decoded))["event-type"] == model.event_type.encode()


def _wire(model: type[EventData]) -> dict:
    return json.loads(encode(sample_envelope(model)))


def test_unknown_event_type_is_ignored():
    doc = _wire(all_events()[0])
    doc["type"] = "ballots.something-new"
    doc["data"] = {"whatever": [1, 2, 3]}
    assert parse_payload(decode(json.dumps(doc).encode())) is None


def test_unknown_version_of_a_known_type_is_ignored():
    from turnout_events.ballots import Voted

    doc = _wire(Voted)
    doc["version"] = 2
    doc["data"] = {"shape": "of the future"}  # not even valid v1: still ignored, not invalid
    assert parse_payload(decode(json.dumps(doc).encode())) is None


@pytest.mark.parametrize("model", all_events(), ids=lambda m: m.event_type)
def test_unknown_fields_are_ignored(model: type[EventData]):
    doc = _wire(model)
    doc["data"]["added_in_a_later_release"] = {"nested": True}
    doc["added_to_the_envelope"] = "later"
    for part in doc["data"].values():  # nested parts tolerate additions too
        if isinstance(part, dict):
            part["also_new"] = 1
    assert parse_payload(decode(json.dumps(doc).encode())) == sample(model)
