"""A dispatcher process killed in the middle of a provider call leaves its message in
`sending`: claimed, idempotency key stored, the provider's answer never recorded. These
tests kill a real dispatcher process (SIGKILL, no clean-up of any kind) at that moment
and check that its successor settles the message without ever sending it twice."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta

import pytest
import sqlalchemy as sa
from turnout_notifications.db.tables import messages, sandbox_messages
from turnout_notifications.main import create_notifications_app
from turnout_notifications.providers.base import Accepted

from services.notifications.tests.support import (
    T0,
    Member,
    dispatcher_process_args,
    eventually,
    seed_ballot,
)
from tests.support.kafka import read_to_end
from tests.support.outbox import outbox_drained
from tests.support.services import running
from turnout_events.serde import decode

pytestmark = pytest.mark.integration

TEMPLATE = "Hi {first_name}, {days_left} days left to vote in the {ballot_name}."
TIMEOUT = timedelta(seconds=300)  # the settings' default sending_timeout_seconds


def ctx_of(client):
    return client.app.state.ctx


async def create(client, tokens, ballot_id, **overrides) -> str:
    body = {"ballot_id": str(ballot_id), "template": TEMPLATE, "schedule": ["P3D"],
            **overrides}
    response = await client.post("/v1/campaigns", json=body, headers=tokens("national"))
    assert response.status_code == 201, response.text
    return response.json()["campaign_id"]


async def counts(client, tokens, campaign_id) -> dict:
    response = await client.get(f"/v1/campaigns/{campaign_id}", headers=tokens("national"))
    assert response.status_code == 200, response.text
    return response.json()["counts"]


async def message_rows(client, campaign_id) -> list:
    async with ctx_of(client).sessions() as session:
        return (await session.execute(sa.select(messages).where(
            messages.c.campaign_id == uuid.UUID(campaign_id)))).all()


async def sandbox_rows(client) -> list:
    async with ctx_of(client).sessions() as session:
        return (await session.execute(sa.select(sandbox_messages))).all()


async def kill_mid_call(client, settings, campaign_id, *, fault: str) -> None:
    """Run a dispatcher in a process of its own until it is inside the provider call for
    the campaign's message, then SIGKILL it."""
    process = await asyncio.create_subprocess_exec(
        *dispatcher_process_args(settings, now=T0, fault=fault),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    try:
        async def inside_the_call() -> bool:
            if process.returncode is not None:
                raise AssertionError("the dispatcher process ended by itself: "
                                     + (await process.stderr.read()).decode()[-2000:])
            rows = await message_rows(client, campaign_id)
            if [r.status for r in rows].count("sending") != 1:
                return False
            # Stalled after taking it: wait until the sandbox has it too.
            return fault != "stall_after_accept" or len(await sandbox_rows(client)) == 1

        await eventually(inside_the_call, what="the dispatcher process inside the call")
    finally:
        if process.returncode is None:
            process.kill()
        await process.wait()


async def reminders_on_topic(client, kafka_bootstrap, topics) -> list:
    await outbox_drained(ctx_of(client).engine)
    records = await read_to_end(kafka_bootstrap, [topics.events("notifications")])
    return [e for e in (decode(r.value) for r in records)
            if e.type in ("notifications.reminder-sent", "notifications.message-failed")]


async def test_taken_by_the_provider_before_the_crash_is_recorded_once_on_restart(
        notifications_app, notifications_settings, kafka_bootstrap, topics, fake_contacts,
        tokens, clock):
    seeded = await seed_ballot(notifications_app, kafka_bootstrap, topics, fake_contacts,
                               {"ann": Member(first_name="Ann")})
    campaign = await create(notifications_app, tokens, seeded.ballot_id)
    await kill_mid_call(notifications_app, notifications_settings, campaign,
                        fault="stall_after_accept")
    assert len(await sandbox_rows(notifications_app)) == 1
    assert (await counts(notifications_app, tokens, campaign))["queued"] == 1  # in flight

    # Within the timeout the message may still be in someone's hands: left alone.
    clock.advance(TIMEOUT - timedelta(seconds=1))
    dispatcher = ctx_of(notifications_app).dispatcher
    assert await dispatcher.rescue_stuck() == {"sent": 0, "requeued": 0, "cancelled": 0,
                                               "unknown_outcome": 0}
    assert [r.status for r in await message_rows(notifications_app, campaign)] == ["sending"]

    # A new instance starting after the timeout settles it on start, by asking the
    # sandbox, which says it has the message: recorded as sent, nothing sent again.
    clock.advance(timedelta(seconds=2))
    settings = notifications_settings.model_copy(update={"dispatcher_enabled": True,
                                                         "dispatch_interval_seconds": 60})
    restarted = create_notifications_app(settings, clock=clock)
    async with running(restarted, "http://notifications") as client:
        client.app = restarted  # type: ignore[attr-defined]

        async def settled() -> bool:
            return [r.status for r in await message_rows(client, campaign)] == ["sent"]

        await eventually(settled, what="the stuck message settled on start")
        got = await counts(client, tokens, campaign)
        assert (got["sent"], got["queued"], got["failed"]) == (1, 0, 0)
        sandbox = await sandbox_rows(client)
        assert len(sandbox) == 1 and sandbox[0].body.startswith("Hi Ann,")
        row, = await message_rows(client, campaign)
        # Settled by asking, not by calling again (the sandbox would have dropped a
        # second call with the same key, so the attempt count is what tells).
        assert (row.provider_message_id, row.attempts) == (sandbox[0].provider_message_id, 1)
        events = await reminders_on_topic(client, kafka_bootstrap, topics)
        assert [(e.type, e.data["message_id"]) for e in events] == [
            ("notifications.reminder-sent", str(row.message_id))]
        # When it went, not when the crash was noticed.
        assert events[0].occurred_at == T0


async def test_never_taken_by_the_provider_is_sent_after_the_crash(
        notifications_app, notifications_settings, kafka_bootstrap, topics, fake_contacts,
        tokens, clock):
    seeded = await seed_ballot(notifications_app, kafka_bootstrap, topics, fake_contacts,
                               {"ann": Member(first_name="Ann")})
    campaign = await create(notifications_app, tokens, seeded.ballot_id)
    await kill_mid_call(notifications_app, notifications_settings, campaign,
                        fault="stall_before_accept")
    assert await sandbox_rows(notifications_app) == []

    clock.advance(TIMEOUT + timedelta(minutes=1))
    dispatcher = ctx_of(notifications_app).dispatcher
    assert await dispatcher.rescue_stuck() == {"sent": 0, "requeued": 1, "cancelled": 0,
                                               "unknown_outcome": 0}
    # Back in the queue, and the next round sends it: once.
    assert await dispatcher.run_once() == {"slots_selected": 0, "messages_sent": 1}
    assert await dispatcher.run_once() == {"slots_selected": 0, "messages_sent": 0}
    assert len(await sandbox_rows(notifications_app)) == 1
    row, = await message_rows(notifications_app, campaign)
    assert (row.status, row.attempts) == ("sent", 2)
    events = await reminders_on_topic(notifications_app, kafka_bootstrap, topics)
    assert [e.type for e in events] == ["notifications.reminder-sent"]


class CannotBeAsked:
    """A provider like Twilio's API, which keeps no idempotency key to look up: it can
    send (through the sandbox, so the test sees what went) but not say what it took."""

    name = "sandbox"  # the same provider the crashed process was calling

    def __init__(self, sandbox) -> None:
        self._sandbox = sandbox

    async def send(self, *, idempotency_key: str, to: str, body: str) -> Accepted:
        return await self._sandbox.send(idempotency_key=idempotency_key, to=to, body=body)


async def test_a_provider_that_cannot_be_asked_fails_it_as_unknown_and_never_resends(
        notifications_app, notifications_settings, kafka_bootstrap, topics, fake_contacts,
        tokens, clock):
    seeded = await seed_ballot(notifications_app, kafka_bootstrap, topics, fake_contacts,
                               {"ann": Member(first_name="Ann"), "bob": Member()})
    campaign = await create(notifications_app, tokens, seeded.ballot_id)
    await kill_mid_call(notifications_app, notifications_settings, campaign,
                        fault="stall_after_accept")
    dispatcher = ctx_of(notifications_app).dispatcher
    dispatcher.provider = CannotBeAsked(dispatcher.provider)

    clock.advance(TIMEOUT + timedelta(minutes=1))
    assert await dispatcher.rescue_stuck() == {"sent": 0, "requeued": 0, "cancelled": 0,
                                               "unknown_outcome": 1}
    # The other member's message, never claimed, goes; the stuck one never again.
    assert await dispatcher.run_once() == {"slots_selected": 0, "messages_sent": 1}
    assert await dispatcher.run_once() == {"slots_selected": 0, "messages_sent": 0}
    rows = {seeded.name_of(r.member_id): r for r in await message_rows(notifications_app,
                                                                        campaign)}
    stuck = next(name for name, r in rows.items() if r.status == "failed")
    assert (rows[stuck].error_code, rows[stuck].attempts) == ("unknown_outcome", 1)
    assert {r.status for r in rows.values()} == {"failed", "sent"}
    assert len(await sandbox_rows(notifications_app)) == 2  # one each, as it happened
    got = await counts(notifications_app, tokens, campaign)
    assert (got["sent"], got["failed"], got["queued"]) == (1, 1, 0)
    events = await reminders_on_topic(notifications_app, kafka_bootstrap, topics)
    assert sorted((e.type, e.data.get("error_code")) for e in events) == [
        ("notifications.message-failed", "unknown_outcome"),
        ("notifications.reminder-sent", None)]
    failed = next(e for e in events if e.type == "notifications.message-failed")
    assert failed.data["permanent"] is False  # nothing says the number is bad

    # They may well have the text: the day's cap counts it.
    clock.set(T0 + timedelta(hours=23))
    later = await create(notifications_app, tokens, seeded.ballot_id,
                         schedule=[clock.now.isoformat()])
    assert await dispatcher.run_once() == {"slots_selected": 1, "messages_sent": 0}
    assert (await counts(notifications_app, tokens, later))["skipped"]["capped"] == 2
