"""The fold's fast decoder agrees with the contract (`turnout_events`) on every event:
what the contract accepts it accepts with the same values, what the contract rejects it
rejects with the contract's message, what the contract does not know it ignores."""

from __future__ import annotations

import copy
import json
import random
import uuid
from datetime import UTC, datetime
from typing import Any

import msgspec
import pytest
from turnout_reporting.projections.decode import (
    DATA_TYPES,
    ENVELOPES,
    EventDecoder,
    Placement,
    _string_fields,
)

from turnout_events import common
from turnout_events.envelope import Envelope, InvalidEvent
from turnout_events.registry import all_events, parse_payload
from turnout_events.samples import all_samples
from turnout_events.serde import decode as contract_decode
from turnout_events.serde import encode

pytestmark = pytest.mark.unit


def verdict(decode, raw: bytes) -> tuple[str, Any]:
    try:
        result = decode(raw)
    except InvalidEvent as exc:
        return "invalid", str(exc)
    return ("ignored", None) if result is None else ("event", result)


# Past the contract, what reporting's tables can store (decode.py's `unstorable`), kept
# here apart from it: an event beyond it is refused, naming the field.
MAX_STORED_VERSION = 2**31 - 1


class Unstorable(Exception):
    """The contract accepts the event; reporting must refuse it, naming `field`."""

    def __init__(self, field: str) -> None:
        super().__init__(field)
        self.field = field


def by_the_contract(raw: bytes) -> tuple[str, Any]:
    def decode(raw: bytes):
        envelope = contract_decode(raw)
        payload = parse_payload(envelope)
        if payload is None:
            return None
        for name, moment in [("occurred_at", envelope.occurred_at),
                             *((f"data.{k}", v) for k, v in payload if isinstance(v, datetime))]:
            try:
                moment.astimezone(UTC)
            except OverflowError:
                raise Unstorable(name) from None
        if getattr(payload, "member_version", 0) > MAX_STORED_VERSION:
            raise Unstorable("data.member_version")
        if "\x00" in getattr(payload, "ballot_name", ""):
            raise Unstorable("data.ballot_name")
        return envelope, payload
    try:
        return verdict(decode, raw)
    except Unstorable as exc:
        return "invalid", exc


def same_message(got: str, expected: str | Unstorable) -> bool:
    """The contract's own message, or for what reporting cannot store its own, naming
    the field."""
    if isinstance(expected, Unstorable):
        return f"{expected.field}: " in got and "reporting can" in got
    return got == expected


def same_values(event, envelope: Envelope, payload) -> bool:
    """The fast event holds what the contract's models hold (compared in wire form)."""
    fast = msgspec.to_builtins(event)
    contract = json.loads(envelope.model_copy(
        update={"data": payload.model_dump(mode="json")}).model_dump_json())
    contract_data = contract.pop("data")
    fast_data = fast.pop("data")
    return fast == contract and fast_data == contract_data


def wire_samples() -> list[dict[str, Any]]:
    return [json.loads(encode(Envelope.wrap(payload, actor=f"rep:{uuid.uuid4()}")))
            for payload in all_samples()]


def test_the_mirror_has_every_event_and_field_of_the_contract():
    assert {t.contract for t in DATA_TYPES} == set(all_events())
    for mirror in DATA_TYPES:
        fields = {f.name: f for f in msgspec.structs.fields(mirror)}
        model = mirror.contract.model_fields
        assert fields.keys() == model.keys(), mirror.__name__
        for name, field in model.items():
            assert field.is_required() == (fields[name].required), f"{mirror.__name__}.{name}"
        # Every string is checked by the decoder: an id, a code, or the ballot's name.
        ids, codes = _string_fields(mirror)
        strings = {f.name for f in fields.values() if f.type in (str, str | None)}
        assert strings <= {*ids, *codes, "ballot_name"}, mirror.__name__
    assert {f.name for f in msgspec.structs.fields(Placement)} == set(
        common.Placement.model_fields)


def test_every_sample_decodes_on_the_fast_path_with_the_contracts_values():
    decoder = EventDecoder()
    for wire in wire_samples():
        raw = json.dumps(wire).encode()
        kind, event = verdict(decoder.decode, raw)
        assert kind == "event", wire["type"]
        assert type(event) is ENVELOPES[next(t for t in DATA_TYPES
                                             if t.contract.event_type == wire["type"])]
        envelope = contract_decode(raw)
        assert same_values(event, envelope, parse_payload(envelope))
    assert decoder.detours == 0


# Values a broken or unusual producer might put in a field.
ODD_VALUES = [
    None, "", "x" * 300, -1, 0, 1, 2**40, 1.5, True, "true", [], {}, ["mobile"],
    "07700 900123", "+44 7700 900123", "member@example.org", "G-NW", "B-1234567",
    "9e3f1c2a-0000-4000-8000-000000000001", "9E3F1C2A-0000-4000-8000-000000000001",
    "9e3f1c2a000040008000000000000001", "2026-03-05T19:40:00", "2026-03-05T19:40:00+01:00",
    "2026-03-05", 1772740800, "sms", "SMS", "rep", "rep:abc@def", "system", "statutory",
    2**31 - 1, 2**31, "Strike\x00ballot", "0001-01-01T00:30:00+01:00",
    "0001-01-01T00:30:00Z", "9999-12-31T23:30:00-01:00",
]


def mutations(wire: dict[str, Any], rng: random.Random, count: int):
    """`count` copies of `wire`, each with one field (of the envelope or the payload,
    nested ones too) set to an odd value or removed."""
    paths = []

    def walk(node: Any, path: tuple) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                paths.append(path + (key,))
                walk(value, path + (key,))

    walk(wire, ())
    for _ in range(count):
        mutated = copy.deepcopy(wire)
        path = rng.choice(paths)
        parent = mutated
        for key in path[:-1]:
            parent = parent[key]
        if rng.random() < 0.1:
            del parent[path[-1]]
        else:
            parent[path[-1]] = rng.choice(ODD_VALUES)
        yield mutated


@pytest.mark.parametrize("seed", range(4))
def test_on_broken_and_unusual_events_the_fast_path_agrees_with_the_contract(seed):
    rng = random.Random(seed)
    decoder = EventDecoder()
    checked = {"event": 0, "invalid": 0, "ignored": 0}
    for wire in wire_samples():
        for mutated in mutations(wire, rng, 60):
            raw = json.dumps(mutated).encode()
            expected_kind, expected = by_the_contract(raw)
            kind, got = verdict(decoder.decode, raw)
            assert kind == expected_kind, (mutated, expected)
            if kind == "invalid":
                assert same_message(got, expected), (got, expected)
            elif kind == "event":
                assert same_values(got, *expected), mutated
            checked[kind] += 1
    assert all(checked.values()), checked  # each verdict was exercised


def test_what_is_not_json_or_not_an_event_is_the_contracts_to_reject():
    decoder = EventDecoder()
    for raw in (b"{not json", b"[1, 2]", b"", None, b"\xff\xfe", b"{}"):
        kind, message = verdict(decoder.decode, raw)
        assert kind == "invalid"
        assert message == by_the_contract(raw)[1]


def test_unknown_types_and_versions_are_ignored():
    decoder = EventDecoder()
    wire = wire_samples()[0]
    for changes in ({"type": "contacts.member-teleported"}, {"version": 2}):
        kind, _ = verdict(decoder.decode, json.dumps({**wire, **changes}).encode())
        assert kind == "ignored"


def test_contact_details_in_a_code_are_refused_without_echoing_them():
    decoder = EventDecoder()
    wire = next(w for w in wire_samples() if w["type"] == "ballots.member-enrolled")
    wire["data"]["placement"]["workplace_code"] = "07700900123"
    with pytest.raises(InvalidEvent) as refused:
        decoder.decode(json.dumps(wire).encode())
    assert "workplace_code" in str(refused.value)
    assert "07700900123" not in str(refused.value)


@pytest.mark.parametrize(("field", "value", "refused"), [
    ("member_version", 2**31 - 1, False),
    ("member_version", 2**31, True),
    ("member_version", 10**30, True),
    ("ballot_name", "Pay ballot 2026", False),
    ("ballot_name", "Pay\x00ballot", True),
    ("voted_at", "0001-01-01T00:30:00Z", False),
    ("voted_at", "0001-01-01T00:30:00+01:00", True),
    ("closes_at", "9999-12-31T23:30:00-01:00", True),
    ("occurred_at", "9999-12-31T23:30:00+01:00", False),
    ("occurred_at", "9999-12-31T23:30:00-01:00", True),
])
def test_what_reporting_cannot_store_is_refused_with_its_own_message(field, value, refused):
    """The contract accepts these; reporting's tables cannot hold some of them (int4
    versions, PostgreSQL text): refused (dead-lettered), naming the field, never the
    value — rather than failing every batch that holds them."""
    event_type = {"member_version": "contacts.contact-updated",
                  "voted_at": "ballots.voted"}.get(field, "ballots.ballot-opened")
    wire = next(w for w in wire_samples() if w["type"] == event_type)
    if field == "occurred_at":
        wire[field] = value
    else:
        wire["data"][field] = value
        field = f"data.{field}"
    raw = json.dumps(wire).encode()
    assert by_the_contract(raw)[0] == ("invalid" if refused else "event")
    kind, got = verdict(EventDecoder().decode, raw)
    if not refused:
        assert kind == "event", got
        return
    assert kind == "invalid"
    assert f": {field}: " in got and str(value) not in got
