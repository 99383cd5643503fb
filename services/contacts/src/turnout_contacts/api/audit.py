"""HTTP: the reveal audit log and the reveal anomalies, for national and admin only."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query
from fastapi.responses import Response
from pydantic import BaseModel

from turnout_kit.auth import Role, require_roles
from turnout_kit.moments import StoredMoment

from ..service import audit
from .deps import Ctx

router = APIRouter(prefix="/v1/audit", tags=["audit"],
                   dependencies=[Depends(require_roles(Role.national, Role.admin))])

Rep = Annotated[str | None, Query(
    max_length=120, description="Who revealed: an actor as logged (`rep:abc`), or a bare "
                                "subject (`abc`) for every role it acted in.")]
Since = Annotated[StoredMoment | None, Query(description="From this time (inclusive).")]
Until = Annotated[StoredMoment | None, Query(description="Before this time (exclusive).")]
Cursor = Annotated[str | None, Query(max_length=40)]
Limit = Annotated[int | None, Query(ge=1, le=500)]


class RevealEntry(BaseModel):
    id: int
    revealed_at: datetime
    revealed_by: str
    role: str
    member_id: uuid.UUID
    reason: str
    fields: list[str]


class RevealPage(BaseModel):
    items: list[RevealEntry]
    next_cursor: str | None


class MemberReveals(BaseModel):
    member_id: uuid.UUID
    items: list[RevealEntry]


class AnomalyEntry(BaseModel):
    id: int
    detected_at: datetime
    subject: str
    member_id: uuid.UUID
    reveals_in_last_hour: int
    hourly_limit: int


class AnomalyPage(BaseModel):
    items: list[AnomalyEntry]
    next_cursor: str | None


@router.get("/reveals", response_model=RevealPage)
async def list_reveals(ctx: Ctx, rep: Rep = None, member_id: uuid.UUID | None = None,
                       since: Since = None, until: Until = None, cursor: Cursor = None,
                       limit: Limit = None) -> Any:
    """Who revealed whose contact details, when and why; newest first."""
    return await audit.list_reveals(ctx, rep=rep, member_id=member_id, since=since,
                                    until=until, cursor=cursor, limit=limit)


@router.get("/reveals/members/{member_id}", response_model=MemberReveals,
            responses={200: {"content": {"text/csv": {}}},
                       404: {"description": "No such member."}})
async def export_member_reveals(
        member_id: uuid.UUID, ctx: Ctx,
        format: Annotated[Literal["csv", "json"], Query()] = "csv") -> Any:
    """Every reveal of one member's details, oldest first, for a subject access request:
    a CSV download by default, JSON with `format=json`."""
    entries = await audit.member_reveals(ctx, member_id)
    if format == "json":
        return {"member_id": member_id, "items": entries}
    return Response(
        audit.reveals_csv(entries), media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="reveals-{member_id}.csv"',
                 "Cache-Control": "no-store"})


@router.get("/anomalies", response_model=AnomalyPage)
async def list_anomalies(ctx: Ctx, rep: Rep = None, since: Since = None, until: Until = None,
                         cursor: Cursor = None, limit: Limit = None) -> Any:
    """Callers who went past the hourly reveal limit: one entry per breach, with the
    number of reveals granted and refused in that hour."""
    return await audit.list_anomalies(ctx, rep=rep, since=since, until=until, cursor=cursor,
                                      limit=limit)
