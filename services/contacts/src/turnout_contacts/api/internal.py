"""HTTP, service to service: the mobile numbers the notification service may text, and
the member ids of membership numbers for the ballots service."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Response
from pydantic import BaseModel, ConfigDict, Field

from turnout_kit.auth import Caller, Role, require_roles

from ..service.channels import MAX_BATCH, sms_channels
from ..service.member_ids import MAX_NUMBERS, member_ids
from .deps import Ctx

router = APIRouter(prefix="/internal/v1", tags=["internal"])


class ChannelsIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    member_ids: list[uuid.UUID] = Field(max_length=MAX_BATCH)


class SmsChannel(BaseModel):
    member_id: uuid.UUID
    mobile: str = Field(description="E.164, e.g. +447700900123.")
    first_name: str | None = Field(description="For the greeting; null if not known.")


class ChannelsOut(BaseModel):
    items: list[SmsChannel] = Field(description=(
        "One entry per id that may be texted now (has a mobile, consented to SMS, not "
        "erased). Ids that may not be texted, or are unknown, are absent."))


@router.post("/contact-channels", response_model=ChannelsOut)
async def contact_channels(body: ChannelsIn, ctx: Ctx, response: Response,
                           caller: Annotated[Caller, Depends(require_roles(Role.service))]
                           ) -> Any:
    """For a batch of up to 1,000 member ids, the numbers that may be texted, at send
    time. Service role only."""
    response.headers["Cache-Control"] = "no-store"
    return {"items": await sms_channels(ctx, body.member_ids, actor=caller.actor)}


class MemberIdsIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    membership_numbers: list[str] = Field(max_length=MAX_NUMBERS)


class MemberId(BaseModel):
    membership_number: str
    member_id: uuid.UUID


class MemberIdsOut(BaseModel):
    items: list[MemberId] = Field(description=(
        "One entry per membership number that names a member; unknown numbers are "
        "absent."))


@router.post("/member-ids", response_model=MemberIdsOut)
async def member_ids_of(body: MemberIdsIn, ctx: Ctx, response: Response,
                        caller: Annotated[Caller, Depends(require_roles(Role.service))]
                        ) -> Any:
    """For up to 10,000 membership numbers, the member ids they name (a scrutineer's
    list keyed by membership number, at the ballots service). Service role only."""
    response.headers["Cache-Control"] = "no-store"
    found = await member_ids(ctx, body.membership_numbers)
    return {"items": [{"membership_number": number, "member_id": member_id}
                      for number, member_id in found.items()]}
