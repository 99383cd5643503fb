"""HTTP: rebuilding the projections from the event log (admins only)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Response
from pydantic import BaseModel

from turnout_kit.auth import Caller, Role, require_roles
from turnout_kit.problems import Problem

from ..service import rebuild
from .deps import Ctx

router = APIRouter(prefix="/v1/admin", tags=["admin"])

Admin = Annotated[Caller, Depends(require_roles(Role.admin))]


class RebuildView(BaseModel):
    rebuild_id: uuid.UUID
    state: str  # folding, swapping, done, failed
    events_folded: int
    events_total: int  # the records in the topics, as last seen while folding
    requested_by: str
    error: str | None
    started_at: datetime
    updated_at: datetime
    finished_at: datetime | None


def _view(status: rebuild.RebuildStatus) -> RebuildView:
    return RebuildView.model_validate(status, from_attributes=True)


@router.post("/rebuild", status_code=202, response_model=RebuildView, responses={
    409: {"description": "A rebuild is already running (its id is `rebuild_id`)."}})
async def start_rebuild(ctx: Ctx, caller: Admin, response: Response) -> RebuildView:
    """Drop and rebuild the projections from the beginning of the topics. The current
    numbers are served until the new ones are complete, then replaced in one go; stream
    clients receive a `reset`. Follow it at the `Location` returned."""
    try:
        rebuild_id = await rebuild.start_rebuild(ctx, caller.actor)
    except rebuild.RebuildRunning as running:
        raise Problem(409, detail="A rebuild is already running; follow it instead.",
                      rebuild_id=str(running.rebuild_id) if running.rebuild_id else None
                      ) from None
    status = await rebuild.rebuild_status(ctx, rebuild_id)
    assert status is not None
    response.headers["Location"] = f"/v1/admin/rebuild/{rebuild_id}"
    return _view(status)


@router.get("/rebuild/{rebuild_id}", response_model=RebuildView)
async def get_rebuild(rebuild_id: uuid.UUID, ctx: Ctx, caller: Admin) -> RebuildView:
    """A rebuild's progress: events folded of the events in the topics, and its state."""
    status = await rebuild.rebuild_status(ctx, rebuild_id)
    if status is None:
        raise Problem(404, detail="No such rebuild.")
    return _view(status)
