"""HTTP: revealing a member's contact values, with a reason that goes into the audit log."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Response
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from turnout_kit.auth import Caller, require_roles

from ..service import reveal as reveals
from .deps import Ctx
from .members import PEOPLE

router = APIRouter(prefix="/v1", tags=["reveal"])

RevealField = Literal["first_name", "last_name", "mobile", "personal_email"]


class RevealIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: Annotated[str, StringConstraints(strip_whitespace=True, min_length=5,
                                             max_length=500)] = Field(
        description="Why you need the values (5-500 characters), e.g. 'phone banking for "
                    "the pay ballot'. Written to the audit log; contact values and the "
                    "member's name are taken out of it before it is stored.")
    fields: list[RevealField] | None = Field(
        default=None, min_length=1,
        description="Only these values (default: all four). Ask for what you need.")


class RevealOut(BaseModel):
    member_id: uuid.UUID
    first_name: str | None = None
    last_name: str | None = None
    mobile: str | None = Field(default=None, description="E.164, e.g. +447700900123.")
    personal_email: str | None = None
    fields: list[RevealField] = Field(description="The values disclosed (and audited).")
    revealed_at: datetime


@router.post(
    "/members/{member_id}/reveal", response_model=RevealOut,
    responses={404: {"description": "No such member in your scope."},
               410: {"description": "The member's personal data has been erased."},
               429: {"description": "Hourly reveal limit reached (see Retry-After); logged."}})
async def reveal_member(member_id: uuid.UUID, body: RevealIn, ctx: Ctx,
                        caller: Annotated[Caller, Depends(require_roles(*PEOPLE))],
                        response: Response) -> Any:
    """The member's unmasked contact values. Every reveal is audited (who, whom, when,
    why, which values) and each caller may reveal a limited number per rolling hour."""
    wanted = tuple(dict.fromkeys(body.fields)) if body.fields else reveals.FIELDS
    revealed = await reveals.reveal(ctx, caller, member_id, body.reason, wanted)
    # Revealed values must not linger in a browser or proxy cache.
    response.headers["Cache-Control"] = "no-store"
    return {"member_id": member_id, **revealed.values, "fields": revealed.fields,
            "revealed_at": revealed.revealed_at}
