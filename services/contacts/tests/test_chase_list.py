"""The chase list a rep works from: who is enrolled and has not voted, best prospects
first, hard-to-reach last, only within the caller's scope, page by page."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from turnout_contacts.db.tables import members

from services.contacts.tests.seed import seed_member
from services.contacts.tests.test_subscribers import (
    chase_ids,
    ctx_of,
    enrol,
    event,
    eventually,
    produce,
    status_of,
)
from turnout_events.ballots import Voted

pytestmark = pytest.mark.integration

MOBILE = "+447911123123"
EMAIL = "alex.jones@example.org.uk"
NOW = datetime.now(UTC).replace(microsecond=0)


async def talk(client, headers, member_id, outcome, *, ballot_id=None, hours_ago=1.0):
    response = await client.post(f"/v1/members/{member_id}/conversations", json={
        "channel": "phone", "outcome": outcome,
        **({"ballot_id": str(ballot_id)} if ballot_id else {}),
        "contacted_at": (NOW - timedelta(hours=hours_ago)).isoformat()}, headers=headers)
    assert response.status_code == 201, response.text


async def chase_page(client, headers, ballot_id, **params):
    response = await client.get(f"/v1/ballots/{ballot_id}/chase-list", params=params,
                                headers=headers)
    assert response.status_code == 200, response.text
    return response.json()


async def test_best_prospects_come_first_and_the_unreachable_last(
        contacts_app, tokens, topics, kafka_bootstrap):
    ctx = ctx_of(contacts_app)
    ballot, other_ballot = uuid.uuid4(), uuid.uuid4()
    rep = tokens("rep", branches=["B1"])

    async def member(**kw):
        return await seed_member(ctx, branch="B1", **kw)

    will_vote_long_ago, will_vote_lately, said_replacement = [await member() for _ in range(3)]
    undecided, not_contacted, talked_in_other_ballot = [await member() for _ in range(3)]
    wrong_number_long_ago, no_answer_lately, wont_vote = [await member() for _ in range(3)]
    unreachable_will_vote = await member(mobile=None, email=None)
    unreachable_untouched = await member(mobile=None, email=None)
    email_only = await member(mobile=None)
    # Not on the list: voted, asked not to be contacted (in this ballot or in general),
    # erased, not enrolled.
    voted, do_not_contact, do_not_contact_generally, erased, not_enrolled = [
        await member() for _ in range(5)]

    await talk(contacts_app, rep, will_vote_long_ago, "will_vote", ballot_id=ballot,
               hours_ago=30)
    await talk(contacts_app, rep, will_vote_lately, "undecided", ballot_id=ballot,
               hours_ago=48)  # superseded by the later conversation:
    await talk(contacts_app, rep, will_vote_lately, "will_vote", ballot_id=ballot,
               hours_ago=2)
    await talk(contacts_app, rep, said_replacement, "replacement_needed", ballot_id=ballot,
               hours_ago=10)
    await talk(contacts_app, rep, undecided, "undecided", ballot_id=ballot)
    await talk(contacts_app, rep, talked_in_other_ballot, "will_vote", ballot_id=other_ballot)
    await talk(contacts_app, rep, wrong_number_long_ago, "wrong_number", ballot_id=ballot,
               hours_ago=20)
    await talk(contacts_app, rep, no_answer_lately, "no_answer", ballot_id=ballot,
               hours_ago=3)
    await talk(contacts_app, rep, wont_vote, "wont_vote", ballot_id=ballot)
    await talk(contacts_app, rep, unreachable_will_vote, "will_vote", ballot_id=ballot)
    await talk(contacts_app, rep, do_not_contact, "do_not_contact", ballot_id=ballot)
    await talk(contacts_app, rep, do_not_contact_generally, "will_vote", ballot_id=ballot,
               hours_ago=5)
    await talk(contacts_app, rep, do_not_contact_generally, "do_not_contact", hours_ago=4)
    async with ctx.sessions() as session, session.begin():
        await session.execute(sa.update(members).where(members.c.member_id == erased)
                              .values(erased_at=sa.func.now()))

    everyone_enrolled = [will_vote_long_ago, will_vote_lately, said_replacement, undecided,
                         not_contacted, talked_in_other_ballot, wrong_number_long_ago,
                         no_answer_lately, wont_vote, unreachable_will_vote,
                         unreachable_untouched, email_only, voted, do_not_contact,
                         do_not_contact_generally, erased]
    await enrol(contacts_app, kafka_bootstrap, topics, ballot, everyone_enrolled)
    await produce(kafka_bootstrap, topics.events("ballots"),
                  [event(Voted, ballot_id=ballot, member_id=voted)])
    await eventually(lambda: _voted(ctx, ballot, voted), what="the vote")

    page = await chase_page(contacts_app, rep, ballot)
    assert page["next_cursor"] is None
    items = page["items"]
    never_contacted = sorted([not_contacted, talked_in_other_ballot, email_only], key=str)
    expected = [
        # said they will vote, contacted longest ago first
        will_vote_long_ago, said_replacement, will_vote_lately,
        undecided,
        *never_contacted,  # in a stable order among themselves (member id)
        wrong_number_long_ago, no_answer_lately,
        wont_vote,
        unreachable_will_vote, unreachable_untouched,  # hard to reach, last
    ]
    assert [item["member_id"] for item in items] == [str(m) for m in expected]
    assert [item["tier"] for item in items] == [
        "will_vote", "will_vote", "will_vote", "undecided", "not_contacted", "not_contacted",
        "not_contacted", "no_answer", "no_answer", "wont_vote", "will_vote", "not_contacted"]
    assert [item["hard_to_reach"] for item in items] == [False] * 10 + [True] * 2
    assert not_enrolled not in {uuid.UUID(i["member_id"]) for i in items}

    by_id = {uuid.UUID(item["member_id"]): item for item in items}
    first = by_id[will_vote_long_ago]
    assert first["last_outcome"] == "will_vote"
    assert datetime.fromisoformat(first["last_contacted_at"]) == NOW - timedelta(hours=30)
    assert first["mobile"] == "07••• ••• 123" and first["personal_email"] == "a•••@•••.uk"
    assert first["first_name"] == "Alex" and first["placement"]["branch_code"] == "B1"
    assert by_id[said_replacement]["last_outcome"] == "replacement_needed"
    assert by_id[talked_in_other_ballot]["last_outcome"] is None
    assert by_id[talked_in_other_ballot]["last_contacted_at"] is None
    assert by_id[email_only]["hard_to_reach"] is False
    for value in (MOBILE, EMAIL, "7911123123"):
        assert value not in str(items)


async def test_each_caller_sees_only_their_scope(contacts_app, tokens, topics,
                                                  kafka_bootstrap):
    ctx = ctx_of(contacts_app)
    ballot = uuid.uuid4()
    in_b1 = await seed_member(ctx, group="G1", branch="B1")
    in_b2 = await seed_member(ctx, group="G1", branch="B2")
    in_b3 = await seed_member(ctx, group="G2", branch="B3")
    await enrol(contacts_app, kafka_bootstrap, topics, ballot, [in_b1, in_b2, in_b3])

    async def sees(headers, **params):
        return set(await chase_ids(contacts_app, headers, ballot, **params))

    b1, b2, b3 = str(in_b1), str(in_b2), str(in_b3)
    assert await sees(tokens("rep", branches=["B1"])) == {b1}
    assert await sees(tokens("rep", branches=["B1", "B2"])) == {b1, b2}
    assert await sees(tokens("rep", branches=["B1", "B2"]), branch="B2") == {b2}
    # Another branch's rep, or a rep naming a branch not theirs, gets an empty list: the
    # same answer as a branch with nobody left to chase, so branches cannot be probed.
    assert await sees(tokens("rep", branches=["B9"])) == set()
    assert await sees(tokens("rep", branches=["B1"]), branch="B2") == set()
    assert await sees(tokens("organiser", groups=["G1"])) == {b1, b2}
    assert await sees(tokens("organiser", groups=["G2"])) == {b3}
    assert await sees(tokens("organiser", groups=["G2"]), branch="B1") == set()
    assert await sees(tokens("national")) == {b1, b2, b3}
    assert await sees(tokens("admin"), branch="B3") == {b3}
    # An unknown ballot looks like one with nobody to chase.
    assert await chase_ids(contacts_app, tokens("national"), uuid.uuid4()) == []

    service = await contacts_app.get(f"/v1/ballots/{ballot}/chase-list",
                                     headers=tokens("service"))
    assert service.status_code == 403
    assert service.headers["content-type"].startswith("application/problem+json")
    anonymous = await contacts_app.get(f"/v1/ballots/{ballot}/chase-list")
    assert anonymous.status_code == 401


async def test_pages_return_every_member_exactly_once_while_the_list_grows(
        contacts_app, tokens, topics, kafka_bootstrap):
    ctx = ctx_of(contacts_app)
    ballot = uuid.uuid4()
    rep = tokens("rep", branches=["B1"])
    reachable = [await seed_member(ctx) for _ in range(7)]
    unreachable = [await seed_member(ctx, mobile=None, email=None) for _ in range(2)]
    for hours, member_id in enumerate(reachable[:4], start=1):
        await talk(contacts_app, rep, member_id, ("will_vote", "no_answer")[hours % 2],
                   ballot_id=ballot, hours_ago=hours)
    await enrol(contacts_app, kafka_bootstrap, topics, ballot, reachable + unreachable)
    whole = [item["member_id"] for item in (await chase_page(contacts_app, rep, ballot))["items"]]
    assert len(whole) == 9

    seen: list[str] = []
    cursor, pages = None, 0
    while True:
        page = await chase_page(contacts_app, rep, ballot, limit=2,
                                **({"cursor": cursor} if cursor else {}))
        seen += [item["member_id"] for item in page["items"]]
        pages += 1
        if pages == 2:
            # New members join the list mid-way, one sorting before the cursor, one after.
            late = [await seed_member(ctx), await seed_member(ctx, mobile=None, email=None)]
            await talk(contacts_app, rep, late[0], "will_vote", ballot_id=ballot)
            await talk(contacts_app, rep, late[1], "wont_vote", ballot_id=ballot)
            await enrol(contacts_app, kafka_bootstrap, topics, ballot, late)
        cursor = page["next_cursor"]
        if cursor is None:
            break
    # The member who joined before the cursor is for the next reading of the list; the
    # one who joined after it (hard to reach, said they won't vote: very last) is seen;
    # nobody is seen twice or skipped.
    assert seen == [*whole, str(late[1])]
    assert pages == 5


async def test_a_cursor_that_was_not_handed_out_is_refused(contacts_app, tokens):
    for cursor in ("not-a-cursor", "WzEsMiwzXQ", "W3RydWUsOSxudWxsLCJ4Il0"):
        response = await contacts_app.get(f"/v1/ballots/{uuid.uuid4()}/chase-list",
                                          params={"cursor": cursor},
                                          headers=tokens("national"))
        assert response.status_code == 422, response.text
        assert "cursor" in response.json()["detail"]


async def _voted(ctx, ballot_id, member_id) -> bool:
    row = await status_of(ctx, ballot_id, member_id)
    return bool(row and row.voted)
