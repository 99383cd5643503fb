"""No event may carry a phone number or an email address, in any string field, however
deep; the error says which field and never repeats the value (it may end up in a log or a
dead-letter header)."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from turnout_events.ballots import BallotOpened, Voted
from turnout_events.contacts import MemberRegistered
from turnout_events.envelope import Envelope, InvalidEvent
from turnout_events.notifications import MessageFailed, ReminderSent
from turnout_events.privacy import EMAIL, PHONE, contact_kind, find_contact_values
from turnout_events.registry import parse_payload
from turnout_events.samples import sample, sample_data, sample_envelope
from turnout_events.serde import decode, encode

pytestmark = pytest.mark.unit

PHONES = ["07700900123", "07700 900123", "+447700900123", "+44 7700 900 123",
          "(0161) 496-0000", "0161-496-0000", "tel 0161 496 0000", "1234567"]
EMAILS = ["jo.bloggs@example.org", "a@b.co", "first.last+tag@union.example.co.uk"]
HARMLESS = ["B123", "WP-0042", "band-5", "G-NW", "123456", "reminder-3-days",
            "6f1c4a52-3d0e-4a53-9a43-7f3c2b1d0e11", "2026-03-20", "2026-03-20T10:05:00Z",
            "2026-03-20T10:05:00.123456+00:00", "2026-03-20 10:05", "Pay 2025-2026 ballot",
            "Pay 2025/2026", "Vote @ work", "ballot 12 of 2026", ""]


@pytest.mark.parametrize("text", PHONES)
def test_phone_numbers_are_spotted(text):
    assert contact_kind(text) == PHONE


@pytest.mark.parametrize("text", EMAILS)
def test_email_addresses_are_spotted(text):
    assert contact_kind(text) == EMAIL


@pytest.mark.parametrize("text", HARMLESS)
def test_ids_dates_and_codes_pass(text):
    assert contact_kind(text) is None


def test_cutting_out_a_uuid_does_not_join_digits_into_a_number():
    assert contact_kind("123 6f1c4a52-3d0e-4a53-9a43-7f3c2b1d0e11 4567") is None


def _parse(doc: dict):
    return parse_payload(decode(json.dumps(doc).encode()))


@pytest.mark.parametrize("value", ["07700900123", "447700900123"])
def test_phone_number_in_a_code_field_is_rejected_without_echo(value):
    doc = json.loads(encode(sample_envelope(MemberRegistered)))
    doc["data"]["placement"]["workplace_code"] = value
    with pytest.raises(InvalidEvent) as caught:
        _parse(doc)
    message = str(caught.value)
    assert "placement.workplace_code looks like a phone number" in message
    assert value not in message


def test_email_in_a_code_field_is_rejected_without_echo():
    value = "jo.bloggs@example.org"
    doc = json.loads(encode(sample_envelope(MessageFailed)))
    doc["data"]["error_code"] = value
    with pytest.raises(InvalidEvent) as caught:
        _parse(doc)
    message = str(caught.value)
    assert "error_code" in message
    assert value not in message and "bloggs" not in message


@pytest.mark.parametrize(("value", "kind"), [
    ("Ring 07700 900123 to vote", "a phone number"),
    ("Questions: jo.bloggs@example.org", "an email address"),
])
def test_contact_values_in_free_text_are_rejected(value, kind):
    with pytest.raises(ValidationError) as caught:
        sample(BallotOpened, ballot_name=value)
    assert f"field ballot_name looks like {kind}" in str(caught.value)
    assert value not in str(caught.value)  # hide_input_in_errors: not even pydantic's repr
    assert "jo.bloggs" not in str(caught.value) and "900123" not in str(caught.value)


def test_contact_values_inside_lists_are_found_with_their_position():
    scope = {"group_codes": [], "branch_codes": ["B1", "07700900123"]}
    with pytest.raises(ValidationError, match=r"field scope\.branch_codes\[1\] looks like a phone"):
        sample(BallotOpened, scope=scope)


def test_producers_cannot_wrap_a_leaky_payload():
    with pytest.raises(ValidationError):
        Envelope.wrap(sample(ReminderSent, template_code="07700900123"))


def test_every_finding_is_reported():
    payload = sample(Voted)
    assert find_contact_values(payload) == []
    data = {"a": "07700900123", "b": ["ok", "x@y.org"], "c": {"07700900124": 1}}
    # Dict keys are numbered, not named: the key itself may be the personal value.
    assert find_contact_values(data) == [
        ("<value #0>", PHONE), ("<value #1>[1]", EMAIL), ("<value #2><key #0>", PHONE),
    ]


def test_samples_are_clean():
    for model in (MemberRegistered, BallotOpened, Voted, ReminderSent):
        assert find_contact_values(sample(model)) == []
        assert find_contact_values(sample_data(model)) == []
