"""Voted marks: the first mark of a member in a ballot is recorded and published; every
later one, from any source, finds it and publishes nothing.

Concurrent first marks meet at the `votes` primary key: `INSERT ... ON CONFLICT DO
NOTHING` lets exactly one of them insert (the others wait for it to commit, then insert
nothing), so exactly one voted event is published however many requests race.

Marks are written in batches (`write_marks`): a set-based read of everything the batch
needs under a share lock on its ballots, the decisions in Python, one insert of the new
votes together with their outbox events, and one commit. Over HTTP, marks that arrive
together share a batch (service/group_commit.py says why); a consumed event is a batch
of one inside its own unit of work. The share lock means a close (which takes the update
lock) waits for marks in flight, and marks after it see the ballot closed.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

import asyncpg
import sqlalchemy as sa

from turnout_events.ballots import Voted, VoteSource
from turnout_events.envelope import Envelope
from turnout_events.outbox import outbox_rows
from turnout_events.tables import OUTBOX_CHANNEL
from turnout_events.topics import TopicRegistry
from turnout_kit.auth import Caller
from turnout_kit.logging import get_correlation_id
from turnout_kit.problems import Problem
from turnout_kit.uow import UnitOfWork

from ..context import BallotsContext
from ..db.tables import ballots, member_replica, roll, votes
from ..domain.ballot import BallotStatus
from .scope import ballot_not_found, load_ballot, not_on_roll


@dataclass(frozen=True)
class Mark:
    ballot_id: uuid.UUID
    member_id: uuid.UUID
    source: VoteSource
    actor: str
    voted_at: datetime
    conversation_id: uuid.UUID | None = None

    @classmethod
    def from_row(cls, ballot_id: uuid.UUID, member_id: uuid.UUID,
                 m: Mapping[Any, Any]) -> Mark:
        """From a mapping with the `votes` columns (a row's `_mapping`, an asyncpg record)."""
        return cls(ballot_id=ballot_id, member_id=member_id, source=VoteSource(m["source"]),
                   actor=m["actor"], voted_at=m["voted_at"],
                   conversation_id=m["conversation_id"])


# -- why a command about a member on a roll is refused ---------------------------------

def refusal(caller: Caller | None, ballot_id: uuid.UUID, member_id: uuid.UUID,
            found: Mapping[str, Any] | None, action: str) -> Problem | None:
    """Why `action` cannot be done for this member, from the ballot's status and
    closed_at, the member's group_code on its roll (null when not on it) and the
    placement that decides scope (`scope_group_code`, `scope_branch_code`: where they are
    now, see service/scope.py): 404 for an unknown ballot or a member not on its roll
    (or out of the caller's scope: the same answer), 409 for a ballot not open. `caller`
    None is the service itself (a consumed event), which sees every roll."""
    if found is None or found["status"] is None:
        return ballot_not_found(ballot_id)
    if found["status"] == BallotStatus.DRAFT:
        return Problem(409, detail=f"Ballot {ballot_id} has not opened yet: {action} once "
                                   "it opens.")
    if found["group_code"] is None or (
            caller is not None and not caller.can_see(found["scope_group_code"],
                                                      found["scope_branch_code"])):
        return not_on_roll(ballot_id, member_id)
    if found["status"] == BallotStatus.CLOSED:
        return Problem(409, detail=f"Ballot {ballot_id} closed at "
                                   f"{found['closed_at']:%Y-%m-%d %H:%M} UTC: {action} no "
                                   "longer.")
    return None


async def raise_refusal(session: Any, caller: Caller | None, ballot_id: uuid.UUID,
                        found: Mapping[str, Any] | None, problem: Problem) -> None:
    """Raise `problem`, or 404 instead of "not opened yet" for a ballot the caller may not
    see: before opening there is no roll to find the member on, and the 409 must not tell
    a rep that a ballot of other branches exists."""
    if (problem.status == 409 and found is not None and caller is not None
            and found["status"] == BallotStatus.DRAFT):
        await load_ballot(session, caller, ballot_id)
    raise problem


@dataclass(frozen=True)
class MemberOnRoll:
    ballot_id: uuid.UUID
    member_id: uuid.UUID
    mark: Mark | None


async def member_on_open_ballot(session: Any, caller: Caller | None, ballot_id: uuid.UUID,
                                member_id: uuid.UUID, *, action: str) -> MemberOnRoll:
    """The member's roll entry and current mark, read under the ballot's share lock, or
    the problem that refuses `action`. For commands other than marks (retractions,
    replacement requests), in the caller's unit of work."""
    row = (await session.execute(
        sa.select(ballots.c.status, ballots.c.closed_at, roll.c.group_code,
                  roll.c.branch_code,
                  sa.func.coalesce(member_replica.c.group_code, roll.c.group_code)
                  .label("scope_group_code"),
                  sa.func.coalesce(member_replica.c.branch_code, roll.c.branch_code)
                  .label("scope_branch_code"),
                  votes.c.source, votes.c.actor, votes.c.voted_at, votes.c.conversation_id)
        .select_from(
            ballots
            .outerjoin(roll, sa.and_(roll.c.ballot_id == ballots.c.ballot_id,
                                     roll.c.member_id == member_id))
            .outerjoin(member_replica, member_replica.c.member_id == roll.c.member_id)
            .outerjoin(votes, sa.and_(votes.c.ballot_id == ballots.c.ballot_id,
                                      votes.c.member_id == member_id)))
        .where(ballots.c.ballot_id == ballot_id)
        .with_for_update(read=True, of=ballots))).first()
    found = row._mapping if row is not None else None
    if (problem := refusal(caller, ballot_id, member_id, found, action)) is not None:
        await raise_refusal(session, caller, ballot_id, found, problem)
    assert found is not None
    mark = Mark.from_row(ballot_id, member_id, found) if found["source"] is not None else None
    return MemberOnRoll(ballot_id, member_id, mark)


# -- marking ----------------------------------------------------------------------------

@dataclass(frozen=True)
class MarkRequest:
    caller: Caller | None  # None: the service itself, for a consumed event
    mark: Mark  # the mark to make, if the member has none
    event: dict[str, Any]  # its voted event, as an outbox row

    @property
    def order(self) -> tuple[uuid.UUID, uuid.UUID]:
        return self.mark.ballot_id, self.mark.member_id


@dataclass(frozen=True)
class MarkOutcome:
    mark: Mark | None  # the mark in force; None when refused
    created: bool  # whether this request made it (and published voted)
    found: Mapping[str, Any] | None = None  # the ballot and roll entry, for the refusal
    refusal: Problem | None = None


def prepare_mark(topics: TopicRegistry, caller: Caller | None, ballot_id: uuid.UUID,
                 member_id: uuid.UUID, *, source: VoteSource, actor: str,
                 voted_at: datetime | None = None, conversation_id: uuid.UUID | None = None,
                 causation_id: uuid.UUID | None = None) -> MarkRequest:
    """The mark and its voted event, built in the caller's context (which carries the
    correlation id) before we know whether the member has voted already: building an
    event costs less than holding a batch's transaction open to build it later."""
    mark = Mark(ballot_id=ballot_id, member_id=member_id, source=source, actor=actor,
                voted_at=voted_at or datetime.now(UTC), conversation_id=conversation_id)
    envelope = Envelope.wrap(
        Voted(ballot_id=ballot_id, member_id=member_id, vote_source=source,
              voted_at=mark.voted_at, conversation_id=conversation_id),
        actor=actor, correlation_id=get_correlation_id(), causation_id=causation_id)
    [event] = outbox_rows([envelope], topics)
    return MarkRequest(caller, mark, event)


# Each member's ballot (share-locked: a close waits for the batch), roll entry and
# current mark, in request order.
FIND_SQL = f"""
WITH locked AS (
    SELECT ballot_id, status, closed_at FROM {ballots.name}
    WHERE ballot_id = ANY($1::uuid[]) FOR SHARE
)
SELECT b.status, b.closed_at, r.group_code, r.branch_code,
       COALESCE(m.group_code, r.group_code) AS scope_group_code,
       COALESCE(m.branch_code, r.branch_code) AS scope_branch_code,
       v.source, v.actor, v.voted_at, v.conversation_id
FROM unnest($1::uuid[], $2::uuid[]) WITH ORDINALITY AS i(ballot_id, member_id, n)
LEFT JOIN locked b ON b.ballot_id = i.ballot_id
LEFT JOIN {roll.name} r ON r.ballot_id = i.ballot_id AND r.member_id = i.member_id
LEFT JOIN {member_replica.name} m ON m.member_id = r.member_id
LEFT JOIN {votes.name} v ON v.ballot_id = i.ballot_id AND v.member_id = i.member_id
ORDER BY i.n
"""

# The new votes, and the voted events of those actually inserted (a concurrent batch
# may have inserted one first: it keeps its own event), and the relay's wake-up call.
INSERT_SQL = f"""
WITH inserted AS (
    INSERT INTO {votes.name} (ballot_id, member_id, source, actor, voted_at, conversation_id)
    SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[],
                         $5::timestamptz[], $6::uuid[])
    ON CONFLICT (ballot_id, member_id) DO NOTHING
    RETURNING ballot_id, member_id
), published AS (
    INSERT INTO outbox (event_id, topic, key, event_type, event_version, correlation_id,
                        payload)
    SELECT e.event_id, e.topic, e.key, e.event_type, e.event_version, e.correlation_id,
           e.payload
    FROM unnest($1::uuid[], $2::uuid[], $7::uuid[], $8::text[], $9::text[], $10::text[],
                $11::int[], $12::text[], $13::bytea[]) WITH ORDINALITY
         AS e(ballot_id, member_id, event_id, topic, key, event_type, event_version,
              correlation_id, payload, n)
    JOIN inserted USING (ballot_id, member_id)
    ORDER BY e.n
    RETURNING 1
), notified AS (
    SELECT pg_notify('{OUTBOX_CHANNEL}', '') WHERE EXISTS (SELECT FROM published)
)
SELECT i.ballot_id, i.member_id, (SELECT count(*) FROM notified) AS notified
FROM inserted i
"""

EXISTING_SQL = (f"SELECT source, actor, voted_at, conversation_id FROM {votes.name} "
                "WHERE ballot_id = $1 AND member_id = $2")


async def write_marks(conn: asyncpg.Connection,
                      requests: Sequence[MarkRequest]) -> list[MarkOutcome | None]:
    """Write a batch of marks inside the caller's transaction on `conn`. One outcome per
    request; None when a concurrent transaction marked the member first and has not
    told us how (read the mark with EXISTING_SQL once this transaction is over)."""
    found = await conn.fetch(FIND_SQL, [r.mark.ballot_id for r in requests],
                             [r.mark.member_id for r in requests])
    outcomes: list[MarkOutcome | None] = [None] * len(requests)
    first_of: dict[tuple[uuid.UUID, uuid.UUID], int] = {}  # a member asked twice in a batch
    new: list[int] = []
    for i, (request, row) in enumerate(zip(requests, found, strict=True)):
        mark = request.mark
        if (problem := refusal(request.caller, mark.ballot_id, mark.member_id, row,
                               "votes can be marked")) is not None:
            outcomes[i] = MarkOutcome(None, False, row, problem)
        elif row["source"] is not None:
            outcomes[i] = MarkOutcome(Mark.from_row(mark.ballot_id, mark.member_id, row),
                                      False, row)
        elif request.order not in first_of:
            first_of[request.order] = i
            new.append(i)
    inserted: set[tuple[uuid.UUID, uuid.UUID]] = set()
    if new:
        marks = [requests[i].mark for i in new]
        events = [requests[i].event for i in new]
        rows = await conn.fetch(
            INSERT_SQL, [m.ballot_id for m in marks], [m.member_id for m in marks],
            [m.source.value for m in marks], [m.actor for m in marks],
            [m.voted_at for m in marks], [m.conversation_id for m in marks],
            *([e[name] for e in events] for name in (
                "event_id", "topic", "key", "event_type", "event_version", "correlation_id",
                "payload")))
        inserted = {(r["ballot_id"], r["member_id"]) for r in rows}
    for i, request in enumerate(requests):
        if outcomes[i] is not None or request.order not in inserted:
            continue  # refused, already voted, or lost a race (None)
        leader = first_of[request.order]
        outcomes[i] = (MarkOutcome(request.mark, True) if leader == i
                       else MarkOutcome(requests[leader].mark, False))
    return outcomes


async def record_mark(uow: UnitOfWork, caller: Caller | None, ballot_id: uuid.UUID,
                      member_id: uuid.UUID, *, source: VoteSource, actor: str,
                      voted_at: datetime | None = None,
                      conversation_id: uuid.UUID | None = None) -> tuple[Mark, bool]:
    """Mark a member voted inside `uow` (e.g. a consumed event's, with its inbox claim):
    (the mark in force, whether this call made it). The caller commits."""
    request = prepare_mark(uow.topics, caller, ballot_id, member_id, source=source,
                           actor=actor, voted_at=voted_at, conversation_id=conversation_id,
                           causation_id=uow.causation_id)
    # The SQL is written for asyncpg; on the unit of work's own connection it is part of
    # the unit of work's transaction.
    connection = await uow.session.connection()
    # driver_connection is typed Any | None; on a live connection it is asyncpg's.
    driver = cast(asyncpg.Connection,
                  (await connection.get_raw_connection()).driver_connection)
    [outcome] = await write_marks(driver, [request])
    if outcome is None:  # another transaction marked the member since we looked
        existing = await driver.fetchrow(EXISTING_SQL, ballot_id, member_id)
        return Mark.from_row(ballot_id, member_id, existing), False
    if outcome.refusal is not None:
        await raise_refusal(uow.session, caller, ballot_id, outcome.found, outcome.refusal)
    assert outcome.mark is not None
    return outcome.mark, outcome.created


async def mark_vote(ctx: BallotsContext, caller: Caller, ballot_id: uuid.UUID,
                    member_id: uuid.UUID, source: VoteSource) -> tuple[Mark, bool]:
    """A mark made over HTTP (a rep, or a member's own report passed on), committed with
    whichever other marks are being made at the same moment."""
    assert ctx.marks is not None and ctx.pool is not None
    request = prepare_mark(ctx.topics, caller, ballot_id, member_id, source=source,
                           actor=caller.actor)
    outcome = await ctx.marks.submit(request, order=request.order)
    if outcome is None:
        existing = await ctx.pool.fetchrow(EXISTING_SQL, ballot_id, member_id)
        return Mark.from_row(ballot_id, member_id, existing), False
    if outcome.refusal is not None:
        async with ctx.sessions() as session:  # type: ignore[misc]
            await raise_refusal(session, caller, ballot_id, outcome.found, outcome.refusal)
    assert outcome.mark is not None
    return outcome.mark, outcome.created
