"""HTTP: the ballots the projections know of, for the dashboard's ballot picker."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel

from turnout_kit.auth import CurrentCaller

from ..service import queries
from .deps import Ctx

router = APIRouter(prefix="/v1", tags=["turnout"])


class BallotSummary(BaseModel):
    ballot_id: uuid.UUID
    name: str | None
    kind: str | None
    threshold: float | None
    opens_at: datetime | None
    closes_at: datetime | None
    closed_at: datetime | None
    level: str
    eligible: int
    voted: int


class BallotList(BaseModel):
    items: list[BallotSummary]


@router.get("/ballots", response_model=BallotList)
async def list_ballots(ctx: Ctx, caller: CurrentCaller) -> Any:
    """Ballots with members in your scope, open ones first, newest first; eligible and
    voted are the totals of `level`, the widest level you see whole. A ballot's name
    and threshold are null until its ballot-opened event has been folded."""
    return {"items": await queries.list_ballots(ctx, caller)}
