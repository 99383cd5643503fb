"""The turnout fold: (current per-member state, a batch of events) -> (new state, deltas).

Pure and synchronous, so it can be tested hard without Kafka or PostgreSQL; the store
(`store.py`) loads the state a batch touches, calls `fold`, and writes what comes back in
one transaction.

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
- replacement requests and reminders: sets of their ids (`request_id`, `message_id`),
  kept as one comma-separated string (see `BallotMemberState`).

The numbers are then a function of the facts: each enrolled (member, ballot) contributes
its counts to the units of its *current* placement (contacts' latest, else the roll's),
and a batch's deltas are "contribution after" minus "contribution before" for every
(member, ballot) it changed. Applying an event twice changes no fact, hence no number;
that is the dedupe (per entity, not per event id), and it needs no inbox table that
would grow by one row per event. Redelivery (a crash before commit, a rebalance) is
handled one level up: offsets are stored in the same transaction as the effects.

"Contacted in the ballot period" is kept simple: a conversation logged *for* the ballot
(member-contacted with that `ballot_id`). A conversation without a ballot id is not
counted: deciding whether it falls in the ballot's period needs the ballot's dates,
which travel on another partition and may come later, and counting it then would mean
rescanning every member of the ballot when they arrive.

Speed matters here (a rebuild folds every event ever published), hence the shape: the
input states are never modified and never copied unless an event changes them (copy on
first write), contributions are summed per (ballot, placement) and spread over the four
levels once per batch, and vote hours are whole hours since the epoch until the end.
Ids are the canonical UUID strings the decoder (`decode.py`) yields.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from msgspec import Struct

from .decode import (
    BallotClosed,
    BallotOpened,
    ConsentChanged,
    ContactUpdated,
    Event,
    MemberContacted,
    MemberEnrolled,
    MemberMoved,
    MemberRegistered,
    ReminderSent,
    ReplacementRequested,
    Voted,
    VoteRetracted,
)

LEVELS = ("national", "group", "branch", "workplace")
COUNTS = ("eligible", "voted", "contactable", "sms_consent", "contacted", "hard_to_reach",
          "reminders_sent", "replacements_requested")
ZERO = (0,) * len(COUNTS)

# (ballot_id, level, group_code, branch_code, workplace_code), '' below the level.
UnitKey = tuple[Any, str, str, str, str]
# (ballot_id, group_code, branch_code, workplace_code or ''): where a member counts.
PlaceKey = tuple[str, str, str, str]
NO_IDS = ""


# The states are msgspec Structs rather than dataclasses for speed: created, copied and
# compared in C, and not tracked by the garbage collector (they hold no cycles), which
# otherwise walks every one of a batch's tens of thousands, again and again.

class MemberState(Struct, gc=False):
    """What the contacts service last said about a member (see the module docstring)."""

    member_id: str
    contact_version: int = 0
    has_mobile: bool = False
    has_email: bool = False
    sms_consent: bool = False
    placement_version: int = 0
    group_code: str | None = None
    branch_code: str | None = None
    workplace_code: str | None = None

    if TYPE_CHECKING:  # msgspec copies Structs in C; its stubs do not declare __copy__
        def __copy__(self) -> MemberState: ...

    def copy(self) -> MemberState:
        return self.__copy__()


class BallotMemberState(Struct, gc=False):
    """One member in one ballot. Exists before the enrolment when a vote or a contact
    came first; counts only once `enrolled`."""

    member_id: str
    ballot_id: str
    enrolled: bool = False
    group_code: str | None = None  # the placement on the roll
    branch_code: str | None = None
    workplace_code: str | None = None
    voted: bool = False
    vote_changed_at: datetime | None = None
    voted_at: datetime | None = None
    contacted: bool = False
    # Sets of canonical ids, each as one string of ids joined by commas: membership is
    # a substring test (a 36-character id cannot straddle a comma), the size a count of
    # commas, and the set goes to the database as one text value rather than an array
    # (whose every element asyncpg would check in Python).
    replacement_requests: str = NO_IDS
    reminders: str = NO_IDS

    if TYPE_CHECKING:  # msgspec copies Structs in C; its stubs do not declare __copy__
        def __copy__(self) -> BallotMemberState: ...

    def copy(self) -> BallotMemberState:
        return self.__copy__()


# Everything known about one member: their state (None until contacts said something)
# and their state in each ballot, by ballot id.
MemberStates = tuple[MemberState | None, Mapping[str, BallotMemberState]]
States = Mapping[str, MemberStates]
NOTHING_KNOWN: MemberStates = (None, {})


@dataclass
class FoldResult:
    # Changed members, with everything now known about them (their full states, not
    # only what changed): what a following batch starts from.
    states: dict[str, MemberStates] = field(default_factory=dict)
    # States that changed, apart from those the input did not hold (new: to be inserted,
    # where the others are updated).
    members: list[MemberState] = field(default_factory=list)
    new_members: list[MemberState] = field(default_factory=list)
    enrolments: list[BallotMemberState] = field(default_factory=list)
    new_enrolments: list[BallotMemberState] = field(default_factory=list)
    ballots: dict[str, dict[str, Any]] = field(default_factory=dict)  # partial rows
    deltas: dict[UnitKey, list[int]] = field(default_factory=dict)  # COUNTS order; no zeros
    hourly: dict[tuple[UnitKey, datetime], int] = field(default_factory=dict)  # no zeros
    applied: int = 0  # events of a kind the fold uses


def vote_order_key(event: Event) -> tuple[datetime, bool]:
    """Later wins; on a tie the retraction (True sorts after False) wins."""
    data = event.data
    if isinstance(data, Voted):
        return (max(event.occurred_at, data.voted_at), False)
    return (event.occurred_at, True)


def fold(states: States, events: Iterable[Event]) -> FoldResult:
    """Apply `events` to the states of the members they name.

    `states` must hold the current state of every member the events name (absent means
    "nothing known yet"); it is not modified. The result holds the states that changed
    and the per-unit deltas those changes make.

    One loop, the event types inline and most frequent first, no call per event: this is
    the hottest code of the service (a rebuild runs it for every event ever published).
    Each state an event touches is first copied from `states` (a msgspec Struct copies
    in C); whether it changed is decided at the end by comparing it with the original.
    """
    # Per member the batch touches: [what `states` knows of them, their working copy
    # (None until an event changes it), their working copies by ballot (None until one
    # does)] — one lookup per event, where separate dicts took two or three.
    work: dict[str, list[Any]] = {}
    info: dict[str, dict[str, Any]] = {}
    applied = 0
    if len(_SHARED) > _SHARED_MAX:
        _SHARED.clear()
    intern = _SHARED.setdefault
    known_of = states.get
    for event in events:
        data = event.data
        kind = type(data)
        if kind is MemberRegistered or kind is MemberMoved or kind is ContactUpdated \
                or kind is ConsentChanged:
            member_id = data.member_id
            touched = work.get(member_id)
            if touched is None:
                touched = work[member_id] = [known_of(member_id), None, None]
            member = touched[1]
            if member is None:
                known = touched[0]
                base = known[0] if known is not None else None
                member = touched[1] = (MemberState(member_id) if base is None
                                       else base.__copy__())
            version = data.member_version
            # Placement and flags are versioned apart: each event carries one of them
            # (a registration both).
            if kind is not ContactUpdated and kind is not ConsentChanged \
                    and version > member.placement_version:
                placement = data.placement
                member.placement_version = version
                member.group_code = intern(placement.group_code, placement.group_code)
                member.branch_code = intern(placement.branch_code, placement.branch_code)
                member.workplace_code = intern(placement.workplace_code,
                                               placement.workplace_code)
            if kind is not MemberMoved and version > member.contact_version:
                contact = data.contact
                member.contact_version = version
                member.has_mobile = contact.has_mobile
                member.has_email = contact.has_email
                member.sms_consent = contact.sms_consent
            applied += 1
            continue
        if kind is BallotOpened:
            info.setdefault(data.ballot_id, {}).update(
                name=data.ballot_name, kind=data.kind.value,
                turnout_threshold=data.turnout_threshold, opens_at=data.opens_at,
                closes_at=data.closes_at)
            applied += 1
            continue
        if kind is BallotClosed:
            info.setdefault(data.ballot_id, {})["closed_at"] = data.closed_at
            applied += 1
            continue
        if kind is MemberContacted:
            if data.ballot_id is None:
                applied += 1
                continue
        elif kind not in _BALLOT_MEMBER_EVENTS:
            continue  # of no use to the numbers
        # One member in one ballot.
        applied += 1
        member_id = data.member_id
        ballot_id = data.ballot_id
        touched = work.get(member_id)
        if touched is None:
            touched = work[member_id] = [known_of(member_id), None, None]
        mine = touched[2]
        if mine is None:
            mine = touched[2] = {}
        state = mine.get(ballot_id)
        if state is None:
            known = touched[0]
            base = known[1].get(ballot_id) if known is not None else None
            ballot_id = intern(ballot_id, ballot_id)
            state = mine[ballot_id] = (BallotMemberState(member_id, ballot_id) if base is None
                                       else base.__copy__())
        if kind is MemberEnrolled:
            # One enrolment per member and ballot (the roll is snapshotted once), so a
            # copy of it carries the same placement.
            placement = data.placement
            state.enrolled = True
            state.group_code = intern(placement.group_code, placement.group_code)
            state.branch_code = intern(placement.branch_code, placement.branch_code)
            state.workplace_code = intern(placement.workplace_code, placement.workplace_code)
        elif kind is Voted:
            # The later mark wins (see vote_order_key); a vote loses a tie.
            at = event.occurred_at
            if data.voted_at > at:
                at = data.voted_at
            changed_at = state.vote_changed_at
            if changed_at is None or at > changed_at:
                state.voted = True
                state.vote_changed_at = at
                state.voted_at = data.voted_at
        elif kind is VoteRetracted:
            at = event.occurred_at
            changed_at = state.vote_changed_at
            if changed_at is None or at > changed_at or (at == changed_at and state.voted):
                state.voted = False
                state.vote_changed_at = at
                state.voted_at = None
        elif kind is MemberContacted:
            state.contacted = True
        elif kind is ReminderSent:
            if data.message_id not in state.reminders:
                state.reminders = with_id(state.reminders, data.message_id)
        else:  # ReplacementRequested
            if data.request_id not in state.replacement_requests:
                state.replacement_requests = with_id(state.replacement_requests,
                                                     data.request_id)
    result = _result(work)
    result.ballots = info
    result.applied = applied
    return result


# One string object per code and ballot id for every state that holds it, rather than
# the copy each event decoded: the fold keeps up to millions of states in memory
# (folder.RecentStates), and the copies were a quarter of their size. A few thousand
# codes, a few ballots; emptied if something floods it.
_SHARED: dict[Any, Any] = {}  # each string (or None) to the one object kept of it
_SHARED_MAX = 100_000

_BALLOT_MEMBER_EVENTS = frozenset({MemberEnrolled, Voted, VoteRetracted, ReminderSent,
                                   ReplacementRequested})


def _result(work: dict[str, list[Any]]) -> FoldResult:
    """What changed: the states that differ from what was known, and their deltas."""
    result = FoldResult()
    sums = _Sums()
    count = sums.count
    new_members, changed_members = result.new_members, result.members
    new_enrolments, changed_enrolments = result.new_enrolments, result.enrolments
    folded = result.states
    for member_id, (known, member, mine) in work.items():
        if mine is None:
            mine = _NONE
        if known is None:
            # Nothing was known (most members of a first fold): every state the batch
            # made is new, and made because an event changed it.
            if member is not None:
                new_members.append(member)
            new_enrolments.extend(mine.values())
            folded[member_id] = (member, mine)
            for state in mine.values():
                after = _contribution(member, state)
                if after is not None:
                    count(after, 1)
            continue
        base_member, base_ballots = known
        member_changed = member is not None and (base_member is None or member != base_member)
        if member_changed:
            (new_members if base_member is None else changed_members).append(member)
        else:
            member = base_member
        changed: dict[str, BallotMemberState] = {}
        for ballot_id, state in mine.items():
            base_state = base_ballots.get(ballot_id)
            if base_state is None:
                changed[ballot_id] = state
                new_enrolments.append(state)
            elif state != base_state:
                changed[ballot_id] = state
                changed_enrolments.append(state)
        if not member_changed and not changed:
            continue
        every = {**base_ballots, **changed} if base_ballots else changed
        folded[member_id] = (member, every)
        # A member's own change (flags, placement) moves every ballot they are in.
        for ballot_id, state in (every if member_changed else changed).items():
            before = _contribution(base_member, base_ballots.get(ballot_id))
            after = _contribution(member, state)
            if before != after:
                if before is not None:
                    count(before, -1)
                if after is not None:
                    count(after, 1)
    sums.spread(result)
    return result


_NONE: dict[str, BallotMemberState] = {}


# -- from facts to numbers --------------------------------------------------------------

# A contribution as flat keys that many members share, so that summing a batch's costs a
# member a few dict updates, not eight additions on each of four units; the keys turn
# into counts per unit once per batch. (ballot, group, branch, workplace or '', flags)
# with flags = voted | contactable << 1 | sms consent << 2 | contacted << 3; the numbers
# of reminders and replacement requests; and for a vote (ballot, group, branch,
# workplace or '', hour since the epoch) for the timeline.
CountsKey = tuple[str, str, str, str, int]
HourKey = tuple[str, str, str, str, int]
Contribution = tuple[CountsKey, int, int, HourKey | None]
VOTED, CONTACTABLE, SMS_CONSENT, CONTACTED = 1, 2, 4, 8
# The first six COUNTS of one member, by flags.
_FLAG_COUNTS = tuple(
    (1, flags & VOTED, int(bool(flags & CONTACTABLE)), int(bool(flags & SMS_CONSENT)),
     int(bool(flags & CONTACTED)), int(not flags & CONTACTABLE))
    for flags in range(16))


def _contribution(member: MemberState | None,
                  state: BallotMemberState | None) -> Contribution | None:
    if state is None or not state.enrolled:
        return None
    if member is not None and member.placement_version and member.group_code is not None \
            and member.branch_code is not None:
        group, branch, workplace = member.group_code, member.branch_code, member.workplace_code
    elif state.group_code is not None and state.branch_code is not None:
        group, branch, workplace = state.group_code, state.branch_code, state.workplace_code
    else:  # an enrolment always has a placement; defensive
        return None
    flags = VOTED if state.voted else 0
    if member is not None:
        if member.has_mobile or member.has_email:
            flags |= CONTACTABLE
        if member.sms_consent:
            flags |= SMS_CONSENT
    if state.contacted:
        flags |= CONTACTED
    workplace = workplace or ""
    key = (state.ballot_id, group, branch, workplace, flags)
    voted_at = state.voted_at
    hour = ((state.ballot_id, group, branch, workplace, hours_since_epoch(voted_at))
            if state.voted and voted_at is not None else None)
    # The sizes of the id sets (see BallotMemberState), inline: this runs for every
    # state a batch changes, twice.
    reminders, replacements = state.reminders, state.replacement_requests
    return (key, reminders.count(",") + 1 if reminders else 0,
            replacements.count(",") + 1 if replacements else 0, hour)


_EPOCH_DAY = datetime(1970, 1, 1).toordinal()


def hours_since_epoch(moment: datetime) -> int:
    """Whole hours since the epoch (the timeline's buckets, as numbers)."""
    # By the calendar: a third of the time `timestamp()` takes, and the decoder gives
    # every "Z" and "+00:00" this tzinfo.
    if moment.tzinfo is not UTC:
        moment = moment.astimezone(UTC)
    return (moment.toordinal() - _EPOCH_DAY) * 24 + moment.hour


def with_id(ids: str, new: str) -> str:
    return f"{ids},{new}" if ids else new


class _Sums:
    """Contributions, each counted after (`plus`) or before (`minus`) the batch, turned
    into deltas per unit at the end of the batch. The keys are listed and counted by
    `Counter` at the end, in C, rather than summed one by one."""

    __slots__ = ("plus", "minus", "hours_plus", "hours_minus", "reminders", "replacements")

    def __init__(self) -> None:
        self.plus: list[CountsKey] = []
        self.minus: list[CountsKey] = []
        self.hours_plus: list[HourKey] = []
        self.hours_minus: list[HourKey] = []
        self.reminders: dict[CountsKey, int] = {}
        self.replacements: dict[CountsKey, int] = {}

    def count(self, contribution: Contribution, sign: int) -> None:
        key, reminders, replacements, hour = contribution
        if sign > 0:
            self.plus.append(key)
            if hour is not None:
                self.hours_plus.append(hour)
        else:
            self.minus.append(key)
            if hour is not None:
                self.hours_minus.append(hour)
        if reminders:
            self.reminders[key] = self.reminders.get(key, 0) + sign * reminders
        if replacements:
            self.replacements[key] = self.replacements.get(key, 0) + sign * replacements

    def spread(self, result: FoldResult) -> None:
        members = _counted(self.plus, self.minus)
        places: dict[tuple[str, str, str, str], list[int]] = {}
        for key, n in members.items():
            place = key[:4]
            row = places.get(place)
            if row is None:
                row = places[place] = [0] * len(COUNTS)
            if n:
                for i, count in enumerate(_FLAG_COUNTS[key[4]]):
                    if count:
                        row[i] += n
            row[6] += self.reminders.get(key, 0)
            row[7] += self.replacements.get(key, 0)
        deltas: dict[UnitKey, list[int]] = {}
        for (ballot_id, group, branch, workplace), row in places.items():
            if not any(row):
                continue
            for unit in units_of(ballot_id, (group, branch, workplace)):
                total = deltas.get(unit)
                if total is None:
                    deltas[unit] = list(row)
                else:
                    for i, n in enumerate(row):
                        total[i] += n
        result.deltas = {unit: row for unit, row in deltas.items() if any(row)}
        hourly: dict[tuple[UnitKey, datetime], int] = {}
        moments: dict[int, datetime] = {}
        hours = _counted(self.hours_plus, self.hours_minus)
        for (ballot_id, group, branch, workplace, hour), votes in hours.items():
            if not votes:
                continue
            moment = moments.get(hour)
            if moment is None:
                moment = moments[hour] = datetime.fromtimestamp(hour * 3600, UTC)
            for unit in units_of(ballot_id, (group, branch, workplace)):
                unit_hour = (unit, moment)
                hourly[unit_hour] = hourly.get(unit_hour, 0) + votes
        result.hourly = {key: votes for key, votes in hourly.items() if votes}


def _counted(plus: list[Any], minus: list[Any]) -> Counter[Any]:
    counts = Counter(plus)
    for key, n in Counter(minus).items():
        counts[key] -= n
    return counts


def units_of(ballot_id: Any, placement: tuple[str, str, str | None]) -> tuple[UnitKey, ...]:
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
