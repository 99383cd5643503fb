"""HTTP: members' replies to reminders, for the people following a ballot up (reps see
their branches, organisers their groups)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, Field

from turnout_events.notifications import ReplyIntent
from turnout_kit.auth import Caller, Role, require_roles

from ..service import inbound
from .deps import Ctx

router = APIRouter(prefix="/v1", tags=["replies"])

Reader = Annotated[Caller, Depends(require_roles(Role.national, Role.admin,
                                                 Role.organiser, Role.rep))]


class ReplyOut(BaseModel):
    reply_id: uuid.UUID
    member_id: uuid.UUID
    ballot_id: uuid.UUID
    in_reply_to: uuid.UUID | None = Field(description="The reminder replied to.")
    intent: ReplyIntent
    text: str | None = Field(description=(
        "What the member wrote, for unclassified replies only (a YES, NO or STOP is "
        "already acted on)."))
    group_code: str | None
    branch_code: str | None
    received_at: datetime


class RepliesPage(BaseModel):
    items: list[ReplyOut]
    next_cursor: str | None = Field(description=(
        "Pass as `cursor` for the next page; null on the last."))


@router.get("/replies", response_model=RepliesPage)
async def list_replies(ctx: Ctx, caller: Reader, ballot_id: uuid.UUID,
                       intent: ReplyIntent | None = None,
                       limit: Annotated[int, Query(ge=1, le=500)] = 100,
                       cursor: Annotated[str | None, Query(max_length=200)] = None) -> Any:
    """A ballot's replies in your scope, newest first, a page at a time."""
    return await inbound.list_replies(ctx, caller, ballot_id, intent=intent, limit=limit,
                                      cursor=cursor)
