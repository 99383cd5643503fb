"""Retracting voted marks, and a scrutineer's list of members who have voted (single
marks are in service/marks.py).

Both hold a share lock on the ballot row while they work; closing takes the update lock,
so they either commit before the close (and count in ballot-closed) or see it closed.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY, UUID, insert

from turnout_events.ballots import RetractionReason, Voted, VoteRetracted, VoteSource
from turnout_kit.auth import Caller
from turnout_kit.problems import Problem

from ..context import BallotsContext
from ..db.tables import retracted_votes, roll, votes
from ..domain.ballot import BallotStatus
from ..domain.scrutineer import MEMBER_ID, ScrutineerList
from .directory import DirectoryUnavailable
from .marks import Mark, member_on_open_ballot
from .scope import load_ballot, roll_scope_filter

# How many rows of a refused scrutineer list are itemised in the answer.
MAX_REPORTED_ERRORS = 1000


@dataclass(frozen=True)
class Retraction:
    mark: Mark
    reason_code: RetractionReason
    retracted_by: str
    retracted_at: datetime


async def retract_vote(ctx: BallotsContext, caller: Caller, ballot_id: uuid.UUID,
                       member_id: uuid.UUID, reason_code: RetractionReason) -> Retraction:
    async with ctx.uow(caller.actor) as uow:
        session = uow.session
        await member_on_open_ballot(session, caller, ballot_id, member_id,
                                    action="votes can be retracted")
        removed = (await session.execute(
            sa.delete(votes).where(votes.c.ballot_id == ballot_id,
                                   votes.c.member_id == member_id)
            .returning(votes))).first()
        if removed is None:
            raise Problem(409, detail=f"Member {member_id} has no voted mark in ballot "
                                      f"{ballot_id}, so there is nothing to retract.")
        mark = Mark.from_row(ballot_id, member_id, removed._mapping)
        now = datetime.now(UTC)
        await session.execute(sa.insert(retracted_votes).values(
            ballot_id=ballot_id, member_id=member_id, source=mark.source.value,
            actor=mark.actor, voted_at=mark.voted_at, conversation_id=mark.conversation_id,
            reason_code=reason_code.value, retracted_by=caller.actor, retracted_at=now))
        uow.emit(VoteRetracted(ballot_id=ballot_id, member_id=member_id,
                               reason_code=reason_code), occurred_at=now)
        await uow.commit()
    return Retraction(mark=mark, reason_code=reason_code, retracted_by=caller.actor,
                      retracted_at=now)


async def import_scrutineer_list(ctx: BallotsContext, caller: Caller, ballot_id: uuid.UUID,
                                 listing: ScrutineerList) -> dict[str, int]:
    """Mark every member of a scrutineer's list, or (if any line is bad or names a member
    not on the roll in the caller's scope) nothing at all."""
    if listing.numbers:
        await _match_membership_numbers(ctx, listing)
    async with ctx.uow(caller.actor) as uow:
        session = uow.session
        ballot = await load_ballot(session, caller, ballot_id, lock="share")
        if ballot.status is not BallotStatus.OPEN:
            raise Problem(409, detail=f"Ballot {ballot_id} is {ballot.status.value}: a "
                                      "scrutineer's list can be applied only while it is open.")
        ids = [member_id for _, member_id in listing.entries]
        ids_param = sa.bindparam("ids", ids, type_=ARRAY(UUID(as_uuid=True)))
        on_roll = set((await session.scalars(
            sa.select(roll.c.member_id).where(roll.c.ballot_id == ballot_id,
                                              roll.c.member_id == sa.any_(ids_param),
                                              roll_scope_filter(caller)))).all())
        errors = list(listing.errors) + [
            {"row": line, "field": listing.key,
             "message": (f"member {member_id} is not on the roll of this ballot in your scope"
                         if listing.key == MEMBER_ID else
                         "this member is not on the roll of this ballot in your scope")}
            for line, member_id in listing.entries if member_id not in on_roll]
        if errors:
            errors.sort(key=lambda e: int(str(e["row"])))
            raise Problem(422, detail=(
                f"{len(errors)} line(s) of the list cannot be applied; nothing was marked. "
                "Correct them and send the whole list again."),
                errors=errors[:MAX_REPORTED_ERRORS], error_count=len(errors))
        if not ids:
            raise Problem(422, detail="The list names no member.")
        now = datetime.now(UTC)
        # In member order, as marks are written (service/group_commit.py): concurrent
        # writers then wait for each other in one direction only, never in a circle.
        ids_param = sa.bindparam("sorted_ids", sorted(ids), type_=ARRAY(UUID(as_uuid=True)))
        marked = (await session.scalars(
            insert(votes).from_select(
                ["ballot_id", "member_id", "source", "actor", "voted_at"],
                sa.select(sa.literal(ballot_id, votes.c.ballot_id.type),
                          sa.func.unnest(ids_param),
                          sa.literal(VoteSource.SCRUTINEER.value, sa.Text),
                          sa.literal(caller.actor, sa.Text),
                          sa.literal(now, votes.c.voted_at.type)))
            .on_conflict_do_nothing(index_elements=["ballot_id", "member_id"])
            .returning(votes.c.member_id))).all()
        for member_id in marked:
            uow.emit(Voted(ballot_id=ballot_id, member_id=member_id,
                           vote_source=VoteSource.SCRUTINEER, voted_at=now))
        await uow.commit()
    return {"lines": len(ids) + listing.duplicates, "members": len(ids),
            "marked": len(marked), "already_voted": len(ids) - len(marked),
            "duplicate_lines": listing.duplicates}


async def _match_membership_numbers(ctx: BallotsContext, listing: ScrutineerList) -> None:
    """Member ids for the list's membership numbers, from contacts, before anything is
    marked: if contacts cannot answer, nothing is (503, send the list again later)."""
    if ctx.directory is None:
        raise RuntimeError("the ballots service has not started")
    try:
        found = await ctx.directory.member_ids([number for _, number in listing.numbers])
    except DirectoryUnavailable:
        raise Problem(503, detail=(
            "The contacts service, which matches membership numbers to members, did not "
            "answer; nothing was marked. Send the list again shortly, or send it with a "
            "member_id column.")) from None
    listing.matched(found)
