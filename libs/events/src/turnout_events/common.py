"""The vocabulary the payloads share: codes, placement, contact flags, channels.

Codes are constrained strings rather than free text so that nothing personal (a name, a
note, an address) can ride along in a field meant for an identifier.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

CODE_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,39}$"

Code = Annotated[str, StringConstraints(pattern=CODE_PATTERN)]
"""An organisational or technical code (group, branch, workplace, grade, error code)."""

# A union's membership number, as contacts' roster imports take it and ballots'
# scrutineer lists may name members by it (matched through contacts). Never in an
# event: it names a person outside Turnout, where a member id does not.
MEMBERSHIP_NUMBER_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9/_.-]{0,39}$"

# Version counters and counts are plain non-negative integers with an explicit floor.
MemberVersion = Annotated[int, Field(ge=1, description=(
    "Per-member counter, incremented by the contacts service on every change to the "
    "member; consumers keep the highest they have applied and ignore older events."))]
Count = Annotated[int, Field(ge=0)]


class Part(BaseModel):
    """Base of nested payload parts: frozen and tolerant of unknown fields, like payloads.
    (The privacy check runs from the enclosing `EventData`, which walks into parts.)"""

    model_config = ConfigDict(extra="ignore", frozen=True, hide_input_in_errors=True)


class Placement(Part):
    """Where a member sits in the union: the units turnout is projected by."""

    group_code: Code
    branch_code: Code
    workplace_code: Code | None = None
    grade: Code | None = None


class ContactFlags(Part):
    """What the contacts service holds for a member, as flags only; the values stay in its
    (erasable) database and are fetched service-to-service at send time."""

    has_mobile: bool
    has_email: bool = Field(description="Has a personal email address (not a work one).")
    sms_consent: bool
    email_consent: bool


class MessageChannel(StrEnum):
    """Channels the notification service sends on and members opt in or out of."""

    SMS = "sms"
    EMAIL = "email"
