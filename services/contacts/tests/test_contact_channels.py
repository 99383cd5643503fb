"""Service to service: the numbers the notification service may text, and nobody else's."""

from __future__ import annotations

import uuid

import pytest

from services.contacts.tests.seed import seed_member

pytestmark = pytest.mark.integration

PATH = "/internal/v1/contact-channels"


def ctx_of(client):
    return client.app.state.ctx


async def test_only_textable_members_are_returned(contacts_app, tokens):
    ctx = ctx_of(contacts_app)
    textable = await seed_member(ctx, first="Priya", mobile="+447911123001", sms_consent=True)
    no_consent = await seed_member(ctx, mobile="+447911123002", sms_consent=False)
    no_mobile = await seed_member(ctx, mobile=None, sms_consent=True)
    erased = await seed_member(ctx, mobile="+447911123004", sms_consent=True)
    other_branch = await seed_member(ctx, branch="B9", first="Sam", mobile="+447911123005")
    assert (await contacts_app.delete(f"/v1/members/{erased}/personal-data",
                                      headers=tokens("admin"))).status_code == 204
    unknown = uuid.uuid4()
    asked = [other_branch, no_consent, textable, no_mobile, erased, unknown, textable]

    response = await contacts_app.post(PATH, json={"member_ids": [str(m) for m in asked]},
                                       headers=tokens("service", subject="notifications"))

    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    assert response.json()["items"] == [
        {"member_id": str(other_branch), "mobile": "+447911123005", "first_name": "Sam"},
        {"member_id": str(textable), "mobile": "+447911123001", "first_name": "Priya"},
    ]
    for absent in ("+447911123002", "+447911123004", str(no_consent), str(no_mobile),
                   str(erased), str(unknown)):
        assert absent not in response.text


async def test_withdrawn_consent_takes_effect_at_once(contacts_app, tokens):
    member_id = await seed_member(ctx_of(contacts_app), sms_consent=True)
    service = tokens("service")
    body = {"member_ids": [str(member_id)]}
    assert len((await contacts_app.post(PATH, json=body, headers=service)).json()["items"]) == 1
    withdrawn = await contacts_app.patch(f"/v1/members/{member_id}/contact",
                                         json={"sms_consent": False},
                                         headers=tokens("rep", branches=["B1"]))
    assert withdrawn.status_code == 200
    assert (await contacts_app.post(PATH, json=body, headers=service)).json()["items"] == []


async def test_every_role_but_service_is_refused(contacts_app, tokens):
    member_id = await seed_member(ctx_of(contacts_app), branch="B1", group="G1")
    body = {"member_ids": [str(member_id)]}
    for headers in (tokens("rep", branches=["B1"]), tokens("organiser", groups=["G1"]),
                    tokens("national"), tokens("admin")):
        response = await contacts_app.post(PATH, json=body, headers=headers)
        assert response.status_code == 403, response.text
        assert "+44" not in response.text
    assert (await contacts_app.post(PATH, json=body)).status_code == 401


async def test_batches_are_bounded_and_validated(contacts_app, tokens):
    service = tokens("service")
    empty = await contacts_app.post(PATH, json={"member_ids": []}, headers=service)
    assert empty.status_code == 200 and empty.json()["items"] == []
    many = [str(uuid.uuid4()) for _ in range(1000)]
    assert (await contacts_app.post(PATH, json={"member_ids": many},
                                    headers=service)).status_code == 200
    for body in ({"member_ids": many + [str(uuid.uuid4())]}, {"member_ids": ["not-an-id"]},
                 {}, {"member_ids": [], "mobile": "+447911123123"}):
        response = await contacts_app.post(PATH, json=body, headers=service)
        assert response.status_code == 422, response.text
        assert "+447911123123" not in response.text
