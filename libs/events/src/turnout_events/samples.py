"""One valid, deterministic sample payload per event type, for tests, benchmarks and docs.

Samples are kept in wire form (JSON-ready dicts) so a test can break one field at a time
and see what a consumer would see. Ids are fixed (uuid5) so runs are reproducible.

    sample(Voted)                              # the typed payload
    sample(Voted, member_id=other_member)      # with overrides, validated
    sample_envelope(Voted, actor="rep:...")    # wrapped, ready for serde.encode
"""

from __future__ import annotations

import copy
import uuid
from typing import Any

from .envelope import SYSTEM_ACTOR, Envelope, EventData
from .registry import all_events

_NS = uuid.UUID("6f1c4a52-3d0e-4a53-9a43-7f3c2b1d0e11")


def sample_id(name: str) -> uuid.UUID:
    """A stable id for a named sample thing, e.g. sample_id("member-1")."""
    return uuid.uuid5(_NS, name)


MEMBER_ID = str(sample_id("member-1"))
BALLOT_ID = str(sample_id("ballot-1"))
PLACEMENT = {"group_code": "G-NW", "branch_code": "B123", "workplace_code": "WP-0042",
             "grade": "band-5"}
CONTACT = {"has_mobile": True, "has_email": False, "sms_consent": True,
           "email_consent": False}

_DATA: dict[tuple[str, int], dict[str, Any]] = {
    ("contacts.member-registered", 1): {
        "member_id": MEMBER_ID, "member_version": 1, "placement": PLACEMENT, "contact": CONTACT,
    },
    ("contacts.member-moved", 1): {
        "member_id": MEMBER_ID, "member_version": 2, "previous": PLACEMENT,
        "placement": {**PLACEMENT, "branch_code": "B124", "workplace_code": "WP-0077"},
    },
    ("contacts.contact-updated", 1): {
        "member_id": MEMBER_ID, "member_version": 3,
        "contact": {**CONTACT, "has_email": True, "email_consent": True},
        "changed": ["email", "email_consent"], "reason": "rep_edit",
    },
    ("contacts.member-contacted", 1): {
        "member_id": MEMBER_ID, "member_version": 4,
        "conversation_id": str(sample_id("conversation-1")), "ballot_id": BALLOT_ID,
        "channel": "phone", "outcome": "will_vote", "contacted_at": "2026-03-03T18:15:00Z",
    },
    ("contacts.consent-changed", 1): {
        "member_id": MEMBER_ID, "member_version": 5, "channel": "sms", "granted": False,
        "via": "stop_reply", "contact": {**CONTACT, "sms_consent": False},
    },
    ("ballots.ballot-opened", 1): {
        "ballot_id": BALLOT_ID, "ballot_name": "Pay 2025-2026 industrial action ballot",
        "kind": "statutory", "opens_at": "2026-03-02T09:00:00Z",
        "closes_at": "2026-03-23T12:00:00Z", "turnout_threshold": 0.5,
        "scope": {"group_codes": ["G-NW"], "branch_codes": []}, "eligible_count": 12480,
    },
    ("ballots.member-enrolled", 1): {
        "ballot_id": BALLOT_ID, "member_id": MEMBER_ID, "placement": PLACEMENT,
    },
    ("ballots.voted", 1): {
        "ballot_id": BALLOT_ID, "member_id": MEMBER_ID, "vote_source": "conversation",
        "voted_at": "2026-03-05T19:40:00+00:00",
        "conversation_id": str(sample_id("conversation-2")),
    },
    ("ballots.vote-retracted", 1): {
        "ballot_id": BALLOT_ID, "member_id": MEMBER_ID, "reason_code": "marked_in_error",
    },
    ("ballots.replacement-requested", 1): {
        "ballot_id": BALLOT_ID, "member_id": MEMBER_ID,
        "request_id": str(sample_id("replacement-1")), "reason": "never_arrived",
    },
    ("ballots.ballot-closed", 1): {
        "ballot_id": BALLOT_ID, "closed_at": "2026-03-23T12:00:00Z", "eligible_count": 12480,
        "voted_count": 6902,
    },
    ("notifications.reminder-sent", 1): {
        "member_id": MEMBER_ID, "message_id": str(sample_id("message-1")),
        "campaign_id": str(sample_id("campaign-1")), "ballot_id": BALLOT_ID,
        "channel": "sms", "template_code": "reminder-3-days",
    },
    ("notifications.message-delivered", 1): {
        "member_id": MEMBER_ID, "message_id": str(sample_id("message-1")), "channel": "sms",
        "delivered_at": "2026-03-20T10:00:04Z",
    },
    ("notifications.message-failed", 1): {
        "member_id": MEMBER_ID, "message_id": str(sample_id("message-2")), "channel": "sms",
        "error_code": "unreachable", "permanent": True, "failed_at": "2026-03-20T10:00:09Z",
    },
    ("notifications.opt-out-received", 1): {
        "member_id": MEMBER_ID, "channel": "sms", "received_at": "2026-03-20T10:03:00Z",
    },
    ("notifications.reply-received", 1): {
        "member_id": MEMBER_ID, "message_id": str(sample_id("message-3")),
        "in_reply_to": str(sample_id("message-1")), "ballot_id": BALLOT_ID, "channel": "sms",
        "intent": "voted", "received_at": "2026-03-20T10:05:00Z",
    },
}


def sample_data(model: type[EventData]) -> dict[str, Any]:
    """The sample payload of `model` in wire form (a fresh copy, safe to modify)."""
    return copy.deepcopy(_DATA[(model.event_type, model.version)])


def sample(model: type[EventData], **overrides: Any) -> EventData:
    return model.model_validate({**sample_data(model), **overrides})


def sample_envelope(model: type[EventData], *, actor: str = SYSTEM_ACTOR,
                    **overrides: Any) -> Envelope:
    return Envelope.wrap(sample(model, **overrides), actor=actor)


def all_samples() -> list[EventData]:
    """One sample per registered event; KeyError names an event that has none."""
    missing = [f"{m.event_type} v{m.version}" for m in all_events()
               if (m.event_type, m.version) not in _DATA]
    if missing:
        raise KeyError(f"no sample for {', '.join(missing)}")
    return [sample(m) for m in all_events()]
