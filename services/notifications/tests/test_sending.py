"""Sending reminders: exactly to the members who should get one, never at night, never to
someone who voted a second ago, never twice (an outage, two campaigns, two dispatchers),
never after the ballot closed, and with nothing personal in any event or log line."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from turnout_notifications.db.tables import messages, sandbox_messages
from turnout_notifications.providers.sandbox import SandboxFault, SandboxProvider
from turnout_notifications.service.channels import ContactChannels
from turnout_notifications.service.dispatcher import Dispatcher, limiter_for

from services.notifications.tests.support import (
    CLOSES_AT,
    T0,
    Member,
    captured_logs,
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


async def test_the_sandbox_page_refuses_a_cursor_past_bigint(notifications_app, tokens):
    """A 422 naming the parameter, not a 500 from the database."""
    for before_id, status in ((2**63 - 1, 200), (2**63, 422), (33080697101129198421380431872, 422)):
        response = await notifications_app.get("/v1/sandbox/messages",
                                               params={"before_id": before_id},
                                               headers=tokens("national"))
        assert response.status_code == status, response.text
        if status == 422:
            assert [e["field"] for e in response.json()["errors"]] == ["query.before_id"]


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


# -- a generated ballot ---------------------------------------------------------------------

def generated_member(i: int) -> Member:
    """Member i of a generated ballot: rules that overlap, so the order in which the
    reasons apply matters (voted first, then opted out, no consent, no mobile, capped)."""
    return Member(first_name=f"M{i}", group="G2" if i % 5 == 0 else "G1",
                  branch=f"B{i % 3}", workplace="WX" if i % 19 == 5 else "W1",
                  voted=i % 6 == 0, sms_consent=i % 7 != 1, has_mobile=i % 9 != 2,
                  opted_out=i % 13 == 3,
                  # Contacts withdrew the consent since: the flags here still say yes.
                  textable=False if i % 17 == 4 else None)


def left_out(m: Member, *, texted_today: bool) -> str | None:
    if m.voted:
        return "voted"
    if m.opted_out:
        return "opted_out"
    if not m.sms_consent:
        return "no_consent"
    if not m.has_mobile:
        return "no_mobile"
    if texted_today:
        return "capped"
    return None


async def test_a_campaign_over_a_generated_ballot_texts_exactly_the_right_members(
        notifications_app, kafka_bootstrap, topics, fake_contacts, tokens, clock):
    members = {f"m{i}": generated_member(i) for i in range(520)}
    seeded = await seed_ballot(notifications_app, kafka_bootstrap, topics, fake_contacts,
                               members)
    dispatcher = ctx_of(notifications_app).dispatcher

    # Three hours earlier a campaign to workplace WX: its recipients are capped today.
    clock.set(T0 - timedelta(hours=3))
    earlier = await create(notifications_app, tokens, seeded.ballot_id,
                           schedule=[clock.now.isoformat()],
                           audience={"workplace_codes": ["WX"]})
    await dispatcher.run_once()
    texted_earlier = {name for name, m in members.items() if m.workplace == "WX"
                      and left_out(m, texted_today=False) is None and m.textable is None}
    assert await sent_to(notifications_app, earlier) == {seeded.ids[n] for n in texted_earlier}

    clock.set(T0)
    campaign = await create(notifications_app, tokens, seeded.ballot_id,
                            audience={"group_codes": ["G1"]})
    while (await dispatcher.run_once())["messages_sent"]:
        pass

    expected: Counter[str | None] = Counter()
    recipients = set()
    for name, m in members.items():
        if m.group != "G1":
            continue
        reason = left_out(m, texted_today=name in texted_earlier)
        if reason is None and m.textable is False:
            reason = "no_consent"  # found out when contacts would not give the number
        expected[reason] += 1
        if reason is None:
            recipients.add(seeded.ids[name])
    assert len(recipients) > 200  # more than one batch
    assert await sent_to(notifications_app, campaign) == recipients
    got = await counts(notifications_app, tokens, campaign)
    assert got == {"queued": 0, "sent": len(recipients), "delivered": 0, "failed": 0,
                   "cancelled": 0,
                   "skipped": {"voted": expected["voted"], "no_consent": expected["no_consent"],
                               "no_mobile": expected["no_mobile"], "capped": expected["capped"],
                               "opted_out": expected["opted_out"], "quiet_hours_deferred": 0}}
    assert all(expected[r] > 5 for r in ("voted", "no_consent", "no_mobile", "capped",
                                         "opted_out"))
    # One text each on the members' phones, and one reminder-sent event each.
    async with ctx_of(notifications_app).sessions() as session:
        assert await session.scalar(sa.select(sa.func.count()).select_from(
            sandbox_messages)) == len(recipients) + len(texted_earlier)
    await outbox_drained(ctx_of(notifications_app).engine)
    records = await read_to_end(kafka_bootstrap, [topics.events("notifications")])
    reminders = Counter(e.data["member_id"] for e in map(decode, (r.value for r in records))
                        if e.type == "notifications.reminder-sent"
                        and e.data["campaign_id"] == campaign)
    assert reminders == Counter({str(m): 1 for m in recipients})


# -- between the choice and the send ----------------------------------------------------------

async def test_a_vote_a_moment_before_the_text_stops_it(
        notifications_app, kafka_bootstrap, topics, fake_contacts, tokens, clock):
    seeded = await seed_ballot(notifications_app, kafka_bootstrap, topics, fake_contacts,
                               {"ann": Member(), "bob": Member(), "cat": Member()})
    campaign = await create(notifications_app, tokens, seeded.ballot_id)
    dispatcher = ctx_of(notifications_app).dispatcher

    async def ann_votes_now(asked: list[uuid.UUID]) -> None:
        # The batch has been re-checked and its numbers are being fetched: Ann's vote
        # lands now, between that re-check and her text.
        fake_contacts.on_call = None
        assert seeded.ids["ann"] in asked
        await deliver(notifications_app, kafka_bootstrap, topics, "ballots", [
            event(Voted, ballot_id=seeded.ballot_id, member_id=seeded.ids["ann"],
                  voted_at=T0.isoformat(), occurred_at=T0)])

    fake_contacts.on_call = ann_votes_now
    assert await dispatcher.run_once() == {"slots_selected": 1, "messages_sent": 2}
    assert await sent_to(notifications_app, campaign) == {seeded.ids["bob"], seeded.ids["cat"]}
    got = await counts(notifications_app, tokens, campaign)
    assert (got["sent"], got["queued"], got["skipped"]["voted"]) == (2, 0, 1)


async def test_quiet_hours_beginning_mid_campaign_hold_the_rest_until_morning(
        notifications_app, kafka_bootstrap, topics, fake_contacts, tokens, clock):
    seeded = await seed_ballot(notifications_app, kafka_bootstrap, topics, fake_contacts,
                               {"ann": Member(), "bob": Member(), "cat": Member()})
    clock.set(datetime(2026, 3, 20, 20, 59, 59, tzinfo=UTC))  # a second before 21:00
    campaign = await create(notifications_app, tokens, seeded.ballot_id,
                            schedule=[clock.now.isoformat()])
    dispatcher = ctx_of(notifications_app).dispatcher

    async def nine_pm(_asked) -> None:
        fake_contacts.on_call = None
        clock.set(datetime(2026, 3, 20, 21, 0, tzinfo=UTC))

    fake_contacts.on_call = nine_pm
    assert await dispatcher.run_once() == {"slots_selected": 1, "messages_sent": 0}
    got = await counts(notifications_app, tokens, campaign)
    assert (got["queued"], got["sent"], got["skipped"]["quiet_hours_deferred"]) == (3, 0, 3)
    assert await sandbox(notifications_app, tokens) == []

    clock.set(datetime(2026, 3, 21, 9, 0, tzinfo=UTC))
    assert await dispatcher.run_once() == {"slots_selected": 0, "messages_sent": 3}
    got = await counts(notifications_app, tokens, campaign)
    assert (got["queued"], got["sent"], got["skipped"]["quiet_hours_deferred"]) == (0, 3, 3)


async def test_nothing_goes_once_the_ballot_has_closed(
        notifications_app, kafka_bootstrap, topics, fake_contacts, tokens, clock):
    seeded = await seed_ballot(notifications_app, kafka_bootstrap, topics, fake_contacts,
                               {"ann": Member(), "bob": Member()})
    clock.set(CLOSES_AT - timedelta(hours=2))
    campaign = await create(notifications_app, tokens, seeded.ballot_id, schedule=["PT2H"])
    dispatcher = ctx_of(notifications_app).dispatcher

    async def closing_time(_asked) -> None:
        fake_contacts.on_call = None
        clock.set(CLOSES_AT)

    fake_contacts.on_call = closing_time
    assert await dispatcher.run_once() == {"slots_selected": 1, "messages_sent": 0}
    got = await counts(notifications_app, tokens, campaign)
    assert (got["queued"], got["sent"], got["cancelled"]) == (0, 0, 2)
    assert await dispatcher.run_once() == {"slots_selected": 0, "messages_sent": 0}
    assert await sandbox(notifications_app, tokens) == []


# -- never twice ---------------------------------------------------------------------------

async def test_a_provider_outage_mid_campaign_then_recovery_sends_each_text_once(
        notifications_app, kafka_bootstrap, topics, fake_contacts, tokens, clock):
    members = {f"m{i}": Member(first_name=f"M{i}") for i in range(6)}
    seeded = await seed_ballot(notifications_app, kafka_bootstrap, topics, fake_contacts,
                               members)
    campaign = await create(notifications_app, tokens, seeded.ballot_id)
    dispatcher = ctx_of(notifications_app).dispatcher
    sandbox_provider = dispatcher.provider
    assert isinstance(sandbox_provider, SandboxProvider)

    # Two texts go, then the provider takes the third but its answer is lost (a
    # timeout), and the round stops there: the provider is in trouble.
    sandbox_provider.fail_after(2, SandboxFault.ANSWER_LOST)
    assert await dispatcher.run_once() == {"slots_selected": 1, "messages_sent": 2}
    got = await counts(notifications_app, tokens, campaign)
    assert (got["sent"], got["queued"], got["failed"]) == (2, 4, 0)
    assert len(await sandbox(notifications_app, tokens)) == 3

    # Then it is down altogether: each round tries one text and stops.
    sandbox_provider.fault = SandboxFault.UNAVAILABLE
    clock.advance(timedelta(minutes=1))
    assert await dispatcher.run_once() == {"slots_selected": 0, "messages_sent": 0}
    async with ctx_of(notifications_app).sessions() as session:
        tried = list((await session.execute(sa.select(messages.c.attempts).where(
            messages.c.campaign_id == uuid.UUID(campaign)))).scalars())
    # Two sent, one lost, and one attempt in the outage round (the lost one again or a
    # fresh one), however they fell.
    assert sum(tried) == 4 and tried.count(0) in (2, 3)

    # It recovers; after the backoff every text goes, the lost one under its first id.
    sandbox_provider.fault = None
    clock.advance(timedelta(minutes=10))
    assert await dispatcher.run_once() == {"slots_selected": 0, "messages_sent": 4}
    assert await dispatcher.run_once() == {"slots_selected": 0, "messages_sent": 0}
    got = await counts(notifications_app, tokens, campaign)
    assert (got["sent"], got["queued"], got["failed"]) == (6, 0, 0)
    texts = await sandbox(notifications_app, tokens)
    assert sorted(m["body"].split(",")[0] for m in texts) == sorted(
        f"Hi M{i}" for i in range(6))
    async with ctx_of(notifications_app).sessions() as session:
        provider_ids = set((await session.execute(sa.select(
            messages.c.provider_message_id).where(
            messages.c.campaign_id == uuid.UUID(campaign)))).scalars())
    assert provider_ids == {m["provider_message_id"] for m in texts}
    await outbox_drained(ctx_of(notifications_app).engine)
    records = await read_to_end(kafka_bootstrap, [topics.events("notifications")])
    reminders = Counter(decode(r.value).data["member_id"] for r in records
                        if decode(r.value).type == "notifications.reminder-sent")
    assert reminders == Counter({str(m): 1 for m in seeded.ids.values()})


async def test_the_daily_cap_holds_across_two_campaigns_and_two_dispatchers(
        notifications_app, notifications_settings, kafka_bootstrap, topics, fake_contacts,
        tokens, clock):
    members = {f"m{i}": Member() for i in range(8)}
    seeded = await seed_ballot(notifications_app, kafka_bootstrap, topics, fake_contacts,
                               members)
    first = await create(notifications_app, tokens, seeded.ballot_id)
    second = await create(notifications_app, tokens, seeded.ballot_id,
                          schedule=["P3D", "P1D"])
    ctx = ctx_of(notifications_app)
    channels = ContactChannels(notifications_settings)
    other = Dispatcher(ctx, SandboxProvider(ctx.sessions, ctx.clock), channels)
    try:
        # Both campaigns due at once, two dispatchers at work at the same time.
        rounds = await asyncio.gather(ctx.dispatcher.run_once(), other.run_once())
    finally:
        await channels.aclose()
    assert sum(r["slots_selected"] for r in rounds) == 2
    assert sum(r["messages_sent"] for r in rounds) == 8

    a = await counts(notifications_app, tokens, first)
    b = await counts(notifications_app, tokens, second)
    assert a["sent"] + b["sent"] == 8
    assert a["skipped"]["capped"] + b["skipped"]["capped"] == 8
    assert (await sent_to(notifications_app, first)).isdisjoint(
        await sent_to(notifications_app, second))
    assert len(await sandbox(notifications_app, tokens)) == 8

    # Not after 23 hours; the second campaign's next slot, two days on, texts everyone.
    clock.advance(timedelta(hours=23))
    third = await create(notifications_app, tokens, seeded.ballot_id,
                         schedule=[clock.now.isoformat()])
    assert await ctx.dispatcher.run_once() == {"slots_selected": 1, "messages_sent": 0}
    assert (await counts(notifications_app, tokens, third))["skipped"]["capped"] == 8
    clock.set(CLOSES_AT - timedelta(days=1))
    assert await ctx.dispatcher.run_once() == {"slots_selected": 1, "messages_sent": 8}
    assert len(await sandbox(notifications_app, tokens)) == 16


# -- nothing personal anywhere ---------------------------------------------------------------

async def test_no_number_name_or_text_in_any_event_or_log_line(
        notifications_app, kafka_bootstrap, topics, fake_contacts, tokens, clock):
    with captured_logs() as lines:
        seeded = await seed_ballot(
            notifications_app, kafka_bootstrap, topics, fake_contacts,
            {"zed": Member(first_name="Zebedee"), "quin": Member(first_name="Quintessa"),
             "ola": Member(first_name="Olabisi")})
        campaign = await create(notifications_app, tokens, seeded.ballot_id)
        dispatcher = ctx_of(notifications_app).dispatcher
        provider = dispatcher.provider
        # Every path that logs or publishes: sent, a lost answer, an outage, a retry,
        # refused for good.
        provider.fail_after(1, SandboxFault.ANSWER_LOST)
        await dispatcher.run_once()
        provider.fault = SandboxFault.UNAVAILABLE
        clock.advance(timedelta(minutes=1))
        await dispatcher.run_once()
        provider.fault = None
        provider.fail_after(1, SandboxFault.REJECTED)
        clock.advance(timedelta(minutes=30))
        await dispatcher.run_once()
        got = await counts(notifications_app, tokens, campaign)
        assert (got["sent"], got["failed"], got["queued"]) == (2, 1, 0)
        await outbox_drained(ctx_of(notifications_app).engine)
        records = await read_to_end(kafka_bootstrap, [topics.events("notifications")])

    assert {decode(r.value).type for r in records} == {
        "notifications.reminder-sent", "notifications.message-failed"}
    texts = [m["body"] for m in await sandbox(notifications_app, tokens)]
    secrets = [*seeded.mobiles.values(), *(m[-9:] for m in seeded.mobiles.values()),
               "Zebedee", "Quintessa", "Olabisi", "days left", "Pay 2026", LINK, *texts]
    # The logs were caught, those of each path among them.
    for logged in ("dispatcher.slot_selected", "dispatcher.provider_transient_error",
                   "dispatcher.message_failed", "POST"):
        assert any(logged in line for line in lines), logged
    for where, text in [*(("log", line) for line in lines),
                        *(("event", r.value.decode()) for r in records)]:
        for secret in secrets:
            assert secret not in text, f"{secret!r} in {where}: {text[:300]}"


# -- the provider's rate -------------------------------------------------------------------------

class ClockedSandbox(SandboxProvider):
    """The sandbox, noting when each call reached it (real time: the rate is real)."""

    def __init__(self, *args) -> None:
        super().__init__(*args)
        self.arrivals: list[float] = []

    async def send(self, **kwargs):
        self.arrivals.append(time.monotonic())
        return await super().send(**kwargs)


async def test_sends_keep_to_the_providers_rate_in_every_second(
        notifications_app, notifications_settings, kafka_bootstrap, topics, fake_contacts,
        tokens, clock):
    members = {f"m{i}": Member() for i in range(25)}
    seeded = await seed_ballot(notifications_app, kafka_bootstrap, topics, fake_contacts,
                               members)
    await create(notifications_app, tokens, seeded.ballot_id)
    ctx = ctx_of(notifications_app)
    provider = ClockedSandbox(ctx.sessions, ctx.clock)
    channels = ContactChannels(notifications_settings)
    try:
        dispatcher = Dispatcher(ctx, provider, channels, limiter=limiter_for(10))
        assert await dispatcher.run_once() == {"slots_selected": 1, "messages_sent": 25}
    finally:
        await channels.aclose()
    arrivals = provider.arrivals
    busiest = max(sum(1 for t in arrivals if start <= t < start + 1) for start in arrivals)
    assert busiest == 10  # the limit, and all of it
    # 25 at 10 a second: the 11th and the 21st each wait for a second to pass.
    assert arrivals[-1] - arrivals[0] >= 2.0
