"""Scope: which ballots and roll entries a caller may see or manage. Out of scope looks
exactly like not found.

- A member on a roll is seen by reps of the branch and organisers of the group the member
  is in *now* (contacts' latest placement, from the replica; their placement on the roll
  if the replica has none), and by national, service and admin callers. Who is on the
  roll is fixed at opening, but a member who moves during the ballot is chased by their
  new branch: it is the branch whose chase list shows them (contacts) and whose turnout
  counts them (reporting), so it must be the one that can mark them.
- A ballot is seen by anyone who can see at least one member it covers (once open: one
  member of its roll; before: one member of the replica in its scope), or whose own
  groups (organisers) or branches (reps) its scope lists by name.
- Ballots are managed (created, opened, closed) by national and admin callers, and by
  organisers when the scope is made of their own groups only: a branch's group is known
  only from the replica, which changes, so a scope naming branches needs national.
"""

from __future__ import annotations

import uuid

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from turnout_events.ballots import BallotScope
from turnout_kit.auth import Caller, Role
from turnout_kit.problems import Problem

from ..db.tables import ballots, member_replica, roll
from ..domain.ballot import Ballot, BallotStatus

MANAGERS = (Role.national, Role.admin, Role.organiser)


def ballot_not_found(ballot_id: uuid.UUID) -> Problem:
    return Problem(404, detail=f"No ballot {ballot_id} in your scope.")


def not_on_roll(ballot_id: uuid.UUID, member_id: uuid.UUID) -> Problem:
    return Problem(404, detail=f"Member {member_id} is not on the roll of ballot {ballot_id} "
                               "in your scope. The roll is fixed when the ballot opens: "
                               "members who joined or moved in later are not on it.")


def scope_filter(caller: Caller, table: sa.Table = roll) -> sa.ColumnElement[bool]:
    """A WHERE clause limiting roll (or replica) rows to the caller's branches or groups."""
    return caller.scope_clause(table)


def roll_scope_filter(caller: Caller) -> sa.ColumnElement[bool]:
    """A WHERE clause limiting roll rows to members in the caller's scope where they are
    now (see the module docstring): in scope in the replica, or, for a member the replica
    does not hold, in scope on the roll."""
    if caller.unscoped:
        return sa.true()
    now = member_replica
    return sa.or_(
        roll.c.member_id.in_(sa.select(now.c.member_id).where(scope_filter(caller, now))),
        sa.and_(scope_filter(caller, roll),
                ~sa.exists().where(now.c.member_id == roll.c.member_id)))


def in_ballot_scope(scope: BallotScope, table: sa.Table = member_replica) -> sa.ColumnElement[bool]:
    """Members a ballot of this scope covers: the union of its groups and branches."""
    return sa.or_(table.c.group_code.in_(scope.group_codes),
                  table.c.branch_code.in_(scope.branch_codes))


async def can_see_ballot(session: AsyncSession, caller: Caller, ballot: Ballot) -> bool:
    if caller.unscoped:
        return True
    if caller.role is Role.organiser and caller.group_codes & set(ballot.scope.group_codes):
        return True
    if caller.role is Role.rep and caller.branch_codes & set(ballot.scope.branch_codes):
        return True
    if ballot.status is BallotStatus.DRAFT:
        covered = sa.select(member_replica.c.member_id).where(
            in_ballot_scope(ballot.scope), scope_filter(caller, member_replica))
    else:
        covered = sa.select(roll.c.member_id).where(roll.c.ballot_id == ballot.ballot_id,
                                                    roll_scope_filter(caller))
    return bool(await session.scalar(sa.select(sa.exists(covered))))


def check_may_manage(caller: Caller, scope: BallotScope) -> None:
    """403 unless the caller may create, open or close a ballot of this scope."""
    if caller.role in (Role.national, Role.admin):
        return
    if caller.role is Role.organiser:
        if not scope.branch_codes and set(scope.group_codes) <= caller.group_codes:
            return
        raise Problem(403, detail="Organisers manage ballots whose scope lists only their own "
                                  "groups (no branch codes); ask the national team for others.")
    raise Problem(403, detail="Ballots are created, opened and closed by national and admin "
                              "users, and by organisers for their own groups.")


async def load_ballot(session: AsyncSession, caller: Caller, ballot_id: uuid.UUID, *,
                      lock: str | None = None) -> Ballot:
    """The ballot, or 404 if it does not exist or is out of the caller's scope.
    `lock`: "update" (state changes) or "share" (work that needs it to stay open)."""
    query = sa.select(ballots).where(ballots.c.ballot_id == ballot_id)
    if lock == "update":
        query = query.with_for_update()
    elif lock == "share":
        query = query.with_for_update(read=True)
    row = (await session.execute(query)).first()
    if row is None:
        raise ballot_not_found(ballot_id)
    ballot = Ballot.from_row(row)
    if not await can_see_ballot(session, caller, ballot):
        raise ballot_not_found(ballot_id)
    return ballot
