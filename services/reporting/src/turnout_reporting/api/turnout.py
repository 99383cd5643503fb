"""HTTP: turnout by unit (JSON and CSV) and a unit's turnout over time."""

from __future__ import annotations

import csv
import io
import uuid
from datetime import date, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from fastapi.responses import Response
from pydantic import BaseModel

from turnout_events.common import CODE_PATTERN
from turnout_kit.auth import CurrentCaller

from ..service import queries
from .deps import Ctx

router = APIRouter(prefix="/v1", tags=["turnout"])

Level = Annotated[str | None, Query(max_length=20, description=(
    "national, group, branch or workplace; by default the widest the caller sees whole "
    "(national for national and admin roles, group for organisers, branch for reps)."))]
Within = Annotated[str | None, Query(max_length=40, pattern=CODE_PATTERN, description=(
    "Only units within this group (branch level) or this group or branch (workplace "
    "level)."))]

Unit = Annotated[str | None, Query(max_length=40, pattern=CODE_PATTERN, description=(
    "The unit's code at that level (none for national)."))]


class TurnoutRow(BaseModel):
    unit: str
    level: str
    parent: str | None
    group_code: str | None
    eligible: int
    voted: int
    turnout: float | None
    threshold: float | None
    votes_needed: int | None
    contactable: int
    sms_consent: int
    contacted: int
    hard_to_reach: int
    reminders_sent: int
    replacements_requested: int


class TurnoutPage(BaseModel):
    ballot_id: uuid.UUID
    ballot_name: str | None
    level: str
    items: list[TurnoutRow]


BucketSize = Annotated[Literal["hour", "day"], Query(description=(
    "hour (UTC hours) or day (Europe/London local days, 23 or 25 hours long when the "
    "clocks change)."))]


class HourBucket(BaseModel):
    hour: datetime
    votes: int
    cumulative: int


class DayBucket(BaseModel):
    day: date
    start: datetime  # local midnight, with its UTC offset
    votes: int
    cumulative: int


class Timeline(BaseModel):
    ballot_id: uuid.UUID
    level: str
    unit: str
    bucket: Literal["hour", "day"]
    time_zone: str
    eligible: int
    threshold: float | None
    threshold_votes: int | None
    # Net votes per bucket (buckets with none are left out) and the running total.
    buckets: list[HourBucket] | list[DayBucket]


CSV_COLUMNS = tuple(TurnoutRow.model_fields)


@router.get("/ballots/{ballot_id}/turnout", response_model=TurnoutPage)
async def get_turnout(ballot_id: uuid.UUID, ctx: Ctx, caller: CurrentCaller,
                      level: Level = None, within: Within = None) -> Any:
    level = level or queries.default_level(caller)
    info, rows = await queries.turnout_rows(ctx, caller, ballot_id, level=level, within=within)
    return {"ballot_id": ballot_id, "ballot_name": info.name, "level": level, "items": rows}


@router.get("/ballots/{ballot_id}/turnout.csv", response_class=Response,
            responses={200: {"content": {"text/csv": {}}}})
async def get_turnout_csv(ballot_id: uuid.UUID, ctx: Ctx, caller: CurrentCaller,
                          level: Level = None, within: Within = None) -> Response:
    level = level or queries.default_level(caller)
    _, rows = await queries.turnout_rows(ctx, caller, ballot_id, level=level, within=within)
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_COLUMNS, extrasaction="ignore",
                            lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    suffix = f"-{within}" if within else ""
    filename = f"turnout-{ballot_id}-{level}{suffix}.csv"
    return Response(out.getvalue(), media_type="text/csv; charset=utf-8",
                    headers={"Content-Disposition": f'attachment; filename="{filename}"'})


@router.get("/ballots/{ballot_id}/timeline", response_model=Timeline)
async def get_timeline(ballot_id: uuid.UUID, ctx: Ctx, caller: CurrentCaller,
                       level: Level = None, unit: Unit = None,
                       bucket: BucketSize = "hour") -> Any:
    level = level or queries.default_level(caller)
    return await queries.timeline(ctx, caller, ballot_id, level=level, unit=unit,
                                  bucket=bucket)
