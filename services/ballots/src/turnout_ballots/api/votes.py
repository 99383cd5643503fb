"""HTTP: marking members voted, retracting marks, reading a member's entry on a roll."""

from __future__ import annotations

import uuid
from typing import Any, Literal

from fastapi import APIRouter, Response, status
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from turnout_events.ballots import RetractionReason, VoteSource
from turnout_kit.auth import CurrentCaller

from ..service import marks, queries
from ..service import votes as commands
from .deps import Ctx

router = APIRouter(prefix="/v1", tags=["votes"])


class MarkIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    # The other sources have their own ways in: conversations (contacts' member-contacted),
    # SMS replies (notifications' reply-received), scrutineers (votes:import).
    source: Literal["rep", "member_self_report"] = Field(description=(
        "rep: a rep saw or was told the member voted; member_self_report: the member's "
        "own report, passed on."))


class MarkOut(BaseModel):
    ballot_id: uuid.UUID
    member_id: uuid.UUID
    source: VoteSource = Field(description="The source of the mark in force, which may be "
                                           "an earlier one than this request's.")
    actor: str
    voted_at: AwareDatetime
    conversation_id: uuid.UUID | None


class RetractIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason_code: RetractionReason


class RetractionOut(BaseModel):
    retracted: MarkOut
    reason_code: RetractionReason
    retracted_by: str
    retracted_at: AwareDatetime


class Placement(BaseModel):
    group_code: str
    branch_code: str
    workplace_code: str | None
    grade: str | None


class RetractionView(BaseModel):
    source: VoteSource
    actor: str
    voted_at: AwareDatetime
    reason_code: RetractionReason
    retracted_by: str
    retracted_at: AwareDatetime


class ReplacementView(BaseModel):
    request_id: uuid.UUID
    reason: str
    requested_by: str
    requested_at: AwareDatetime


class RollEntryOut(BaseModel):
    ballot_id: uuid.UUID
    member_id: uuid.UUID
    placement: Placement = Field(description="As at the ballot's opening.")
    voted: bool
    mark: MarkOut | None
    retractions: list[RetractionView]
    replacement_requests: list[ReplacementView]


VOTE_PATH = "/ballots/{ballot_id}/votes/{member_id}"


@router.put(VOTE_PATH, response_model=MarkOut, responses={
    201: {"description": "Marked voted now."},
    200: {"description": "Already voted: the mark in force, unchanged; nothing published."}})
async def mark_vote(ballot_id: uuid.UUID, member_id: uuid.UUID, body: MarkIn, ctx: Ctx,
                    caller: CurrentCaller, response: Response) -> Any:
    mark, created = await marks.mark_vote(ctx, caller, ballot_id, member_id,
                                             VoteSource(body.source))
    response.status_code = status.HTTP_201_CREATED if created else status.HTTP_200_OK
    return queries.mark_view(mark)


@router.delete(VOTE_PATH, response_model=RetractionOut)
async def retract_vote(ballot_id: uuid.UUID, member_id: uuid.UUID, body: RetractIn, ctx: Ctx,
                       caller: CurrentCaller) -> Any:
    retraction = await commands.retract_vote(ctx, caller, ballot_id, member_id,
                                             body.reason_code)
    return {"retracted": queries.mark_view(retraction.mark),
            "reason_code": retraction.reason_code, "retracted_by": retraction.retracted_by,
            "retracted_at": retraction.retracted_at}


@router.get("/ballots/{ballot_id}/roll/{member_id}", response_model=RollEntryOut)
async def roll_entry(ballot_id: uuid.UUID, member_id: uuid.UUID, ctx: Ctx,
                     caller: CurrentCaller) -> Any:
    return await queries.roll_entry(ctx, caller, ballot_id, member_id)
