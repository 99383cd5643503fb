"""Reading and changing one member over HTTP: masking, scope, events on the topic."""

from __future__ import annotations

import uuid

import pytest

from services.contacts.tests.seed import seed_member
from tests.support.kafka import read_to_end
from tests.support.outbox import outbox_drained
from turnout_events.serde import decode

pytestmark = pytest.mark.integration

MOBILE = "+447911123123"
EMAIL = "alex.jones@example.org.uk"


def ctx_of(client):
    return client.app.state.ctx


async def published(client, kafka_bootstrap, topics):
    """Every event the service has published so far (its outbox drained first)."""
    await outbox_drained(ctx_of(client).engine)
    return await read_to_end(kafka_bootstrap, [topics.events("contacts")])


async def test_a_rep_reads_members_of_their_branch_masked(contacts_app, tokens):
    member_id = await seed_member(ctx_of(contacts_app), branch="B1")
    response = await contacts_app.get(f"/v1/members/{member_id}",
                                      headers=tokens("rep", branches=["B1"]))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["mobile"] == "07••• ••• 123"
    assert body["personal_email"] == "a•••@•••.uk"
    assert body["first_name"] == "Alex"
    assert MOBILE not in response.text and EMAIL not in response.text


async def test_out_of_scope_members_are_not_found(contacts_app, tokens):
    member_id = await seed_member(ctx_of(contacts_app), group="G1", branch="B1")
    for headers in (tokens("rep", branches=["B2"]), tokens("organiser", groups=["G2"])):
        for method, path, body in (
            ("GET", f"/v1/members/{member_id}", None),
            ("PATCH", f"/v1/members/{member_id}/contact", {"sms_consent": False}),
            ("PATCH", f"/v1/members/{member_id}/placement", {"grade": "g6"}),
            ("POST", f"/v1/members/{member_id}/conversations",
             {"channel": "phone", "outcome": "will_vote"}),
        ):
            response = await contacts_app.request(method, path, json=body, headers=headers)
            assert response.status_code == 404, (method, path, response.text)
            assert response.headers["content-type"].startswith("application/problem+json")
    unknown = await contacts_app.get(f"/v1/members/{uuid.uuid4()}",
                                     headers=tokens("national"))
    assert unknown.status_code == 404
    listed = await contacts_app.get("/v1/members", headers=tokens("rep", branches=["B2"]))
    assert listed.json()["items"] == []


async def test_changing_contact_details_publishes_flags_never_values(
        contacts_app, tokens, topics, kafka_bootstrap):
    member_id = await seed_member(ctx_of(contacts_app), mobile=None, sms_consent=False)
    rep = tokens("rep", branches=["B1"])
    response = await contacts_app.patch(f"/v1/members/{member_id}/contact",
                                        json={"mobile": "07911 123456", "sms_consent": True},
                                        headers=rep)
    assert response.status_code == 200, response.text
    assert response.json()["mobile"] == "07••• ••• 456"
    assert response.json()["has_mobile"] and response.json()["sms_consent"]

    records = await published(contacts_app, kafka_bootstrap, topics)
    assert len(records) == 2
    for record in records:
        assert b"123456" not in record.value and b"7911" not in record.value
        assert record.key == str(member_id).encode()
    updated, consent = (decode(r.value) for r in records)
    assert updated.type == "contacts.contact-updated"
    assert updated.data["changed"] == ["mobile"]
    assert updated.data["contact"]["has_mobile"] is True
    assert consent.type == "contacts.consent-changed"
    assert consent.data["granted"] is True
    assert [updated.data["member_version"], consent.data["member_version"]] == [2, 3]
    assert updated.actor.startswith("rep:")

    # The same change again changes nothing and publishes nothing.
    again = await contacts_app.patch(f"/v1/members/{member_id}/contact",
                                     json={"mobile": "+44 7911 123456", "sms_consent": True},
                                     headers=rep)
    assert again.status_code == 200
    assert again.json()["version"] == 3
    assert len(await published(contacts_app, kafka_bootstrap, topics)) == 2


async def test_invalid_contact_values_are_refused_without_echoing_them(contacts_app, tokens):
    member_id = await seed_member(ctx_of(contacts_app))
    rep = tokens("rep", branches=["B1"])
    for body, field in (({"mobile": "12345"}, "mobile"),
                        ({"mobile": "020 7946 0018"}, "mobile"),  # a landline
                        ({"personal_email": "not-an-email@"}, "personal_email")):
        response = await contacts_app.patch(f"/v1/members/{member_id}/contact", json=body,
                                            headers=rep)
        assert response.status_code == 422, response.text
        assert field in response.text
        for value in body.values():
            assert value not in response.text
    unchanged = await contacts_app.get(f"/v1/members/{member_id}", headers=rep)
    assert unchanged.json()["version"] == 1


async def test_moving_a_member_publishes_member_moved(contacts_app, tokens, topics,
                                                      kafka_bootstrap):
    member_id = await seed_member(ctx_of(contacts_app), branch="B1", workplace="W1")
    organiser = tokens("organiser", groups=["G1"])
    response = await contacts_app.patch(f"/v1/members/{member_id}/placement",
                                        json={"branch_code": "B7", "workplace_code": "W9"},
                                        headers=organiser)
    assert response.status_code == 200, response.text
    assert response.json()["placement"]["branch_code"] == "B7"
    [record] = await published(contacts_app, kafka_bootstrap, topics)
    moved = decode(record.value)
    assert moved.type == "contacts.member-moved"
    assert moved.data["previous"]["branch_code"] == "B1"
    assert moved.data["placement"] == {"group_code": "G1", "branch_code": "B7",
                                       "workplace_code": "W9", "grade": "g5"}
    bad = await contacts_app.patch(f"/v1/members/{member_id}/placement",
                                   json={"branch_code": "bad code!"}, headers=organiser)
    assert bad.status_code == 422


async def test_members_are_moved_only_within_the_callers_own_branches_or_groups(
        contacts_app, tokens, topics, kafka_bootstrap):
    """A move takes the member's counts with them: a rep moving their branch's
    non-voters away would raise its turnout. Reps move within their branches, organisers
    within their groups; a refused move changes and publishes nothing."""
    member_id = await seed_member(ctx_of(contacts_app), group="G1", branch="B1")
    url = f"/v1/members/{member_id}/placement"
    rep = tokens("rep", branches=["B1", "B3"])
    organiser = tokens("organiser", groups=["G1"])
    for headers, move in ((rep, {"branch_code": "B2"}),
                          (rep, {"group_code": "G9", "branch_code": "B9"}),
                          (organiser, {"group_code": "G9", "branch_code": "B9"})):
        refused = await contacts_app.patch(url, json=move, headers=headers)
        assert refused.status_code == 403, (move, refused.text)
        assert "transfer" in refused.json()["detail"]
    assert (await contacts_app.get(f"/v1/members/{member_id}", headers=rep)
            ).json()["placement"]["branch_code"] == "B1"

    within = await contacts_app.patch(url, json={"branch_code": "B3"}, headers=rep)
    assert within.status_code == 200, within.text
    transfer = await contacts_app.patch(url, json={"branch_code": "B2"}, headers=organiser)
    assert transfer.status_code == 200 and transfer.json()["placement"]["branch_code"] == "B2"
    moves = [decode(r.value).data["placement"]["branch_code"]
             for r in await published(contacts_app, kafka_bootstrap, topics)]
    assert moves == ["B3", "B2"]  # and nothing for the refused ones
    national = tokens("national")
    across = await contacts_app.patch(url, json={"group_code": "G9", "branch_code": "B9"},
                                      headers=national)
    assert across.status_code == 200, across.text


async def test_do_not_contact_withdraws_consent(contacts_app, tokens, topics, kafka_bootstrap):
    member_id = await seed_member(ctx_of(contacts_app), sms_consent=True, email_consent=True)
    rep = tokens("rep", branches=["B1"])
    response = await contacts_app.post(f"/v1/members/{member_id}/conversations",
                                       json={"channel": "phone", "outcome": "do_not_contact",
                                             "note": "Asked us to call 07911 123123 never"},
                                       headers=rep)
    assert response.status_code == 201, response.text
    records = await published(contacts_app, kafka_bootstrap, topics)
    types = [decode(r.value).type for r in records]
    assert types == ["contacts.member-contacted", "contacts.consent-changed",
                     "contacts.consent-changed"]
    assert all(b"07911" not in r.value and b"never" not in r.value for r in records)
    member = (await contacts_app.get(f"/v1/members/{member_id}", headers=rep)).json()
    assert member["sms_consent"] is False and member["email_consent"] is False


async def test_search_by_name_and_membership_number(contacts_app, tokens):
    ctx = ctx_of(contacts_app)
    wanted = await seed_member(ctx, first="Priya", last="Patel", number="M100")
    await seed_member(ctx, first="Sam", last="Smith", number="M101")
    rep = tokens("rep", branches=["B1"])
    for q in ("patel", "Priya Patel", "M100"):
        found = (await contacts_app.get("/v1/members", params={"q": q}, headers=rep)).json()
        assert [m["member_id"] for m in found["items"]] == [str(wanted)], q


async def test_pages_follow_the_cursor(contacts_app, tokens):
    ctx = ctx_of(contacts_app)
    ids = {await seed_member(ctx) for _ in range(5)}
    rep = tokens("rep", branches=["B1"])
    seen, cursor = [], None
    while True:
        page = (await contacts_app.get("/v1/members", params={"limit": 2, **(
            {"cursor": cursor} if cursor else {})}, headers=rep)).json()
        seen += [uuid.UUID(m["member_id"]) for m in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert sorted(seen) == sorted(ids) and len(seen) == 5


async def test_the_request_correlation_id_travels_in_the_event(contacts_app, tokens, topics,
                                                               kafka_bootstrap):
    member_id = await seed_member(ctx_of(contacts_app))
    response = await contacts_app.patch(
        f"/v1/members/{member_id}/placement", json={"grade": "g7"},
        headers={**tokens("national"), "X-Correlation-ID": "corr-12345-abc"})
    assert response.status_code == 200
    assert response.headers["X-Correlation-ID"] == "corr-12345-abc"
    [record] = await published(contacts_app, kafka_bootstrap, topics)
    assert decode(record.value).correlation_id == "corr-12345-abc"
    assert dict(record.headers)["correlation-id"] == b"corr-12345-abc"
