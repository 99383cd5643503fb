"""Replacement ballot papers: a member may need several (lost, then spoiled), and each
request is recorded and published on its own."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import sqlalchemy as sa

from turnout_events.ballots import ReplacementReason, ReplacementRequested
from turnout_kit.auth import Caller

from ..context import BallotsContext
from ..db.tables import replacement_requests
from .marks import member_on_open_ballot


async def request_replacement(ctx: BallotsContext, caller: Caller, ballot_id: uuid.UUID,
                              member_id: uuid.UUID, reason: ReplacementReason) -> dict:
    request_id = uuid.uuid4()
    now = datetime.now(UTC)
    async with ctx.uow(caller.actor) as uow:
        await member_on_open_ballot(uow.session, caller, ballot_id, member_id,
                                    action="replacement ballots can be requested")
        await uow.session.execute(sa.insert(replacement_requests).values(
            request_id=request_id, ballot_id=ballot_id, member_id=member_id,
            reason=reason.value, requested_by=caller.actor, requested_at=now))
        uow.emit(ReplacementRequested(ballot_id=ballot_id, member_id=member_id,
                                      request_id=request_id, reason=reason), occurred_at=now)
        await uow.commit()
    return {"request_id": request_id, "ballot_id": ballot_id, "member_id": member_id,
            "reason": reason, "requested_by": caller.actor, "requested_at": now}
