"""HTTP: creating, opening, closing and reading ballots."""

from __future__ import annotations

import uuid
from typing import Any

from fastapi import APIRouter, Response, status
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from turnout_events.ballots import BallotKind, BallotName
from turnout_kit.auth import CurrentCaller
from turnout_kit.moments import StoredMoment

from ..domain.ballot import BallotStatus
from ..service import ballots as commands
from ..service import queries
from .deps import Ctx

router = APIRouter(prefix="/v1", tags=["ballots"])


class Scope(BaseModel):
    model_config = ConfigDict(extra="forbid")
    group_codes: list[str] = Field(default_factory=list, max_length=1000)
    branch_codes: list[str] = Field(default_factory=list, max_length=10000)


class BallotIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: BallotName
    kind: BallotKind
    opens_at: StoredMoment
    closes_at: StoredMoment
    turnout_threshold: float | None = Field(default=0.5, gt=0, le=1, description=(
        "Share of eligible members who must vote; null for a ballot under rules with none."))
    scope: Scope


class Enrolment(BaseModel):
    total: int
    published: int = Field(description="member-enrolled events written so far.")
    complete: bool


class Counts(BaseModel):
    within: str = Field(description="'all', or 'your scope' for reps and organisers.")
    eligible: int
    voted: int
    turnout: float | None
    votes_needed: int | None = Field(description=(
        "ceil(threshold x eligible) - voted, floored at 0; null with no threshold."))
    replacement_requests: int


class BallotOut(BaseModel):
    ballot_id: uuid.UUID
    name: str
    kind: BallotKind
    status: BallotStatus
    opens_at: AwareDatetime
    closes_at: AwareDatetime
    turnout_threshold: float | None
    scope: Scope
    created_at: AwareDatetime
    opened_at: AwareDatetime | None
    closed_at: AwareDatetime | None
    enrolment: Enrolment | None = Field(description="Publishing the roll; null before opening.")
    counts: Counts | None = Field(description="Null before opening.")


@router.post("/ballots", response_model=BallotOut, status_code=status.HTTP_201_CREATED)
async def create_ballot(body: BallotIn, ctx: Ctx, caller: CurrentCaller,
                        response: Response) -> Any:
    ballot_id = await commands.create_ballot(
        ctx, caller, name=body.name, kind=body.kind, opens_at=body.opens_at,
        closes_at=body.closes_at, turnout_threshold=body.turnout_threshold,
        group_codes=body.scope.group_codes, branch_codes=body.scope.branch_codes)
    response.headers["Location"] = f"/v1/ballots/{ballot_id}"
    return await queries.get_ballot(ctx, caller, ballot_id)


@router.post("/ballots/{ballot_id}/open", response_model=BallotOut, responses={
    202: {"description": "Open, with the roll's member-enrolled events still being written; "
                         "follow `enrolment` on GET."}})
async def open_ballot(ballot_id: uuid.UUID, ctx: Ctx, caller: CurrentCaller,
                      response: Response) -> Any:
    if not await commands.open_ballot(ctx, caller, ballot_id):
        response.status_code = status.HTTP_202_ACCEPTED
    return await queries.get_ballot(ctx, caller, ballot_id)


@router.post("/ballots/{ballot_id}/close", response_model=BallotOut)
async def close_ballot(ballot_id: uuid.UUID, ctx: Ctx, caller: CurrentCaller) -> Any:
    await commands.close_ballot(ctx, caller, ballot_id)
    return await queries.get_ballot(ctx, caller, ballot_id)


@router.get("/ballots/{ballot_id}", response_model=BallotOut)
async def get_ballot(ballot_id: uuid.UUID, ctx: Ctx, caller: CurrentCaller) -> Any:
    return await queries.get_ballot(ctx, caller, ballot_id)
