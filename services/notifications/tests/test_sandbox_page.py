"""The sandbox page: what the sandbox "sent", newest first, with masked numbers, and a
form that simulates a member's reply through the same handling as the webhook."""

from __future__ import annotations

import re
import uuid

import httpx
import pytest
import sqlalchemy as sa
from turnout_notifications.db.tables import opt_outs, sandbox_messages
from turnout_notifications.service.inbound import STOP_CONFIRMATION

from services.notifications.tests.fake_twilio import (  # noqa: F401 - fixtures
    fake_twilio_fixture,
    twilio_app_fixture,
    twilio_settings_fixture,
)
from services.notifications.tests.support import Member, seed_ballot
from services.notifications.tests.test_sending import create
from tests.support.kafka import read_to_end
from tests.support.outbox import outbox_drained
from turnout_events.serde import decode

pytestmark = pytest.mark.integration


def ctx_of(client):
    return client.app.state.ctx


async def page(client) -> str:
    response = await client.get("/sandbox")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/html")
    assert response.headers["cache-control"] == "no-store"
    return response.text


def csrf_of(html: str) -> str:
    return re.search(r'name="csrf" value="([^"]+)"', html).group(1)


async def sandbox_ids(client) -> dict[str, int]:
    """masked number -> the id of the latest sandbox message to it."""
    async with ctx_of(client).sessions() as session:
        rows = (await session.execute(sa.select(sandbox_messages.c.id,
                                                sandbox_messages.c.to_masked)
                                      .order_by(sandbox_messages.c.id))).all()
    return {r.to_masked: r.id for r in rows}


async def test_the_page_lists_messages_and_simulates_replies(
        notifications_app, kafka_bootstrap, topics, fake_contacts, tokens):
    seeded = await seed_ballot(notifications_app, kafka_bootstrap, topics, fake_contacts,
                               {"ann": Member(first_name="Ann"),
                                "bob": Member(first_name="Bob")})
    await create(notifications_app, tokens, seeded.ballot_id)
    assert (await ctx_of(notifications_app).dispatcher.run_once())["messages_sent"] == 2

    html = await page(notifications_app)
    assert '<html lang="en">' in html and "<caption>" in html
    assert '<th scope="col">Text</th>' in html and '<label for="text">' in html
    masked = {name: n[:3] + "•" * (len(n) - 6) + n[-3:] for name, n in seeded.mobiles.items()}
    for name, number in seeded.mobiles.items():
        assert number not in html  # masked, never in clear
        assert masked[name] in html
    assert "Hi Ann," in html and "Hi Bob," in html
    ids = await sandbox_ids(notifications_app)
    rows = re.findall(r"<tr><td>(\d+)</td>", html)
    assert [int(r) for r in rows] == sorted(ids.values(), reverse=True)  # newest first

    # Ann replies YES, Bob replies STOP, through the page's form.
    token = csrf_of(html)
    yes = await notifications_app.post("/sandbox/replies", data={
        "message_id": ids[masked["ann"]], "text": "yes", "csrf": token})
    assert (yes.status_code, yes.headers["location"]) == (303, "/sandbox?done=voted")
    stop = await notifications_app.post("/sandbox/replies", data={
        "message_id": ids[masked["bob"]], "text": "STOP", "csrf": token})
    assert (stop.status_code, stop.headers["location"]) == (303, "/sandbox?done=opt_out")

    html = (await notifications_app.get("/sandbox?done=opt_out")).text
    assert 'role="status"' in html and "opted out" in html
    # The STOP's one confirmation went through the sandbox too, to Bob's masked number,
    # and is now the newest message.
    first_row = re.search(r"<tr><td>\d+</td><td>[^<]*</td><td>([^<]*)</td><td>([^<]*)</td>",
                          html)
    assert first_row.groups() == (masked["bob"], STOP_CONFIRMATION)
    async with ctx_of(notifications_app).sessions() as session:
        assert await session.scalar(sa.select(opt_outs.c.member_id)) == seeded.ids["bob"]

    await outbox_drained(ctx_of(notifications_app).engine)
    records = await read_to_end(kafka_bootstrap, [topics.events("notifications")])
    published = [decode(r.value) for r in records]
    assert sorted((e.type, seeded.name_of(uuid.UUID(e.data["member_id"])),
                   e.data.get("intent")) for e in published
                  if e.type != "notifications.reminder-sent") == [
        ("notifications.opt-out-received", "bob", None),
        ("notifications.reply-received", "ann", "voted"),
        ("notifications.reply-received", "bob", "opt_out"),
    ]


async def test_the_form_needs_the_pages_token(notifications_app, kafka_bootstrap, topics,
                                              fake_contacts, tokens):
    seeded = await seed_ballot(notifications_app, kafka_bootstrap, topics, fake_contacts,
                               {"ann": Member()})
    await create(notifications_app, tokens, seeded.ballot_id)
    await ctx_of(notifications_app).dispatcher.run_once()
    [message_id] = (await sandbox_ids(notifications_app)).values()
    forged = f"{csrf_of(await page(notifications_app)).split('.')[0]}.{'0' * 64}"
    for token in (forged, "", "1.abc"):
        response = await notifications_app.post("/sandbox/replies", data={
            "message_id": message_id, "text": "STOP", "csrf": token})
        assert response.status_code in (403, 422), response.text
    async with ctx_of(notifications_app).sessions() as session:
        assert await session.scalar(sa.select(sa.func.count()).select_from(opt_outs)) == 0


async def test_the_page_is_only_for_this_machine_and_the_sandbox(notifications_app,
                                                                 twilio_app):
    remote = httpx.AsyncClient(transport=httpx.ASGITransport(
        app=notifications_app.app, client=("203.0.113.7", 50000)),
        base_url="http://notifications")
    async with remote:
        response = await remote.get("/sandbox")
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"
    # With a real provider there is no sandbox to show.
    assert (await twilio_app.get("/sandbox")).status_code == 404
