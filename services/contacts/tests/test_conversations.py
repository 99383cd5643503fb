"""Logging conversations: a "voted" outcome must name its ballot, because the ballots
service marks the vote in the ballot the member-contacted event carries and reporting
counts conversations by ballot; a "voted" with no ballot would be a vote silently lost."""

from __future__ import annotations

import uuid

import pytest
import sqlalchemy as sa
from turnout_contacts.db.tables import conversations, members

from services.contacts.tests.seed import seed_member
from tests.support.kafka import read_to_end
from tests.support.outbox import outbox_drained
from turnout_events.serde import decode

pytestmark = pytest.mark.integration


def ctx_of(client):
    return client.app.state.ctx


async def published(client, kafka_bootstrap, topics):
    """Every event the service has published so far (its outbox drained first)."""
    await outbox_drained(ctx_of(client).engine)
    return await read_to_end(kafka_bootstrap, [topics.events("contacts")])


async def stored(client, member_id):
    """The member's logged conversations, oldest first, and the member's version."""
    async with ctx_of(client).engine.connect() as conn:
        rows = (await conn.execute(
            sa.select(conversations.c.conversation_id, conversations.c.outcome,
                      conversations.c.ballot_id)
            .where(conversations.c.member_id == member_id)
            .order_by(conversations.c.created_at))).all()
        version = (await conn.execute(
            sa.select(members.c.version).where(members.c.member_id == member_id))).scalar_one()
    return [tuple(r) for r in rows], version


async def log(client, headers, member_id, body):
    return await client.post(f"/v1/members/{member_id}/conversations", json=body,
                             headers=headers)


async def test_voted_without_a_ballot_is_refused_and_changes_nothing(
        contacts_app, tokens, topics, kafka_bootstrap):
    member_id = await seed_member(ctx_of(contacts_app))
    rep = tokens("rep", branches=["B1"])
    for body in ({"channel": "face_to_face", "outcome": "voted"},
                 {"channel": "phone", "outcome": "voted", "ballot_id": None,
                  "note": "Posted it on Monday"}):
        response = await log(contacts_app, rep, member_id, body)
        assert response.status_code == 422, response.text
        assert response.headers["content-type"].startswith("application/problem+json")
        problem = response.json()
        assert [e["field"] for e in problem["errors"]] == ["ballot_id"]
        assert '"voted"' in problem["errors"][0]["message"]
        assert "ballot" in problem["errors"][0]["message"]
        assert problem["detail"].startswith("ballot_id: ")
        assert "Posted" not in response.text

    assert await stored(contacts_app, member_id) == ([], 1)
    # The outbox holds no event from the refused requests: nothing was staged at all.
    assert await outbox_drained(ctx_of(contacts_app).engine) == 0
    assert await published(contacts_app, kafka_bootstrap, topics) == []


async def test_what_the_database_cannot_store_is_refused_and_changes_nothing(
        contacts_app, tokens, topics, kafka_bootstrap):
    """A moment that is year 0 in UTC, a NUL character in the note: a 422 naming the
    problem, rather than a 500 from the database."""
    member_id = await seed_member(ctx_of(contacts_app))
    rep = tokens("rep", branches=["B1"])
    year_zero = await log(contacts_app, rep, member_id, {
        "channel": "phone", "outcome": "undecided", "contacted_at": "0001-01-01T00:30:00+01:00"})
    assert year_zero.status_code == 422, year_zero.text
    assert [e["field"] for e in year_zero.json()["errors"]] == ["body.contacted_at"]
    assert "UTC" in year_zero.json()["errors"][0]["message"]
    nul = await log(contacts_app, rep, member_id, {
        "channel": "phone", "outcome": "undecided", "note": "Call back\u0000 Tuesday"})
    assert nul.status_code == 422, nul.text
    assert "NUL character" in nul.json()["detail"] and "Tuesday" not in nul.text
    assert await stored(contacts_app, member_id) == ([], 1)
    assert await outbox_drained(ctx_of(contacts_app).engine) == 0
    assert await published(contacts_app, kafka_bootstrap, topics) == []


async def test_voted_with_a_ballot_and_other_outcomes_without_one_are_logged(
        contacts_app, tokens, topics, kafka_bootstrap):
    member_id = await seed_member(ctx_of(contacts_app))
    rep = tokens("rep", branches=["B1"])
    ballot_id = uuid.uuid4()

    refused = await log(contacts_app, rep, member_id, {"channel": "phone", "outcome": "voted"})
    assert refused.status_code == 422, refused.text
    undecided = await log(contacts_app, rep, member_id,
                          {"channel": "phone", "outcome": "undecided"})
    assert undecided.status_code == 201, undecided.text
    voted = await log(contacts_app, rep, member_id,
                      {"channel": "phone", "outcome": "voted", "ballot_id": str(ballot_id)})
    assert voted.status_code == 201, voted.text

    ids = [uuid.UUID(r.json()["conversation_id"]) for r in (undecided, voted)]
    assert await stored(contacts_app, member_id) == (
        [(ids[0], "undecided", None), (ids[1], "voted", ballot_id)], 3)
    # Both logged conversations reached the topic, and the refused one left no trace
    # between them.
    events = [decode(r.value) for r in await published(contacts_app, kafka_bootstrap, topics)]
    assert [(e.type, e.data["conversation_id"], e.data["outcome"], e.data["ballot_id"])
            for e in events] == [
        ("contacts.member-contacted", str(ids[0]), "undecided", None),
        ("contacts.member-contacted", str(ids[1]), "voted", str(ballot_id)),
    ]
    assert [e.data["member_version"] for e in events] == [2, 3]
