"""Service to service: membership numbers to member ids, for scrutineer lists."""

from __future__ import annotations

import pytest

from services.contacts.tests.seed import seed_member

pytestmark = pytest.mark.integration

PATH = "/internal/v1/member-ids"


async def test_numbers_that_name_members_are_answered_with_their_ids(contacts_app, tokens):
    ctx = contacts_app.app.state.ctx
    first = await seed_member(ctx, number="M1001")
    other_branch = await seed_member(ctx, number="M1002", branch="B9", group="G9")
    erased = await seed_member(ctx, number="M1003")
    assert (await contacts_app.delete(f"/v1/members/{erased}/personal-data",
                                      headers=tokens("admin"))).status_code == 204

    response = await contacts_app.post(
        PATH, json={"membership_numbers": ["M1002", "M9999", "M1001", "M1003", "M1001"]},
        headers=tokens("service", subject="ballots"))

    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    assert sorted((i["membership_number"], i["member_id"])
                  for i in response.json()["items"]) == [
        ("M1001", str(first)), ("M1002", str(other_branch)), ("M1003", str(erased))]


async def test_only_services_may_ask_and_only_so_much_at_once(contacts_app, tokens):
    await seed_member(contacts_app.app.state.ctx, number="M2001")
    for role in ("rep", "organiser", "national", "admin"):
        headers = (tokens(role, branches=["B1"]) if role == "rep"
                   else tokens(role, groups=["G1"]) if role == "organiser" else tokens(role))
        refused = await contacts_app.post(PATH, json={"membership_numbers": ["M2001"]},
                                          headers=headers)
        assert refused.status_code == 403, (role, refused.text)
    too_many = await contacts_app.post(
        PATH, json={"membership_numbers": [f"M{i}" for i in range(10_001)]},
        headers=tokens("service", subject="ballots"))
    assert too_many.status_code == 422
