"""Erasure: the personal data leaves the database, flags-false events go out with no
value in their bytes, and doing it twice changes and publishes nothing."""

from __future__ import annotations

import uuid

import pytest
import sqlalchemy as sa
from turnout_contacts.db.tables import conversations, members, reveal_audit

from services.contacts.tests.seed import seed_member
from tests.support.kafka import read_to_end
from tests.support.outbox import outbox_drained
from turnout_events.serde import decode

pytestmark = pytest.mark.integration

MOBILE = "+447911123123"
EMAIL = "alex.jones@example.org.uk"
NOTE = "Said to ring 07911 123123 after six"


def ctx_of(client):
    return client.app.state.ctx


async def published(client, kafka_bootstrap, topics):
    await outbox_drained(ctx_of(client).engine)
    return await read_to_end(kafka_bootstrap, [topics.events("contacts")])


async def member_row(client, member_id):
    async with ctx_of(client).engine.connect() as conn:
        return (await conn.execute(
            sa.select(members).where(members.c.member_id == member_id))).one()


async def erase(client, member_id, headers):
    return await client.delete(f"/v1/members/{member_id}/personal-data", headers=headers)


async def test_erasure_removes_the_values_and_publishes_flags_false(
        contacts_app, tokens, topics, kafka_bootstrap):
    ctx = ctx_of(contacts_app)
    member_id = await seed_member(ctx, group="G1", branch="B1", workplace="W1", grade="g5",
                                  sms_consent=True, email_consent=True, number="M4242")
    async with ctx.engine.begin() as conn:
        await conn.execute(sa.update(members).where(members.c.member_id == member_id)
                           .values(personal_digest=ctx.index.digest("Alex", "Jones")))
    rep = tokens("rep", branches=["B1"])
    logged = await contacts_app.post(f"/v1/members/{member_id}/conversations", headers=rep,
                                     json={"channel": "phone", "outcome": "will_vote",
                                           "note": NOTE})
    assert logged.status_code == 201
    revealed = await contacts_app.post(f"/v1/members/{member_id}/reveal", headers=rep,
                                       json={"reason": "phone banking tonight"})
    assert revealed.status_code == 200
    before = await member_row(contacts_app, member_id)

    response = await erase(contacts_app, member_id, tokens("admin"))

    assert response.status_code == 204, response.text
    row = await member_row(contacts_app, member_id)
    for column in ("first_name", "last_name", "mobile", "mobile_masked", "email",
                   "email_masked", "personal_digest"):
        assert getattr(row, column) is None, column
    assert row.name_tokens == []
    assert (row.sms_consent, row.email_consent) == (False, False)
    assert row.erased_at is not None
    # Kept: the pseudonymous id, the membership number, the placement (for counts).
    assert (row.membership_number, row.group_code, row.branch_code, row.workplace_code,
            row.grade) == ("M4242", "G1", "B1", "W1", "g5")
    assert row.version == before.version + 3
    async with ctx.engine.connect() as conn:
        [conversation] = (await conn.execute(sa.select(conversations).where(
            conversations.c.member_id == member_id))).all()
        audit = (await conn.execute(sa.select(reveal_audit))).all()
    assert conversation.note is None and conversation.outcome == "will_vote"
    assert len(audit) == 1  # the DPO's record stays

    records = await published(contacts_app, kafka_bootstrap, topics)
    events = [decode(r.value) for r in records]
    assert [e.type for e in events] == ["contacts.member-contacted", "contacts.contact-updated",
                                        "contacts.consent-changed", "contacts.consent-changed"]
    updated, sms, mail = events[1:]
    no_flags = {"has_mobile": False, "has_email": False, "sms_consent": False,
                "email_consent": False}
    assert updated.data["reason"] == "erasure"
    assert updated.data["contact"] == no_flags
    assert updated.data["changed"] == ["mobile", "email", "sms_consent", "email_consent"]
    assert [(e.data["channel"], e.data["granted"], e.data["via"]) for e in (sms, mail)] == [
        ("sms", False, "erasure"), ("email", False, "erasure")]
    assert all(e.data["contact"] == no_flags for e in (sms, mail))
    assert [e.data["member_version"] for e in events[1:]] == [
        before.version + 1, before.version + 2, before.version + 3]
    for record in records:
        assert record.key == str(member_id).encode()
        for value in (MOBILE, "7911123123", "07911", EMAIL, "Alex", "Jones", "six"):
            assert value.encode() not in record.value, value

    shown = (await contacts_app.get(f"/v1/members/{member_id}", headers=rep)).json()
    assert shown["erased"] is True
    assert (shown["first_name"], shown["mobile"], shown["personal_email"]) == (None,) * 3
    found = await contacts_app.get("/v1/members", params={"q": "Alex Jones"}, headers=rep)
    assert found.json()["items"] == []


async def test_erasing_twice_changes_and_publishes_nothing(contacts_app, tokens, topics,
                                                           kafka_bootstrap):
    member_id = await seed_member(ctx_of(contacts_app), sms_consent=True)
    national = tokens("national")
    assert (await erase(contacts_app, member_id, national)).status_code == 204
    first = await member_row(contacts_app, member_id)
    assert len(await published(contacts_app, kafka_bootstrap, topics)) == 2

    again = await erase(contacts_app, member_id, national)

    assert again.status_code == 204, again.text
    second = await member_row(contacts_app, member_id)
    assert (second.version, second.erased_at, second.updated_at) == (
        first.version, first.erased_at, first.updated_at)
    assert len(await published(contacts_app, kafka_bootstrap, topics)) == 2


async def test_a_member_with_no_contact_values_left_is_still_announced_as_erased(
        contacts_app, tokens, topics, kafka_bootstrap):
    # Other services may hold something from before (replies to a number since removed):
    # they hear of every erasure, once.
    member_id = await seed_member(ctx_of(contacts_app), mobile=None, email=None,
                                  sms_consent=False)
    assert (await erase(contacts_app, member_id, tokens("admin"))).status_code == 204
    row = await member_row(contacts_app, member_id)
    assert row.erased_at is not None and row.first_name is None and row.version == 2
    [record] = await published(contacts_app, kafka_bootstrap, topics)
    updated = decode(record.value)
    assert (updated.type, updated.data["reason"]) == ("contacts.contact-updated", "erasure")
    assert updated.data["member_version"] == 2
    assert not any(updated.data["contact"].values())
    assert (await erase(contacts_app, member_id, tokens("admin"))).status_code == 204
    assert len(await published(contacts_app, kafka_bootstrap, topics)) == 1


async def test_only_national_and_admin_may_erase_and_unknown_ids_are_not_found(
        contacts_app, tokens, topics, kafka_bootstrap):
    member_id = await seed_member(ctx_of(contacts_app), group="G1", branch="B1")
    for headers in (tokens("rep", branches=["B1"]), tokens("organiser", groups=["G1"]),
                    tokens("service"), tokens("rep", branches=["B2"])):
        response = await erase(contacts_app, member_id, headers)
        assert response.status_code == 403, response.text
    missing = await erase(contacts_app, uuid.uuid4(), tokens("national"))
    assert missing.status_code == 404
    assert missing.headers["content-type"].startswith("application/problem+json")
    assert (await erase(contacts_app, member_id, {})).status_code == 401
    row = await member_row(contacts_app, member_id)
    assert row.erased_at is None and row.mobile is not None
    assert await published(contacts_app, kafka_bootstrap, topics) == []
