"""The contacts service consuming ballots and notifications events from the real broker:
vote status for the chase list, opt-outs withdrawing consent. Each event has one effect
however often it is delivered, and the result does not depend on the order of arrival."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from turnout_contacts.db.tables import vote_status
from turnout_contacts.service.opt_out import CONSUMER as OPT_OUT_CONSUMER
from turnout_contacts.service.vote_status import CONSUMER as VOTE_STATUS_CONSUMER

from services.contacts.tests.seed import seed_member
from tests.support.events import event, eventually, produce
from tests.support.kafka import read_to_end
from tests.support.outbox import outbox_drained
from turnout_events.ballots import MemberEnrolled, Voted, VoteRetracted
from turnout_events.envelope import Envelope
from turnout_events.notifications import OptOutReceived
from turnout_events.serde import decode
from turnout_events.tables import inbox, outbox

pytestmark = pytest.mark.integration

MOBILE = "+447911123123"
EMAIL = "alex.jones@example.org.uk"
T0 = datetime(2026, 3, 5, 9, 0, tzinfo=UTC)


# -- helpers, shared with test_chase_list.py ----------------------------------------------

def ctx_of(client):
    return client.app.state.ctx




async def status_of(ctx, ballot_id: uuid.UUID, member_id: uuid.UUID) -> Any:
    async with ctx.sessions() as session:
        return (await session.execute(sa.select(vote_status).where(
            vote_status.c.ballot_id == ballot_id,
            vote_status.c.member_id == member_id))).first()


async def enrol(client, kafka_bootstrap: str, topics, ballot_id: uuid.UUID,
                member_ids: Iterable[uuid.UUID]) -> None:
    """Enrol members through the ballots topic and wait until the service has them all."""
    member_ids = list(member_ids)
    await produce(kafka_bootstrap, topics.events("ballots"),
                  [event(MemberEnrolled, ballot_id=ballot_id, member_id=m) for m in member_ids])

    async def all_enrolled() -> bool:
        async with ctx_of(client).sessions() as session:
            count = (await session.execute(sa.select(sa.func.count()).select_from(vote_status)
                                           .where(vote_status.c.ballot_id == ballot_id,
                                                  vote_status.c.member_id.in_(member_ids),
                                                  vote_status.c.enrolled))).scalar_one()
        return count == len(member_ids)

    await eventually(all_enrolled, what=f"{len(member_ids)} enrolments")


async def chase_ids(client, headers: dict, ballot_id: uuid.UUID, **params: Any) -> list[str]:
    response = await client.get(f"/v1/ballots/{ballot_id}/chase-list",
                                params={"limit": 500, **params}, headers=headers)
    assert response.status_code == 200, response.text
    return [item["member_id"] for item in response.json()["items"]]


async def inbox_ids(ctx, consumer: str) -> set[uuid.UUID]:
    async with ctx.sessions() as session:
        return set((await session.execute(sa.select(inbox.c.event_id)
                                          .where(inbox.c.consumer == consumer))).scalars())


async def contacts_events(client, kafka_bootstrap: str, topics) -> list[Envelope]:
    """Everything the service has published, its outbox drained first."""
    await outbox_drained(ctx_of(client).engine)
    records = await read_to_end(kafka_bootstrap, [topics.events("contacts")])
    for record in records:  # the privacy rule, on the bytes as they travel
        assert b"7911123123" not in record.value and b"alex" not in record.value.lower()
        assert b"example.org" not in record.value
    return [decode(r.value) for r in records]


# -- vote status --------------------------------------------------------------------------

async def test_enrolment_vote_and_retraction_move_a_member_on_and_off_the_chase_list(
        contacts_app, tokens, topics, kafka_bootstrap):
    ctx, ballots = ctx_of(contacts_app), topics.events("ballots")
    member, ballot = await seed_member(ctx_of(contacts_app)), uuid.uuid4()
    national = tokens("national")
    assert await chase_ids(contacts_app, national, ballot) == []

    await produce(kafka_bootstrap, ballots,
                  [event(MemberEnrolled, ballot_id=ballot, member_id=member)])
    await eventually(lambda: _listed(contacts_app, national, ballot, member), what="enrolment")

    voted = event(Voted, ballot_id=ballot, member_id=member, voted_at=T0, occurred_at=T0)
    await produce(kafka_bootstrap, ballots, [voted])
    await eventually(lambda: _not_listed(contacts_app, national, ballot, member), what="vote")

    retracted = event(VoteRetracted, ballot_id=ballot, member_id=member,
                      occurred_at=T0 + timedelta(hours=1))
    await produce(kafka_bootstrap, ballots, [retracted])
    await eventually(lambda: _listed(contacts_app, national, ballot, member),
                     what="retraction")
    row = await status_of(ctx, ballot, member)
    assert (row.enrolled, row.voted, row.voted_changed_at) == (
        True, False, T0 + timedelta(hours=1))


async def test_a_redelivered_ballots_event_is_applied_once(contacts_app, topics,
                                                           kafka_bootstrap):
    ctx = ctx_of(contacts_app)
    member, ballot, sentinel_ballot = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    enrolled = event(MemberEnrolled, ballot_id=ballot, member_id=member)
    voted = event(Voted, ballot_id=ballot, member_id=member, voted_at=T0, occurred_at=T0)
    retracted = event(VoteRetracted, ballot_id=ballot, member_id=member,
                      occurred_at=T0 + timedelta(minutes=5))
    # A relay that crashed before marking its rows sent publishes them again, here even
    # after the retraction; the last event (same key, same partition) marks the end.
    await produce(kafka_bootstrap, topics.events("ballots"), [
        enrolled, enrolled, voted, voted, retracted, voted, enrolled,
        event(MemberEnrolled, ballot_id=sentinel_ballot, member_id=member)])
    await eventually(lambda: status_of(ctx, sentinel_ballot, member), what="the last event")

    row = await status_of(ctx, ballot, member)
    assert (row.enrolled, row.voted, row.voted_changed_at) == (
        True, False, T0 + timedelta(minutes=5))
    assert len(await inbox_ids(ctx, VOTE_STATUS_CONSUMER)) == 4  # four distinct events


async def test_late_older_events_do_not_overwrite_newer_ones(contacts_app, topics,
                                                             kafka_bootstrap):
    ctx = ctx_of(contacts_app)
    ballot = uuid.uuid4()
    voted_late, retracted_late, early_vote, rescued = (uuid.uuid4() for _ in range(4))
    one_hour = timedelta(hours=1)
    await produce(kafka_bootstrap, topics.events("ballots"), [
        # The vote (newer) arrives before the retraction it superseded.
        event(Voted, ballot_id=ballot, member_id=voted_late, voted_at=T0 + one_hour,
              occurred_at=T0 + one_hour),
        event(VoteRetracted, ballot_id=ballot, member_id=voted_late, occurred_at=T0),
        # The retraction (newer) arrives before the vote it withdrew.
        event(VoteRetracted, ballot_id=ballot, member_id=retracted_late,
              occurred_at=T0 + one_hour),
        event(Voted, ballot_id=ballot, member_id=retracted_late, voted_at=T0,
              occurred_at=T0),
        # A vote reported before the member's enrolment reached us.
        event(Voted, ballot_id=ballot, member_id=early_vote, voted_at=T0, occurred_at=T0),
        # A scrutineer's list, recorded after a retraction, of a vote cast before it.
        event(Voted, ballot_id=ballot, member_id=rescued, voted_at=T0, occurred_at=T0),
        event(VoteRetracted, ballot_id=ballot, member_id=rescued, occurred_at=T0 + one_hour),
        event(Voted, ballot_id=ballot, member_id=rescued, voted_at=T0 - one_hour,
              occurred_at=T0 + 2 * one_hour),
    ])

    async def state(member):
        row = await status_of(ctx, ballot, member)
        return row and (row.enrolled, row.voted)

    async def settled() -> bool:
        return (await state(voted_late) == (False, True)
                and await state(retracted_late) == (False, False)
                and await state(early_vote) == (False, True)
                and await state(rescued) == (False, True))

    await eventually(settled, what="the events in any order to converge")
    # The enrolment, arriving last, completes the row without touching the vote.
    await produce(kafka_bootstrap, topics.events("ballots"), [
        event(MemberEnrolled, ballot_id=ballot, member_id=m)
        for m in (voted_late, retracted_late, early_vote, rescued)])

    async def all_enrolled() -> bool:
        return all([(await state(m))[0] for m in (voted_late, retracted_late, early_vote,
                                                  rescued)])

    await eventually(all_enrolled, what="the late enrolments")
    assert [await state(m) for m in (voted_late, retracted_late, early_vote, rescued)] == [
        (True, True), (True, False), (True, True), (True, True)]


# -- opt-outs -----------------------------------------------------------------------------

async def test_an_opt_out_withdraws_sms_consent_and_publishes_it_once(
        contacts_app, tokens, topics, kafka_bootstrap):
    ctx = ctx_of(contacts_app)
    member = await seed_member(ctx, mobile=MOBILE, email=EMAIL, sms_consent=True,
                               email_consent=True)
    national = tokens("national")
    notifications = topics.events("notifications")
    stop = event(OptOutReceived, member_id=member, channel="sms")
    await produce(kafka_bootstrap, notifications, [stop])
    await eventually(lambda: _member_has(contacts_app, national, member, sms_consent=False),
                     what="SMS consent withdrawn")

    [changed] = await contacts_events(contacts_app, kafka_bootstrap, topics)
    assert changed.type == "contacts.consent-changed"
    assert changed.key == str(member)
    assert changed.causation_id == stop.id and changed.actor == "system"
    assert changed.data == {
        "member_id": str(member), "member_version": 2, "channel": "sms", "granted": False,
        "via": "stop_reply", "contact": {"has_mobile": True, "has_email": True,
                                         "sms_consent": False, "email_consent": True}}

    # The same opt-out delivered again, and a second STOP from the member: nothing to do.
    # The email opt-out after them (same member, same partition) marks the end.
    await produce(kafka_bootstrap, notifications, [
        stop, event(OptOutReceived, member_id=member, channel="sms"),
        event(OptOutReceived, member_id=member, channel="email")])
    await eventually(lambda: _member_has(contacts_app, national, member, email_consent=False),
                     what="email consent withdrawn")
    published = await contacts_events(contacts_app, kafka_bootstrap, topics)
    assert [(e.data["channel"], e.data["member_version"]) for e in published] == [
        ("sms", 2), ("email", 3)]
    member_now = (await contacts_app.get(f"/v1/members/{member}", headers=national)).json()
    assert member_now["version"] == 3 and member_now["has_mobile"]


async def test_a_redelivered_opt_out_does_not_undo_consent_given_since(
        contacts_app, tokens, topics, kafka_bootstrap):
    ctx = ctx_of(contacts_app)
    member = await seed_member(ctx, sms_consent=True, email_consent=True)
    national, rep = tokens("national"), tokens("rep", branches=["B1"])
    notifications = topics.events("notifications")
    stop = event(OptOutReceived, member_id=member, channel="sms")
    await produce(kafka_bootstrap, notifications, [stop])
    await eventually(lambda: _member_has(contacts_app, national, member, sms_consent=False),
                     what="SMS consent withdrawn")
    # The member asks to be texted again; then the old STOP is delivered a second time.
    regranted = await contacts_app.patch(f"/v1/members/{member}/contact",
                                         json={"sms_consent": True}, headers=rep)
    assert regranted.status_code == 200, regranted.text
    await produce(kafka_bootstrap, notifications,
                  [stop, event(OptOutReceived, member_id=member, channel="email")])
    await eventually(lambda: _member_has(contacts_app, national, member, email_consent=False),
                     what="the event after the redelivery")
    assert (await _member_has(contacts_app, national, member, sms_consent=True))
    kinds = [(e.data["channel"], e.data["granted"], e.data["via"])
             for e in await contacts_events(contacts_app, kafka_bootstrap, topics)]
    assert kinds == [("sms", False, "stop_reply"), ("sms", True, "rep"),
                     ("email", False, "stop_reply")]


async def test_an_opt_out_for_an_unknown_member_is_recorded_and_ignored(
        contacts_app, topics, kafka_bootstrap):
    ctx = ctx_of(contacts_app)
    stranger = event(OptOutReceived, member_id=uuid.uuid4(), channel="sms")
    await produce(kafka_bootstrap, topics.events("notifications"), [stranger])
    await eventually(lambda: _claimed(ctx, OPT_OUT_CONSUMER, stranger.id),
                     what="the opt-out to be processed")
    async with ctx.sessions() as session:
        assert (await session.execute(sa.select(sa.func.count()).select_from(outbox))
                ).scalar_one() == 0
    assert await read_to_end(kafka_bootstrap, [topics.dead_letter]) == []


# -- local helpers ------------------------------------------------------------------------

async def _listed(client, headers, ballot_id, member_id) -> bool:
    return str(member_id) in await chase_ids(client, headers, ballot_id)


async def _not_listed(client, headers, ballot_id, member_id) -> bool:
    return not await _listed(client, headers, ballot_id, member_id)


async def _member_has(client, headers, member_id, **expected) -> bool:
    body = (await client.get(f"/v1/members/{member_id}", headers=headers)).json()
    return all(body[k] == v for k, v in expected.items())


async def _claimed(ctx, consumer, event_id) -> bool:
    return event_id in await inbox_ids(ctx, consumer)
