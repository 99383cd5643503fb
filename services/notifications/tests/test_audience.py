"""The audience of a slot, selected once and taken a batch at a time, on a generated
roll of a few thousand members written straight into the state tables (the events that
fill them are test_state.py's business): the selection classifies exactly as the rules
say, every member stays counted in exactly one place while the audience is taken, and
dispatchers taking at once never take a member twice."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from datetime import timedelta

import pytest
import sqlalchemy as sa
from turnout_notifications.db.tables import (
    audience_parts,
    ballots,
    member_contact,
    messages,
    opt_outs,
    roll,
)
from turnout_notifications.service import audience

from services.notifications.tests.support import CLOSES_AT, T0

pytestmark = pytest.mark.integration

MEMBERS = 2600
BRANCHES = ("B1", "B2", "B3", "B4")


def profile(i: int) -> dict:
    """Member i of the generated roll: placement and state by simple rules, some
    overlapping (a voted member without consent counts as voted: first rule wins)."""
    return {"branch": BRANCHES[i % 4], "group": "G1" if i % 4 < 3 else "G2",
            "voted": i % 7 == 0, "opted_out": i % 31 == 5, "consent": i % 5 != 1,
            "mobile": i % 11 != 2, "texted_earlier": i % 23 == 4,
            "no_flags": i % 97 == 50}


def expected_reason(p: dict) -> str | None:
    if p["voted"]:
        return "voted"
    if p["opted_out"]:
        return "opted_out"
    if p["no_flags"] or not p["consent"]:
        return "no_consent"
    if not p["mobile"]:
        return "no_mobile"
    if p["texted_earlier"]:
        return "capped"
    return None


@pytest.fixture
async def generated(notifications_app):
    """A ballot with MEMBERS generated members; returns (ballot_id, ids by i)."""
    ctx = notifications_app.app.state.ctx
    ballot_id = uuid.uuid4()
    ids = [uuid.uuid4() for _ in range(MEMBERS)]
    profiles = [profile(i) for i in range(MEMBERS)]
    earlier = uuid.uuid4()
    async with ctx.sessions() as session, session.begin():
        await session.execute(sa.insert(ballots).values(
            ballot_id=ballot_id, name="Generated ballot", opens_at=T0 - timedelta(days=18),
            closes_at=CLOSES_AT))
        await session.execute(sa.insert(roll), [
            {"ballot_id": ballot_id, "member_id": m, "enrolled": True,
             "group_code": p["group"], "branch_code": p["branch"], "workplace_code": "W1",
             "voted": p["voted"], "voted_changed_at": T0 - timedelta(days=1)
             if p["voted"] else None} for m, p in zip(ids, profiles, strict=True)])
        await session.execute(sa.insert(member_contact), [
            {"member_id": m, "member_version": 1, "has_mobile": p["mobile"],
             "sms_consent": p["consent"], "has_email": False, "email_consent": False}
            for m, p in zip(ids, profiles, strict=True) if not p["no_flags"]])
        await session.execute(sa.insert(opt_outs), [
            {"member_id": m, "channel": "sms", "received_at": T0 - timedelta(days=2)}
            for m, p in zip(ids, profiles, strict=True) if p["opted_out"]])
        await session.execute(sa.insert(messages), [
            {"message_id": uuid.uuid4(), "idempotency_key": f"{m}:earlier",
             "campaign_id": earlier, "slot": 0, "ballot_id": ballot_id, "member_id": m,
             "channel": "sms", "status": "sent", "attempted_at": T0 - timedelta(hours=5)}
            for m, p in zip(ids, profiles, strict=True) if p["texted_earlier"]])
    return ballot_id, ids


async def create(client, tokens, ballot_id, **overrides) -> str:
    body = {"ballot_id": str(ballot_id), "template": "Hi {first_name}", "schedule": ["P3D"],
            **overrides}
    response = await client.post("/v1/campaigns", json=body, headers=tokens("national"))
    assert response.status_code == 201, response.text
    return response.json()["campaign_id"]


async def counts(client, tokens, campaign_id) -> dict:
    response = await client.get(f"/v1/campaigns/{campaign_id}", headers=tokens("national"))
    assert response.status_code == 200, response.text
    return response.json()["counts"]


def in_one_place(c: dict) -> int:
    return (c["queued"] + c["sent"] + c["failed"] + c["cancelled"]
            + sum(n for k, n in c["skipped"].items() if k != "quiet_hours_deferred"))


async def test_selection_classifies_by_the_rules_and_takes_keep_the_counts(
        notifications_app, generated, tokens):
    ballot_id, ids = generated
    ctx = notifications_app.app.state.ctx
    campaign = await create(notifications_app, tokens, ballot_id,
                            audience={"group_codes": ["G1"]})
    assert await ctx.dispatcher.select_due() == 1

    in_audience = [i for i in range(MEMBERS) if profile(i)["group"] == "G1"]
    reasons = Counter(expected_reason(profile(i)) for i in in_audience)
    recipients = reasons.pop(None)
    assert min(reasons.values()) > 10 and recipients > 1000  # every rule is exercised
    got = await counts(notifications_app, tokens, campaign)
    assert got["queued"] == recipients
    assert {k: v for k, v in got["skipped"].items() if v} == dict(reasons)

    # The recipients were frozen, not written out: parts of at most a thousand per branch.
    async with ctx.sessions() as session:
        parts = (await session.execute(sa.select(
            audience_parts.c.branch_code, audience_parts.c.size).where(
            audience_parts.c.campaign_id == uuid.UUID(campaign)))).all()
        assert await session.scalar(sa.select(sa.func.count()).select_from(messages).where(
            messages.c.campaign_id == uuid.UUID(campaign))) == 0
    assert sum(size for _, size in parts) == recipients
    assert {b for b, _ in parts} == {"B1", "B2", "B3"} and max(s for _, s in parts) <= 1000

    # Taken a batch at a time: each member in exactly one place throughout.
    taken: list[uuid.UUID] = []
    while True:
        async with ctx.sessions() as session, session.begin():
            batch = await audience.take_batch(session, campaign_id=uuid.UUID(campaign),
                                              ballot_id=ballot_id, n=150)
        if not batch:
            break
        assert len(batch) <= 150
        taken += [m.member_id for m in batch]
        got = await counts(notifications_app, tokens, campaign)
        assert got["queued"] == recipients and in_one_place(got) == len(in_audience)
    expected = {ids[i] for i in in_audience if expected_reason(profile(i)) is None}
    assert len(taken) == len(set(taken)) == recipients and set(taken) == expected


async def test_dispatchers_taking_at_once_take_each_recipient_once(
        notifications_app, generated, tokens):
    ballot_id, ids = generated
    ctx = notifications_app.app.state.ctx
    campaign = uuid.UUID(await create(notifications_app, tokens, ballot_id))
    assert await ctx.dispatcher.select_due() == 1

    async def dispatcher_taking() -> list[uuid.UUID]:
        mine: list[uuid.UUID] = []
        while True:
            async with ctx.sessions() as session, session.begin():
                batch = await audience.take_batch(session, campaign_id=campaign,
                                                  ballot_id=ballot_id, n=200)
            if not batch:
                # Empty also when the others hold every open part right now.
                async with ctx.sessions() as session:
                    left = await session.scalar(sa.select(sa.func.count()).where(
                        audience_parts.c.campaign_id == campaign,
                        audience_parts.c.taken < audience_parts.c.size))
                if not left:
                    return mine
                continue
            mine += [m.member_id for m in batch]

    takers = await asyncio.gather(*(dispatcher_taking() for _ in range(4)))
    everyone = [m for mine in takers for m in mine]
    expected = {ids[i] for i in range(MEMBERS) if expected_reason(profile(i)) is None}
    assert len(everyone) == len(set(everyone)) and set(everyone) == expected
    async with ctx.sessions() as session:
        keys = (await session.execute(sa.select(messages.c.idempotency_key).where(
            messages.c.campaign_id == campaign))).scalars().all()
    assert sorted(keys) == sorted(f"{m}:{campaign}:0" for m in expected)
