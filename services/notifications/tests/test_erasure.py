"""A member's erasure reaching the notifications service (contacts' contact-updated with
reason erasure, from the real broker): their reply texts, the hashes of their number and
a confirmation's sealed number go; the counts' rows stay; nobody else is touched; a reply
from their number is nobody's; a redelivery changes nothing; no reminder follows."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta

import pytest
import sqlalchemy as sa
from turnout_notifications.db.tables import (
    confirmations,
    erasures,
    messages,
    opt_outs,
    replies,
    sandbox_messages,
)
from turnout_notifications.providers.sandbox import SandboxFault
from turnout_notifications.service.dispatcher import Dispatcher
from turnout_notifications.service.inbound import STOP_CONFIRMATION, send_confirmations

from services.notifications.tests.fake_twilio import FakeTwilio
from services.notifications.tests.support import (
    T0,
    Member,
    SeededBallot,
    captured_logs,
    deliver,
    event,
    produce,
    seed_ballot,
)
from services.notifications.tests.test_sending import counts, create
from tests.support.kafka import read_to_end
from tests.support.outbox import outbox_drained
from turnout_events.contacts import ConsentChanged, ContactUpdated, MemberRegistered
from turnout_events.envelope import Envelope
from turnout_events.serde import decode

pytestmark = pytest.mark.integration

INBOUND = "/v1/webhooks/sms/inbound"
NO_FLAGS = {"has_mobile": False, "has_email": False, "sms_consent": False,
            "email_consent": False}


def ctx_of(client):
    return client.app.state.ctx


def erasure_of(member_id: uuid.UUID, version: int = 5) -> list[Envelope]:
    """What contacts publishes when it erases a member who had a mobile and SMS consent."""
    return [event(ContactUpdated, member_id=member_id, member_version=version,
                  contact=NO_FLAGS, changed=["mobile", "sms_consent"], reason="erasure"),
            event(ConsentChanged, member_id=member_id, member_version=version + 1,
                  channel="sms", granted=False, via="erasure", contact=NO_FLAGS)]


async def text_in(client, seeded: SeededBallot, name: str, body: str) -> None:
    """The member `name` texts `body` from their number, through the inbound webhook
    signed as the sandbox signs (the sandbox is the provider here)."""
    ctx = ctx_of(client)
    params = {"MessageSid": f"SM{uuid.uuid4().hex}", "From": seeded.mobiles[name],
              "To": "+447700900000", "Body": body}
    form, headers = FakeTwilio().signed(
        "http://notifications" + INBOUND, params,
        token=ctx.settings.sandbox_webhook_secret.get_secret_value())
    response = await client.post(INBOUND, data=form, headers=headers)
    assert response.status_code == 200, response.text


async def texted(client, kafka_bootstrap, topics, fake_contacts, tokens) -> SeededBallot:
    """Ann and Bob, both in branch B1, each sent one reminder through the sandbox."""
    seeded = await seed_ballot(client, kafka_bootstrap, topics, fake_contacts,
                               {"ann": Member(first_name="Ann"),
                                "bob": Member(first_name="Bob")})
    await create(client, tokens, seeded.ballot_id)
    assert (await ctx_of(client).dispatcher.run_once())["messages_sent"] == 2
    return seeded


def _in_order(items: list[tuple[str, str, str | None]]) -> list[tuple[str, str, str | None]]:
    return sorted(items, key=lambda i: (i[0], i[1], i[2] or ""))


async def listed(client, tokens, seeded: SeededBallot, role: str,
                 **scope) -> list[tuple[str, str, str | None]]:
    """GET /v1/replies as this caller sees it: (member, intent, text), in a fixed order
    (the clock stands still here, so every reply has the same time)."""
    response = await client.get(f"/v1/replies?ballot_id={seeded.ballot_id}",
                                headers=tokens(role, **scope))
    assert response.status_code == 200, response.text
    return _in_order([(seeded.name_of(uuid.UUID(i["member_id"])), i["intent"], i["text"])
                      for i in response.json()["items"]])


async def rows(client, query) -> list:
    async with ctx_of(client).sessions() as session:
        return list((await session.execute(query)).all())


async def reply_events(client, kafka_bootstrap, topics) -> list[str]:
    await outbox_drained(ctx_of(client).engine)
    records = await read_to_end(kafka_bootstrap, [topics.events("notifications")])
    # Sorted: the members' events are on different partitions, read in any order.
    return sorted(e.data["member_id"] for e in (decode(r.value) for r in records)
                  if e.type == "notifications.reply-received")


async def test_erasure_removes_reply_texts_and_number_hashes_of_that_member_only(
        notifications_app, kafka_bootstrap, topics, fake_contacts, tokens):
    client = notifications_app
    seeded = await texted(client, kafka_bootstrap, topics, fake_contacts, tokens)
    ann, bob = seeded.ids["ann"], seeded.ids["bob"]
    ann_asks = "Can I vote from my sister's flat in Leeds?"
    bob_asks = "My paper never came, 14 Mill Lane"
    await text_in(client, seeded, "ann", ann_asks)
    await text_in(client, seeded, "ann", "not yet")
    await text_in(client, seeded, "bob", bob_asks)
    before = _in_order([("ann", "unclassified", ann_asks), ("ann", "not_yet", None),
                        ("bob", "unclassified", bob_asks)])
    assert await listed(client, tokens, seeded, "rep", branches=["B1"]) == before

    with captured_logs() as logs:
        await deliver(client, kafka_bootstrap, topics, "contacts", erasure_of(ann))

    # Reps of the branch and the national team no longer read Ann's text; her replies'
    # intents and times stay (they are counts), and Bob's text is untouched.
    after = _in_order([("ann", "unclassified", None), ("ann", "not_yet", None),
                       ("bob", "unclassified", bob_asks)])
    assert await listed(client, tokens, seeded, "rep", branches=["B1"]) == after
    assert await listed(client, tokens, seeded, "national") == after

    # In the tables: no ciphertext, no provider id of her replies, no hash of her number,
    # nothing of hers in the sandbox's log; Bob keeps all of his.
    held = {r.member_id: r for r in await rows(client, sa.select(
        replies.c.member_id, replies.c.text_sealed, replies.c.provider_message_id)
        .where(replies.c.intent == "unclassified"))}
    assert (held[ann].text_sealed, held[ann].provider_message_id) == (None, None)
    assert held[bob].text_sealed is not None and held[bob].provider_message_id is not None
    hashes = dict(await rows(client, sa.select(messages.c.member_id,
                                               messages.c.recipient_hash)))
    assert hashes[ann] is None and hashes[bob] is not None
    statuses = dict(await rows(client, sa.select(messages.c.member_id, messages.c.status)))
    assert statuses == {ann: "sent", bob: "sent"}  # the counts' rows stay
    bodies = [b for (b,) in await rows(client, sa.select(sandbox_messages.c.body))]
    assert len(bodies) == 1 and bodies[0].startswith("Hi Bob,")

    # A new text from Ann's number is tied to nobody: no reply row, no reply-received.
    published = await reply_events(client, kafka_bootstrap, topics)
    await text_in(client, seeded, "ann", "YES")
    await text_in(client, seeded, "bob", "YES")
    assert await listed(client, tokens, seeded, "national") == _in_order(
        [*after, ("bob", "voted", None)])
    assert await reply_events(client, kafka_bootstrap, topics) == sorted(
        [*published, str(bob)])

    # The log says what went, by id and count, and nothing she wrote or is reached on.
    [line] = [json.loads(x) for x in logs if json.loads(x).get("event") == "erasure.applied"]
    assert (line["member_ids"], line["replies"], line["number_hashes"]) == ([str(ann)], 2, 1)
    secrets = [ann_asks, seeded.mobiles["ann"], seeded.mobiles["ann"][-10:], "Hi Ann"]
    assert [s for x in logs for s in secrets if s in x] == []


async def test_a_redelivered_erasure_changes_nothing_more_and_no_reminder_follows(
        notifications_app, kafka_bootstrap, topics, fake_contacts, tokens, clock):
    client = notifications_app
    seeded = await texted(client, kafka_bootstrap, topics, fake_contacts, tokens)
    ann, bob = seeded.ids["ann"], seeded.ids["bob"]
    erased = erasure_of(ann)
    await deliver(client, kafka_bootstrap, topics, "contacts", erased)
    first = await rows(client, sa.select(erasures))
    assert [(r.member_id, r.erased_at) for r in first] == [(ann, erased[0].occurred_at)]

    # The same events again (a redelivery), then a stale registration of Ann read after
    # them on her partition: by the time it is applied, the redelivery has gone by.
    with captured_logs() as logs:
        await produce(kafka_bootstrap, topics.events("contacts"), erased)
        stale = event(MemberRegistered, member_id=ann, member_version=1,
                      contact={**NO_FLAGS, "has_mobile": True, "sms_consent": True})
        await deliver(client, kafka_bootstrap, topics, "contacts", [stale])
    assert await rows(client, sa.select(erasures)) == first
    assert not [x for x in logs if "erasure.applied" in x]
    hashes = dict(await rows(client, sa.select(messages.c.member_id,
                                               messages.c.recipient_hash)))
    assert hashes[ann] is None and hashes[bob] is not None
    assert await read_to_end(kafka_bootstrap, [topics.dead_letter]) == []

    # Two days later a new campaign: Ann is left out by her flags (all false since the
    # erasure; the stale registration is older), even though this fake contacts would
    # still hand out her number (the real one never does once she is erased).
    assert ann in fake_contacts.textable
    clock.set(T0 + timedelta(days=2))
    campaign = await create(client, tokens, seeded.ballot_id, schedule=["P1D"])
    assert (await ctx_of(client).dispatcher.run_once())["messages_sent"] == 1
    sent = await rows(client, sa.select(messages.c.member_id).where(
        messages.c.campaign_id == uuid.UUID(campaign), messages.c.status == "sent"))
    assert sent == [(bob,)]
    skipped = (await counts(client, tokens, campaign))["skipped"]
    assert {k: n for k, n in skipped.items() if n} == {"no_consent": 1}


async def test_a_pending_stop_confirmation_is_cancelled_and_its_number_dropped(
        notifications_app, kafka_bootstrap, topics, fake_contacts, tokens, clock):
    client = notifications_app
    ctx = ctx_of(client)
    seeded = await texted(client, kafka_bootstrap, topics, fake_contacts, tokens)
    ann = seeded.ids["ann"]
    # Ann's STOP arrives during a provider outage: its confirmation waits, with her
    # number sealed for the retry.
    ctx.provider.fault = SandboxFault.UNAVAILABLE
    await text_in(client, seeded, "ann", "STOP")
    [waiting] = await rows(client, sa.select(confirmations))
    assert (waiting.member_id, waiting.status) == (ann, "queued")
    assert waiting.to_sealed is not None

    await deliver(client, kafka_bootstrap, topics, "contacts", erasure_of(ann))
    [cancelled] = await rows(client, sa.select(confirmations))
    assert (cancelled.status, cancelled.to_sealed) == ("cancelled", None)

    # The provider is back: the confirmation never goes.
    ctx.provider.fault = None
    clock.advance(timedelta(minutes=5))
    assert await send_confirmations(ctx) == 0
    assert [b for (b,) in await rows(client, sa.select(sandbox_messages.c.body))
            if b == STOP_CONFIRMATION] == []
    # Her opt-out stays (an id and a time: it only ever stops texts).
    assert await rows(client, sa.select(opt_outs.c.member_id)) == [(ann,)]


class _ErasedDuringTheCall:
    """The sandbox, but the member's erasure is applied while the provider has their text
    and before the dispatcher records it: what a DPO's erasure at that moment does."""

    def __init__(self, inner, erase) -> None:
        self.inner, self.erase = inner, erase
        self.name = inner.name

    async def send(self, *, idempotency_key: str, to: str, body: str):
        accepted = await self.inner.send(idempotency_key=idempotency_key, to=to, body=body)
        await self.erase(to)
        return accepted


async def test_a_text_on_its_way_as_the_member_is_erased_keeps_no_hash_of_the_number(
        notifications_app, kafka_bootstrap, topics, fake_contacts, tokens):
    client = notifications_app
    ctx = ctx_of(client)
    seeded = await seed_ballot(client, kafka_bootstrap, topics, fake_contacts,
                               {"ann": Member(first_name="Ann"),
                                "bob": Member(first_name="Bob")})
    ann, bob = seeded.ids["ann"], seeded.ids["bob"]

    async def erase(to: str) -> None:
        if to == seeded.mobiles["ann"]:
            await deliver(client, kafka_bootstrap, topics, "contacts", erasure_of(ann))

    provider = _ErasedDuringTheCall(ctx.provider, erase)
    dispatcher = Dispatcher(ctx, provider, ctx.dispatcher.channels)
    await create(client, tokens, seeded.ballot_id)
    assert (await dispatcher.run_once())["messages_sent"] == 2

    held = {r.member_id: r for r in await rows(client, sa.select(
        messages.c.member_id, messages.c.status, messages.c.recipient_hash))}
    assert (held[ann].status, held[ann].recipient_hash) == ("sent", None)
    assert (held[bob].status, held[bob].recipient_hash is not None) == ("sent", True)
    await text_in(client, seeded, "ann", "Call me on my work number")
    await text_in(client, seeded, "bob", "Call me")
    assert await listed(client, tokens, seeded, "national") == [
        ("bob", "unclassified", "Call me")]
