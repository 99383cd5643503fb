"""Reads: a ballot with its counts, a member's entry on a roll. Counts are of what the
caller may see: a rep's are their branches', an organiser's their groups'."""

from __future__ import annotations

import uuid
from typing import Any

import sqlalchemy as sa

from turnout_kit.auth import Caller

from ..context import BallotsContext
from ..db.tables import (
    enrolments,
    member_replica,
    replacement_requests,
    retracted_votes,
    roll,
    votes,
)
from ..domain.ballot import Ballot, BallotStatus, turnout, votes_needed
from .marks import Mark
from .scope import load_ballot, not_on_roll, roll_scope_filter


def ballot_view(ballot: Ballot) -> dict[str, Any]:
    return {
        "ballot_id": ballot.ballot_id,
        "name": ballot.name,
        "kind": ballot.kind,
        "status": ballot.status,
        "opens_at": ballot.opens_at,
        "closes_at": ballot.closes_at,
        "turnout_threshold": ballot.turnout_threshold,
        "scope": ballot.scope.model_dump(),
        "created_at": ballot.created_at,
        "opened_at": ballot.opened_at,
        "closed_at": ballot.closed_at,
    }


async def get_ballot(ctx: BallotsContext, caller: Caller, ballot_id: uuid.UUID) -> dict:
    async with ctx.sessions() as session:  # type: ignore[misc]
        ballot = await load_ballot(session, caller, ballot_id)
        view = ballot_view(ballot)
        view["enrolment"] = None
        view["counts"] = None
        if ballot.status is BallotStatus.DRAFT:
            return view
        progress = (await session.execute(
            sa.select(enrolments.c.total, enrolments.c.published, enrolments.c.completed_at)
            .where(enrolments.c.ballot_id == ballot_id))).one()
        view["enrolment"] = {"total": progress.total, "published": progress.published,
                             "complete": progress.completed_at is not None}
        on_roll = sa.and_(roll.c.ballot_id == ballot_id, roll_scope_filter(caller))
        if caller.unscoped:
            eligible = ballot.eligible_count or 0
            voted = await session.scalar(sa.select(sa.func.count()).select_from(votes)
                                         .where(votes.c.ballot_id == ballot_id))
            replacements = await session.scalar(
                sa.select(sa.func.count()).select_from(replacement_requests)
                .where(replacement_requests.c.ballot_id == ballot_id))
        else:
            eligible = await session.scalar(sa.select(sa.func.count()).select_from(roll)
                                            .where(on_roll)) or 0
            voted = await session.scalar(
                sa.select(sa.func.count()).select_from(votes.join(
                    roll, sa.and_(roll.c.ballot_id == votes.c.ballot_id,
                                  roll.c.member_id == votes.c.member_id))).where(on_roll))
            replacements = await session.scalar(
                sa.select(sa.func.count()).select_from(replacement_requests.join(
                    roll, sa.and_(roll.c.ballot_id == replacement_requests.c.ballot_id,
                                  roll.c.member_id == replacement_requests.c.member_id)))
                .where(on_roll))
    voted = voted or 0
    view["counts"] = {
        "within": "all" if caller.unscoped else "your scope",
        "eligible": eligible or 0,
        "voted": voted,
        "turnout": turnout(eligible or 0, voted),
        "votes_needed": votes_needed(ballot.turnout_threshold, eligible or 0, voted),
        "replacement_requests": replacements or 0,
    }
    return view


async def roll_entry(ctx: BallotsContext, caller: Caller, ballot_id: uuid.UUID,
                     member_id: uuid.UUID) -> dict:
    """A member's placement on the roll, their mark, retractions and replacement requests."""
    async with ctx.sessions() as session:  # type: ignore[misc]
        await load_ballot(session, caller, ballot_id)
        entry = (await session.execute(sa.select(roll).where(
            roll.c.ballot_id == ballot_id, roll.c.member_id == member_id))).first()
        # In scope where they are now (service/scope.py); the entry shows the roll's.
        now = (await session.execute(
            sa.select(member_replica.c.group_code, member_replica.c.branch_code)
            .where(member_replica.c.member_id == member_id))).first() if entry else None
        if entry is None or not caller.can_see(*(now or (entry.group_code,
                                                         entry.branch_code))):
            raise not_on_roll(ballot_id, member_id)
        mark = (await session.execute(sa.select(votes).where(
            votes.c.ballot_id == ballot_id, votes.c.member_id == member_id))).first()
        retractions = (await session.execute(
            sa.select(retracted_votes).where(retracted_votes.c.ballot_id == ballot_id,
                                             retracted_votes.c.member_id == member_id)
            .order_by(retracted_votes.c.retracted_at))).all()
        requests = (await session.execute(
            sa.select(replacement_requests).where(
                replacement_requests.c.ballot_id == ballot_id,
                replacement_requests.c.member_id == member_id)
            .order_by(replacement_requests.c.requested_at))).all()
    return {
        "ballot_id": ballot_id,
        "member_id": member_id,
        "placement": {"group_code": entry.group_code, "branch_code": entry.branch_code,
                      "workplace_code": entry.workplace_code, "grade": entry.grade},
        "voted": mark is not None,
        "mark": (mark_view(Mark.from_row(ballot_id, member_id, mark._mapping))
                 if mark is not None else None),
        "retractions": [
            {"source": r.source, "actor": r.actor, "voted_at": r.voted_at,
             "reason_code": r.reason_code, "retracted_by": r.retracted_by,
             "retracted_at": r.retracted_at} for r in retractions],
        "replacement_requests": [
            {"request_id": r.request_id, "reason": r.reason, "requested_by": r.requested_by,
             "requested_at": r.requested_at} for r in requests],
    }


def mark_view(mark: Mark) -> dict[str, Any]:
    # Not dataclasses.asdict, which deep-copies every value: this is on the marks path.
    return {"ballot_id": mark.ballot_id, "member_id": mark.member_id, "source": mark.source,
            "actor": mark.actor, "voted_at": mark.voted_at,
            "conversation_id": mark.conversation_id}
