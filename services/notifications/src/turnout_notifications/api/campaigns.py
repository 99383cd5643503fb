"""HTTP: reminder campaigns — create, list, read with counts, pause, resume, cancel."""

from __future__ import annotations

import uuid
from datetime import datetime, time
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from fastapi import APIRouter, Query, Response, status
from pydantic import (
    AnyHttpUrl,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
)

from turnout_events.common import CODE_PATTERN
from turnout_kit.auth import CurrentCaller

from ..domain.schedule import MAX_SLOTS
from ..service import campaigns as service
from .deps import Ctx

router = APIRouter(prefix="/v1", tags=["campaigns"])

Code = Annotated[str, StringConstraints(pattern=CODE_PATTERN)]


class QuietHoursIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    start: time = Field(description="Local time the quiet window starts, e.g. 21:00.")
    end: time = Field(description="Local time it ends, e.g. 09:00 (may wrap midnight).")
    timezone: str = Field(default="Europe/London", max_length=60)

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError("not an IANA time zone such as Europe/London") from None
        return value


class AudienceIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    group_codes: list[Code] = Field(default_factory=list, max_length=1000)
    branch_codes: list[Code] = Field(default_factory=list, max_length=10000)
    workplace_codes: list[Code] = Field(default_factory=list, max_length=10000)


class CampaignIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ballot_id: uuid.UUID
    channel: Literal["sms"] = "sms"
    template: str = Field(min_length=1, max_length=480, description=(
        "Text with placeholders {first_name}, {ballot_name}, {days_left}, {link}."))
    link: AnyHttpUrl | None = Field(default=None, description="What {link} becomes.")
    schedule: list[Annotated[str, StringConstraints(min_length=1, max_length=60)]] = Field(
        min_length=1, max_length=MAX_SLOTS, description=(
            "Send times: ISO 8601 times with an offset, and/or durations before the ballot "
            "closes such as P3D and P1D."))
    quiet_hours: QuietHoursIn | None = Field(default=None, description=(
        "No sends inside this window; default 21:00-09:00 Europe/London."))
    max_per_day: int | None = Field(default=None, ge=1, le=10, description=(
        "Messages per member per 24 hours across all campaigns; default and most: the "
        "deployment's NOTIFICATIONS_MAX_PER_DAY (1: never twice in a day)."))
    audience: AudienceIn | None = Field(default=None, description=(
        "Narrow the audience: members of any listed group AND any listed branch AND any "
        "listed workplace (an empty list does not narrow). Always: enrolled, not voted, "
        "SMS consent, has a mobile, not opted out."))


class QuietHoursOut(BaseModel):
    start: time
    end: time
    timezone: str


class AudienceOut(BaseModel):
    group_codes: list[str]
    branch_codes: list[str]
    workplace_codes: list[str]


class SlotOut(BaseModel):
    slot: int
    spec: str
    due_at: datetime
    state: str
    selected_at: datetime | None


class SkippedOut(BaseModel):
    voted: int
    no_consent: int
    no_mobile: int
    capped: int
    opted_out: int
    quiet_hours_deferred: int = Field(description=(
        "Held back by quiet hours at least once (and sent once they ended)."))


class CountsOut(BaseModel):
    queued: int
    sent: int = Field(description="Handed to the provider (delivered or not yet known).")
    delivered: int
    failed: int
    cancelled: int
    skipped: SkippedOut


class CampaignSummary(BaseModel):
    campaign_id: uuid.UUID
    ballot_id: uuid.UUID
    channel: str
    template: str
    link: str | None
    status: Literal["active", "paused", "cancelled"]
    quiet_hours: QuietHoursOut
    max_per_day: int
    audience: AudienceOut
    created_by: str
    created_at: datetime
    slots: list[SlotOut]


class CampaignPage(BaseModel):
    items: list[CampaignSummary]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page.")


class CampaignOut(CampaignSummary):
    counts: CountsOut
    counts_branch_codes: list[str] | None = Field(description=(
        "The counts cover only these branches (a rep's); null: the whole campaign."))


@router.post("/campaigns", response_model=CampaignOut, status_code=status.HTTP_201_CREATED)
async def create_campaign(body: CampaignIn, ctx: Ctx, caller: CurrentCaller,
                          response: Response) -> Any:
    """Create a reminder campaign for an open ballot (national, admin; organisers within
    their groups)."""
    audience = body.audience or AudienceIn()
    quiet = body.quiet_hours
    campaign_id = await service.create_campaign(ctx, caller, service.CampaignSpec(
        ballot_id=body.ballot_id, channel=body.channel, template=body.template,
        schedule=list(body.schedule), link=str(body.link) if body.link else None,
        quiet_start=quiet.start if quiet else None, quiet_end=quiet.end if quiet else None,
        timezone=quiet.timezone if quiet else None, max_per_day=body.max_per_day,
        group_codes=audience.group_codes, branch_codes=audience.branch_codes,
        workplace_codes=audience.workplace_codes))
    response.headers["Location"] = f"/v1/campaigns/{campaign_id}"
    return await service.get_campaign(ctx, caller, campaign_id)


@router.get("/campaigns", response_model=CampaignPage)
async def list_campaigns(
        ctx: Ctx, caller: CurrentCaller, ballot_id: uuid.UUID | None = None,
        status: Literal["active", "paused", "cancelled"] | None = None,
        cursor: Annotated[str | None, Query(max_length=200)] = None,
        limit: Annotated[int, Query(ge=1, le=200)] = 50) -> Any:
    """The campaigns you may read, newest first: national and admin all of them,
    organisers those of their groups, reps those reaching their branches."""
    return await service.list_campaigns(ctx, caller, ballot_id=ballot_id, status=status,
                                        cursor=cursor, limit=limit)


@router.get("/campaigns/{campaign_id}", response_model=CampaignOut)
async def get_campaign(campaign_id: uuid.UUID, ctx: Ctx, caller: CurrentCaller) -> Any:
    """A campaign with its slots and counts: queued, sent, delivered, failed, and skipped
    by reason (a rep's counts are those of their branches)."""
    return await service.get_campaign(ctx, caller, campaign_id)


def _action(action: str):
    async def endpoint(campaign_id: uuid.UUID, ctx: Ctx, caller: CurrentCaller) -> Any:
        await service.change_status(ctx, caller, campaign_id, action)
        return await service.get_campaign(ctx, caller, campaign_id)

    endpoint.__name__ = f"{action}_campaign"
    endpoint.__doc__ = {
        "pause": "Stop sending until resumed; due slots wait, queued messages stay queued.",
        "resume": "Carry on from where the campaign was paused.",
        "cancel": "Stop for good: queued messages are cancelled, no slot runs again.",
    }[action]
    return endpoint


for _name in ("pause", "resume", "cancel"):
    router.add_api_route(f"/campaigns/{{campaign_id}}:{_name}", _action(_name),
                         methods=["POST"], response_model=CampaignOut)
