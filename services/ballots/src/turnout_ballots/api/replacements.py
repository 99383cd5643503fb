"""HTTP: requesting replacement ballot papers."""

from __future__ import annotations

import uuid
from typing import Any

from fastapi import APIRouter, status
from pydantic import AwareDatetime, BaseModel, ConfigDict

from turnout_events.ballots import ReplacementReason
from turnout_kit.auth import CurrentCaller

from ..service.replacements import request_replacement
from .deps import Ctx

router = APIRouter(prefix="/v1", tags=["replacements"])


class ReplacementIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    member_id: uuid.UUID
    reason: ReplacementReason


class ReplacementOut(BaseModel):
    request_id: uuid.UUID
    ballot_id: uuid.UUID
    member_id: uuid.UUID
    reason: ReplacementReason
    requested_by: str
    requested_at: AwareDatetime


@router.post("/ballots/{ballot_id}/replacement-requests", response_model=ReplacementOut,
             status_code=status.HTTP_201_CREATED)
async def create_request(ballot_id: uuid.UUID, body: ReplacementIn, ctx: Ctx,
                         caller: CurrentCaller) -> Any:
    return await request_replacement(ctx, caller, ballot_id, body.member_id, body.reason)
