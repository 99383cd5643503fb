"""The catalog itself: every event is registered once, named and keyed by the rules, has
a sample, and declares no field whose name suggests personal data."""

from __future__ import annotations

import re
import uuid
from typing import Any, get_args, get_origin

import pytest
from pydantic import BaseModel

from turnout_events.envelope import EventData
from turnout_events.registry import all_events, is_known, model_for
from turnout_events.samples import all_samples, sample, sample_data
from turnout_events.topics import SOURCES

pytestmark = pytest.mark.unit

EXPECTED_TYPES = {
    "contacts.member-registered", "contacts.member-moved", "contacts.contact-updated",
    "contacts.member-contacted", "contacts.consent-changed",
    "ballots.ballot-opened", "ballots.member-enrolled", "ballots.voted",
    "ballots.vote-retracted", "ballots.replacement-requested", "ballots.ballot-closed",
    "notifications.reminder-sent", "notifications.message-delivered",
    "notifications.message-failed", "notifications.opt-out-received",
    "notifications.reply-received",
}
BALLOT_LEVEL = {"ballots.ballot-opened", "ballots.ballot-closed"}

# A field named like this could hold a name, a contact value or free text.
FORBIDDEN_TOKENS = {
    "phone", "mobile", "email", "mail", "name", "names", "firstname", "lastname", "surname",
    "forename", "address", "postcode", "note", "notes", "text", "body", "comment",
    "comments", "dob", "birth", "membership",
}
ALLOWED_NAMES = {"has_mobile", "has_email", "email_consent", "ballot_name"}


def _fields(model: type[BaseModel], prefix: str = "") -> list[str]:
    """Every field name (and alias) of `model`, descending into nested models."""
    names = []
    for name, info in model.model_fields.items():
        names += [f"{prefix}{n}" for n in {name, info.alias or name}]
        stack: list[Any] = [info.annotation]
        while stack:
            ann = stack.pop()
            if isinstance(ann, type) and issubclass(ann, BaseModel):
                names += _fields(ann, f"{prefix}{name}.")
            elif get_origin(ann) is not None:
                stack.extend(get_args(ann))
    return names


def test_every_expected_event_is_registered_once():
    assert {m.event_type for m in all_events()} == EXPECTED_TYPES
    assert len(all_events()) == len({(m.event_type, m.version) for m in all_events()})


@pytest.mark.parametrize("model", all_events(), ids=lambda m: m.event_type)
def test_event_declares_type_source_and_key(model: type[EventData]):
    assert re.fullmatch(r"[a-z]+\.[a-z]+(-[a-z]+)*", model.event_type)
    assert model.source in SOURCES and model.event_type.startswith(f"{model.source}.")
    assert model.version >= 1
    assert model.model_config.get("frozen") is True
    expected_key = "ballot_id" if model.event_type in BALLOT_LEVEL else "member_id"
    assert model.key_field == expected_key
    assert model.model_fields[model.key_field].annotation is uuid.UUID
    if model.source == "contacts":
        assert "member_version" in model.model_fields


@pytest.mark.parametrize("model", all_events(), ids=lambda m: m.event_type)
def test_no_field_is_named_like_personal_data(model: type[EventData]):
    offending = [
        path for path in _fields(model)
        if path.rsplit(".", 1)[-1] not in ALLOWED_NAMES
        and FORBIDDEN_TOKENS & set(path.rsplit(".", 1)[-1].lower().split("_"))
    ]
    assert not offending, f"{model.event_type}: fields named like personal data: {offending}"


def test_field_name_check_catches_personal_names():
    class Leaky(BaseModel):
        first_name: str
        mobile: str
        has_mobile: bool

    class Outer(BaseModel):
        contact: Leaky | None = None
        note: str = ""

    flagged = [p for p in _fields(Outer) if p.rsplit(".", 1)[-1] not in ALLOWED_NAMES
               and FORBIDDEN_TOKENS & set(p.rsplit(".", 1)[-1].split("_"))]
    assert sorted(flagged) == ["contact.first_name", "contact.mobile", "note"]


def test_model_for_and_is_known():
    from turnout_events.ballots import Voted

    assert model_for("ballots.voted", 1) is Voted
    assert is_known("ballots.voted", 1)
    assert not is_known("ballots.voted", 2)
    with pytest.raises(KeyError, match="ballots.voted v2"):
        model_for("ballots.voted", 2)


def test_there_is_one_valid_sample_per_event():
    samples = all_samples()
    assert [type(s) for s in samples] == all_events()


def test_sample_overrides_are_validated():
    from turnout_events.ballots import Voted

    other = uuid.uuid4()
    assert sample(Voted, member_id=str(other)).member_id == other
    with pytest.raises(ValueError):
        sample(Voted, vote_source="telepathy")
    data = sample_data(Voted)
    data["member_id"] = "changed"  # a copy: the next sample is unaffected
    assert sample_data(Voted)["member_id"] != "changed"
