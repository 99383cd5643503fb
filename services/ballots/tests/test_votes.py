"""Voted marks from every source, retractions, replacement requests, and when they are
refused: over HTTP and from consumed events, checked on the ballots topic."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime

import pytest

from services.ballots.tests.seed import (
    consumed,
    create_ballot,
    ctx_of,
    open_ballot,
    produce,
    published,
    seed_member,
    seed_members,
)
from turnout_events.common import MessageChannel
from turnout_events.contacts import ConversationChannel, ConversationOutcome, MemberContacted
from turnout_events.notifications import ReplyIntent, ReplyReceived

pytestmark = pytest.mark.integration


def vote_path(ballot_id, member_id) -> str:
    return f"/v1/ballots/{ballot_id}/votes/{member_id}"


def contacted(ballot_id, member_id, outcome=ConversationOutcome.VOTED) -> MemberContacted:
    return MemberContacted(member_id=member_id, member_version=2,
                           conversation_id=uuid.uuid4(), ballot_id=ballot_id,
                           channel=ConversationChannel.PHONE, outcome=outcome,
                           contacted_at=datetime(2026, 3, 3, 18, 30, tzinfo=UTC))


def replied(ballot_id, member_id, intent=ReplyIntent.VOTED) -> ReplyReceived:
    return ReplyReceived(member_id=member_id, message_id=uuid.uuid4(), ballot_id=ballot_id,
                         channel=MessageChannel.SMS, intent=intent,
                         received_at=datetime(2026, 3, 4, 9, 15, tzinfo=UTC))


def scrutineer_csv(*member_ids) -> bytes:
    return ("member_id\n" + "".join(f"{m}\n" for m in member_ids)).encode()


async def test_marks_from_every_source_give_one_vote_and_one_event(
        ballots_app, tokens, topics, kafka_bootstrap):
    ctx = ctx_of(ballots_app)
    member_id = await seed_member(ctx, branch="B1")
    ballot_id = await open_ballot(ballots_app, tokens)
    rep = tokens("rep", branches=["B1"], subject="rep-1")

    first = await ballots_app.put(vote_path(ballot_id, member_id), json={"source": "rep"},
                                  headers=rep)
    assert first.status_code == 201, first.text
    own_report = await ballots_app.put(vote_path(ballot_id, member_id),
                                       json={"source": "member_self_report"},
                                       headers=tokens("rep", branches=["B1"]))
    assert own_report.status_code == 200, own_report.text
    assert own_report.json() == first.json()  # the mark in force: the rep's, unchanged
    imported = await ballots_app.post(f"/v1/ballots/{ballot_id}/votes:import",
                                      content=scrutineer_csv(member_id),
                                      headers={**tokens("national"),
                                               "content-type": "text/csv"})
    assert imported.status_code == 200, imported.text
    assert imported.json()["marked"] == 0 and imported.json()["already_voted"] == 1
    reports = await produce(kafka_bootstrap, topics.events("contacts"),
                            [contacted(ballot_id, member_id)], actor="rep:rep-2")
    reports += await produce(kafka_bootstrap, topics.events("notifications"),
                             [replied(ballot_id, member_id)], actor=f"member:{member_id}")
    await consumed(ballots_app, reports)

    voted = await published(ballots_app, kafka_bootstrap, topics, of_type="ballots.voted")
    assert len(voted) == 1
    assert voted[0].data["vote_source"] == "rep" and voted[0].actor == "rep:rep-1"
    entry = (await ballots_app.get(f"/v1/ballots/{ballot_id}/roll/{member_id}",
                                   headers=rep)).json()
    assert entry["voted"] is True and entry["mark"]["source"] == "rep"
    ballot = (await ballots_app.get(f"/v1/ballots/{ballot_id}", headers=rep)).json()
    assert ballot["counts"]["voted"] == 1


async def test_each_source_marks_on_its_own(ballots_app, tokens, topics, kafka_bootstrap):
    ctx = ctx_of(ballots_app)
    by_talk, by_sms, by_list, not_voted = await seed_members(ctx, 4, branch="B1")
    ballot_id = await open_ballot(ballots_app, tokens)

    talk = contacted(ballot_id, by_talk)
    reports = await produce(kafka_bootstrap, topics.events("contacts"), [
        talk,
        contacted(ballot_id, not_voted, ConversationOutcome.WILL_VOTE),  # not a vote
        contacted(None, not_voted),  # a vote, but for no ballot in particular
    ], actor="rep:rep-9")
    reports += await produce(kafka_bootstrap, topics.events("notifications"), [
        replied(ballot_id, by_sms),
        replied(ballot_id, not_voted, ReplyIntent.NOT_YET),
    ], actor=f"member:{by_sms}")
    imported = await ballots_app.post(f"/v1/ballots/{ballot_id}/votes:import",
                                      files={"file": ("list.csv", scrutineer_csv(by_list))},
                                      headers=tokens("organiser", groups=["G1"],
                                                     subject="org-1"))
    assert imported.status_code == 200, imported.text
    assert imported.json() == {"lines": 1, "members": 1, "marked": 1, "already_voted": 0,
                               "duplicate_lines": 0}
    await consumed(ballots_app, [reports[0], reports[3]])

    voted = {uuid.UUID(e.data["member_id"]): e
             for e in await published(ballots_app, kafka_bootstrap, topics,
                                      of_type="ballots.voted")}
    assert set(voted) == {by_talk, by_sms, by_list}
    assert voted[by_talk].data["vote_source"] == "conversation"
    assert voted[by_talk].data["conversation_id"] == str(talk.conversation_id)
    assert voted[by_talk].data["voted_at"] == "2026-03-03T18:30:00Z"
    assert voted[by_talk].actor == "rep:rep-9"
    assert voted[by_talk].causation_id == reports[0].id
    assert voted[by_sms].data["vote_source"] == "sms_reply"
    assert voted[by_sms].actor == f"member:{by_sms}"
    assert voted[by_list].data["vote_source"] == "scrutineer"
    assert voted[by_list].actor == "organiser:org-1"


async def test_a_retracted_mark_can_be_marked_again(ballots_app, tokens, topics,
                                                     kafka_bootstrap):
    member_id = await seed_member(ctx_of(ballots_app), branch="B1")
    ballot_id = await open_ballot(ballots_app, tokens)
    rep = tokens("rep", branches=["B1"], subject="rep-3")
    assert (await ballots_app.put(vote_path(ballot_id, member_id), json={"source": "rep"},
                                  headers=rep)).status_code == 201

    # `reason`, as DESIGN.md names it (`reason_code`, as the answer names it, below).
    retracted = await ballots_app.request("DELETE", vote_path(ballot_id, member_id),
                                          json={"reason": "wrong_member"}, headers=rep)
    assert retracted.status_code == 200, retracted.text
    assert retracted.json()["retracted"]["source"] == "rep"
    assert retracted.json()["reason_code"] == "wrong_member"
    again = await ballots_app.request("DELETE", vote_path(ballot_id, member_id),
                                      json={"reason_code": "wrong_member"}, headers=rep)
    assert again.status_code == 409 and "nothing to retract" in again.json()["detail"]
    bad_reason = await ballots_app.request("DELETE", vote_path(ballot_id, member_id),
                                           json={"reason_code": "he said so"}, headers=rep)
    assert bad_reason.status_code == 422
    entry = (await ballots_app.get(f"/v1/ballots/{ballot_id}/roll/{member_id}",
                                   headers=rep)).json()
    assert entry["voted"] is False and entry["mark"] is None
    assert [r["reason_code"] for r in entry["retractions"]] == ["wrong_member"]

    remarked = await ballots_app.put(vote_path(ballot_id, member_id),
                                     json={"source": "member_self_report"}, headers=rep)
    assert remarked.status_code == 201, remarked.text
    events = [e for e in await published(ballots_app, kafka_bootstrap, topics)
              if e.data.get("member_id") == str(member_id) and e.type != "ballots.member-enrolled"]
    assert [e.type for e in events] == ["ballots.voted", "ballots.vote-retracted",
                                        "ballots.voted"]
    assert events[1].data["reason_code"] == "wrong_member"
    assert events[2].data["vote_source"] == "member_self_report"


async def test_concurrent_marks_of_one_member_publish_one_event(
        ballots_app, tokens, topics, kafka_bootstrap):
    member_id = await seed_member(ctx_of(ballots_app), branch="B1")
    ballot_id = await open_ballot(ballots_app, tokens)
    reps = [tokens("rep", branches=["B1"], subject=f"rep-{i}") for i in range(20)]

    responses = await asyncio.gather(*(
        ballots_app.put(vote_path(ballot_id, member_id),
                        json={"source": "rep" if i % 2 else "member_self_report"},
                        headers=headers)
        for i, headers in enumerate(reps)))
    assert sorted(r.status_code for r in responses) == [200] * 19 + [201]
    assert len({r.text for r in responses}) == 1  # every answer shows the same mark
    voted = await published(ballots_app, kafka_bootstrap, topics, of_type="ballots.voted")
    assert len(voted) == 1
    [winner] = [r for r in responses if r.status_code == 201]
    assert voted[0].actor == winner.json()["actor"]


async def test_marks_racing_a_close_are_all_counted_or_refused(ballots_app, tokens, topics,
                                                              kafka_bootstrap):
    members = await seed_members(ctx_of(ballots_app), 60, branch="B1")
    ballot_id = await open_ballot(ballots_app, tokens)
    rep = tokens("rep", branches=["B1"])

    async def close():
        await asyncio.sleep(0)  # let the first marks start before the close
        return await ballots_app.post(f"/v1/ballots/{ballot_id}/close",
                                      headers=tokens("national"))

    *marks, closed = await asyncio.gather(
        *(ballots_app.put(vote_path(ballot_id, m), json={"source": "rep"}, headers=rep)
          for m in members), close())
    assert closed.status_code == 200, closed.text
    assert {r.status_code for r in marks} <= {201, 409}
    marked = sum(r.status_code == 201 for r in marks)
    [closed_event] = await published(ballots_app, kafka_bootstrap, topics,
                                     of_type="ballots.ballot-closed")
    assert closed_event.data["voted_count"] == marked
    assert closed.json()["counts"]["voted"] == marked
    voted = await published(ballots_app, kafka_bootstrap, topics, of_type="ballots.voted")
    assert len(voted) == marked


async def test_marks_are_refused_before_opening_and_after_closing(
        ballots_app, tokens, topics, kafka_bootstrap):
    member_id = await seed_member(ctx_of(ballots_app), branch="B1")
    ballot_id = await create_ballot(ballots_app, tokens)
    rep, national = tokens("rep", branches=["B1"]), tokens("national")

    def attempts():
        return [
            ("PUT", vote_path(ballot_id, member_id), {"json": {"source": "rep"}}),
            ("DELETE", vote_path(ballot_id, member_id),
             {"json": {"reason_code": "marked_in_error"}}),
            ("POST", f"/v1/ballots/{ballot_id}/replacement-requests",
             {"json": {"member_id": str(member_id), "reason": "lost"}}),
        ]

    for method, path, body in attempts():
        response = await ballots_app.request(method, path, headers=rep, **body)
        assert response.status_code == 409, (method, path, response.text)
        assert "has not opened yet" in response.json()["detail"]
    early_list = await ballots_app.post(f"/v1/ballots/{ballot_id}/votes:import",
                                        content=scrutineer_csv(member_id), headers=national)
    assert early_list.status_code == 409 and "draft" in early_list.json()["detail"]

    assert (await ballots_app.post(f"/v1/ballots/{ballot_id}/open",
                                   headers=national)).status_code == 200
    assert (await ballots_app.post(f"/v1/ballots/{ballot_id}/close",
                                   headers=national)).status_code == 200
    for method, path, body in attempts():
        response = await ballots_app.request(method, path, headers=rep, **body)
        assert response.status_code == 409, (method, path, response.text)
        assert "closed at" in response.json()["detail"]
    late_list = await ballots_app.post(f"/v1/ballots/{ballot_id}/votes:import",
                                       content=scrutineer_csv(member_id), headers=national)
    assert late_list.status_code == 409 and "closed" in late_list.json()["detail"]
    late_talk = await produce(kafka_bootstrap, topics.events("contacts"),
                              [contacted(ballot_id, member_id)])
    await consumed(ballots_app, late_talk)

    types = [e.type for e in await published(ballots_app, kafka_bootstrap, topics)]
    assert sorted(types) == ["ballots.ballot-closed", "ballots.ballot-opened",
                             "ballots.member-enrolled"]


async def test_a_member_not_on_the_roll_is_not_found(ballots_app, tokens):
    on_roll = await seed_member(ctx_of(ballots_app), branch="B1")
    elsewhere = await seed_member(ctx_of(ballots_app), branch="B5")
    ballot_id = await open_ballot(ballots_app, tokens)
    national = tokens("national")
    for member_id in (elsewhere, uuid.uuid4()):
        response = await ballots_app.put(vote_path(ballot_id, member_id),
                                         json={"source": "rep"}, headers=national)
        assert response.status_code == 404, response.text
        assert "is not on the roll" in response.json()["detail"]
    wrong_source = await ballots_app.put(vote_path(ballot_id, on_roll),
                                         json={"source": "scrutineer"}, headers=national)
    assert wrong_source.status_code == 422  # scrutineers send lists (votes:import)
    unknown_ballot = await ballots_app.put(vote_path(uuid.uuid4(), on_roll),
                                           json={"source": "rep"}, headers=national)
    assert unknown_ballot.status_code == 404 and "No ballot" in unknown_ballot.text


async def test_replacement_ballots_are_each_recorded(ballots_app, tokens, topics,
                                                     kafka_bootstrap):
    member_id = await seed_member(ctx_of(ballots_app), branch="B1")
    ballot_id = await open_ballot(ballots_app, tokens)
    rep = tokens("rep", branches=["B1"])
    ids = []
    for reason in ("lost", "spoiled"):
        response = await ballots_app.post(f"/v1/ballots/{ballot_id}/replacement-requests",
                                          json={"member_id": str(member_id), "reason": reason},
                                          headers=rep)
        assert response.status_code == 201, response.text
        ids.append(response.json()["request_id"])
    bad = await ballots_app.post(f"/v1/ballots/{ballot_id}/replacement-requests",
                                 json={"member_id": str(member_id), "reason": "the dog ate it"},
                                 headers=rep)
    assert bad.status_code == 422
    entry = (await ballots_app.get(f"/v1/ballots/{ballot_id}/roll/{member_id}",
                                   headers=rep)).json()
    assert [r["reason"] for r in entry["replacement_requests"]] == ["lost", "spoiled"]
    events = await published(ballots_app, kafka_bootstrap, topics,
                             of_type="ballots.replacement-requested")
    assert sorted(e.data["request_id"] for e in events) == sorted(ids)
    assert {e.key for e in events} == {str(member_id)}


async def test_a_scrutineer_list_with_unknown_members_applies_nothing(
        ballots_app, tokens, topics, kafka_bootstrap):
    ctx = ctx_of(ballots_app)
    first, second = await seed_members(ctx, 2, branch="B1")
    outsider = await seed_member(ctx, group="G7", branch="B7")
    ballot_id = await open_ballot(ballots_app, tokens)
    national = {**tokens("national"), "content-type": "text/csv"}
    path = f"/v1/ballots/{ballot_id}/votes:import"

    listing = (f"member_id,voted_on\n{first},2026-03-02\n\n{outsider},2026-03-02\n"
               f"07911 123456,2026-03-02\n{second},2026-03-03\n{first},2026-03-04\n")
    refused = await ballots_app.post(path, content=listing.encode(), headers=national)
    assert refused.status_code == 422, refused.text
    problem = refused.json()
    assert "nothing was marked" in problem["detail"]
    assert [(e["row"], e["field"]) for e in problem["errors"]] == [(4, "member_id"),
                                                                  (5, "member_id")]
    assert str(outsider) in problem["errors"][0]["message"]
    assert "07911" not in refused.text
    ballot = (await ballots_app.get(f"/v1/ballots/{ballot_id}", headers=national)).json()
    assert ballot["counts"]["voted"] == 0

    unnamed = await ballots_app.post(path, content=b"member\nM100\n", headers=national)
    assert unnamed.status_code == 422
    assert "member_id or a membership_number column" in unnamed.json()["detail"]
    corrected = "\n".join(line for line in listing.splitlines()
                          if str(outsider) not in line and "07911" not in line)
    applied = await ballots_app.post(path, content=corrected.encode(), headers=national)
    assert applied.status_code == 200, applied.text
    assert applied.json() == {"lines": 3, "members": 2, "marked": 2, "already_voted": 0,
                              "duplicate_lines": 1}
    voted = await published(ballots_app, kafka_bootstrap, topics, of_type="ballots.voted")
    assert sorted(e.data["member_id"] for e in voted) == sorted([str(first), str(second)])
    assert {e.data["vote_source"] for e in voted} == {"scrutineer"}
