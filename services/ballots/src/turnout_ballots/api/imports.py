"""HTTP: a scrutineer's list of members who have voted."""

from __future__ import annotations

import uuid
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from turnout_kit.auth import CurrentCaller, Role
from turnout_kit.problems import Problem

from ..domain.scrutineer import InvalidList, parse_list
from ..service.votes import import_scrutineer_list
from .deps import Ctx

router = APIRouter(prefix="/v1", tags=["votes"])

IMPORTERS = (Role.national, Role.admin, Role.organiser, Role.service)


class ImportOut(BaseModel):
    lines: int = Field(description="Lines naming a member (header and blank lines aside).")
    members: int = Field(description="Distinct members listed.")
    marked: int = Field(description="Members marked voted by this list.")
    already_voted: int = Field(description="Listed members already marked, left as they were.")
    duplicate_lines: int


@router.post("/ballots/{ballot_id}/votes:import", response_model=ImportOut,
             openapi_extra={"requestBody": {"content": {
                 "text/csv": {"schema": {"type": "string"}},
                 "multipart/form-data": {"schema": {
                     "type": "object", "properties": {"file": {"type": "string",
                                                               "format": "binary"}}}}}}})
async def import_votes(ballot_id: uuid.UUID, request: Request, ctx: Ctx,
                       caller: CurrentCaller) -> Any:
    """A CSV with a header line and a `member_id` or a `membership_number` column (other
    columns are ignored; `member_id` wins if both), as the body (`text/csv`) or as the
    `file` of a form. Membership numbers are matched to members by the contacts service.
    Every line is checked first: a line that names no member, or a member not on the
    roll in your scope, refuses the whole list (422, every such line listed) and nothing
    is marked."""
    if caller.role not in IMPORTERS:
        raise Problem(403, detail="Scrutineer lists are imported by national, admin and "
                                  "organiser users.")
    raw = await _body(request)
    try:
        listing = parse_list(raw, max_rows=ctx.settings.max_import_rows)
    except InvalidList as exc:
        raise Problem(422, detail=f"The list cannot be read: {exc}.") from None
    return await import_scrutineer_list(ctx, caller, ballot_id, listing)


async def _body(request: Request) -> bytes:
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        form = await request.form()
        upload = form.get("file")
        if upload is None or isinstance(upload, str):
            raise Problem(422, detail="Send the list as the form's `file` field.")
        return await upload.read()
    return await request.body()
