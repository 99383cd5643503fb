"""Command handlers for a ballot's life: create, open (snapshot the roll), close.

Each state change and its events commit in one unit of work. Opening is the exception
that proves the rule: the roll, the status and ballot-opened commit together, and the
member-enrolled events follow in chunks (service/enrolment.py) because a million of them
do not belong in one transaction; the ballot cannot close until they are all written.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.engine import CursorResult

from turnout_events.ballots import BallotClosed, BallotKind, BallotOpened
from turnout_kit.auth import Caller
from turnout_kit.logging import get_correlation_id
from turnout_kit.problems import Problem

from ..context import BallotsContext
from ..db.tables import ballots, enrolments, member_replica, roll, votes
from ..domain.ballot import BallotStatus, InvalidBallot, check_publishable
from . import enrolment
from .scope import check_may_manage, in_ballot_scope, load_ballot


async def create_ballot(ctx: BallotsContext, caller: Caller, *, name: str, kind: BallotKind,
                        opens_at: datetime, closes_at: datetime,
                        turnout_threshold: float | None, group_codes: list[str],
                        branch_codes: list[str]) -> uuid.UUID:
    try:
        scope = check_publishable(
            name=name, kind=kind, opens_at=opens_at, closes_at=closes_at,
            turnout_threshold=turnout_threshold, group_codes=sorted(set(group_codes)),
            branch_codes=sorted(set(branch_codes)))
    except InvalidBallot as exc:
        raise Problem(422, detail=f"The ballot cannot be created: {exc}.",
                      errors=exc.errors) from None
    check_may_manage(caller, scope)
    ballot_id = uuid.uuid4()
    async with ctx.uow(caller.actor) as uow:
        await uow.session.execute(sa.insert(ballots).values(
            ballot_id=ballot_id, name=name, kind=kind.value, status=BallotStatus.DRAFT.value,
            opens_at=opens_at, closes_at=closes_at, turnout_threshold=turnout_threshold,
            scope_group_codes=scope.group_codes, scope_branch_codes=scope.branch_codes,
            created_by=caller.actor))
        await uow.commit()
    return ballot_id


async def open_ballot(ctx: BallotsContext, caller: Caller, ballot_id: uuid.UUID) -> bool:
    """Snapshot the roll and start publishing it. True once every member-enrolled event
    is written (within `open_wait_seconds`); False while that goes on in the background.

    Opening an open ballot whose enrolments are still being written joins that work (a
    retry after a timeout, or after a restart); once they are all written, it is a 409.
    """
    async with ctx.uow(caller.actor) as uow:
        session = uow.session
        ballot = await load_ballot(session, caller, ballot_id, lock="update")
        check_may_manage(caller, ballot.scope)
        if ballot.status is BallotStatus.CLOSED:
            raise Problem(409, detail=f"Ballot {ballot_id} closed at "
                                      f"{ballot.closed_at:%Y-%m-%d %H:%M} UTC; it cannot be "
                                      "opened again.")
        if ballot.status is BallotStatus.OPEN:
            finished = await session.scalar(
                sa.select(enrolments.c.completed_at).where(enrolments.c.ballot_id == ballot_id))
            if finished is not None:
                raise Problem(409, detail=f"Ballot {ballot_id} is already open (since "
                                          f"{ballot.opened_at:%Y-%m-%d %H:%M} UTC).")
        else:
            now = datetime.now(UTC)
            # The roll is copied inside the database: a million members never pass
            # through this process.
            snapshot = await session.execute(sa.insert(roll).from_select(
                ["ballot_id", "member_id", "group_code", "branch_code", "workplace_code",
                 "grade"],
                sa.select(sa.literal(ballot_id, roll.c.ballot_id.type),
                          member_replica.c.member_id, member_replica.c.group_code,
                          member_replica.c.branch_code, member_replica.c.workplace_code,
                          member_replica.c.grade)
                .where(in_ballot_scope(ballot.scope))))
            # An INSERT's result is a CursorResult (execute is typed as any Result).
            eligible = cast("CursorResult[Any]", snapshot).rowcount
            if not eligible:
                raise Problem(409, detail=(
                    "No member known to this service is in the ballot's scope, so the roll "
                    "would be empty. Check its group and branch codes; members arrive here "
                    "from the contacts service's events."))
            await session.execute(
                sa.update(ballots).where(ballots.c.ballot_id == ballot_id).values(
                    status=BallotStatus.OPEN.value, opened_at=now, opened_by=caller.actor,
                    eligible_count=eligible))
            await session.execute(sa.insert(enrolments).values(
                ballot_id=ballot_id, total=eligible, occurred_at=now, actor=caller.actor,
                correlation_id=get_correlation_id()))
            uow.emit(BallotOpened(
                ballot_id=ballot_id, ballot_name=ballot.name, kind=ballot.kind,
                opens_at=ballot.opens_at, closes_at=ballot.closes_at,
                turnout_threshold=ballot.turnout_threshold, scope=ballot.scope,
                eligible_count=eligible), occurred_at=now)
            await uow.commit()
    task = enrolment.start(ctx, ballot_id)
    # Shielded: a client that gives up waiting must not stop the publishing.
    done, _ = await asyncio.wait({task}, timeout=ctx.settings.open_wait_seconds)
    return bool(done)


async def close_ballot(ctx: BallotsContext, caller: Caller, ballot_id: uuid.UUID) -> None:
    async with ctx.uow(caller.actor) as uow:
        session = uow.session
        # The update lock waits for marks in flight (they hold a share lock) and keeps
        # new ones out until the close commits, so voted_count is final.
        ballot = await load_ballot(session, caller, ballot_id, lock="update")
        check_may_manage(caller, ballot.scope)
        if ballot.status is BallotStatus.DRAFT:
            raise Problem(409, detail=f"Ballot {ballot_id} has not opened, so it cannot close.")
        if ballot.status is BallotStatus.CLOSED:
            raise Problem(409, detail=f"Ballot {ballot_id} is already closed (since "
                                      f"{ballot.closed_at:%Y-%m-%d %H:%M} UTC).")
        progress = (await session.execute(
            sa.select(enrolments.c.published, enrolments.c.total, enrolments.c.completed_at)
            .where(enrolments.c.ballot_id == ballot_id))).one()
        if progress.completed_at is None:
            enrolment.start(ctx, ballot_id)
            raise Problem(409, detail=(
                f"Ballot {ballot_id} is still publishing its roll ({progress.published} of "
                f"{progress.total} members enrolled); close it once that is done."))
        voted = await session.scalar(
            sa.select(sa.func.count()).select_from(votes).where(votes.c.ballot_id == ballot_id))
        now = datetime.now(UTC)
        await session.execute(
            sa.update(ballots).where(ballots.c.ballot_id == ballot_id).values(
                status=BallotStatus.CLOSED.value, closed_at=now, closed_by=caller.actor))
        uow.emit(BallotClosed(ballot_id=ballot_id, closed_at=now,
                              eligible_count=ballot.eligible_count or 0,
                              voted_count=voted or 0), occurred_at=now)
        await uow.commit()
