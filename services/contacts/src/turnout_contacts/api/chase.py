"""HTTP: the chase list of a ballot, best prospects first (see service/chase.py)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from turnout_events.contacts import ConversationOutcome
from turnout_kit.auth import Caller, CurrentCaller
from turnout_kit.problems import Problem

from ..service import chase
from ..service.chase import ChaseTier
from .deps import Ctx
from .members import PEOPLE, MemberOut

router = APIRouter(prefix="/v1", tags=["chase"])


class ChaseItem(MemberOut):
    tier: ChaseTier = Field(description=(
        "will_vote > undecided > not_contacted > no_answer > wont_vote, from the latest "
        "conversation in this ballot."))
    last_outcome: ConversationOutcome | None = Field(
        description="The latest conversation's outcome in this ballot; null if none.")
    last_contacted_at: datetime | None


class ChasePage(BaseModel):
    items: list[ChaseItem]
    next_cursor: str | None


@router.get("/ballots/{ballot_id}/chase-list", response_model=ChasePage)
async def chase_list(ballot_id: uuid.UUID, ctx: Ctx, caller: CurrentCaller,
                     branch: Annotated[str | None, Query(
                         max_length=40,
                         description="Narrow to one branch of your scope; a branch outside "
                                     "it gives an empty list.")] = None,
                     cursor: Annotated[str | None, Query(max_length=200)] = None,
                     limit: Annotated[int | None, Query(ge=1, le=chase.MAX_PAGE)] = None,
                     ) -> Any:
    """Members enrolled in the ballot who have not voted, best prospects first; those who
    asked not to be contacted are left out, hard-to-reach members come last."""
    _people_only(caller)
    return await chase.chase_list(ctx, caller, ballot_id, branch=branch or None,
                                  cursor=cursor or None, limit=limit)


def _people_only(caller: Caller) -> None:
    if caller.role not in PEOPLE:
        raise Problem(403, detail="The chase list is for reps, organisers, national and admin.")

