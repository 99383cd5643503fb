"""The fold on its own, no Kafka, no PostgreSQL: whatever the order, however often an
event comes, the numbers end up as the events say."""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime, timedelta, timezone

import pytest
from turnout_reporting.projections.decode import EventDecoder
from turnout_reporting.projections.fold import (
    COUNTS,
    MemberStates,
    fold,
    hour_of,
    hours_since_epoch,
)
from turnout_reporting.synthetic import generate_ballot

from turnout_events.ballots import MemberEnrolled, Voted, VoteRetracted
from turnout_events.contacts import ContactUpdated, MemberMoved, MemberRegistered
from turnout_events.envelope import Envelope
from turnout_events.registry import parse_payload
from turnout_events.samples import BALLOT_ID, MEMBER_ID, PLACEMENT, sample_envelope

pytestmark = pytest.mark.unit

BALLOT = uuid.UUID(BALLOT_ID)
T0 = datetime(2026, 3, 5, 10, 0, tzinfo=UTC)
DECODER = EventDecoder()


def as_uuid(unit: tuple) -> tuple:
    """A unit key as the generator's truth writes it (the fold's ballot ids are strings)."""
    return (uuid.UUID(unit[0]), *unit[1:])


class Projection:
    """The fold's state kept across batches in memory, as the database keeps it."""

    def __init__(self) -> None:
        self.states: dict[str, MemberStates] = {}
        self.totals: dict[tuple, list[int]] = {}
        self.hourly: dict[tuple, int] = {}

    def apply(self, envelopes: list[Envelope]) -> None:
        # The contract's models, in the fold's form (as the consumer's decoder makes it).
        events = [DECODER.from_contract(e, p) for e in envelopes
                  if (p := parse_payload(e)) is not None]
        result = fold(self.states, events)
        self.states.update(result.states)
        for unit, delta in result.deltas.items():
            row = self.totals.setdefault(as_uuid(unit), [0] * len(COUNTS))
            for i, d in enumerate(delta):
                row[i] += d
        for (unit, hour), votes in result.hourly.items():
            key = (as_uuid(unit), hour)
            self.hourly[key] = self.hourly.get(key, 0) + votes

    def numbers(self) -> dict[tuple, list[int]]:
        return {k: v for k, v in self.totals.items() if any(v)}

    def timeline(self) -> dict[tuple, int]:
        return {k: v for k, v in self.hourly.items() if v}

    def row(self, level: str, *codes: str) -> dict[str, int]:
        padded = (list(codes) + ["", "", ""])[:3]
        values = self.totals.get((BALLOT, level, *padded), [0] * len(COUNTS))
        return dict(zip(COUNTS, values, strict=True))


def folded(envelopes: list[Envelope], *, batch_sizes=(None,), seed=0) -> Projection:
    projection = Projection()
    rng = random.Random(seed)
    i = 0
    while i < len(envelopes):
        size = rng.choice(batch_sizes) or len(envelopes)
        projection.apply(envelopes[i:i + size])
        i += size
    return projection


def at(envelope: Envelope, moment: datetime) -> Envelope:
    return envelope.model_copy(update={"occurred_at": moment})


def registered(member=MEMBER_ID, version=1, branch="B1", **contact) -> Envelope:
    flags = {"has_mobile": True, "has_email": False, "sms_consent": True,
             "email_consent": False, **contact}
    return sample_envelope(MemberRegistered, member_id=member, member_version=version,
                           placement={**PLACEMENT, "group_code": "G1", "branch_code": branch,
                                      "workplace_code": f"W-{branch}"},
                           contact=flags)


def enrolled(member=MEMBER_ID, branch="B1") -> Envelope:
    return sample_envelope(MemberEnrolled, member_id=member,
                           placement={**PLACEMENT, "group_code": "G1", "branch_code": branch,
                                      "workplace_code": f"W-{branch}"})


def voted(member=MEMBER_ID, when=T0) -> Envelope:
    return at(sample_envelope(Voted, member_id=member, voted_at=when.isoformat()), when)


def retracted(member=MEMBER_ID, when=T0) -> Envelope:
    return at(sample_envelope(VoteRetracted, member_id=member), when)


def moved(member=MEMBER_ID, version=2, branch="B2", group="G1") -> Envelope:
    return sample_envelope(MemberMoved, member_id=member, member_version=version,
                           placement={**PLACEMENT, "group_code": group, "branch_code": branch,
                                      "workplace_code": f"W-{branch}"})


def contact_updated(member=MEMBER_ID, version=3, **flags) -> Envelope:
    contact = {"has_mobile": False, "has_email": False, "sms_consent": False,
               "email_consent": False, **flags}
    return sample_envelope(ContactUpdated, member_id=member, member_version=version,
                           contact=contact, changed=["mobile"], reason="rep_edit")


# -- a generated ballot ---------------------------------------------------------------

@pytest.fixture(scope="module")
def ballot():
    generated = generate_ballot(members=400, seed=11)
    generated.envelopes = [Envelope.model_validate(e) for e in generated.events]
    return generated


def test_a_generated_ballot_folds_to_its_ground_truth(ballot):
    projection = folded(ballot.envelopes)
    assert projection.numbers() == ballot.truth
    assert projection.timeline() == ballot.hourly_truth
    national = projection.totals[(ballot.ballot_id, "national", "", "", "")]
    assert national[0] > 300 and 0 < national[1] < national[0]  # a ballot, not a trivial one
    assert ballot.duplicates > 0


@pytest.mark.parametrize("seed", range(8))
def test_any_order_and_any_batching_gives_the_same_numbers(ballot, seed):
    shuffled = list(ballot.envelopes)
    random.Random(seed).shuffle(shuffled)
    projection = folded(shuffled, batch_sizes=(1, 7, 50, 333), seed=seed)
    assert projection.numbers() == ballot.truth
    assert projection.timeline() == ballot.hourly_truth


def test_every_event_again_changes_nothing(ballot):
    projection = folded(ballot.envelopes)
    again = list(ballot.envelopes)
    random.Random(3).shuffle(again)
    projection.apply(again)
    assert projection.numbers() == ballot.truth
    assert projection.timeline() == ballot.hourly_truth


# -- the rules, one at a time ---------------------------------------------------------

def test_a_duplicate_within_a_batch_counts_once():
    vote = voted()
    projection = folded([registered(), enrolled(), vote, vote])
    assert projection.row("national")["voted"] == 1
    assert projection.hourly == {((BALLOT, "national", "", "", ""), hour_of(T0)): 1,
                                 ((BALLOT, "group", "G1", "", ""), hour_of(T0)): 1,
                                 ((BALLOT, "branch", "G1", "B1", ""), hour_of(T0)): 1,
                                 ((BALLOT, "workplace", "G1", "B1", "W-B1"), hour_of(T0)): 1}


@pytest.mark.parametrize("when", [
    datetime(2026, 3, 5, 15, 45, tzinfo=timezone(timedelta(hours=5, minutes=30))),
    datetime(2026, 3, 5, 5, 59, tzinfo=timezone(-timedelta(hours=4, minutes=30))),
])
def test_a_vote_written_with_another_offset_counts_in_its_hour_in_utc(when):
    projection = folded([registered(), enrolled(), voted(when=when)])
    assert set(h for (_, h) in projection.timeline()) == {hour_of(T0)}  # 10:00 UTC


def test_hours_since_the_epoch_agree_with_the_clock():
    rng = random.Random(5)
    offsets = [UTC, timezone(timedelta(hours=5, minutes=30)), timezone(-timedelta(hours=11))]
    for _ in range(2_000):
        moment = datetime(1969, 6, 1, tzinfo=UTC) + timedelta(seconds=rng.randrange(2 * 10**9))
        moment = moment.astimezone(rng.choice(offsets))
        assert hours_since_epoch(moment) == (moment - datetime(1970, 1, 1, tzinfo=UTC)) \
            // timedelta(hours=1)


@pytest.mark.parametrize("order", ["vote first", "retraction first"])
def test_the_later_of_vote_and_retraction_wins_whatever_the_order(order):
    events = [voted(when=T0), retracted(when=T0 + timedelta(hours=1))]
    if order == "retraction first":
        events.reverse()
    for batching in ((None,), (1,)):
        projection = folded([registered(), enrolled(), *events], batch_sizes=batching)
        assert projection.row("branch", "G1", "B1")["voted"] == 0
        assert projection.timeline() == {}
    # and a vote after the retraction stands, with its own hour
    revote = voted(when=T0 + timedelta(hours=5))
    projection = folded([registered(), enrolled(), revote, *events], batch_sizes=(1,))
    assert projection.row("national")["voted"] == 1
    assert set(h for (_, h) in projection.timeline()) == {hour_of(T0 + timedelta(hours=5))}


@pytest.mark.parametrize("reverse", [False, True])
def test_on_a_tie_the_retraction_wins(reverse):
    events = [voted(when=T0), retracted(when=T0)]
    if reverse:
        events.reverse()
    assert folded([enrolled(), *events], batch_sizes=(1,)).row("national")["voted"] == 0


def test_a_vote_before_the_enrolment_is_held_until_it_arrives():
    projection = Projection()
    projection.apply([voted()])
    assert projection.numbers() == {}
    projection.apply([enrolled()])
    assert projection.row("national")["eligible"] == 1
    assert projection.row("national")["voted"] == 1


def test_a_contact_update_before_the_enrolment_counts_once_enrolled():
    projection = Projection()
    projection.apply([registered(has_mobile=False, sms_consent=False)])
    projection.apply([contact_updated(has_email=True)])
    assert projection.numbers() == {}
    projection.apply([enrolled()])
    row = projection.row("branch", "G1", "B1")
    assert (row["eligible"], row["contactable"], row["hard_to_reach"]) == (1, 1, 0)


def test_an_older_contact_event_arriving_late_changes_nothing():
    projection = folded([enrolled(), contact_updated(version=3, has_mobile=True,
                                                     sms_consent=True)])
    projection.apply([registered(version=1, has_mobile=False, sms_consent=False)])
    row = projection.row("national")
    assert (row["contactable"], row["sms_consent"]) == (1, 1)
    # the registration's placement still applies: no newer one is known
    assert projection.row("workplace", "G1", "B1", "W-B1")["eligible"] == 1


def test_a_member_who_moves_takes_all_their_counts_with_them():
    projection = folded([registered(), enrolled(), voted()])
    before = projection.row("branch", "G1", "B1")
    assert (before["eligible"], before["voted"], before["contactable"]) == (1, 1, 1)
    projection.apply([moved(branch="B9", group="G2")])
    assert projection.numbers().keys() == {
        (BALLOT, "national", "", "", ""), (BALLOT, "group", "G2", "", ""),
        (BALLOT, "branch", "G2", "B9", ""), (BALLOT, "workplace", "G2", "B9", "W-B9")}
    assert projection.row("branch", "G2", "B9") == before
    assert ((BALLOT, "branch", "G2", "B9", ""), hour_of(T0)) in projection.timeline()
    assert ((BALLOT, "branch", "G1", "B1", ""), hour_of(T0)) not in projection.timeline()


def test_a_move_older_than_the_placement_held_is_ignored():
    projection = folded([moved(version=5, branch="B5"), enrolled(branch="B1")])
    assert projection.row("branch", "G1", "B5")["eligible"] == 1
    projection.apply([moved(version=3, branch="B3")])
    assert projection.row("branch", "G1", "B5")["eligible"] == 1
    assert projection.row("branch", "G1", "B3")["eligible"] == 0


def test_without_a_placement_from_contacts_the_roll_places_the_member():
    projection = folded([enrolled(branch="B7")])
    assert projection.row("branch", "G1", "B7")["eligible"] == 1
    assert projection.row("branch", "G1", "B7")["hard_to_reach"] == 1


# -- what the consumer knows in memory --------------------------------------------------

def test_a_member_remembered_as_stored_is_never_reported_unseen():
    from turnout_reporting.projections.folder import StoredMembers

    stored = StoredMembers()
    written = {str(uuid.UUID(int=random.Random(i).getrandbits(128))) for i in range(50_000)}
    stored.add(written)
    assert all(stored.maybe(m) for m in written)  # no false "never stored"
    others = [str(uuid.uuid4()) for _ in range(20_000)]
    # ...and a needless "maybe" (a load that finds nothing) stays rare.
    assert sum(stored.maybe(m) for m in others) < len(others) * 0.01


def test_partitions_ahead_in_publish_time_wait_for_the_one_furthest_behind():
    from turnout_reporting.projections.folder import Folder

    folder = Folder.__new__(Folder)  # its in-memory positions only
    folder.positions = {("c", 0): 10, ("b", 0): 10, ("n", 0): 10}
    ends = {("c", 0): 100, ("b", 0): 100, ("n", 0): 100}
    folder.times = {("c", 0): 1_000, ("b", 0): 4_000, ("n", 0): 9_000}
    pause, read = folder.ahead(ends.get, slack_ms=2_000)
    assert pause == {("b", 0), ("n", 0)} and read == {("c", 0)}
    # A partition that has given nothing yet may be furthest behind: the others wait.
    folder.times = {("c", 0): 1_000, ("b", 0): 1_500}
    pause, _ = folder.ahead(ends.get, slack_ms=2_000)
    assert pause == {("c", 0), ("b", 0)}
    # One that has nothing more to give holds nobody back.
    folder.times = {("c", 0): 1_000, ("b", 0): 4_000, ("n", 0): 9_000}
    folder.positions[("c", 0)] = 100
    pause, read = folder.ahead(ends.get, slack_ms=2_000)
    assert pause == {("n", 0)} and read == {("c", 0), ("b", 0)}
    # Caught up everywhere: nothing waits.
    folder.positions = dict(ends)
    assert folder.ahead(ends.get, slack_ms=2_000) == (set(), set(ends))
