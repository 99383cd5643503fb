"""A ballot from creation to close over HTTP, and the events it publishes."""

from __future__ import annotations

import uuid

import pytest

from services.ballots.tests.seed import ballot_body, create_ballot, ctx_of, seed_member
from tests.support.kafka import read_to_end
from tests.support.outbox import outbox_drained
from turnout_events.registry import parse_payload
from turnout_events.serde import decode, encode

pytestmark = pytest.mark.integration


async def published(client, kafka_bootstrap, topics):
    """Every event the service has published so far (its outbox drained first), decoded."""
    await outbox_drained(ctx_of(client).engine)
    records = await read_to_end(kafka_bootstrap, [topics.events("ballots")])
    return [(r, decode(r.value)) for r in records]


async def test_the_full_life_of_a_ballot(ballots_app, tokens, topics, kafka_bootstrap):
    ctx = ctx_of(ballots_app)
    b1 = [await seed_member(ctx, group="G1", branch="B1", workplace=f"W{i}") for i in range(3)]
    b2 = await seed_member(ctx, group="G1", branch="B2", workplace=None, grade=None)
    outsider = await seed_member(ctx, group="G9", branch="B9")
    national, rep = tokens("national"), tokens("rep", branches=["B1"], subject="rep-7")

    created = await ballots_app.post("/v1/ballots", json=ballot_body(branches=["B1", "B2"]),
                                     headers=national)
    assert created.status_code == 201, created.text
    ballot = created.json()
    ballot_id = ballot["ballot_id"]
    assert created.headers["location"] == f"/v1/ballots/{ballot_id}"
    assert ballot["status"] == "draft" and ballot["counts"] is None
    assert ballot["turnout_threshold"] == 0.5

    opened = await ballots_app.post(f"/v1/ballots/{ballot_id}/open", headers=national)
    assert opened.status_code == 200, opened.text
    assert opened.json()["status"] == "open"
    assert opened.json()["enrolment"] == {"total": 4, "published": 4, "complete": True}
    assert opened.json()["counts"]["eligible"] == 4
    assert opened.json()["counts"]["votes_needed"] == 2

    for member_id, source in ((b1[0], "rep"), (b1[1], "member_self_report")):
        marked = await ballots_app.put(f"/v1/ballots/{ballot_id}/votes/{member_id}",
                                       json={"source": source}, headers=rep)
        assert marked.status_code == 201, marked.text
        assert marked.json()["source"] == source
        assert marked.json()["actor"] == "rep:rep-7"
    replacement = await ballots_app.post(f"/v1/ballots/{ballot_id}/replacement-requests",
                                         json={"member_id": str(b1[2]), "reason": "lost"},
                                         headers=rep)
    assert replacement.status_code == 201, replacement.text

    counts = (await ballots_app.get(f"/v1/ballots/{ballot_id}", headers=national)).json()
    assert counts["counts"] == {"within": "all", "eligible": 4, "voted": 2, "turnout": 0.5,
                                "votes_needed": 0, "replacement_requests": 1}
    mine = (await ballots_app.get(f"/v1/ballots/{ballot_id}", headers=rep)).json()
    assert mine["counts"] == {"within": "your scope", "eligible": 3, "voted": 2,
                              "turnout": 0.6667, "votes_needed": 0,
                              "replacement_requests": 1}

    closed = await ballots_app.post(f"/v1/ballots/{ballot_id}/close", headers=national)
    assert closed.status_code == 200, closed.text
    assert closed.json()["status"] == "closed" and closed.json()["closed_at"]

    events = await published(ballots_app, kafka_bootstrap, topics)
    types = [e.type for _, e in events]
    assert sorted(types) == sorted(["ballots.ballot-opened"] + ["ballots.member-enrolled"] * 4
                                   + ["ballots.voted"] * 2
                                   + ["ballots.replacement-requested", "ballots.ballot-closed"])
    by_type: dict[str, list] = {}
    for record, envelope in events:
        # Every event is exactly what the contract's encoder makes of it, keyed as it says.
        assert encode(envelope) == record.value
        payload = parse_payload(envelope)
        assert record.key == envelope.key.encode() == payload.partition_key().encode()
        by_type.setdefault(envelope.type, []).append(envelope)
    [opened_event] = by_type["ballots.ballot-opened"]
    assert opened_event.data["eligible_count"] == 4
    assert opened_event.data["scope"] == {"group_codes": [], "branch_codes": ["B1", "B2"]}
    enrolled = {uuid.UUID(e.data["member_id"]): e.data["placement"]
                for e in by_type["ballots.member-enrolled"]}
    assert set(enrolled) == {*b1, b2} and outsider not in enrolled
    assert enrolled[b2] == {"group_code": "G1", "branch_code": "B2", "workplace_code": None,
                            "grade": None}
    assert enrolled[b1[1]]["workplace_code"] == "W1"
    assert len({e.id for e in by_type["ballots.member-enrolled"]}) == 4
    assert {e.actor for e in by_type["ballots.member-enrolled"]} == {opened_event.actor}
    assert sorted(e.data["vote_source"] for e in by_type["ballots.voted"]) == [
        "member_self_report", "rep"]
    assert {e.actor for e in by_type["ballots.voted"]} == {"rep:rep-7"}
    [closed_event] = by_type["ballots.ballot-closed"]
    assert (closed_event.data["eligible_count"], closed_event.data["voted_count"]) == (4, 2)
    [requested] = by_type["ballots.replacement-requested"]
    assert requested.data["reason"] == "lost"
    assert requested.data["request_id"] == replacement.json()["request_id"]


async def test_a_ballot_is_validated_before_anything_is_stored(ballots_app, tokens):
    national = tokens("national")
    cases = [
        ({"closes_at": "2026-01-01T00:00:00Z", "opens_at": "2026-02-01T00:00:00Z"}, "closes_at"),
        ({"turnout_threshold": 1.5}, "turnout_threshold"),
        ({"kind": "referendum"}, "kind"),
        ({"opens_at": "2026-02-01T00:00:00"}, "opens_at"),  # no time zone
        ({"scope": {"group_codes": [], "branch_codes": []}}, "scope"),
        ({"scope": {"branch_codes": ["not a code!"]}}, "branch_codes"),
        ({"name": "Call 07911 123456 to vote"}, "name"),
        ({"opens_at": "0001-01-01T00:30:00+01:00"}, "opens_at"),  # year 0 in UTC
    ]
    for change, field in cases:
        body = {**ballot_body(), **change}
        response = await ballots_app.post("/v1/ballots", json=body, headers=national)
        assert response.status_code == 422, (change, response.text)
        assert response.headers["content-type"].startswith("application/problem+json")
        fields = [e["field"] for e in response.json()["errors"]]
        assert any(field in f for f in fields), (field, response.text)
        assert "07911" not in response.text
    no_threshold = await create_ballot(ballots_app, tokens, threshold=None, kind="survey")
    got = await ballots_app.get(f"/v1/ballots/{no_threshold}", headers=national)
    assert got.json()["turnout_threshold"] is None and got.json()["kind"] == "survey"
