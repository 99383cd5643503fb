"""Events published by the contacts service (the member directory).

All are keyed by `member_id` and carry `member_version`, the member's own change counter,
because events about one member reach consumers from several topics and in any order;
the counter lets a projection keep the latest placement and flags and drop stale ones.
"""

from __future__ import annotations

import uuid
from enum import StrEnum
from typing import ClassVar

from pydantic import AwareDatetime, Field

from .common import ContactFlags, MemberVersion, MessageChannel, Placement
from .envelope import EventData


class _ContactsEvent(EventData):
    source: ClassVar[str] = "contacts"
    key_field: ClassVar[str] = "member_id"

    member_id: uuid.UUID
    member_version: MemberVersion


class MemberRegistered(_ContactsEvent):
    """A member appeared in the directory (roster import or manual registration)."""

    event_type: ClassVar[str] = "contacts.member-registered"

    placement: Placement
    contact: ContactFlags


class MemberMoved(_ContactsEvent):
    """A member's placement changed (branch, workplace, group or grade)."""

    event_type: ClassVar[str] = "contacts.member-moved"

    previous: Placement = Field(description=(
        "The placement the contacts service held before; a consumer with its own "
        "versioned state should prefer that."))
    placement: Placement


class ContactAttribute(StrEnum):
    MOBILE = "mobile"
    EMAIL = "email"
    SMS_CONSENT = "sms_consent"
    EMAIL_CONSENT = "email_consent"


class ContactChangeReason(StrEnum):
    REP_EDIT = "rep_edit"
    ROSTER_IMPORT = "roster_import"
    MEMBER_REQUEST = "member_request"
    DELIVERY_FAILURE = "delivery_failure"  # e.g. a number reported as not in service
    ERASURE = "erasure"


class ContactUpdated(_ContactsEvent):
    """A member's contact details changed. Only the resulting flags travel."""

    event_type: ClassVar[str] = "contacts.contact-updated"

    contact: ContactFlags = Field(description="The flags after the change.")
    changed: list[ContactAttribute] = Field(min_length=1)
    reason: ContactChangeReason


class ConversationChannel(StrEnum):
    FACE_TO_FACE = "face_to_face"
    PHONE = "phone"
    SMS = "sms"
    EMAIL = "email"
    WHATSAPP = "whatsapp"
    TEAMS = "teams"
    OTHER = "other"


class ConversationOutcome(StrEnum):
    VOTED = "voted"
    WILL_VOTE = "will_vote"
    UNDECIDED = "undecided"
    WONT_VOTE = "wont_vote"
    NO_ANSWER = "no_answer"
    WRONG_NUMBER = "wrong_number"
    DO_NOT_CONTACT = "do_not_contact"
    REPLACEMENT_NEEDED = "replacement_needed"


class MemberContacted(_ContactsEvent):
    """A rep logged a conversation with a member. The rep is the envelope's `actor`; the
    note a rep may write stays in the contacts database, never in the event."""

    event_type: ClassVar[str] = "contacts.member-contacted"

    conversation_id: uuid.UUID
    ballot_id: uuid.UUID | None = None
    channel: ConversationChannel
    outcome: ConversationOutcome
    contacted_at: AwareDatetime


class ConsentSource(StrEnum):
    ROSTER_IMPORT = "roster_import"
    REP = "rep"
    MEMBER_REQUEST = "member_request"
    STOP_REPLY = "stop_reply"  # an opt-out received by the notification service
    ERASURE = "erasure"


class ConsentChanged(_ContactsEvent):
    """A member gave or withdrew consent to be messaged on one channel."""

    event_type: ClassVar[str] = "contacts.consent-changed"

    channel: MessageChannel
    granted: bool
    via: ConsentSource
    contact: ContactFlags = Field(description="The flags after the change.")


EVENTS: tuple[type[EventData], ...] = (
    MemberRegistered, MemberMoved, ContactUpdated, MemberContacted, ConsentChanged,
)
