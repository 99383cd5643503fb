"""Reading the projections: turnout rows per unit, and a unit's timeline, in the
caller's scope.

Scope (aggregates are filtered to the caller's scope, DESIGN.md "Security"):
- national, admin, service: every unit at every level;
- organiser (group codes): their groups, and the branches and workplaces within them;
- rep (branch codes): their branches and the workplaces within them.
A scoped caller asking for a level above their scope (a rep asking for groups, anyone
but national/admin/service for the national row) gets no rows rather than an error:
the figure would include members outside their scope. A unit out of scope looks exactly
like a unit with no members (the timeline answers 404 for both).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from fractions import Fraction
from typing import Any

import sqlalchemy as sa

from turnout_kit.auth import Caller, Role
from turnout_kit.problems import Problem

from ..context import ReportingContext
from ..db.tables import ballots, turnout, turnout_hourly
from ..projections.fold import COUNTS, LEVELS

# What each level's rows are named by, and what their parent is.
_UNIT_COLUMN = {"group": "group_code", "branch": "branch_code", "workplace": "workplace_code"}
_PARENT_COLUMN = {"branch": "group_code", "workplace": "branch_code"}


def default_level(caller: Caller) -> str:
    """The widest level a caller sees whole."""
    if caller.role is Role.rep:
        return "branch"
    if caller.role is Role.organiser:
        return "group"
    return "national"


def check_level(level: str) -> str:
    if level not in LEVELS:
        raise Problem(422, detail=f"level must be one of {', '.join(LEVELS)}.",
                      errors=[{"field": "level", "message": "unknown level"}])
    return level


def scope_filter(caller: Caller, table: sa.Table, level: str) -> sa.ColumnElement[bool]:
    if caller.unscoped:
        return sa.true()
    if caller.role is Role.organiser and level != "national":
        return table.c.group_code.in_(sorted(caller.group_codes))
    if caller.role is Role.rep and level in ("branch", "workplace"):
        return table.c.branch_code.in_(sorted(caller.branch_codes))
    return sa.false()


@dataclass(frozen=True)
class BallotInfo:
    ballot_id: uuid.UUID
    name: str | None
    threshold: float | None
    opens_at: datetime | None
    closes_at: datetime | None
    closed_at: datetime | None


async def ballot_info(ctx: ReportingContext, ballot_id: uuid.UUID) -> BallotInfo:
    """The ballot as its events told us; 404 when no event has named it yet.

    Until ballot-opened arrives (it may come after the ballot's enrolments) the name and
    threshold are unknown: the threshold stays null rather than an assumed 0.5, and so
    do the votes needed."""
    async with ctx.session() as session:
        row = (await session.execute(
            sa.select(ballots).where(ballots.c.ballot_id == ballot_id))).first()
        if row is None:
            seen = await session.scalar(
                sa.select(sa.literal(1)).where(turnout.c.ballot_id == ballot_id).limit(1))
            if not seen:
                raise Problem(404, detail=f"No ballot {ballot_id} in the projections.")
            return BallotInfo(ballot_id, None, None, None, None, None)
    return BallotInfo(ballot_id, row.name, row.turnout_threshold, row.opens_at,
                      row.closes_at, row.closed_at)


def votes_needed(threshold: float | None, eligible: int, voted: int) -> int | None:
    if threshold is None:
        return None
    # Exact arithmetic: ceil(0.3 * 10) must be 3, not 4 as in floating point.
    needed = Fraction(str(threshold)) * eligible
    return max(0, -(-needed.numerator // needed.denominator) - voted)


async def turnout_rows(ctx: ReportingContext, caller: Caller, ballot_id: uuid.UUID, *,
                       level: str, within: str | None) -> tuple[BallotInfo, list[dict[str, Any]]]:
    check_level(level)
    info = await ballot_info(ctx, ballot_id)
    query = sa.select(turnout).where(turnout.c.ballot_id == ballot_id,
                                     turnout.c.level == level, turnout.c.eligible > 0,
                                     scope_filter(caller, turnout, level))
    if within is not None:
        if level in ("national", "group"):
            raise Problem(422, detail="within applies to the branch and workplace levels "
                                      "(a group code, or for workplaces a branch code).",
                          errors=[{"field": "within", "message": "not for this level"}])
        query = query.where(sa.or_(turnout.c.group_code == within,
                                   turnout.c.branch_code == within))
    async with ctx.session() as session:
        found = (await session.execute(query)).all()
    rows = [_row(info, level, r) for r in found]
    rows.sort(key=lambda r: (r["votes_needed"] is None, -(r["votes_needed"] or 0), r["unit"]))
    return info, rows


def _row(info: BallotInfo, level: str, r: sa.Row) -> dict[str, Any]:
    counts = {name: getattr(r, name) for name in COUNTS}
    eligible, voted = counts["eligible"], counts["voted"]
    unit = "national" if level == "national" else getattr(r, _UNIT_COLUMN[level])
    parent = {"national": None, "group": "national"}.get(level)
    if level in _PARENT_COLUMN:
        parent = getattr(r, _PARENT_COLUMN[level])
    return {
        "unit": unit,
        "level": level,
        "parent": parent,
        "group_code": r.group_code or None,
        **{"eligible": eligible, "voted": voted},
        "turnout": voted / eligible if eligible else None,
        "threshold": info.threshold,
        "votes_needed": votes_needed(info.threshold, eligible, voted),
        **{name: counts[name] for name in COUNTS if name not in ("eligible", "voted")},
    }


async def timeline(ctx: ReportingContext, caller: Caller, ballot_id: uuid.UUID, *,
                   level: str, unit: str | None) -> dict[str, Any]:
    """Net votes per hour in one unit, with the running total."""
    check_level(level)
    info = await ballot_info(ctx, ballot_id)
    if level != "national" and not unit:
        raise Problem(422, detail=f"unit is required for level {level}: the unit's code.",
                      errors=[{"field": "unit", "message": "required"}])

    def where(table: sa.Table) -> list[sa.ColumnElement[bool]]:
        clauses = [table.c.ballot_id == ballot_id, table.c.level == level,
                   scope_filter(caller, table, level)]
        if level != "national":
            clauses.append(table.c[_UNIT_COLUMN[level]] == unit)
        return clauses

    async with ctx.session() as session:
        eligible = await session.scalar(
            sa.select(sa.func.sum(turnout.c.eligible)).where(*where(turnout)))
        if not eligible:
            raise Problem(404, detail=f"No unit {unit or 'national'} at level {level} in "
                                      f"ballot {ballot_id} in your scope.")
        buckets = (await session.execute(
            sa.select(turnout_hourly.c.hour, sa.func.sum(turnout_hourly.c.votes))
            .where(*where(turnout_hourly)).group_by(turnout_hourly.c.hour)
            .order_by(turnout_hourly.c.hour))).all()
    cumulative = 0
    points = []
    for hour, votes in buckets:
        cumulative += int(votes)
        if votes:
            points.append({"hour": hour, "votes": int(votes), "cumulative": cumulative})
    return {
        "ballot_id": ballot_id,
        "level": level,
        "unit": unit or "national",
        "eligible": int(eligible),
        "threshold": info.threshold,
        "threshold_votes": (None if info.threshold is None
                            else votes_needed(info.threshold, int(eligible), 0)),
        "buckets": points,
    }
