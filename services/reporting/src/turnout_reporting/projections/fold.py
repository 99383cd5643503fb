"""The turnout fold: (current per-member state, a batch of events) -> (new state, deltas).

Pure and synchronous, so it can be tested hard without Kafka or PostgreSQL; the
projector (`projector.py`) loads the state a batch touches, calls `fold`, and writes
what comes back in one transaction.

Why per-member state rather than counting events: events reach us from three topics in
any order, some more than once (a relay that crashed after publishing and before
marking its outbox rows republishes them, with the same ids). So the fold keeps, per
member and per (member, ballot), the *facts* the events establish, and makes every fact
idempotent and order-insensitive on its own:

- contact flags and placement: the highest `member_version` wins (versioned apart,
  because each event carries only one of the two, and member-contacted neither);
- voted: the mark with the latest order key wins, a retraction winning a tie; the key
  is the same as the contacts service's (`vote_status.py`): `occurred_at`, or a vote's
  own `voted_at` when that is later;
- enrolled, contacted: flags that only ever turn on;
- replacement requests and reminders: sets of their ids (`request_id`, `message_id`).

The numbers are then a function of the facts: each enrolled (member, ballot) contributes
its counts to the units of its *current* placement (contacts' latest, else the roll's),
and a batch's deltas are "contribution after" minus "contribution before" for every
(member, ballot) it touched. Applying an event twice changes no fact, hence no number;
that is the dedupe (per entity, not per event id), and it needs no inbox table that
would grow by one row per event. Redelivery (a crash before commit, a rebalance) is
handled one level up: offsets are stored in the same transaction as the effects.

"Contacted in the ballot period" is kept simple: a conversation logged *for* the ballot
(member-contacted with that `ballot_id`). A conversation without a ballot id is not
counted: deciding whether it falls in the ballot's period needs the ballot's dates,
which travel on another partition and may come later, and counting it then would mean
rescanning every member of the ballot when they arrive.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from turnout_events.ballots import (
    BallotClosed,
    BallotOpened,
    MemberEnrolled,
    ReplacementRequested,
    Voted,
    VoteRetracted,
)
from turnout_events.contacts import (
    ConsentChanged,
    ContactUpdated,
    MemberContacted,
    MemberMoved,
    MemberRegistered,
)
from turnout_events.envelope import Envelope, EventData
from turnout_events.notifications import ReminderSent

LEVELS = ("national", "group", "branch", "workplace")
COUNTS = ("eligible", "voted", "contactable", "sms_consent", "contacted", "hard_to_reach",
          "reminders_sent", "replacements_requested")
ZERO = (0,) * len(COUNTS)

# (ballot_id, level, group_code, branch_code, workplace_code), '' below the level.
UnitKey = tuple[uuid.UUID, str, str, str, str]
Placement = tuple[str, str, str | None]  # group, branch, workplace


@dataclass(slots=True)
class MemberState:
    """What the contacts service last said about a member (see the module docstring)."""

    member_id: uuid.UUID
    contact_version: int = 0
    has_mobile: bool = False
    has_email: bool = False
    sms_consent: bool = False
    placement_version: int = 0
    group_code: str | None = None
    branch_code: str | None = None
    workplace_code: str | None = None

    def copy(self) -> MemberState:
        return dataclasses.replace(self)

    @property
    def placement(self) -> Placement | None:
        if self.placement_version == 0 or self.group_code is None or self.branch_code is None:
            return None
        return (self.group_code, self.branch_code, self.workplace_code)


@dataclass(slots=True)
class BallotMemberState:
    """One member in one ballot. Exists before the enrolment when a vote or a contact
    came first; counts only once `enrolled`."""

    member_id: uuid.UUID
    ballot_id: uuid.UUID
    enrolled: bool = False
    group_code: str | None = None  # the placement on the roll
    branch_code: str | None = None
    workplace_code: str | None = None
    voted: bool = False
    vote_changed_at: datetime | None = None
    voted_at: datetime | None = None
    contacted: bool = False
    replacement_requests: set[uuid.UUID] = field(default_factory=set)
    reminders: set[uuid.UUID] = field(default_factory=set)

    def copy(self) -> BallotMemberState:
        return dataclasses.replace(self, replacement_requests=set(self.replacement_requests),
                                   reminders=set(self.reminders))

    @property
    def placement(self) -> Placement | None:
        if self.group_code is None or self.branch_code is None:
            return None
        return (self.group_code, self.branch_code, self.workplace_code)


# member_id -> ballot_id -> state: the fold needs every ballot of a member whose flags or
# placement change.
Enrolments = dict[uuid.UUID, dict[uuid.UUID, BallotMemberState]]


@dataclass
class FoldResult:
    members: dict[uuid.UUID, MemberState]  # changed member states
    enrolments: list[BallotMemberState]  # changed (member, ballot) states
    ballots: dict[uuid.UUID, dict[str, Any]]  # ballot info to upsert (partial rows)
    deltas: dict[UnitKey, list[int]]  # per unit, in COUNTS order; no all-zero rows
    hourly: dict[tuple[UnitKey, datetime], int]  # net votes per unit and hour; no zeros
    applied: int = 0  # events that were of a kind the fold uses


def vote_order_key(envelope: Envelope, event: Voted | VoteRetracted) -> tuple[datetime, bool]:
    """Later wins; on a tie the retraction (True sorts after False) wins."""
    if isinstance(event, Voted):
        return (max(envelope.occurred_at, event.voted_at), False)
    return (envelope.occurred_at, True)


def fold(members: dict[uuid.UUID, MemberState], enrolments: Enrolments,
         events: Iterable[tuple[Envelope, EventData]]) -> FoldResult:
    """Apply `events` to the states of the members they touch.

    `members` and `enrolments` must hold the current state of every member the events
    name (absent means "nothing known yet"); they are not modified. The result holds
    the states that changed and the per-unit deltas those changes make.
    """
    batch = list(events)
    touched = {e.member_id for _, e in batch if hasattr(e, "member_id")}
    # Work on copies of what the batch touches: the caller's state stays as it was, so a
    # failed transaction can simply be retried with the same inputs.
    new_members = {m: members[m].copy() for m in touched if m in members}
    new_enrolments = {m: {b: s.copy() for b, s in enrolments.get(m, {}).items()}
                      for m in touched}
    before = {(m, b): _contribution(members.get(m), s)
              for m in touched for b, s in enrolments.get(m, {}).items()}

    ballots: dict[uuid.UUID, dict[str, Any]] = {}
    applied = 0
    for envelope, event in batch:
        if isinstance(event, (BallotOpened, BallotClosed)):
            _apply_ballot(ballots, event)
            applied += 1
            continue
        member_id = getattr(event, "member_id", None)
        if member_id is None:
            continue
        if _apply(new_members, new_enrolments[member_id], envelope, event):
            applied += 1

    result = FoldResult(members={}, enrolments=[], ballots=ballots, deltas={}, hourly={},
                        applied=applied)
    for m in touched:
        state = new_members.get(m)
        if state is not None and state != members.get(m):
            result.members[m] = state
        old_ballots = enrolments.get(m, {})
        for b, s in new_enrolments[m].items():
            if s != old_ballots.get(b):
                result.enrolments.append(s)
            after = _contribution(state, s)
            _add(result, before.get((m, b)), after)
    result.deltas = {k: v for k, v in result.deltas.items() if any(v)}
    result.hourly = {k: v for k, v in result.hourly.items() if v}
    return result


def _apply(members: dict[uuid.UUID, MemberState], ballots: dict[uuid.UUID, BallotMemberState],
           envelope: Envelope, event: EventData) -> bool:
    """Apply one member-level event to the member's (copied) states. False when the
    fold has no use for the event's type."""
    if isinstance(event, (MemberRegistered, MemberMoved, ContactUpdated, ConsentChanged)):
        state = members.get(event.member_id)
        if state is None:
            state = members[event.member_id] = MemberState(event.member_id)
        if isinstance(event, (MemberRegistered, MemberMoved)) and (
                event.member_version > state.placement_version):
            state.placement_version = event.member_version
            state.group_code = event.placement.group_code
            state.branch_code = event.placement.branch_code
            state.workplace_code = event.placement.workplace_code
        if isinstance(event, (MemberRegistered, ContactUpdated, ConsentChanged)) and (
                event.member_version > state.contact_version):
            state.contact_version = event.member_version
            state.has_mobile = event.contact.has_mobile
            state.has_email = event.contact.has_email
            state.sms_consent = event.contact.sms_consent
        return True
    if isinstance(event, MemberContacted):
        if event.ballot_id is not None:
            _ballot_member(ballots, event.member_id, event.ballot_id).contacted = True
        return True
    if isinstance(event, MemberEnrolled):
        state = _ballot_member(ballots, event.member_id, event.ballot_id)
        state.enrolled = True
        # One enrolment per member and ballot (the roll is snapshotted once), so a copy
        # of it carries the same placement.
        state.group_code = event.placement.group_code
        state.branch_code = event.placement.branch_code
        state.workplace_code = event.placement.workplace_code
        return True
    if isinstance(event, (Voted, VoteRetracted)):
        state = _ballot_member(ballots, event.member_id, event.ballot_id)
        at, retraction = vote_order_key(envelope, event)
        if state.vote_changed_at is None or (at, retraction) > (
                state.vote_changed_at, not state.voted):
            state.voted = not retraction
            state.vote_changed_at = at
            state.voted_at = event.voted_at if isinstance(event, Voted) else None
        return True
    if isinstance(event, ReplacementRequested):
        _ballot_member(ballots, event.member_id, event.ballot_id).replacement_requests.add(
            event.request_id)
        return True
    if isinstance(event, ReminderSent):
        _ballot_member(ballots, event.member_id, event.ballot_id).reminders.add(
            event.message_id)
        return True
    return False


def _ballot_member(ballots: dict[uuid.UUID, BallotMemberState], member_id: uuid.UUID,
                   ballot_id: uuid.UUID) -> BallotMemberState:
    state = ballots.get(ballot_id)
    if state is None:
        state = ballots[ballot_id] = BallotMemberState(member_id, ballot_id)
    return state


def _apply_ballot(ballots: dict[uuid.UUID, dict[str, Any]],
                  event: BallotOpened | BallotClosed) -> None:
    row = ballots.setdefault(event.ballot_id, {})
    if isinstance(event, BallotOpened):
        row.update(name=event.ballot_name, kind=event.kind.value,
                   turnout_threshold=event.turnout_threshold, opens_at=event.opens_at,
                   closes_at=event.closes_at)
    else:
        row["closed_at"] = event.closed_at


# A contribution: the units it counts in, its counts, and the hour its vote counts in.
Contribution = tuple[tuple[UnitKey, ...], tuple[int, ...], datetime | None]


def units_of(ballot_id: uuid.UUID, placement: Placement) -> tuple[UnitKey, ...]:
    group, branch, workplace = placement
    units: tuple[UnitKey, ...] = (
        (ballot_id, "national", "", "", ""),
        (ballot_id, "group", group, "", ""),
        (ballot_id, "branch", group, branch, ""),
    )
    if workplace:
        units += ((ballot_id, "workplace", group, branch, workplace),)
    return units


def hour_of(moment: datetime) -> datetime:
    """The UTC hour a moment falls in (the timeline's bucket)."""
    return moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def _contribution(member: MemberState | None,
                  state: BallotMemberState) -> Contribution | None:
    if not state.enrolled:
        return None
    placement = (member.placement if member is not None else None) or state.placement
    if placement is None:  # an enrolment always has one; defensive
        return None
    contactable = member is not None and (member.has_mobile or member.has_email)
    counts = (
        1,
        int(state.voted),
        int(contactable),
        int(member is not None and member.sms_consent),
        int(state.contacted),
        int(not contactable),
        len(state.reminders),
        len(state.replacement_requests),
    )
    hour = hour_of(state.voted_at) if state.voted and state.voted_at is not None else None
    return units_of(state.ballot_id, placement), counts, hour


def _add(result: FoldResult, before: Contribution | None, after: Contribution | None) -> None:
    if before == after:
        return
    if before is not None and after is not None and before[0] == after[0]:
        # Same units (no move): one difference, applied once per unit.
        _add_difference(result, after[0], before[1], after[1], before[2], after[2])
        return
    for contribution, sign in ((before, -1), (after, 1)):
        if contribution is None:
            continue
        units, counts, hour = contribution
        for unit in units:
            row = result.deltas.get(unit)
            if row is None:
                row = result.deltas[unit] = list(ZERO)
            for i, n in enumerate(counts):
                if n:
                    row[i] += sign * n
            if hour is not None:
                key = (unit, hour)
                result.hourly[key] = result.hourly.get(key, 0) + sign


def _add_difference(result: FoldResult, units: tuple[UnitKey, ...], before: tuple[int, ...],
                    after: tuple[int, ...], hour_before: datetime | None,
                    hour_after: datetime | None) -> None:
    diff = [a - b for a, b in zip(after, before, strict=True)]
    changed = any(diff)
    for unit in units:
        if changed:
            row = result.deltas.get(unit)
            if row is None:
                row = result.deltas[unit] = list(ZERO)
            for i, d in enumerate(diff):
                if d:
                    row[i] += d
        if hour_before != hour_after:
            for hour, sign in ((hour_before, -1), (hour_after, 1)):
                if hour is not None:
                    key = (unit, hour)
                    result.hourly[key] = result.hourly.get(key, 0) + sign
