"""A member's SMS reply "YES" becomes their own voted report, end to end: ballots and
notifications each running with their own database on the run's Kafka, the reminder
sent through a real HTTP server speaking Twilio's API, the reply posted to the
notifications webhook as Twilio would post it. Ballots marks the vote (source
sms_reply), notifications hears of it, and the member gets no further reminder."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa
from pydantic import SecretStr
from turnout_ballots.db.tables import member_replica
from turnout_notifications.db.tables import roll
from turnout_notifications.main import create_notifications_app
from turnout_notifications.settings import NotificationsSettings

from services.ballots.tests.seed import eventually, open_ballot, produce, published
from services.notifications.tests.fake_twilio import fake_twilio_server
from services.notifications.tests.support import fake_contacts_server
from tests.support.isolation import create_database, drop_database
from tests.support.kafka import read_to_end
from tests.support.outbox import outbox_drained
from tests.support.services import running
from turnout_events.contacts import MemberRegistered
from turnout_events.serde import decode

pytestmark = pytest.mark.integration

PUBLIC = "https://turnout.example.org"
NUMBER = "+447911123456"
NO_QUIET_HOURS = {"start": "00:00", "end": "00:00", "timezone": "Europe/London"}


@pytest.fixture
async def notifications_database(infra):
    url = await create_database(infra.database_url)
    yield url
    await drop_database(infra.database_url, url)


async def test_a_yes_reply_is_the_members_own_vote_and_ends_their_reminders(
        ballots_app, notifications_database, kafka_bootstrap, topics, tokens):
    async with fake_contacts_server() as contacts, fake_twilio_server() as twilio:
        settings = NotificationsSettings(
            database_url=notifications_database, kafka_bootstrap_servers=kafka_bootstrap,
            topic_namespace=topics.namespace, topic_partitions=topics.partitions,
            contacts_url=contacts.url, dispatcher_enabled=False, provider="twilio",
            twilio_base_url=twilio.url, twilio_account_sid=twilio.account_sid,
            twilio_auth_token=SecretStr(twilio.auth_token), twilio_sender_id="Turnout",
            public_base_url=PUBLIC)
        app = create_notifications_app(settings)
        async with running(app, "http://notifications") as notifications:
            ctx = app.state.ctx
            # A member with a mobile and SMS consent, as contacts announces them: ballots
            # puts them in its replica (and so on the roll), notifications notes the flags.
            member_id = uuid.uuid4()
            await produce(kafka_bootstrap, topics.events("contacts"), [MemberRegistered(
                member_id=member_id, member_version=1,
                placement={"group_code": "G1", "branch_code": "B1", "workplace_code": "W1"},
                contact={"has_mobile": True, "has_email": False, "sms_consent": True,
                         "email_consent": False})])
            contacts.textable[member_id] = (NUMBER, "Sam")

            async def in_replica() -> bool:
                async with ballots_app.app.state.ctx.sessions() as session:
                    return await session.scalar(sa.select(member_replica.c.member_id).where(
                        member_replica.c.member_id == member_id)) is not None

            await eventually(in_replica, what="the member in ballots' replica")
            ballot_id = await open_ballot(ballots_app, tokens)

            async def on_roll(voted: bool) -> bool:
                async with ctx.sessions() as session:
                    row = (await session.execute(sa.select(roll).where(
                        roll.c.ballot_id == ballot_id, roll.c.member_id == member_id))).first()
                return row is not None and row.enrolled and row.voted is voted

            await eventually(lambda: on_roll(False), what="the member on notifications' roll")

            # The reminder goes out through the provider.
            async def campaign() -> str:
                response = await notifications.post("/v1/campaigns", json={
                    "ballot_id": str(ballot_id), "template": "Hi {first_name}, have you "
                    "posted your ballot? Reply YES if you have.",
                    "schedule": [datetime.now(UTC).isoformat()],
                    "quiet_hours": NO_QUIET_HOURS}, headers=tokens("national"))
                assert response.status_code == 201, response.text
                return response.json()["campaign_id"]

            await campaign()
            assert (await ctx.dispatcher.run_once())["messages_sent"] == 1
            [reminder] = twilio.accepted
            assert reminder.to == NUMBER and reminder.body.startswith("Hi Sam,")

            # The member replies YES, and Twilio posts it to the webhook, signed.
            params = {"MessageSid": "SM" + uuid.uuid4().hex, "From": NUMBER,
                      "To": "+447700900000", "Body": "Yes"}
            form, headers = twilio.signed(PUBLIC + "/v1/webhooks/sms/inbound", params)
            response = await notifications.post("/v1/webhooks/sms/inbound", data=form,
                                                headers=headers)
            assert response.status_code == 200, response.text

            # Ballots marks the vote, as the member's own report by SMS.
            async def voted_events() -> list:
                found = await published(ballots_app, kafka_bootstrap, topics,
                                        of_type="ballots.voted")
                return found

            [voted] = await eventually(voted_events, what="ballots' voted event")
            assert voted.data["member_id"] == str(member_id)
            assert voted.data["ballot_id"] == str(ballot_id)
            assert voted.data["vote_source"] == "sms_reply"
            assert voted.actor == f"member:{member_id}"
            await outbox_drained(ctx.engine)
            replies = [decode(r.value) for r in await read_to_end(
                kafka_bootstrap, [topics.events("notifications")])]
            [reply] = [e for e in replies if e.type == "notifications.reply-received"]
            assert voted.causation_id == reply.id
            entry = await ballots_app.get(f"/v1/ballots/{ballot_id}/roll/{member_id}",
                                          headers=tokens("national"))
            assert entry.json()["mark"]["source"] == "sms_reply"

            # Notifications hears of the vote, and the next reminder skips the member.
            await eventually(lambda: on_roll(True), what="the vote back in notifications")
            later = await campaign()
            run = await ctx.dispatcher.run_once()
            assert run == {"slots_selected": 1, "messages_sent": 0}
            got = (await notifications.get(f"/v1/campaigns/{later}",
                                           headers=tokens("national"))).json()["counts"]
            assert (got["sent"], got["skipped"]["voted"]) == (0, 1)
            assert len(twilio.accepted) == 1
