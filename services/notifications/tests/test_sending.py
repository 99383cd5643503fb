"""Sending reminders: exactly to the members who should get one, never at night, never to
someone who voted a second ago, and with nothing personal in the events."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from turnout_notifications.db.tables import messages, sandbox_messages

from services.notifications.tests.support import (
    CLOSES_AT,
    T0,
    Member,
    deliver,
    event,
    eventually,
    seed_ballot,
)
from tests.support.kafka import read_to_end
from tests.support.outbox import outbox_drained
from turnout_events.ballots import Voted
from turnout_events.serde import decode

pytestmark = pytest.mark.integration

TEMPLATE = "Hi {first_name}, {days_left} days left to vote in the {ballot_name}: {link}"
LINK = "https://vote.example.org/pay"


def ctx_of(client):
    return client.app.state.ctx


async def create(client, tokens, ballot_id, **overrides) -> str:
    body = {**{"ballot_id": str(ballot_id), "template": TEMPLATE, "link": LINK,
               "schedule": ["P3D"]}, **overrides}
    response = await client.post("/v1/campaigns", json=body, headers=tokens("national"))
    assert response.status_code == 201, response.text
    return response.json()["campaign_id"]


async def counts(client, tokens, campaign_id) -> dict:
    response = await client.get(f"/v1/campaigns/{campaign_id}", headers=tokens("national"))
    assert response.status_code == 200, response.text
    return response.json()["counts"]


async def sent_to(client, campaign_id) -> set[uuid.UUID]:
    async with ctx_of(client).sessions() as session:
        return set((await session.execute(sa.select(messages.c.member_id).where(
            messages.c.campaign_id == uuid.UUID(str(campaign_id)),
            messages.c.status == "sent"))).scalars())


async def sandbox(client, tokens) -> list[dict]:
    response = await client.get("/v1/sandbox/messages", headers=tokens("national"))
    assert response.status_code == 200, response.text
    return response.json()["items"]


async def test_a_campaign_reaches_exactly_the_right_members(
        notifications_app, kafka_bootstrap, topics, fake_contacts, tokens, clock):
    seeded = await seed_ballot(notifications_app, kafka_bootstrap, topics, fake_contacts, {
        "priya": Member(first_name="Priya"),
        "nameless": Member(first_name=None),
        "voted": Member(voted=True),
        "no_consent": Member(sms_consent=False),
        "no_mobile": Member(has_mobile=False),
        "opted_out": Member(opted_out=True),  # STOP'd; contacts has not caught up yet
        "withdrawn": Member(textable=False),  # contacts withdrew consent a moment ago
        "capped": Member(branch="B2"),
        "elsewhere": Member(group="G9", branch="B9"),  # outside the audience filter
    }, ballot_name="Pay 2026 ballot")
    ids = seeded.ids
    dispatcher = ctx_of(notifications_app).dispatcher

    # An hour earlier, another campaign texted the B2 member: one a day is the cap.
    clock.set(T0 - timedelta(hours=1))
    earlier = await create(notifications_app, tokens, seeded.ballot_id,
                           schedule=[(T0 - timedelta(hours=1)).isoformat()],
                           audience={"branch_codes": ["B2"]})
    await dispatcher.run_once()
    assert await sent_to(notifications_app, earlier) == {ids["capped"]}

    clock.set(T0)
    campaign = await create(notifications_app, tokens, seeded.ballot_id,
                            audience={"group_codes": ["G1"]})
    assert await dispatcher.run_once() == {"slots_selected": 1, "messages_sent": 2}

    assert await sent_to(notifications_app, campaign) == {ids["priya"], ids["nameless"]}
    got = await counts(notifications_app, tokens, campaign)
    assert got == {"queued": 0, "sent": 2, "delivered": 0, "failed": 0, "cancelled": 0,
                   "skipped": {"voted": 1, "no_consent": 2, "no_mobile": 1, "capped": 1,
                               "opted_out": 1, "quiet_hours_deferred": 0}}
    # What the members' phones show (the sandbox), and to which numbers (masked).
    texts = {m["body"]: m["to"] for m in await sandbox(notifications_app, tokens)}
    assert texts == {
        f"Hi Priya, 3 days left to vote in the Pay 2026 ballot: {LINK}":
            seeded.mobiles["priya"][:3] + "•" * 7 + seeded.mobiles["priya"][-3:],
        f"Hi there, 3 days left to vote in the Pay 2026 ballot: {LINK}":
            seeded.mobiles["nameless"][:3] + "•" * 7 + seeded.mobiles["nameless"][-3:],
        # Sent an hour earlier: 3 days and an hour left, rounded up.
        f"Hi Alex, 4 days left to vote in the Pay 2026 ballot: {LINK}":
            seeded.mobiles["capped"][:3] + "•" * 7 + seeded.mobiles["capped"][-3:],
    }
    # Numbers were asked for in a batch, with a service token, only for recipients.
    asked = {uuid.UUID(m) for call in fake_contacts.calls for m in call}
    assert asked == {ids["priya"], ids["nameless"], ids["withdrawn"], ids["capped"]}
    assert set(fake_contacts.callers) == {"service:notifications"}

    # Another round sends nothing more: each reminder goes once.
    assert await dispatcher.run_once() == {"slots_selected": 0, "messages_sent": 0}
    assert len(await sandbox(notifications_app, tokens)) == 3

    # reminder-sent on the topic: one per text, ids only, no number, name or text.
    await outbox_drained(ctx_of(notifications_app).engine)
    records = await read_to_end(kafka_bootstrap, [topics.events("notifications")])
    reminders = [decode(r.value) for r in records
                 if decode(r.value).type == "notifications.reminder-sent"]
    assert sorted((e.data["member_id"], e.data["campaign_id"]) for e in reminders) == sorted(
        [(str(ids["priya"]), campaign), (str(ids["nameless"]), campaign),
         (str(ids["capped"]), earlier)])
    for record in records:
        assert record.key in {str(m).encode() for m in ids.values()}
        for secret in [*(m[-9:] for m in seeded.mobiles.values()), "Priya", "Hi ", LINK]:
            assert secret.encode() not in record.value


async def test_quiet_hours_defer_and_then_send(notifications_app, kafka_bootstrap, topics,
                                               fake_contacts, tokens, clock):
    seeded = await seed_ballot(notifications_app, kafka_bootstrap, topics, fake_contacts,
                               {"ann": Member(), "bob": Member()})
    late = datetime(2026, 3, 20, 21, 30, tzinfo=UTC)  # 21:30 in London (GMT)
    clock.set(late)
    campaign = await create(notifications_app, tokens, seeded.ballot_id,
                            schedule=[late.isoformat()])
    dispatcher = ctx_of(notifications_app).dispatcher

    assert await dispatcher.run_once() == {"slots_selected": 1, "messages_sent": 0}
    clock.set(datetime(2026, 3, 21, 8, 59, tzinfo=UTC))
    assert await dispatcher.run_once() == {"slots_selected": 0, "messages_sent": 0}
    got = await counts(notifications_app, tokens, campaign)
    assert (got["queued"], got["sent"], got["skipped"]["quiet_hours_deferred"]) == (2, 0, 2)
    assert await sandbox(notifications_app, tokens) == []

    clock.set(datetime(2026, 3, 21, 9, 0, tzinfo=UTC))
    assert await dispatcher.run_once() == {"slots_selected": 0, "messages_sent": 2}
    got = await counts(notifications_app, tokens, campaign)
    assert (got["queued"], got["sent"], got["skipped"]["quiet_hours_deferred"]) == (0, 2, 2)
    # Sent the next morning, so the text counts from then: 2 days 3 hours is "3 days".
    assert {m["body"] for m in await sandbox(notifications_app, tokens)} == {
        f"Hi Alex, 3 days left to vote in the Pay 2026 ballot: {LINK}"}


async def test_quiet_hours_follow_the_campaigns_time_zone(notifications_app, kafka_bootstrap,
                                                          topics, fake_contacts, tokens, clock):
    seeded = await seed_ballot(notifications_app, kafka_bootstrap, topics, fake_contacts,
                               {"ann": Member()})
    # 12:00 UTC is 23:00 in Sydney (AEDT): inside 22:00-08:00 there.
    await create(notifications_app, tokens, seeded.ballot_id,
                 quiet_hours={"start": "22:00", "end": "08:00",
                              "timezone": "Australia/Sydney"})
    dispatcher = ctx_of(notifications_app).dispatcher
    assert await dispatcher.run_once() == {"slots_selected": 1, "messages_sent": 0}
    clock.set(CLOSES_AT - timedelta(days=3) + timedelta(hours=9))  # 08:00 in Sydney
    assert await dispatcher.run_once() == {"slots_selected": 0, "messages_sent": 1}


async def test_a_vote_between_selection_and_send_stops_the_text(
        notifications_app, kafka_bootstrap, topics, fake_contacts, tokens, clock):
    seeded = await seed_ballot(notifications_app, kafka_bootstrap, topics, fake_contacts,
                               {"ann": Member(), "bob": Member()})
    campaign = await create(notifications_app, tokens, seeded.ballot_id)
    dispatcher = ctx_of(notifications_app).dispatcher
    assert await dispatcher.select_due() == 1
    assert (await counts(notifications_app, tokens, campaign))["queued"] == 2

    # Ann's vote is marked after her reminder was queued, before it went.
    await deliver(notifications_app, kafka_bootstrap, topics, "ballots", [
        event(Voted, ballot_id=seeded.ballot_id, member_id=seeded.ids["ann"],
              voted_at=T0.isoformat(), occurred_at=T0)])
    assert await dispatcher.send_queued() == 1

    assert await sent_to(notifications_app, campaign) == {seeded.ids["bob"]}
    got = await counts(notifications_app, tokens, campaign)
    assert (got["sent"], got["queued"], got["skipped"]["voted"]) == (1, 0, 1)
    # Nobody asked contacts for Ann's number either.
    assert {uuid.UUID(m) for call in fake_contacts.calls for m in call} == {seeded.ids["bob"]}


async def test_the_dispatcher_runs_by_itself_in_the_service(
        notifications_settings, kafka_bootstrap, topics, fake_contacts, tokens, clock):
    from turnout_notifications.main import create_notifications_app

    from tests.support.services import running

    settings = notifications_settings.model_copy(update={"dispatcher_enabled": True,
                                                         "dispatch_interval_seconds": 0.2})
    app = create_notifications_app(settings, clock=clock)
    async with running(app, "http://notifications") as client:
        client.app = app  # type: ignore[attr-defined]
        seeded = await seed_ballot(client, kafka_bootstrap, topics, fake_contacts,
                                   {"ann": Member(), "bob": Member(voted=True)})
        campaign = await create(client, tokens, seeded.ballot_id)

        async def sent() -> bool:
            return (await counts(client, tokens, campaign))["sent"] == 1

        await eventually(sent, what="the reminder sent by the running dispatcher")
        async with ctx_of(client).sessions() as session:
            assert await session.scalar(sa.select(sa.func.count())
                                        .select_from(sandbox_messages)) == 1


class Flaky:
    """The sandbox behind a provider that is down for the first `failures` calls."""

    def __init__(self, inner, failures: int) -> None:
        self.inner, self.failures, self.name = inner, failures, inner.name

    async def send(self, **kwargs):
        from turnout_notifications.providers.base import TransientProviderError

        if self.failures > 0:
            self.failures -= 1
            raise TransientProviderError("HTTP 503")
        return await self.inner.send(**kwargs)


async def test_a_provider_outage_delays_but_never_doubles(
        notifications_app, kafka_bootstrap, topics, fake_contacts, tokens, clock):
    seeded = await seed_ballot(notifications_app, kafka_bootstrap, topics, fake_contacts,
                               {"ann": Member(), "bob": Member()})
    campaign = await create(notifications_app, tokens, seeded.ballot_id)
    dispatcher = ctx_of(notifications_app).dispatcher
    dispatcher.provider = Flaky(dispatcher.provider, failures=2)  # one try each

    assert await dispatcher.run_once() == {"slots_selected": 1, "messages_sent": 0}
    assert (await counts(notifications_app, tokens, campaign))["queued"] == 2
    assert await dispatcher.run_once() == {"slots_selected": 0, "messages_sent": 0}  # backoff
    clock.advance(timedelta(minutes=5))
    assert await dispatcher.run_once() == {"slots_selected": 0, "messages_sent": 2}
    got = await counts(notifications_app, tokens, campaign)
    assert (got["sent"], got["queued"], got["failed"]) == (2, 0, 0)
    assert len(await sandbox(notifications_app, tokens)) == 2
