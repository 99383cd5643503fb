"""Events published by the ballots service.

Ballot-level events (opened, closed) are keyed by `ballot_id`; everything about one
member in a ballot is keyed by `member_id`, so it shares a partition with that member's
contacts and notifications events.
"""

from __future__ import annotations

import uuid
from enum import StrEnum
from typing import Annotated, ClassVar

from pydantic import AwareDatetime, Field, model_validator

from .common import Code, Count, Part, Placement
from .envelope import EventData

BallotName = Annotated[str, Field(min_length=1, max_length=200, description=(
    "A ballot's public title, e.g. 'Pay 2026 industrial action ballot'. Not personal."))]


class BallotKind(StrEnum):
    STATUTORY = "statutory"  # industrial action ballot under the Trade Union Act
    INDICATIVE = "indicative"
    SURVEY = "survey"


class BallotScope(Part):
    """Which members a ballot covers: the union of the listed groups and branches."""

    group_codes: list[Code] = Field(default_factory=list, max_length=1000)
    branch_codes: list[Code] = Field(default_factory=list, max_length=10000)


class _BallotEvent(EventData):
    source: ClassVar[str] = "ballots"
    key_field: ClassVar[str] = "ballot_id"

    ballot_id: uuid.UUID


class _BallotMemberEvent(_BallotEvent):
    key_field: ClassVar[str] = "member_id"

    member_id: uuid.UUID


class BallotOpened(_BallotEvent):
    """A ballot opened and its eligible roll was snapshotted (one member-enrolled each)."""

    event_type: ClassVar[str] = "ballots.ballot-opened"

    ballot_name: BallotName
    kind: BallotKind
    opens_at: AwareDatetime
    closes_at: AwareDatetime
    turnout_threshold: float | None = Field(gt=0, le=1, description=(
        "Share of eligible members who must vote, e.g. 0.5; null when the law sets none."))
    scope: BallotScope
    eligible_count: Count

    @model_validator(mode="after")
    def _closes_after_opening(self) -> BallotOpened:
        if self.closes_at <= self.opens_at:
            raise ValueError("closes_at must be later than opens_at")
        return self


class MemberEnrolled(_BallotMemberEvent):
    """A member is on a ballot's eligible roll, placed as they were at opening."""

    event_type: ClassVar[str] = "ballots.member-enrolled"

    placement: Placement


class VoteSource(StrEnum):
    REP = "rep"
    MEMBER_SELF_REPORT = "member_self_report"
    CONVERSATION = "conversation"
    SCRUTINEER = "scrutineer"
    SMS_REPLY = "sms_reply"


class Voted(_BallotMemberEvent):
    """A member is known to have voted. Published once per member and ballot: a second
    mark from another source changes nothing and publishes nothing."""

    event_type: ClassVar[str] = "ballots.voted"

    # Not called `source`: that name is the publishing service (EventData.source).
    vote_source: VoteSource
    voted_at: AwareDatetime
    conversation_id: uuid.UUID | None = Field(default=None, description=(
        "The conversation that recorded the vote, when vote_source is 'conversation'."))


class RetractionReason(StrEnum):
    MARKED_IN_ERROR = "marked_in_error"
    WRONG_MEMBER = "wrong_member"
    SCRUTINEER_CORRECTION = "scrutineer_correction"
    MEMBER_DISPUTED = "member_disputed"
    OTHER = "other"


class VoteRetracted(_BallotMemberEvent):
    """A voted mark was withdrawn. The reason is a code: free text could name people."""

    event_type: ClassVar[str] = "ballots.vote-retracted"

    reason_code: RetractionReason


class ReplacementReason(StrEnum):
    LOST = "lost"
    SPOILED = "spoiled"
    NEVER_ARRIVED = "never_arrived"
    OTHER = "other"


class ReplacementRequested(_BallotMemberEvent):
    """A replacement ballot paper was requested for a member."""

    event_type: ClassVar[str] = "ballots.replacement-requested"

    request_id: uuid.UUID
    reason: ReplacementReason


class BallotClosed(_BallotEvent):
    """A ballot closed. The counts are the ballots service's own, for reconciliation;
    projections compute theirs from the events."""

    event_type: ClassVar[str] = "ballots.ballot-closed"

    closed_at: AwareDatetime
    eligible_count: Count
    voted_count: Count


EVENTS: tuple[type[EventData], ...] = (
    BallotOpened, MemberEnrolled, Voted, VoteRetracted, ReplacementRequested, BallotClosed,
)
