"""Marks written in batches (service/marks.py, service/group_commit.py): a member asked
twice in one batch, two transactions racing for one member, refusals beside successes,
and one failing mark in a batch of good ones."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid

import asyncpg
import pytest
import sqlalchemy as sa
from turnout_ballots.service.group_commit import GroupCommit
from turnout_ballots.service.marks import EXISTING_SQL, prepare_mark, write_marks

from services.ballots.tests.seed import ctx_of, open_ballot, seed_members
from turnout_events.ballots import VoteSource
from turnout_events.tables import outbox

pytestmark = pytest.mark.integration


async def voted_events(ctx) -> list[str]:
    async with ctx.engine.connect() as conn:
        return list((await conn.execute(sa.select(outbox.c.key).where(
            outbox.c.event_type == "ballots.voted"))).scalars())


def request(ctx, ballot_id, member_id, source=VoteSource.REP, actor="rep:r1"):
    return prepare_mark(ctx.topics, None, ballot_id, member_id, source=source, actor=actor)


async def test_a_member_twice_in_one_batch_is_marked_once(ballots_app, tokens):
    ctx = ctx_of(ballots_app)
    [member_id] = await seed_members(ctx, 1)
    ballot_id = await open_ballot(ballots_app, tokens)
    first = request(ctx, ballot_id, member_id, actor="rep:first")
    second = request(ctx, ballot_id, member_id, VoteSource.MEMBER_SELF_REPORT, "rep:second")
    async with ctx.pool.acquire() as conn, conn.transaction():
        one, two = await write_marks(conn, [first, second])
    assert one.created and one.mark == first.mark
    assert not two.created and two.mark == first.mark
    assert await voted_events(ctx) == [str(member_id)]


async def test_the_second_of_two_racing_transactions_defers_to_the_first(ballots_app, tokens):
    ctx = ctx_of(ballots_app)
    [member_id] = await seed_members(ctx, 1)
    ballot_id = await open_ballot(ballots_app, tokens)
    async with ctx.pool.acquire() as a, ctx.pool.acquire() as b:
        first = a.transaction()
        await first.start()
        [won] = await write_marks(a, [request(ctx, ballot_id, member_id, actor="rep:a")])
        assert won.created
        second = b.transaction()
        await second.start()
        racing = asyncio.create_task(
            write_marks(b, [request(ctx, ballot_id, member_id, actor="rep:b")]))
        # b waits on a's uncommitted vote row; it cannot finish until a commits.
        done, _ = await asyncio.wait({racing}, timeout=0.5)
        assert not done
        await first.commit()
        [lost] = await racing
        await second.commit()
        assert lost is None  # "someone else marked first": read their mark
        existing = await b.fetchrow(EXISTING_SQL, ballot_id, member_id)
    assert existing["actor"] == "rep:a"
    assert await voted_events(ctx) == [str(member_id)]


async def test_refusals_in_a_batch_leave_the_other_marks_alone(ballots_app, tokens):
    ctx = ctx_of(ballots_app)
    [good] = await seed_members(ctx, 1)
    ballot_id = await open_ballot(ballots_app, tokens)
    async with ctx.pool.acquire() as conn, conn.transaction():
        refused, marked = await write_marks(conn, [request(ctx, ballot_id, uuid.uuid4()),
                                                   request(ctx, ballot_id, good)])
    assert refused.refusal is not None and refused.refusal.status == 404
    assert marked.created
    assert await voted_events(ctx) == [str(good)]


async def test_one_failing_mark_fails_alone(ballots_app, tokens):
    ctx = ctx_of(ballots_app)
    members = await seed_members(ctx, 5)
    ballot_id = await open_ballot(ballots_app, tokens)
    requests = [request(ctx, ballot_id, m) for m in members]
    # Two of them share an event id: the second outbox row breaks a unique constraint,
    # and with it the whole batch they are in.
    bad = requests[-1]
    requests[-1] = dataclasses.replace(bad, event={**bad.event,
                                                   "event_id": requests[0].event["event_id"]})
    batcher = GroupCommit(ctx.pool, write_marks, workers=1, max_batch=10)
    batcher.start()
    try:
        # All five are queued before the worker first runs: one batch.
        results = await asyncio.gather(*(batcher.submit(r, order=r.order) for r in requests),
                                       return_exceptions=True)
    finally:
        await batcher.stop()
    assert batcher.batches == 4  # the batch failed; its marks went again one by one
    failures = [r for r in results if isinstance(r, BaseException)]
    assert len(failures) == 1 and isinstance(failures[0], asyncpg.UniqueViolationError)
    assert all(r.created for r in results if not isinstance(r, BaseException))
    assert len(await voted_events(ctx)) == 4
