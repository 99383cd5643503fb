"""HTTP: reading members, changing contact details, placement, logging conversations."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, status
from pydantic import BaseModel, ConfigDict, Field

from turnout_events.contacts import ConversationChannel, ConversationOutcome
from turnout_kit.auth import CurrentCaller, Role
from turnout_kit.moments import StoredMoment
from turnout_kit.problems import Problem

from ..service import members as commands
from ..service import queries
from .deps import Ctx

router = APIRouter(prefix="/v1", tags=["members"])

PEOPLE = (Role.rep, Role.organiser, Role.national, Role.admin)


class Placement(BaseModel):
    group_code: str | None
    branch_code: str | None
    workplace_code: str | None
    grade: str | None


class MemberOut(BaseModel):
    member_id: uuid.UUID
    membership_number: str
    first_name: str | None
    last_name: str | None
    placement: Placement
    mobile: str | None = Field(description="Masked, e.g. 07••• ••• 123; reveal to see it.")
    personal_email: str | None = Field(description="Masked, e.g. j•••@•••.uk.")
    has_mobile: bool
    has_email: bool
    sms_consent: bool
    email_consent: bool
    hard_to_reach: bool
    erased: bool
    missing_from_last_import: bool
    version: int


class MemberPage(BaseModel):
    items: list[MemberOut]
    next_cursor: str | None


class ContactPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    mobile: str | None = Field(
        default=None, max_length=40,
        description="Any usual format; UK numbers may omit +44. null removes it.")
    personal_email: str | None = Field(default=None, max_length=320)
    sms_consent: bool | None = None
    email_consent: bool | None = None


class PlacementPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    group_code: str | None = Field(default=None, max_length=40)
    branch_code: str | None = Field(default=None, max_length=40)
    workplace_code: str | None = Field(default=None, max_length=40)
    grade: str | None = Field(default=None, max_length=40)


class ConversationIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ballot_id: uuid.UUID | None = Field(default=None, description=(
        'The ballot the conversation was about. Required when outcome is "voted": that '
        "outcome marks the member's vote in this ballot."))
    channel: ConversationChannel
    outcome: ConversationOutcome
    note: str | None = Field(default=None, max_length=2000)
    contacted_at: StoredMoment | None = None


class ConversationOut(BaseModel):
    conversation_id: uuid.UUID


@router.get("/members", response_model=MemberPage)
async def list_members(ctx: Ctx, caller: CurrentCaller,
                       branch: Annotated[str | None, Query(max_length=40)] = None,
                       q: Annotated[str | None, Query(max_length=200)] = None,
                       cursor: Annotated[str | None, Query(max_length=100)] = None,
                       limit: Annotated[int | None, Query(ge=1, le=500)] = None) -> Any:
    _people_only(caller)
    return await queries.list_members(ctx, caller, branch=branch, q=q, cursor=cursor,
                                      limit=limit)


@router.get("/members/{member_id}", response_model=MemberOut)
async def get_member(member_id: uuid.UUID, ctx: Ctx, caller: CurrentCaller) -> Any:
    _people_only(caller)
    return await queries.get_member(ctx, caller, member_id)


@router.patch("/members/{member_id}/contact", response_model=MemberOut)
async def patch_contact(member_id: uuid.UUID, body: ContactPatch, ctx: Ctx,
                        caller: CurrentCaller) -> Any:
    _people_only(caller)
    given = body.model_fields_set
    if not given:
        raise Problem(422, detail="Nothing to change: send mobile, personal_email, "
                                  "sms_consent and/or email_consent.")
    change = commands.ContactChange(
        mobile=body.mobile if "mobile" in given else commands.UNSET,
        email=body.personal_email if "personal_email" in given else commands.UNSET,
        sms_consent=body.sms_consent if "sms_consent" in given else commands.UNSET,
        email_consent=body.email_consent if "email_consent" in given else commands.UNSET,
    )
    await commands.update_contact(ctx, caller, member_id, change)
    return await queries.get_member(ctx, caller, member_id)


@router.patch("/members/{member_id}/placement", response_model=MemberOut, responses={
    403: {"description": "The new placement is outside the caller's branches (a rep) or "
                         "groups (an organiser): transfers go through whoever holds both "
                         "ends."}})
async def patch_placement(member_id: uuid.UUID, body: PlacementPatch, ctx: Ctx,
                          caller: CurrentCaller) -> Any:
    _people_only(caller)
    given = body.model_fields_set
    if not given:
        raise Problem(422, detail="Nothing to change: send group_code, branch_code, "
                                  "workplace_code and/or grade.")
    for required in ("group_code", "branch_code"):
        if required in given and not getattr(body, required):
            raise Problem(422, detail=f"{required} cannot be removed, only changed.")
    await commands.update_placement(
        ctx, caller, member_id,
        **{name: getattr(body, name) for name in given})
    return await queries.get_member(ctx, caller, member_id)


@router.post("/members/{member_id}/conversations", response_model=ConversationOut,
             status_code=status.HTTP_201_CREATED)
async def log_conversation(member_id: uuid.UUID, body: ConversationIn, ctx: Ctx,
                           caller: CurrentCaller) -> Any:
    _people_only(caller)
    when = body.contacted_at
    if when is not None and when > datetime.now(when.tzinfo):
        raise Problem(422, detail="contacted_at is in the future.")
    conversation_id = await commands.log_conversation(
        ctx, caller, member_id, channel=body.channel, outcome=body.outcome,
        ballot_id=body.ballot_id, note=body.note, contacted_at=body.contacted_at)
    return {"conversation_id": conversation_id}


def _people_only(caller: Any) -> None:
    # The service role is for machine calls (internal endpoints), not member reads.
    if caller.role not in PEOPLE:
        raise Problem(403, detail="This endpoint is for reps, organisers, national and admin.")
