"""HTTP: importing the roster (the membership system's CSV export), national and admin
only. The file comes as a multipart upload (field `file`, what a browser form or
`curl -F file=@roster.csv` sends) or as the raw body (`text/csv`,
`curl --data-binary @roster.csv`)."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, Field
from starlette.datastructures import UploadFile

from turnout_kit.auth import Caller, Role, require_roles
from turnout_kit.problems import Problem

from ..domain.roster import ROSTER_COLUMNS
from ..service import roster
from .deps import Ctx

router = APIRouter(prefix="", tags=["imports"])

Importer = Annotated[Caller, Depends(require_roles(Role.national, Role.admin))]

# Types a CSV file is sent with in practice (Windows labels .csv as an Excel type).
CSV_TYPES = frozenset({"text/csv", "application/csv", "text/plain", "application/octet-stream",
                       "application/vnd.ms-excel"})


class ImportOut(BaseModel):
    import_id: uuid.UUID
    rows: int = Field(description="Member rows in the file.")
    created: int = Field(description="New members (one member-registered event each).")
    updated: int = Field(description="Members the membership system changed since the "
                                     "previous import.")
    unchanged: int
    missing: int = Field(description=(
        "Members in the directory but not in this file. They are not deleted: they are "
        "flagged `missing_from_last_import` for review (erasure is a separate, deliberate "
        "step), and the flag clears when a later import lists them."))


_REQUEST_BODY = {
    "required": True,
    "description": ("The roster as CSV (UTF-8, a BOM is fine), header: "
                    + ", ".join(ROSTER_COLUMNS)
                    + ". Any bad row: 422 listing every bad row, and nothing imported."),
    "content": {
        "multipart/form-data": {"schema": {
            "type": "object", "required": ["file"],
            "properties": {"file": {"type": "string", "format": "binary"}}}},
        "text/csv": {"schema": {"type": "string"}},
    },
}


@router.post("/v1/members:import", response_model=ImportOut, tags=["members"],
             summary="Import the roster (CSV)",
             openapi_extra={"requestBody": _REQUEST_BODY},
             responses={413: {"description": "The file is larger than the service accepts."},
                        422: {"description": "Problem details with `errors: [{row, field, "
                                             "message}]` (at most 1000; `error_count` has "
                                             "the total)."}})
async def import_members(request: Request, ctx: Ctx, caller: Importer) -> Any:
    data = await _roster_bytes(request)
    return await roster.import_roster(ctx, caller, data)


async def _roster_bytes(request: Request) -> bytes:
    media_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media_type == "multipart/form-data":
        async with request.form(max_files=1, max_fields=10) as form:
            upload = form.get("file")
            if not isinstance(upload, UploadFile):
                raise Problem(422, detail="Send the roster as the multipart field `file`.",
                              errors=[{"field": "file", "message": "missing file"}])
            return await upload.read()
    if media_type and media_type not in CSV_TYPES:
        raise Problem(415, detail="Send the roster as text/csv, or as the multipart field "
                                  "`file`.")
    return await request.body()
