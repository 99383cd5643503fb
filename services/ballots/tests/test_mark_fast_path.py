"""The fast path of `PUT .../votes/{member_id}` (api/votes.py, MarkVoteRoute): a request
in the plain form is served by it, any other by FastAPI, and either way the answer is the
same. `application/json; charset=utf-8` is a content type only FastAPI's handler takes,
so sending a request with it and with plain `application/json` compares the two."""

from __future__ import annotations

import uuid

import pytest
from fastapi import APIRouter
from turnout_ballots.api import votes
from turnout_ballots.api.votes import MarkOut, MarkVoteRoute

from services.ballots.tests.seed import ctx_of, open_ballot, seed_member, seed_members

pytestmark = pytest.mark.integration

PLAIN = "application/json"
OTHER = "application/json; charset=utf-8"  # same body, FastAPI's handler


@pytest.fixture
def fast_marks(monkeypatch) -> list[bool]:
    """Whether each request was taken by the fast path (True) or left to FastAPI."""
    taken: list[bool] = []
    plain_mark = votes._plain_mark

    async def counting(request):
        found = await plain_mark(request)
        taken.append(found is not None)
        return found

    monkeypatch.setattr(votes, "_plain_mark", counting)
    return taken


def comparable(response) -> tuple[int, str, object]:
    body = response.json()
    if isinstance(body, dict):
        body.pop("correlation_id", None)  # every request has its own
    return response.status_code, response.headers["content-type"], body


async def test_both_ways_give_the_same_marks(ballots_app, tokens, fast_marks):
    first, second = await seed_members(ctx_of(ballots_app), 2, branch="B1")
    ballot_id = await open_ballot(ballots_app, tokens)
    rep = tokens("rep", branches=["B1"], subject="rep-7")

    async def mark(member_id, content_type):
        return await ballots_app.put(f"/v1/ballots/{ballot_id}/votes/{member_id}",
                                     content=b'{"source": "rep"}',
                                     headers={**rep, "content-type": content_type})

    fast = await mark(first, PLAIN)
    slow = await mark(second, OTHER)
    assert fast_marks == [True, False]
    assert fast.status_code == slow.status_code == 201, (fast.text, slow.text)
    assert fast.headers["content-type"] == slow.headers["content-type"] == PLAIN
    assert fast.json()["member_id"] == str(first) and slow.json()["member_id"] == str(second)
    assert list(fast.json()) == list(slow.json())  # the same fields, in the same order
    for name in ("ballot_id", "source", "actor", "conversation_id"):
        assert fast.json()[name] == slow.json()[name]
    assert fast.json()["actor"] == "rep:rep-7"

    # Marked again, each the other way: 200 and the mark in force, byte for byte.
    again_slow = await mark(first, OTHER)
    again_fast = await mark(second, PLAIN)
    assert (again_slow.status_code, again_slow.content) == (200, fast.content)
    assert (again_fast.status_code, again_fast.content) == (200, slow.content)


async def test_refusals_are_the_same_either_way(ballots_app, tokens, fast_marks):
    ctx = ctx_of(ballots_app)
    member_id = await seed_member(ctx, branch="B1")
    elsewhere = await seed_member(ctx, branch="B2")
    ballot_id = await open_ballot(ballots_app, tokens, branches=["B1", "B2"])
    rep = tokens("rep", branches=["B1"])
    good = b'{"source": "rep"}'
    path = f"/v1/ballots/{ballot_id}/votes/"
    cases = {
        "out of scope": (path + str(elsewhere), good, rep),
        "not on the roll": (path + str(uuid.uuid4()), good, rep),
        "unknown ballot": (f"/v1/ballots/{uuid.uuid4()}/votes/{member_id}", good, rep),
        "not a uuid": (path + "not-a-uuid", good, rep),
        "bad source": (path + str(member_id), b'{"source": "scrutineer"}', rep),
        "extra field": (path + str(member_id), b'{"source": "rep", "x": 1}', rep),
        "not json": (path + str(member_id), b'{"source": ', rep),
        "no body": (path + str(member_id), b"", rep),
        "no token": (path + str(member_id), good, {}),
        "bad token": (path + str(member_id), good, {"Authorization": "Bearer nonsense"}),
        "not bearer": (path + str(member_id), good, {"Authorization": "Basic dTpw"}),
    }
    for case, (url, body, headers) in cases.items():
        answers = [comparable(await ballots_app.put(
            url, content=body, headers={**headers, "content-type": content_type}))
            for content_type in (PLAIN, OTHER)]
        assert answers[0] == answers[1], case
        assert answers[0][0] in (401, 404, 422), (case, answers[0])
    # Only the three well-formed requests got past the fast path's checks (and were
    # refused by the service, as they are from FastAPI's handler).
    assert fast_marks.count(True) == 3
    # Nothing was marked by any of them.
    entry = await ballots_app.get(f"/v1/ballots/{ballot_id}/roll/{member_id}", headers=rep)
    assert entry.json()["voted"] is False


async def test_a_mark_with_an_idempotency_key_is_replayed(ballots_app, tokens, fast_marks):
    member_id = await seed_member(ctx_of(ballots_app), branch="B1")
    ballot_id = await open_ballot(ballots_app, tokens)
    headers = {**tokens("rep", branches=["B1"], subject="rep-3"), "Idempotency-Key": "k-1"}
    url = f"/v1/ballots/{ballot_id}/votes/{member_id}"
    first = await ballots_app.put(url, json={"source": "rep"}, headers=headers)
    retry = await ballots_app.put(url, json={"source": "rep"}, headers=headers)
    assert first.status_code == retry.status_code == 201  # the first answer, replayed
    assert retry.content == first.content and retry.headers["idempotent-replayed"] == "true"
    assert fast_marks == [True]  # the retry never reached the endpoint


def test_the_route_refuses_an_endpoint_it_does_not_know():
    async def other(ballot_id: uuid.UUID, member_id: uuid.UUID, note: str) -> dict:
        return {}

    with pytest.raises(TypeError, match="fast path does not match"):
        APIRouter().add_api_route("/b/{ballot_id}/votes/{member_id}", other,
                                  methods=["PUT"], route_class_override=MarkVoteRoute,
                                  response_model=MarkOut)
