"""The Twilio-compatible provider against a real HTTP server speaking Twilio's API: what
it posts, how each kind of answer becomes the dispatcher's transient or permanent error,
and a campaign through a provider outage that sends each reminder exactly once."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
import sqlalchemy as sa
from turnout_notifications.db.tables import messages
from turnout_notifications.providers.base import PermanentProviderError, TransientProviderError
from turnout_notifications.providers.twilio import (
    TwilioProvider,
    compute_signature,
    signature_valid,
)

from services.notifications.tests.fake_twilio import (  # noqa: F401 - fixtures
    SENDER_ID,
    fake_twilio_fixture,
    twilio_app_fixture,
    twilio_settings_fixture,
)
from services.notifications.tests.support import Member, seed_ballot
from services.notifications.tests.test_sending import counts, create
from tests.support.kafka import read_to_end
from tests.support.outbox import outbox_drained
from turnout_events.serde import decode

NUMBER = "+447700900123"
TEXT = "Hi Sam, 3 days left to vote in the Pay ballot"


def provider_for(fake, **overrides) -> TwilioProvider:
    options = {"base_url": fake.url, "account_sid": fake.account_sid,
               "auth_token": fake.auth_token, "sender_id": SENDER_ID,
               "status_callback_url": "https://turnout.example.org/v1/webhooks/sms/status",
               "timeout_seconds": 5.0, **overrides}
    return TwilioProvider(**options)


async def send(provider: TwilioProvider, to: str = NUMBER, body: str = TEXT):
    try:
        return await provider.send(idempotency_key="m-1:c-1:0", to=to, body=body)
    finally:
        await provider.aclose()


# -- the adapter ---------------------------------------------------------------------------

async def test_a_message_is_posted_the_twilio_way(fake_twilio):
    accepted = await send(provider_for(fake_twilio))

    [sms] = fake_twilio.accepted
    assert accepted.provider_message_id == sms.sid and sms.sid.startswith("SM")
    assert (sms.to, sms.sender, sms.body) == (NUMBER, SENDER_ID, TEXT)
    assert sms.status_callback == "https://turnout.example.org/v1/webhooks/sms/status"
    assert sms.idempotency_key == "m-1:c-1:0"


@pytest.mark.parametrize(("setup", "code"), [
    (lambda fake: fake.outage(), "20500"),  # 503
    (lambda fake: setattr(fake, "refuse_with", (429, 20429)), "20429"),  # rate limited
    (lambda fake: setattr(fake, "refuse_with", (500, 20500)), "20500"),
])
async def test_outages_and_rate_limits_are_transient(fake_twilio, setup, code):
    setup(fake_twilio)
    with pytest.raises(TransientProviderError) as raised:
        await send(provider_for(fake_twilio))
    assert raised.value.code == code
    assert fake_twilio.accepted == []


async def test_a_slow_provider_times_out_as_transient(fake_twilio):
    fake_twilio.delay = 1.0
    with pytest.raises(TransientProviderError) as raised:
        await send(provider_for(fake_twilio, timeout_seconds=0.2))
    assert raised.value.code == "timeout_read"


async def test_an_unreachable_provider_is_transient(fake_twilio):
    with pytest.raises(TransientProviderError) as raised:
        await send(provider_for(fake_twilio, base_url="http://127.0.0.1:9"))  # discard port
    assert raised.value.code == "unreachable_ConnectError"


async def test_refused_credentials_are_retried_not_failed(fake_twilio):
    # A configuration slip would otherwise fail every queued reminder at once.
    with pytest.raises(TransientProviderError) as raised:
        await send(provider_for(fake_twilio, auth_token="not-the-token"))
    assert raised.value.code == "auth_refused"
    assert fake_twilio.calls == [401]


@pytest.mark.parametrize(("to", "refuse", "code"), [
    ("07700 900123", None, "21211"),  # not E.164: Twilio's invalid number
    (NUMBER, (400, 21610), "21610"),  # the member STOPped at the provider
    (NUMBER, (404, 20404), "20404"),
])
async def test_other_refusals_are_permanent_with_the_providers_code(fake_twilio, to, refuse,
                                                                    code):
    fake_twilio.refuse_with = refuse
    with pytest.raises(PermanentProviderError) as raised:
        await send(provider_for(fake_twilio), to=to)
    assert raised.value.code == code
    # Twilio's message quotes the number; nothing of it reaches our exception.
    assert str(raised.value) == code and raised.value.__cause__ is None
    assert raised.value.__context__ is None or "900123" not in repr(raised.value.__context__)


# -- signatures ----------------------------------------------------------------------------

def test_signatures_match_twilios_published_examples():
    # The examples in Twilio's own request-validator tests.
    url = "https://mycompany.com/myapp.php?foo=1&bar=2"
    params = {"CallSid": "CA1234567890ABCDE", "Digits": "1234", "From": "+14158675309",
              "To": "+18005551212", "Caller": "+14158675309"}
    assert compute_signature("12345", url, params) == "RSOYDt4T1cUTdK1PDd93/VVr8B8="
    repeated = [("Sid", "CA123"), ("SidAccount", "AC123"), ("Digits", "5678"),
                ("Digits", "1234")]
    assert compute_signature("12345", url, repeated) == "IK+Dwps556ElfBT0I3Rgjkr1wJU="
    # A proxy adding or dropping the default port does not break the check ...
    assert signature_valid("12345", url.replace(".com", ".com:443"), params.items(),
                           "RSOYDt4T1cUTdK1PDd93/VVr8B8=")
    assert signature_valid("12345", url, params.items(), "kvajT1Ptam85bY51eRf/AJRuM3w=")
    # ... but another token, URL or parameter does.
    assert not signature_valid("54321", url, params.items(), "RSOYDt4T1cUTdK1PDd93/VVr8B8=")
    assert not signature_valid("12345", url + "&x=1", params.items(),
                               "RSOYDt4T1cUTdK1PDd93/VVr8B8=")
    assert not signature_valid("12345", url, {**params, "Digits": "1235"}.items(),
                               "RSOYDt4T1cUTdK1PDd93/VVr8B8=")
    assert not signature_valid("12345", url, params.items(), None)


# -- a campaign through an outage ----------------------------------------------------------

def ctx_of(client):
    return client.app.state.ctx


@pytest.mark.integration
async def test_a_provider_outage_mid_campaign_then_recovery_sends_each_text_once(
        twilio_app, fake_twilio, kafka_bootstrap, topics, fake_contacts, tokens, clock):
    seeded = await seed_ballot(twilio_app, kafka_bootstrap, topics, fake_contacts,
                               {name: Member(first_name=name.title())
                                for name in ("ann", "bob", "cat", "dev", "eve")})
    campaign = await create(twilio_app, tokens, seeded.ballot_id)
    dispatcher = ctx_of(twilio_app).dispatcher
    assert dispatcher.provider.name == "twilio"

    # Two texts go, then the provider answers 503 to everything.
    fake_twilio.outage_after(2)
    assert await dispatcher.run_once() == {"slots_selected": 1, "messages_sent": 2}
    got = await counts(twilio_app, tokens, campaign)
    assert (got["sent"], got["queued"], got["failed"]) == (2, 3, 0)
    assert 503 in fake_twilio.calls

    # The outage lasts a few minutes of rounds: nothing more goes, nothing fails for good.
    for _ in range(3):
        clock.advance(timedelta(minutes=1))
        assert (await dispatcher.run_once())["messages_sent"] == 0
    got = await counts(twilio_app, tokens, campaign)
    assert (got["sent"], got["queued"], got["failed"]) == (2, 3, 0)
    assert len(fake_twilio.accepted) == 2

    # The provider recovers: as the retries come due, the other three go, once each.
    fake_twilio.recover()
    sent = 0
    for _ in range(10):
        clock.advance(timedelta(minutes=5))
        sent += (await dispatcher.run_once())["messages_sent"]
    assert sent == 3

    # Each member got exactly one text, with their own name; each message row carries the
    # provider's id and the hash of the number it went to.
    assert sorted(s.to for s in fake_twilio.accepted) == sorted(seeded.mobiles.values())
    by_number = {s.to: s for s in fake_twilio.accepted}
    for name, number in seeded.mobiles.items():
        assert by_number[number].body.startswith(f"Hi {name.title()},")
    got = await counts(twilio_app, tokens, campaign)
    assert (got["sent"], got["queued"], got["failed"]) == (5, 0, 0)
    ctx = ctx_of(twilio_app)
    async with ctx.sessions() as session:
        rows = (await session.execute(sa.select(
            messages.c.member_id, messages.c.provider_message_id, messages.c.recipient_hash,
            messages.c.provider).where(
            messages.c.campaign_id == uuid.UUID(campaign)))).all()
    sids = {s.sid for s in fake_twilio.accepted}
    assert {r.provider_message_id for r in rows} == sids and len(rows) == 5
    assert {r.provider for r in rows} == {"twilio"}
    for r in rows:
        number = seeded.mobiles[seeded.name_of(r.member_id)]
        assert r.recipient_hash == ctx.recipient_hash(number)
        assert number.encode() not in r.recipient_hash

    # One reminder-sent per member on the topic, with no number or text.
    await outbox_drained(ctx.engine)
    records = await read_to_end(kafka_bootstrap, [topics.events("notifications")])
    sent = [decode(r.value) for r in records]
    sent = [e for e in sent if e.type == "notifications.reminder-sent"]
    assert sorted(e.data["member_id"] for e in sent) == sorted(
        str(m) for m in seeded.ids.values())
    for record in records:
        for sms in fake_twilio.accepted:
            assert sms.to[-9:].encode() not in record.value
            assert sms.body.encode() not in record.value


# -- settings ------------------------------------------------------------------------------

def test_the_twilio_provider_needs_its_credentials_and_says_which():
    from pydantic import ValidationError
    from turnout_notifications.settings import NotificationsSettings

    with pytest.raises(ValidationError) as raised:
        NotificationsSettings(provider="twilio", twilio_account_sid="AC123")
    message = str(raised.value)
    assert "NOTIFICATIONS_TWILIO_AUTH_TOKEN" in message
    assert "NOTIFICATIONS_TWILIO_SENDER_ID" in message
    assert "AC123" not in message
    with pytest.raises(ValidationError) as raised:
        NotificationsSettings(reply_encryption_key="c2hvcnQta2V5")  # 9 bytes
    assert "32 bytes" in str(raised.value) and "c2hvcnQta2V5" not in str(raised.value)
    configured = NotificationsSettings(provider="twilio", twilio_account_sid="AC1",
                                       twilio_auth_token="t", twilio_sender_id="Union",
                                       public_base_url="https://turnout.example.org/")
    assert configured.status_callback_url == (
        "https://turnout.example.org/v1/webhooks/sms/status")
    assert configured.webhook_secret == "t"
