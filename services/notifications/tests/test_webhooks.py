"""The provider's webhooks, called the way Twilio calls them (signed form posts) against
the running service with the Twilio provider pointed at the fake: members' replies
(STOP, YES, anything else) and delivery receipts; forged, unsigned and replayed calls;
and nothing personal in any event or log line."""

from __future__ import annotations

import io
import json
import uuid
from datetime import timedelta

import pytest
import sqlalchemy as sa
from turnout_notifications.db.tables import (
    confirmations,
    early_receipts,
    messages,
    opt_outs,
    replies,
    webhook_calls,
)
from turnout_notifications.service.inbound import (
    STOP_CONFIRMATION,
    purge_status_calls,
    send_confirmations,
)

from services.notifications.tests.fake_twilio import (  # noqa: F401 - fixtures
    fake_twilio_fixture,
    twilio_app_fixture,
    twilio_settings_fixture,
)
from services.notifications.tests.support import T0, Member, SeededBallot, seed_ballot
from services.notifications.tests.test_sending import counts, create
from tests.support.kafka import read_to_end
from tests.support.outbox import outbox_drained
from turnout_events.envelope import Envelope
from turnout_events.serde import decode
from turnout_kit.logging import configure_logging

pytestmark = pytest.mark.integration

PUBLIC = "https://turnout.example.org"  # the twilio_app's public base URL
INBOUND = "/v1/webhooks/sms/inbound"
STATUS = "/v1/webhooks/sms/status"


def ctx_of(client):
    return client.app.state.ctx


async def call(client, fake, path: str, params: dict[str, str], *,
               signed_url: str | None = None, token: str | None = None,
               signature: str | None = None, unsigned: bool = False):
    form, headers = fake.signed(signed_url or PUBLIC + path, params, token)
    if signature is not None:
        headers["X-Twilio-Signature"] = signature
    if unsigned:
        del headers["X-Twilio-Signature"]
    return await client.post(path, data=form, headers=headers)


def reply(seeded: SeededBallot, name: str, body: str, sid: str | None = None) -> dict:
    return {"MessageSid": sid or f"SM{uuid.uuid4().hex}", "AccountSid": "AC123",
            "From": seeded.mobiles[name], "To": "+447700900000", "Body": body,
            "NumMedia": "0"}


async def texted(client, fake, kafka_bootstrap, topics, fake_contacts, tokens,
                 members: dict[str, Member] | None = None) -> tuple[SeededBallot, str]:
    """A ballot whose members have each had one reminder through the fake provider."""
    seeded = await seed_ballot(client, kafka_bootstrap, topics, fake_contacts,
                               members or {"ann": Member(first_name="Ann"),
                                           "bob": Member(first_name="Bob")})
    campaign = await create(client, tokens, seeded.ballot_id)
    sent = await ctx_of(client).dispatcher.run_once()
    assert sent["messages_sent"] == len(seeded.ids)
    return seeded, campaign


async def events(client, kafka_bootstrap, topics, of_type: str) -> list[Envelope]:
    await outbox_drained(ctx_of(client).engine)
    records = await read_to_end(kafka_bootstrap, [topics.events("notifications")])
    return [e for e in (decode(r.value) for r in records) if e.type == of_type]


async def count(client, table, *where) -> int:
    async with ctx_of(client).sessions() as session:
        return await session.scalar(sa.select(sa.func.count()).select_from(table)
                                    .where(*where))


@pytest.fixture
def log_records(_log_file):
    """Every log record of the test as its fields were before redaction (which would
    otherwise hide a number that reached a log call)."""
    from tests.support.fixtures import _pii_inspector

    records: list[dict] = []

    def capture(_logger, _method, event_dict):
        records.append(dict(event_dict))
        return event_dict

    configure_logging("tests", "INFO", json=True, stream=_log_file or io.StringIO(),
                      inspect=[_pii_inspector, capture])
    return records


def leaked(records: list[dict], secrets: list[str]) -> list[str]:
    found = []
    for record in records:
        text = json.dumps(record, default=str)
        found += [f"{record.get('event')}: {s!r}" for s in secrets if s in text]
    return found


# -- signatures and replays ----------------------------------------------------------------

async def test_unsigned_forged_and_misaddressed_calls_are_refused(
        twilio_app, fake_twilio, kafka_bootstrap, topics, fake_contacts, tokens):
    seeded, _ = await texted(twilio_app, fake_twilio, kafka_bootstrap, topics, fake_contacts,
                             tokens)
    stop = reply(seeded, "ann", "STOP")
    sid = fake_twilio.accepted[0].sid
    receipt = {"MessageSid": sid, "MessageStatus": "delivered"}
    attempts = {
        "unsigned": dict(unsigned=True),
        "another token": dict(token="an-attackers-guess-at-the-token"),
        "garbage": dict(signature="bm90IGEgc2lnbmF0dXJl"),
        # Signed for the URL this process sees, not the public one the provider calls.
        "internal URL": dict(signed_url="http://notifications" + INBOUND),
    }
    for path, params in ((INBOUND, stop), (STATUS, receipt)):
        for what, how in attempts.items():
            if what == "internal URL":
                how = dict(signed_url="http://notifications" + path)
            response = await call(twilio_app, fake_twilio, path, params, **how)
            assert response.status_code == 403, (path, what, response.text)
            assert response.headers["content-type"] == "application/problem+json"
            assert "X-Twilio-Signature" in response.json()["detail"]
    # A body changed after signing ("STOP" -> "YES") does not check out either.
    form, headers = fake_twilio.signed(PUBLIC + INBOUND, stop)
    response = await twilio_app.post(INBOUND, data={**form, "Body": "YES"}, headers=headers)
    assert response.status_code == 403

    # Nothing happened: no reply, no opt-out, no call recorded, no receipt, no event.
    assert await count(twilio_app, replies) == 0
    assert await count(twilio_app, opt_outs) == 0
    assert await count(twilio_app, webhook_calls) == 0
    assert await count(twilio_app, messages, messages.c.status == "delivered") == 0
    assert len(fake_twilio.accepted) == 2  # no confirmation went out
    for kind in ("opt-out-received", "reply-received", "message-delivered"):
        assert await events(twilio_app, kafka_bootstrap, topics, f"notifications.{kind}") == []


async def test_the_sandbox_signs_with_its_own_secret(notifications_app, fake_twilio):
    # With the sandbox as the provider, calls are signed with the sandbox's secret (a demo
    # can simulate a reply); the provider's token means nothing there.
    secret = ctx_of(notifications_app).settings.sandbox_webhook_secret.get_secret_value()
    params = {"MessageSid": "SM1", "From": "+447700900001", "Body": "hello"}
    url = "http://notifications" + INBOUND  # no public base URL: the URL as received
    ok = await call(notifications_app, fake_twilio, INBOUND, params, signed_url=url,
                    token=secret)
    assert ok.status_code == 200, ok.text
    assert ok.headers["content-type"].startswith("text/xml")
    assert "<Response></Response>" in ok.text
    refused = await call(notifications_app, fake_twilio, INBOUND, {**params, "MessageSid": "SM2"},
                         signed_url=url)
    assert refused.status_code == 403


# -- STOP ------------------------------------------------------------------------------------

async def test_stop_opts_out_confirms_once_and_no_reminder_follows(
        twilio_app, fake_twilio, kafka_bootstrap, topics, fake_contacts, tokens, clock,
        log_records):
    seeded, _ = await texted(twilio_app, fake_twilio, kafka_bootstrap, topics, fake_contacts,
                             tokens)
    ann, bob = seeded.ids["ann"], seeded.ids["bob"]
    stop = reply(seeded, "ann", "  Stop! ")
    response = await call(twilio_app, fake_twilio, INBOUND, stop)
    assert response.status_code == 200, response.text

    # Opted out here at once (before the event comes back) ...
    assert await count(twilio_app, opt_outs, opt_outs.c.member_id == ann) == 1
    # ... confirmed with one text to the number the STOP came from ...
    confirmations_sent = [s for s in fake_twilio.accepted if s.body == STOP_CONFIRMATION]
    assert [s.to for s in confirmations_sent] == [seeded.mobiles["ann"]]
    # ... and the number is gone from the database once the provider has the text.
    async with ctx_of(twilio_app).sessions() as session:
        held = (await session.execute(sa.select(confirmations))).one()
    assert (held.member_id, held.status, held.to_sealed) == (ann, "sent", None)

    # The same call again is a replay: 409, nothing changes.
    again = await call(twilio_app, fake_twilio, INBOUND, stop)
    assert again.status_code == 409
    assert again.headers["content-type"] == "application/problem+json"
    opted = await events(twilio_app, kafka_bootstrap, topics, "notifications.opt-out-received")
    assert [(e.key, e.data["channel"]) for e in opted] == [(str(ann), "sms")]
    assert opted[0].actor == f"member:{ann}"

    # Another STOP (a new message) is passed on again, but not confirmed again.
    second = await call(twilio_app, fake_twilio, INBOUND, reply(seeded, "ann", "stop all"))
    assert second.status_code == 200
    assert [s.body for s in fake_twilio.accepted].count(STOP_CONFIRMATION) == 1
    assert await count(twilio_app, confirmations) == 1
    replied = await events(twilio_app, kafka_bootstrap, topics, "notifications.reply-received")
    assert [(e.data["member_id"], e.data["intent"]) for e in replied] == [
        (str(ann), "opt_out"), (str(ann), "opt_out")]

    # Two days later another campaign goes out: Bob gets it, Ann does not.
    clock.set(T0 + timedelta(days=2))
    campaign = await create(twilio_app, tokens, seeded.ballot_id, schedule=["P1D"])
    before = len(fake_twilio.accepted)
    assert await ctx_of(twilio_app).dispatcher.run_once() == {"slots_selected": 1,
                                                              "messages_sent": 1}
    assert [s.to for s in fake_twilio.accepted[before:]] == [seeded.mobiles["bob"]]
    got = await counts(twilio_app, tokens, campaign)
    assert (got["sent"], got["skipped"]["opted_out"]) == (1, 1)
    assert bob != ann

    # No number, reminder text or reply text in any event or log line.
    records = await read_to_end(kafka_bootstrap, [topics.events("notifications")])
    secrets = [*seeded.mobiles.values(), *(m[-10:] for m in seeded.mobiles.values()),
               "Hi Ann", "Stop!", STOP_CONFIRMATION[:30]]
    for record in records:
        for secret in secrets:
            assert secret.encode() not in record.value
    assert leaked(log_records, secrets) == []
    assert any(r.get("event") == "inbound.reply" for r in log_records)


# -- other replies -------------------------------------------------------------------------

async def test_replies_are_published_by_intent_and_unclassified_ones_kept_for_reps(
        twilio_app, fake_twilio, kafka_bootstrap, topics, fake_contacts, tokens, log_records):
    seeded, _ = await texted(twilio_app, fake_twilio, kafka_bootstrap, topics, fake_contacts,
                             tokens, {"ann": Member(branch="B1"), "bob": Member(branch="B1"),
                                      "cat": Member(branch="B2")})
    question = "Can I still vote if I lost my paper?"
    for name, body in (("ann", "Yes."), ("bob", "not yet"), ("cat", question)):
        response = await call(twilio_app, fake_twilio, INBOUND, reply(seeded, name, body))
        assert response.status_code == 200, response.text
    unknown = {**reply(seeded, "ann", "YES"), "From": "+447700900999"}
    assert (await call(twilio_app, fake_twilio, INBOUND, unknown)).status_code == 200

    replied = await events(twilio_app, kafka_bootstrap, topics, "notifications.reply-received")
    reminders = await events(twilio_app, kafka_bootstrap, topics,
                             "notifications.reminder-sent")
    reminder_of = {e.data["member_id"]: e.data["message_id"] for e in reminders}
    assert sorted((seeded.name_of(uuid.UUID(e.data["member_id"])), e.data["intent"])
                  for e in replied) == [("ann", "voted"), ("bob", "not_yet"),
                                        ("cat", "unclassified")]
    for e in replied:
        assert e.data["ballot_id"] == str(seeded.ballot_id)
        assert e.data["in_reply_to"] == reminder_of[e.data["member_id"]]
        assert e.actor == f"member:{e.data['member_id']}"
        assert set(e.data) >= {"message_id", "channel", "received_at"}
        assert "text" not in e.data and "body" not in e.data
    assert await events(twilio_app, kafka_bootstrap, topics,
                        "notifications.opt-out-received") == []

    # The question is kept sealed, readable by the reps of Cat's branch.
    async with ctx_of(twilio_app).sessions() as session:
        sealed = await session.scalar(sa.select(replies.c.text_sealed).where(
            replies.c.member_id == seeded.ids["cat"]))
        kept = await session.scalar(sa.select(sa.func.count()).select_from(replies).where(
            replies.c.text_sealed.is_not(None)))
    assert kept == 1 and b"lost my paper" not in sealed
    path = f"/v1/replies?ballot_id={seeded.ballot_id}"
    b2 = await twilio_app.get(path, headers=tokens("rep", branches=["B2"]))
    assert b2.status_code == 200, b2.text
    assert [(i["member_id"], i["intent"], i["text"]) for i in b2.json()["items"]] == [
        (str(seeded.ids["cat"]), "unclassified", question)]
    b1 = (await twilio_app.get(path, headers=tokens("rep", branches=["B1"]))).json()["items"]
    assert sorted((i["intent"], i["text"]) for i in b1) == [("not_yet", None),
                                                           ("voted", None)]
    national = await twilio_app.get(path + "&intent=unclassified",
                                    headers=tokens("national"))
    assert [i["text"] for i in national.json()["items"]] == [question]
    # A page at a time: the same replies in the same order, each once.
    everything = (await twilio_app.get(path, headers=tokens("national"))).json()
    assert everything["next_cursor"] is None and len(everything["items"]) == 3
    paged, cursor = [], None
    while True:
        page = (await twilio_app.get(path + "&limit=1" + (f"&cursor={cursor}" if cursor else ""),
                                     headers=tokens("national"))).json()
        paged += page["items"]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert [i["reply_id"] for i in paged] == [i["reply_id"] for i in everything["items"]]
    bad = await twilio_app.get(path + "&cursor=not-ours", headers=tokens("national"))
    assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "cursor"
    elsewhere = await twilio_app.get(path, headers=tokens("organiser", groups=["G9"]))
    assert elsewhere.json()["items"] == []
    assert (await twilio_app.get(path, headers=tokens("service"))).status_code == 403

    assert leaked(log_records, [question, *seeded.mobiles.values(), "+447700900999"]) == []


# -- delivery receipts ---------------------------------------------------------------------

async def test_receipts_settle_each_message_once(
        twilio_app, fake_twilio, kafka_bootstrap, topics, fake_contacts, tokens):
    seeded, campaign = await texted(twilio_app, fake_twilio, kafka_bootstrap, topics,
                                    fake_contacts, tokens)
    sid_of = {s.to: s.sid for s in fake_twilio.accepted}
    ann, bob = sid_of[seeded.mobiles["ann"]], sid_of[seeded.mobiles["bob"]]

    async def receipt(sid: str, status: str, **extra: str):
        return await call(twilio_app, fake_twilio, STATUS,
                          {"MessageSid": sid, "MessageStatus": status, **extra})

    assert (await receipt(ann, "sent")).status_code == 204  # on its way: nothing to record
    delivered = await receipt(ann, "delivered")
    assert delivered.status_code == 204, delivered.text
    assert (await receipt(ann, "delivered")).status_code == 409  # the same call, replayed
    # A second, different receipt for the same message records nothing new.
    assert (await receipt(ann, "delivered", SmsStatus="delivered")).status_code == 204
    assert (await receipt(ann, "failed", ErrorCode="30008")).status_code == 204
    assert (await receipt(bob, "undelivered", ErrorCode="30005")).status_code == 204
    # An id with no send recorded: kept for when it is (see the next test), nothing now.
    assert (await receipt("SM" + "0" * 32, "delivered")).status_code == 202
    missing = await call(twilio_app, fake_twilio, STATUS, {"MessageSid": ann})
    assert missing.status_code == 422
    assert missing.json()["errors"] == [{"field": "MessageStatus", "message": "required"}]

    got = await counts(twilio_app, tokens, campaign)
    assert (got["sent"], got["delivered"], got["failed"]) == (1, 1, 1)
    delivered_events = await events(twilio_app, kafka_bootstrap, topics,
                                    "notifications.message-delivered")
    assert [e.key for e in delivered_events] == [str(seeded.ids["ann"])]
    failed = await events(twilio_app, kafka_bootstrap, topics, "notifications.message-failed")
    assert [(e.key, e.data["error_code"], e.data["permanent"]) for e in failed] == [
        (str(seeded.ids["bob"]), "30005", True)]


async def test_a_receipt_that_comes_before_its_send_is_recorded_settles_it_once_it_is(
        twilio_app, fake_twilio, kafka_bootstrap, topics, fake_contacts, tokens, clock):
    """The provider calls back about a text while the dispatcher has not yet recorded
    the provider's answer to it: the receipt is kept and applied in the transaction that
    records the send. A receipt whose send is never recorded goes after the replay
    window."""
    ctx = ctx_of(twilio_app)
    first_sid = fake_twilio.next_sid()  # what the provider will call the next text
    early = {"MessageSid": first_sid, "MessageStatus": "undelivered", "ErrorCode": "30005"}
    assert (await call(twilio_app, fake_twilio, STATUS, early)).status_code == 202
    # A "sent" receipt settles nothing, and is not kept.
    assert (await call(twilio_app, fake_twilio, STATUS, {
        "MessageSid": first_sid, "MessageStatus": "sent"})).status_code == 202
    stray = {"MessageSid": "SM" + "f" * 32, "MessageStatus": "delivered"}
    assert (await call(twilio_app, fake_twilio, STATUS, stray)).status_code == 202
    assert await count(twilio_app, early_receipts) == 2

    seeded, campaign = await texted(twilio_app, fake_twilio, kafka_bootstrap, topics,
                                    fake_contacts, tokens)
    to_of = {s.sid: s.to for s in fake_twilio.accepted}
    failed_member = next(name for name, mobile in seeded.mobiles.items()
                         if mobile == to_of[first_sid])
    got = await counts(twilio_app, tokens, campaign)
    assert (got["sent"], got["failed"], got["delivered"]) == (1, 1, 0)
    failed = await events(twilio_app, kafka_bootstrap, topics, "notifications.message-failed")
    assert [(e.key, e.data["error_code"], e.data["permanent"]) for e in failed] == [
        (str(seeded.ids[failed_member]), "30005", True)]
    sent = await events(twilio_app, kafka_bootstrap, topics, "notifications.reminder-sent")
    assert len(sent) == 2  # the failed text was sent first, then failed
    assert await count(twilio_app, early_receipts) == 1  # the stray one
    # Its own receipt, coming now, changes nothing more.
    late = {"MessageSid": first_sid, "MessageStatus": "delivered"}
    assert (await call(twilio_app, fake_twilio, STATUS, late)).status_code == 204
    assert (await counts(twilio_app, tokens, campaign))["delivered"] == 0

    clock.advance(timedelta(days=ctx.settings.webhook_status_replay_days, seconds=1))
    await purge_status_calls(ctx)
    assert await count(twilio_app, early_receipts) == 0


async def test_old_receipt_calls_are_forgotten_and_replaying_one_changes_nothing(
        twilio_app, fake_twilio, kafka_bootstrap, topics, fake_contacts, tokens, clock):
    seeded, campaign = await texted(twilio_app, fake_twilio, kafka_bootstrap, topics,
                                    fake_contacts, tokens)
    ctx = ctx_of(twilio_app)
    ann = {s.to: s.sid for s in fake_twilio.accepted}[seeded.mobiles["ann"]]
    receipt = {"MessageSid": ann, "MessageStatus": "delivered"}
    assert (await call(twilio_app, fake_twilio, STATUS, receipt)).status_code == 204
    bobs_reply = reply(seeded, "bob", "Yes.")
    assert (await call(twilio_app, fake_twilio, INBOUND, bobs_reply)).status_code == 200
    assert await purge_status_calls(ctx) == 0  # nothing old enough yet

    clock.advance(timedelta(days=ctx.settings.webhook_status_replay_days, seconds=1))
    assert await purge_status_calls(ctx, batch=1) == 1
    # The reply's call is kept: a replayed reply would be a second reply.
    assert await count(twilio_app, webhook_calls) == 1
    assert (await call(twilio_app, fake_twilio, INBOUND, bobs_reply)).status_code == 409
    # The receipt's replay gets through the guard, and the message, settled once, stays.
    assert (await call(twilio_app, fake_twilio, STATUS, receipt)).status_code == 204
    got = await counts(twilio_app, tokens, campaign)
    assert (got["sent"], got["delivered"]) == (2, 1)
    delivered = await events(twilio_app, kafka_bootstrap, topics,
                             "notifications.message-delivered")
    assert [e.key for e in delivered] == [str(seeded.ids["ann"])]


async def test_a_stop_during_an_outage_is_confirmed_once_the_provider_is_back(
        twilio_app, fake_twilio, kafka_bootstrap, topics, fake_contacts, tokens, clock):
    seeded, _ = await texted(twilio_app, fake_twilio, kafka_bootstrap, topics, fake_contacts,
                             tokens)
    ctx = ctx_of(twilio_app)
    fake_twilio.outage()
    response = await call(twilio_app, fake_twilio, INBOUND, reply(seeded, "ann", "QUIT"))
    assert response.status_code == 200  # the opt-out stands whatever the provider does
    assert await count(twilio_app, opt_outs, opt_outs.c.member_id == seeded.ids["ann"]) == 1

    async def held():
        async with ctx.sessions() as session:
            return (await session.execute(sa.select(confirmations))).one()

    waiting = await held()
    assert (waiting.status, waiting.error_code) == ("queued", "20500")
    # Kept to retry, sealed: not the number, nor any run of its digits.
    assert waiting.to_sealed is not None
    assert seeded.mobiles["ann"][-6:].encode() not in waiting.to_sealed
    assert await send_confirmations(ctx) == 0  # backing off

    fake_twilio.recover()
    clock.advance(timedelta(minutes=1))
    assert await send_confirmations(ctx) == 1
    assert await send_confirmations(ctx) == 0
    [confirmation] = [s for s in fake_twilio.accepted if s.body == STOP_CONFIRMATION]
    assert confirmation.to == seeded.mobiles["ann"]
    sent = await held()
    assert (sent.status, sent.to_sealed, sent.provider_message_id) == (
        "sent", None, confirmation.sid)

    # Its receipt is recorded, and published as nothing: it is not a reminder.
    receipt = await call(twilio_app, fake_twilio, STATUS,
                         {"MessageSid": confirmation.sid, "MessageStatus": "delivered"})
    assert receipt.status_code == 204, receipt.text
    assert (await held()).status == "delivered"
    assert await events(twilio_app, kafka_bootstrap, topics,
                        "notifications.message-delivered") == []
