"""HTTP: what the sandbox provider "sent", newest first (national and admin only: the
texts carry first names)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import sqlalchemy as sa
from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel

from turnout_kit.auth import Role, require_roles

from ..db.tables import sandbox_messages
from .deps import Ctx

router = APIRouter(prefix="/v1/sandbox", tags=["sandbox"],
                   dependencies=[Depends(require_roles(Role.national, Role.admin))])


class SandboxMessage(BaseModel):
    id: int
    provider_message_id: str
    to: str
    body: str
    accepted_at: datetime


class SandboxPage(BaseModel):
    items: list[SandboxMessage]


@router.get("/messages", response_model=SandboxPage)
async def list_messages(ctx: Ctx, limit: Annotated[int, Query(ge=1, le=1000)] = 100,
                        before_id: Annotated[int | None, Query(ge=1)] = None) -> Any:
    query = sa.select(sandbox_messages).order_by(sandbox_messages.c.id.desc()).limit(limit)
    if before_id is not None:
        query = query.where(sandbox_messages.c.id < before_id)
    assert ctx.sessions is not None
    async with ctx.sessions() as session:
        rows = (await session.execute(query)).all()
    return {"items": [{"id": r.id, "provider_message_id": r.provider_message_id,
                       "to": r.to_masked, "body": r.body, "accepted_at": r.accepted_at}
                      for r in rows]}
