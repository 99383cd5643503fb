"""Service to service: membership numbers to member ids, for scrutineer lists."""

from __future__ import annotations

import pytest
from pydantic import SecretStr
from turnout_contacts.main import create_contacts_app

from services.contacts.tests.seed import seed_member
from tests.support.identity import idp_token
from tests.support.services import running
from turnout_kit.auth import ServiceToken
from turnout_kit.settings import ServiceSettings

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


async def test_with_an_identity_provider_services_still_ask_with_their_own_tokens(
        contacts_settings, jwks_url, rsa_key, tokens):
    """In production people's tokens come from the identity provider (TURNOUT_JWKS_URL);
    ballots asking contacts for member ids signs with the service secret."""
    secret = "a-service-secret-shared-by-the-four-services"
    settings = contacts_settings.model_copy(
        update={"jwks_url": jwks_url, "service_secret": SecretStr(secret)})
    app = create_contacts_app(settings)
    async with running(app, "http://contacts") as contacts:
        member = await seed_member(app.state.ctx, number="M3001")
        ballots = ServiceToken(ServiceSettings(jwks_url=jwks_url, service_secret=secret),
                               "ballots")
        body = {"membership_numbers": ["M3001"]}

        answered = await contacts.post(PATH, json=body, headers=ballots.headers())
        assert answered.status_code == 200, answered.text
        assert answered.json()["items"] == [{"membership_number": "M3001",
                                             "member_id": str(member)}]
        # A person from the provider is who they are, and not a service.
        person = {"Authorization": f"Bearer {idp_token(rsa_key, role='national')}"}
        assert (await contacts.post(PATH, json=body, headers=person)).status_code == 403
        # The shared development secret signs nothing here any more.
        refused = await contacts.post(PATH, json=body,
                                      headers=tokens("service", subject="ballots"))
        assert refused.status_code == 401
