"""Scope: reps see their branches, organisers their groups, national and admin all; out
of scope is 404, exactly like unknown, on every endpoint; managing ballots is for
national, admin, and organisers within their own groups."""

from __future__ import annotations

import uuid

import pytest

from services.ballots.tests.seed import (
    ballot_body,
    create_ballot,
    ctx_of,
    open_ballot,
    published,
    seed_member,
)

pytestmark = pytest.mark.integration


def member_endpoints(ballot_id, member_id):
    return [
        ("GET", f"/v1/ballots/{ballot_id}/roll/{member_id}", None),
        ("PUT", f"/v1/ballots/{ballot_id}/votes/{member_id}", {"source": "rep"}),
        ("DELETE", f"/v1/ballots/{ballot_id}/votes/{member_id}",
         {"reason_code": "marked_in_error"}),
        ("POST", f"/v1/ballots/{ballot_id}/replacement-requests",
         {"member_id": str(member_id), "reason": "lost"}),
    ]


async def test_out_of_scope_is_not_found_on_every_endpoint(ballots_app, tokens, topics,
                                                            kafka_bootstrap):
    ctx = ctx_of(ballots_app)
    b1 = await seed_member(ctx, group="G1", branch="B1")
    b2 = await seed_member(ctx, group="G2", branch="B2")
    ballot_id = await open_ballot(ballots_app, tokens, branches=["B1", "B2"])
    # Reps do not import scrutineer lists at all (403); an organiser of other groups
    # does not see the ballot (404).
    outsiders = [(tokens("rep", branches=["B9"]), 403),
                 (tokens("organiser", groups=["G9"]), 404)]
    neighbours = [tokens("rep", branches=["B2"]), tokens("organiser", groups=["G2"])]

    for headers, listing_status in outsiders:  # nothing of this ballot is theirs
        for method, path, body in [("GET", f"/v1/ballots/{ballot_id}", None),
                                   *member_endpoints(ballot_id, b1)]:
            response = await ballots_app.request(method, path, json=body, headers=headers)
            assert response.status_code == 404, (method, path, response.text)
            assert response.headers["content-type"].startswith("application/problem+json")
        listing = await ballots_app.post(f"/v1/ballots/{ballot_id}/votes:import",
                                         content=f"member_id\n{b1}\n".encode(),
                                         headers=headers)
        assert listing.status_code == listing_status, listing.text
    for headers in neighbours:  # they see the ballot, and B2's member, but not B1's
        assert (await ballots_app.get(f"/v1/ballots/{ballot_id}",
                                      headers=headers)).status_code == 200
        for method, path, body in member_endpoints(ballot_id, b1):
            response = await ballots_app.request(method, path, json=body, headers=headers)
            assert response.status_code == 404, (method, path, response.text)
            assert "is not on the roll" in response.json()["detail"]
        mine = await ballots_app.get(f"/v1/ballots/{ballot_id}/roll/{b2}", headers=headers)
        assert mine.status_code == 200
    # An organiser's scrutineer list naming a member outside their groups: refused whole.
    refused = await ballots_app.post(f"/v1/ballots/{ballot_id}/votes:import",
                                     content=f"member_id\n{b2}\n{b1}\n".encode(),
                                     headers=tokens("organiser", groups=["G2"]))
    assert refused.status_code == 422 and [e["row"] for e in refused.json()["errors"]] == [3]
    # Unknown ids answer the same as out of scope.
    national = tokens("national")
    for method, path, body in member_endpoints(uuid.uuid4(), b1):
        response = await ballots_app.request(method, path, json=body, headers=national)
        assert response.status_code == 404, (method, path, response.text)
    for path in (f"/v1/ballots/{uuid.uuid4()}", f"/v1/ballots/{uuid.uuid4()}/open",
                 f"/v1/ballots/{uuid.uuid4()}/close"):
        method = "GET" if path.count("/") == 3 else "POST"
        assert (await ballots_app.request(method, path, headers=national)).status_code == 404
    assert await published(ballots_app, kafka_bootstrap, topics,
                           of_type="ballots.voted") == []


async def test_counts_are_those_of_the_callers_scope(ballots_app, tokens):
    ctx = ctx_of(ballots_app)
    for branch, group in (("B1", "G1"), ("B1", "G1"), ("B2", "G1"), ("B3", "G3")):
        await seed_member(ctx, group=group, branch=branch)
    ballot_id = await open_ballot(ballots_app, tokens, groups=["G1", "G3"], branches=[])
    path = f"/v1/ballots/{ballot_id}"
    expected = {("rep", "B1"): 2, ("rep", "B3"): 1, ("organiser", "G1"): 3,
                ("national", None): 4, ("admin", None): 4}
    for (role, code), eligible in expected.items():
        headers = (tokens(role, branches=[code]) if role == "rep"
                   else tokens(role, groups=[code]) if role == "organiser" else tokens(role))
        counts = (await ballots_app.get(path, headers=headers)).json()["counts"]
        assert counts["eligible"] == eligible, (role, code)
        assert counts["within"] == ("all" if code is None else "your scope")


async def test_who_may_create_open_and_close_ballots(ballots_app, tokens):
    ctx = ctx_of(ballots_app)
    await seed_member(ctx, group="G1", branch="B1")
    await seed_member(ctx, group="G2", branch="B2")
    organiser = tokens("organiser", groups=["G1"])

    for headers, body in ((tokens("rep", branches=["B1"]), ballot_body(branches=["B1"])),
                          (tokens("service"), ballot_body(branches=["B1"])),
                          (organiser, ballot_body(groups=["G2"], branches=[])),
                          (organiser, ballot_body(groups=["G1"], branches=["B1"]))):
        refused = await ballots_app.post("/v1/ballots", json=body, headers=headers)
        assert refused.status_code == 403, refused.text

    own = await ballots_app.post("/v1/ballots", json=ballot_body(groups=["G1"], branches=[]),
                                 headers=organiser)
    assert own.status_code == 201, own.text
    own_id = own.json()["ballot_id"]
    assert (await ballots_app.post(f"/v1/ballots/{own_id}/open",
                                   headers=organiser)).status_code == 200
    assert (await ballots_app.post(f"/v1/ballots/{own_id}/close",
                                   headers=organiser)).status_code == 200

    # A national ballot covering G1 by branch: the organiser sees it but may not run it;
    # a G1 rep sees it and may not run it either.
    national_id = await create_ballot(ballots_app, tokens, branches=["B1"])
    for headers in (organiser, tokens("rep", branches=["B1"])):
        assert (await ballots_app.get(f"/v1/ballots/{national_id}",
                                      headers=headers)).status_code == 200
        for action in ("open", "close"):
            response = await ballots_app.post(f"/v1/ballots/{national_id}/{action}",
                                              headers=headers)
            assert response.status_code == 403, (action, response.text)
    # An organiser of other groups does not even see it.
    other = tokens("organiser", groups=["G2"])
    assert (await ballots_app.post(f"/v1/ballots/{national_id}/open",
                                   headers=other)).status_code == 404

    admin = tokens("admin")
    assert (await ballots_app.post(f"/v1/ballots/{national_id}/open",
                                   headers=admin)).status_code == 200
    again = await ballots_app.post(f"/v1/ballots/{national_id}/open", headers=admin)
    assert again.status_code == 409 and "already open" in again.json()["detail"]
    assert (await ballots_app.post(f"/v1/ballots/{national_id}/close",
                                   headers=admin)).status_code == 200
    closed_again = await ballots_app.post(f"/v1/ballots/{national_id}/close", headers=admin)
    assert closed_again.status_code == 409 and "already closed" in closed_again.text
    reopened = await ballots_app.post(f"/v1/ballots/{national_id}/open", headers=admin)
    assert reopened.status_code == 409 and "cannot be opened again" in reopened.text


async def test_a_draft_ballot_of_other_branches_is_not_revealed(ballots_app, tokens):
    member_id = await seed_member(ctx_of(ballots_app), group="G1", branch="B1")
    ballot_id = await create_ballot(ballots_app, tokens, branches=["B1"])
    outsider = tokens("rep", branches=["B9"])
    for method, path, body in member_endpoints(ballot_id, member_id):
        response = await ballots_app.request(method, path, json=body, headers=outsider)
        assert response.status_code == 404, (method, path, response.text)
    insider = await ballots_app.put(f"/v1/ballots/{ballot_id}/votes/{member_id}",
                                    json={"source": "rep"},
                                    headers=tokens("rep", branches=["B1"]))
    assert insider.status_code == 409


async def test_a_ballot_nobody_is_eligible_for_does_not_open(ballots_app, tokens):
    await seed_member(ctx_of(ballots_app), group="G1", branch="B1")
    ballot_id = await create_ballot(ballots_app, tokens, branches=["B404"])
    response = await ballots_app.post(f"/v1/ballots/{ballot_id}/open",
                                      headers=tokens("national"))
    assert response.status_code == 409 and "roll would be empty" in response.text
    still = await ballots_app.get(f"/v1/ballots/{ballot_id}", headers=tokens("national"))
    assert still.json()["status"] == "draft"
