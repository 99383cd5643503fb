"""Events published by the notification service, all keyed by `member_id`.

`message_id` is the notification service's own id for a message, never the SMS
provider's: provider ids are opaque strings we do not control and stay in its database.
Replies carry a classified intent, never the text a member sent.
"""

from __future__ import annotations

import uuid
from enum import StrEnum
from typing import ClassVar

from pydantic import AwareDatetime

from .common import Code, MessageChannel
from .envelope import EventData


class _NotificationEvent(EventData):
    source: ClassVar[str] = "notifications"
    key_field: ClassVar[str] = "member_id"

    member_id: uuid.UUID


class ReminderSent(_NotificationEvent):
    """A reminder was handed to the provider for a member who had not voted."""

    event_type: ClassVar[str] = "notifications.reminder-sent"

    message_id: uuid.UUID
    campaign_id: uuid.UUID
    ballot_id: uuid.UUID
    channel: MessageChannel
    template_code: Code | None = None


class MessageDelivered(_NotificationEvent):
    """The provider confirmed delivery of a message."""

    event_type: ClassVar[str] = "notifications.message-delivered"

    message_id: uuid.UUID
    channel: MessageChannel
    delivered_at: AwareDatetime


class MessageFailed(_NotificationEvent):
    """The provider could not deliver a message."""

    event_type: ClassVar[str] = "notifications.message-failed"

    message_id: uuid.UUID
    channel: MessageChannel
    error_code: Code
    permanent: bool  # e.g. number not in service: the contacts service may clear has_mobile
    failed_at: AwareDatetime


class OptOutReceived(_NotificationEvent):
    """A member asked to stop messages on a channel (e.g. replied STOP). The contacts
    service withdraws the consent and publishes consent-changed."""

    event_type: ClassVar[str] = "notifications.opt-out-received"

    channel: MessageChannel
    received_at: AwareDatetime


class ReplyIntent(StrEnum):
    VOTED = "voted"
    NOT_YET = "not_yet"
    OPT_OUT = "opt_out"
    UNCLASSIFIED = "unclassified"


class ReplyReceived(_NotificationEvent):
    """A member replied to a message; `intent` "voted" becomes their own voted report."""

    event_type: ClassVar[str] = "notifications.reply-received"

    message_id: uuid.UUID  # the inbound reply's id
    in_reply_to: uuid.UUID | None = None  # the reminder's message_id, when matched
    ballot_id: uuid.UUID | None = None
    channel: MessageChannel
    intent: ReplyIntent
    received_at: AwareDatetime


EVENTS: tuple[type[EventData], ...] = (
    ReminderSent, MessageDelivered, MessageFailed, OptOutReceived, ReplyReceived,
)
