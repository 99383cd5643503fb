"""A synthetic ballot as the three services would publish it, with its ground truth.

    ballot = generate_ballot(members=300, seed=7)
    ballot.events        # wire-form envelopes (dicts), in a realistic per-member order
    ballot.truth         # {unit key: counts} the projection must equal
    ballot.hourly_truth  # {(unit key, hour): net votes}

For tests and the benchmark. The truth is not computed from the events: it is what the
generator *decided* each member's story ends as (where they sit, what flags they have,
whether they voted and when), so it checks the fold against an independent account.

The stories have what makes folding hard: members moved to another branch (and group)
mid-ballot, contact details changing, votes retracted and re-cast, replacement requests
and reminders (some repeated with the same id), members registered but not on the roll,
and a share of events published twice with the same id (a relay that crashed after
sending and before marking its outbox rows). Shuffle `events` to test order-insensitivity.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from turnout_events.ballots import (
    BallotOpened,
    MemberEnrolled,
    ReplacementRequested,
    Voted,
    VoteRetracted,
)
from turnout_events.contacts import ContactUpdated, MemberContacted, MemberMoved, MemberRegistered
from turnout_events.envelope import EventData
from turnout_events.notifications import ReminderSent

from .projections.fold import COUNTS, UnitKey, hour_of, units_of

OPENS_AT = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
CLOSES_AT = datetime(2026, 3, 23, 12, 0, tzinfo=UTC)
PERIOD_HOURS = int((CLOSES_AT - OPENS_AT).total_seconds() // 3600)


def _iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


@dataclass
class SyntheticBallot:
    ballot_id: uuid.UUID
    threshold: float
    events: list[dict[str, Any]] = field(default_factory=list)
    truth: dict[UnitKey, list[int]] = field(default_factory=dict)
    hourly_truth: dict[tuple[UnitKey, datetime], int] = field(default_factory=dict)
    members: int = 0
    duplicates: int = 0


class _Clock:
    """Per-member story time: strictly increasing, so the truth is unambiguous."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.now = OPENS_AT - timedelta(days=30)

    def tick(self, at_least: datetime | None = None) -> datetime:
        if at_least is not None and at_least > self.now:
            self.now = at_least
        self.now += timedelta(seconds=self.rng.randint(1, 3 * 3600))
        return self.now


def _envelope(model: type[EventData], data: dict[str, Any], key: str,
              occurred_at: datetime, rng: random.Random) -> dict[str, Any]:
    return {
        "id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
        "type": model.event_type,
        "version": model.version,
        "occurred_at": _iso(occurred_at),
        "recorded_at": _iso(occurred_at),
        "source": model.source,
        "key": key,
        "correlation_id": None,
        "causation_id": None,
        "actor": "system",
        "data": data,
    }


def _units(groups: int, branches: int, workplaces: int) -> list[tuple[str, str, str]]:
    """(group, branch, workplace) for every workplace; branches spread over groups and
    workplaces over branches, round robin, so every unit exists."""
    branch_group = {f"B{b:04d}": f"G{b % groups:02d}" for b in range(branches)}
    branch_codes = sorted(branch_group)
    return [(branch_group[branch_codes[w % branches]], branch_codes[w % branches],
             f"W{w:05d}") for w in range(workplaces)]


def generate_ballot(members: int = 300, *, groups: int = 3, branches: int = 12,
                    workplaces: int = 40, seed: int = 7, threshold: float = 0.5,
                    duplicate_share: float = 0.03) -> SyntheticBallot:
    rng = random.Random(seed)
    ballot_id = uuid.UUID(int=rng.getrandbits(128), version=4)
    places = _units(groups, max(branches, groups), max(workplaces, branches))
    # Skewed sizes: a few big workplaces, a long tail.
    weights = [1.0 / (i + 1) ** 0.7 for i in range(len(places))]
    ballot = SyntheticBallot(ballot_id=ballot_id, threshold=threshold, members=members)
    b = str(ballot_id)
    ballot.events.append(_envelope(BallotOpened, {
        "ballot_id": b, "ballot_name": "Synthetic pay ballot", "kind": "statutory",
        "opens_at": _iso(OPENS_AT), "closes_at": _iso(CLOSES_AT),
        "turnout_threshold": threshold, "scope": {"group_codes": [], "branch_codes": []},
        "eligible_count": 0}, b, OPENS_AT, rng))
    chosen = rng.choices(places, weights=weights, k=members)
    for n in range(members):
        for event in _member_story(ballot, rng, chosen[n], places):
            ballot.events.append(event)
            if rng.random() < duplicate_share:
                ballot.events.append(event)  # the same id: a relay republishing
                ballot.duplicates += 1
    return ballot


def _member_story(ballot: SyntheticBallot, rng: random.Random, place: tuple[str, str, str],
                  places: list[tuple[str, str, str]]) -> Iterator[dict[str, Any]]:
    member_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
    b = str(ballot.ballot_id)
    clock = _Clock(rng)
    version = 1
    coverage = rng.random() < 0.4
    flags = {"has_mobile": coverage and rng.random() < 0.9,
             "has_email": coverage and rng.random() < 0.5}
    flags["sms_consent"] = flags["has_mobile"] and rng.random() < 0.8
    flags["email_consent"] = flags["has_email"] and rng.random() < 0.7

    def placement(p: tuple[str, str, str]) -> dict[str, Any]:
        return {"group_code": p[0], "branch_code": p[1], "workplace_code": p[2],
                "grade": "band5"}

    yield _envelope(MemberRegistered, {
        "member_id": member_id, "member_version": version, "placement": placement(place),
        "contact": dict(flags)}, member_id, clock.tick(), rng)
    enrolled = rng.random() < 0.95  # the rest are outside the ballot's scope
    if enrolled:
        yield _envelope(MemberEnrolled, {
            "ballot_id": b, "member_id": member_id, "placement": placement(place)},
            member_id, clock.tick(OPENS_AT), rng)
    voted = False
    voted_at: datetime | None = None
    contacted = False
    requests: set[str] = set()
    reminders: set[str] = set()
    for _ in range(rng.choice((0, 1, 2, 3, 4, 5))):
        roll = rng.random()
        at = clock.tick(OPENS_AT)
        if roll < 0.12:  # moved to another workplace, often another branch or group
            version += 1
            previous, place = place, rng.choice(places)
            yield _envelope(MemberMoved, {
                "member_id": member_id, "member_version": version,
                "previous": placement(previous), "placement": placement(place)},
                member_id, at, rng)
        elif roll < 0.25:  # contact details changed
            version += 1
            flags["has_mobile"] = not flags["has_mobile"]
            flags["sms_consent"] = flags["has_mobile"] and rng.random() < 0.8
            yield _envelope(ContactUpdated, {
                "member_id": member_id, "member_version": version, "contact": dict(flags),
                "changed": ["mobile", "sms_consent"], "reason": "rep_edit"},
                member_id, at, rng)
        elif roll < 0.45:  # a conversation, for this ballot or not
            version += 1
            for_ballot = rng.random() < 0.8
            contacted = contacted or for_ballot
            yield _envelope(MemberContacted, {
                "member_id": member_id, "member_version": version,
                "conversation_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                "ballot_id": b if for_ballot else None, "channel": "phone",
                "outcome": "will_vote", "contacted_at": _iso(at)}, member_id, at, rng)
        elif roll < 0.75 and enrolled:  # voted (again), or a retraction
            if voted and rng.random() < 0.4:
                voted, voted_at = False, None
                yield _envelope(VoteRetracted, {
                    "ballot_id": b, "member_id": member_id, "reason_code": "marked_in_error"},
                    member_id, at, rng)
            elif not voted:
                voted = True
                voted_at = at - timedelta(minutes=rng.randint(0, 600))
                voted_at = max(voted_at, OPENS_AT)
                yield _envelope(Voted, {
                    "ballot_id": b, "member_id": member_id, "vote_source": "rep",
                    "voted_at": _iso(voted_at), "conversation_id": None}, member_id, at, rng)
        elif roll < 0.85 and enrolled:
            # A second request for the same paper is the same request (same id).
            request = (rng.choice(sorted(requests)) if requests and rng.random() < 0.3
                       else str(uuid.UUID(int=rng.getrandbits(128), version=4)))
            requests.add(request)
            yield _envelope(ReplacementRequested, {
                "ballot_id": b, "member_id": member_id, "request_id": request,
                "reason": "never_arrived"}, member_id, at, rng)
        elif enrolled:
            message = str(uuid.UUID(int=rng.getrandbits(128), version=4))
            reminders.add(message)
            yield _envelope(ReminderSent, {
                "member_id": member_id, "message_id": message,
                "campaign_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                "ballot_id": b, "channel": "sms", "template_code": None}, member_id, at, rng)
    if not enrolled:
        return
    contactable = flags["has_mobile"] or flags["has_email"]
    counts = (1, int(voted), int(contactable), int(flags["sms_consent"]), int(contacted),
              int(not contactable), len(reminders), len(requests))
    for unit in units_of(ballot.ballot_id, place):
        row = ballot.truth.setdefault(unit, [0] * len(COUNTS))
        for i, value in enumerate(counts):
            row[i] += value
        if voted and voted_at is not None:
            key = (unit, hour_of(voted_at))
            ballot.hourly_truth[key] = ballot.hourly_truth.get(key, 0) + 1
