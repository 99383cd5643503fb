"""The state the notifications service keeps from ballots, contacts and its own events,
consumed from the real broker: the same events in any order, delivered any number of
times, end in the same rows."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
import sqlalchemy as sa
from turnout_notifications.db.tables import ballots, member_contact, opt_outs, roll

from services.notifications.tests.support import CLOSES_AT, T0, deliver, event, produce
from turnout_events.ballots import BallotClosed, BallotOpened, MemberEnrolled, Voted, VoteRetracted
from turnout_events.contacts import ConsentChanged, ContactUpdated, MemberMoved, MemberRegistered
from turnout_events.notifications import OptOutReceived

pytestmark = pytest.mark.integration

FLAGS = {"has_mobile": True, "has_email": False, "sms_consent": True, "email_consent": False}


def ctx_of(client):
    return client.app.state.ctx


async def row(client, table, *where):
    async with ctx_of(client).sessions() as session:
        return (await session.execute(sa.select(table).where(*where))).first()


async def test_ballots_roll_and_votes(notifications_app, kafka_bootstrap, topics):
    ballot = uuid.uuid4()
    a, b, c = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    opened = event(BallotOpened, ballot_id=ballot, ballot_name="Pay ballot",
                   opens_at=(T0 - timedelta(days=10)).isoformat(),
                   closes_at=CLOSES_AT.isoformat())
    vote_at = T0 - timedelta(hours=1)
    events = [
        opened,
        # b's vote arrives before b's enrolment; c is retracted at the same instant it
        # was marked (the retraction wins the tie whatever the order); a is retracted and
        # then, later, marked again.
        event(Voted, ballot_id=ballot, member_id=b, voted_at=vote_at.isoformat(),
              occurred_at=vote_at),
        event(MemberEnrolled, ballot_id=ballot, member_id=a),
        event(MemberEnrolled, ballot_id=ballot, member_id=b,
              placement={"group_code": "G2", "branch_code": "B7"}),
        event(MemberEnrolled, ballot_id=ballot, member_id=c),
        event(VoteRetracted, ballot_id=ballot, member_id=c, occurred_at=vote_at),
        event(Voted, ballot_id=ballot, member_id=c, voted_at=vote_at.isoformat(),
              occurred_at=vote_at),
        event(Voted, ballot_id=ballot, member_id=a, voted_at=(vote_at + timedelta(minutes=5))
              .isoformat(), occurred_at=vote_at + timedelta(minutes=5)),
        event(VoteRetracted, ballot_id=ballot, member_id=a, occurred_at=vote_at),
    ]
    await deliver(notifications_app, kafka_bootstrap, topics, "ballots", events)

    held = await row(notifications_app, ballots, ballots.c.ballot_id == ballot)
    assert (held.name, held.closes_at, held.closed_at) == ("Pay ballot", CLOSES_AT, None)
    status = {}
    for member in (a, b, c):
        r = await row(notifications_app, roll, roll.c.ballot_id == ballot,
                      roll.c.member_id == member)
        status[member] = (r.enrolled, r.voted)
    assert status == {a: (True, True), b: (True, True), c: (True, False)}
    placed = await row(notifications_app, roll, roll.c.member_id == b)
    assert (placed.group_code, placed.branch_code, placed.workplace_code) == ("G2", "B7", None)

    # A redelivery of everything changes nothing; the close is recorded.
    closed = event(BallotClosed, ballot_id=ballot, closed_at=CLOSES_AT.isoformat())
    await deliver(notifications_app, kafka_bootstrap, topics, "ballots", [*events, closed])
    for member, expected in status.items():
        r = await row(notifications_app, roll, roll.c.member_id == member)
        assert (r.enrolled, r.voted) == expected
    held = await row(notifications_app, ballots, ballots.c.ballot_id == ballot)
    assert held.closed_at == CLOSES_AT


async def test_contact_flags_keep_the_latest_version(notifications_app, kafka_bootstrap,
                                                     topics):
    member, other = uuid.uuid4(), uuid.uuid4()
    # Version 3 (consent withdrawn) arrives before versions 1 and 2; member-moved (v4)
    # carries no flags and changes none.
    withdrawn = event(ConsentChanged, member_id=member, member_version=3, channel="sms",
                      granted=False, via="rep", contact={**FLAGS, "sms_consent": False})
    registered = event(MemberRegistered, member_id=member, member_version=1, contact=FLAGS)
    no_mobile = event(ContactUpdated, member_id=member, member_version=2,
                      contact={**FLAGS, "has_mobile": False}, changed=["mobile"])
    moved = event(MemberMoved, member_id=member, member_version=4)
    other_registered = event(MemberRegistered, member_id=other, member_version=1,
                             contact={**FLAGS, "has_mobile": False})
    await deliver(notifications_app, kafka_bootstrap, topics, "contacts",
                  [withdrawn, registered, no_mobile, other_registered])
    # Events not applied leave no trace to wait for: a stale event for the same member
    # (same partition, so read after it) shows the member-moved has gone by.
    stale = event(MemberRegistered, member_id=member, member_version=1, contact=FLAGS)
    await produce(kafka_bootstrap, topics.events("contacts"), [moved])
    await deliver(notifications_app, kafka_bootstrap, topics, "contacts", [stale])

    held = await row(notifications_app, member_contact, member_contact.c.member_id == member)
    assert (held.member_version, held.has_mobile, held.sms_consent) == (3, True, False)
    held = await row(notifications_app, member_contact, member_contact.c.member_id == other)
    assert (held.has_mobile, held.sms_consent) == (False, True)


async def test_opt_outs_hold_until_the_member_consents_again(notifications_app,
                                                             kafka_bootstrap, topics):
    member = uuid.uuid4()
    stop_at = T0 - timedelta(hours=2)
    await deliver(notifications_app, kafka_bootstrap, topics, "notifications", [
        event(OptOutReceived, member_id=member, received_at=stop_at.isoformat())])
    assert await row(notifications_app, opt_outs, opt_outs.c.member_id == member)

    # A rep recording consent again does not lift the member's own STOP ...
    await deliver(notifications_app, kafka_bootstrap, topics, "contacts", [
        event(ConsentChanged, member_id=member, member_version=2, channel="sms", granted=True,
              via="rep", contact=FLAGS, occurred_at=T0)])
    assert await row(notifications_app, opt_outs, opt_outs.c.member_id == member)
    # ... nor does a member request older than the STOP; a later one does.
    await deliver(notifications_app, kafka_bootstrap, topics, "contacts", [
        event(ConsentChanged, member_id=member, member_version=3, channel="sms", granted=True,
              via="member_request", contact=FLAGS, occurred_at=stop_at - timedelta(hours=1))])
    assert await row(notifications_app, opt_outs, opt_outs.c.member_id == member)
    await deliver(notifications_app, kafka_bootstrap, topics, "contacts", [
        event(ConsentChanged, member_id=member, member_version=4, channel="sms", granted=True,
              via="member_request", contact=FLAGS, occurred_at=T0)])
    assert await row(notifications_app, opt_outs, opt_outs.c.member_id == member) is None
