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

A ballot is in scope by one rule, `ballots_in_scope`, asked both by the ballot list and
by every per-ballot read (turnout, CSV, timeline, stream): a ballot is listed exactly
when it can be read. Out of scope answers the same 404 as an unknown ballot id, with the
same detail and no name, so ballot ids cannot be probed.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from fractions import Fraction
from typing import Any
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from turnout_kit.auth import Caller, Role
from turnout_kit.problems import Problem

from ..context import ReportingContext
from ..db.tables import ballots, turnout, turnout_hourly
from ..projections.fold import COUNTS, LEVELS

# What each level's rows are named by, and what their parent is.
_UNIT_COLUMN = {"group": "group_code", "branch": "branch_code", "workplace": "workplace_code"}
_PARENT_COLUMN = {"branch": "group_code", "workplace": "branch_code"}

# Timeline buckets. Days are the campaign's local days: a vote at 00:30 BST on the 5th
# counts on the 5th, not on the 4th as a UTC day would have it.
BUCKETS = ("hour", "day")
LOCAL_TIME_ZONE = "Europe/London"
_LOCAL = ZoneInfo(LOCAL_TIME_ZONE)


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


def in_scope(caller: Caller, level: str, group_code: str | None,
             branch_code: str | None) -> bool:
    """The Python twin of `scope_filter`, for rows that come from the change feed
    rather than from a query."""
    if caller.unscoped:
        return True
    if caller.role is Role.organiser:
        return level != "national" and group_code in caller.group_codes
    if caller.role is Role.rep:
        return level in ("branch", "workplace") and branch_code in caller.branch_codes
    return False


def any_level_in_scope(caller: Caller, table: sa.Table) -> sa.ColumnElement[bool]:
    """`scope_filter` for rows of every level at once (a stream's snapshot)."""
    if caller.unscoped:
        return sa.true()
    return sa.or_(*(sa.and_(table.c.level == level, scope_filter(caller, table, level))
                    for level in LEVELS))


@dataclass(frozen=True)
class BallotInfo:
    ballot_id: uuid.UUID
    name: str | None
    threshold: float | None
    opens_at: datetime | None
    closes_at: datetime | None
    closed_at: datetime | None

    @classmethod
    def of(cls, ballot_id: uuid.UUID, row: Any | None) -> BallotInfo:
        """From a `ballots` row (or a row with its columns), or all unknown without one:
        until ballot-opened arrives (it may come after the ballot's enrolments) the name
        and threshold are unknown, and the threshold stays null rather than an assumed
        0.5, and so do the votes needed."""
        if row is None:
            return cls(ballot_id, None, None, None, None, None)
        return cls(ballot_id, row.name, row.turnout_threshold, row.opens_at, row.closes_at,
                   row.closed_at)


def ballots_in_scope(caller: Caller, ballot_id: uuid.UUID | None = None) -> sa.Select[Any]:
    """The ballots this caller may see, one row each: the ballot as its events told us
    (`ballots` columns, null until ballot-opened), and `eligible` and `voted` summed over
    the units of the caller's widest level in their scope.

    The one rule of scope for a ballot, for the list and for every per-ballot read:
    - national, admin, service: every ballot an event has named: one with members
      enrolled, and one whose ballot-opened arrived with no enrolment yet;
    - organiser, rep: a ballot with eligible members in at least one of their groups
      (organiser) or branches (rep). A ballot-opened with no enrolment of theirs is not
      theirs: nothing says yet that it concerns them.
    `ballot_id` narrows the same query to that one ballot, read by key."""
    level = default_level(caller)
    in_scope_units = (sa.select(turnout.c.ballot_id,
                                sa.func.sum(turnout.c.eligible).label("eligible"),
                                sa.func.sum(turnout.c.voted).label("voted"))
                      .where(turnout.c.level == level, turnout.c.eligible > 0,
                             scope_filter(caller, turnout, level)))
    named: sa.Table | sa.Subquery = ballots
    if ballot_id is not None:
        in_scope_units = in_scope_units.where(turnout.c.ballot_id == ballot_id)
        named = sa.select(ballots).where(ballots.c.ballot_id == ballot_id).subquery("named")
    totals = in_scope_units.group_by(turnout.c.ballot_id).subquery("totals")
    joined = (totals.join(named, named.c.ballot_id == totals.c.ballot_id, full=True)
              if caller.unscoped
              else totals.outerjoin(named, named.c.ballot_id == totals.c.ballot_id))
    return (sa.select(sa.func.coalesce(totals.c.ballot_id, named.c.ballot_id).label("ballot_id"),
                      named.c.name, named.c.kind, named.c.turnout_threshold,
                      named.c.opens_at, named.c.closes_at, named.c.closed_at,
                      sa.func.coalesce(totals.c.eligible, 0).label("eligible"),
                      sa.func.coalesce(totals.c.voted, 0).label("voted"))
            .select_from(joined))


def ballot_not_found(ballot_id: uuid.UUID) -> Problem:
    """The one answer for a ballot id that is unknown and for one out of the caller's
    scope: the same status and words, nothing that tells the two apart."""
    return Problem(404, detail=f"No ballot {ballot_id} in your scope (or none of its "
                               f"events has been folded yet).")


async def _ballot_in_scope(session: AsyncSession, caller: Caller,
                           ballot_id: uuid.UUID) -> BallotInfo:
    row = (await session.execute(ballots_in_scope(caller, ballot_id))).first()
    if row is None:
        raise ballot_not_found(ballot_id)
    return BallotInfo.of(ballot_id, row)


async def ballot_info(ctx: ReportingContext, caller: Caller,
                      ballot_id: uuid.UUID) -> BallotInfo:
    """The ballot as its events told us, if it is in the caller's scope; otherwise, and
    when no event has named it yet, 404 (`ballot_not_found`)."""
    async with ctx.session() as session:
        return await _ballot_in_scope(session, caller, ballot_id)


@functools.lru_cache(maxsize=64)
def _exact(threshold: float) -> Fraction:
    return Fraction(str(threshold))


def votes_needed(threshold: float | None, eligible: int, voted: int) -> int | None:
    if threshold is None:
        return None
    # Exact arithmetic: ceil(0.3 * 10) must be 3, not 4 as in floating point.
    needed = _exact(threshold) * eligible
    return max(0, -(-needed.numerator // needed.denominator) - voted)


async def turnout_rows(ctx: ReportingContext, caller: Caller, ballot_id: uuid.UUID, *,
                       level: str, within: str | None) -> tuple[BallotInfo, list[dict[str, Any]]]:
    check_level(level)
    query = sa.select(turnout).where(turnout.c.ballot_id == ballot_id,
                                     turnout.c.level == level, turnout.c.eligible > 0,
                                     scope_filter(caller, turnout, level))
    async with ctx.session() as session:
        info = await _ballot_in_scope(session, caller, ballot_id)
        if within is not None:
            if level in ("national", "group"):
                raise Problem(422, detail="within applies to the branch and workplace "
                                          "levels (a group code, or for workplaces a branch "
                                          "code).",
                              errors=[{"field": "within", "message": "not for this level"}])
            query = query.where(sa.or_(turnout.c.group_code == within,
                                       turnout.c.branch_code == within))
        found = (await session.execute(query)).all()
    rows = [turnout_row(info.threshold, r._mapping) for r in found]
    sort_rows(rows)
    return info, rows


def sort_rows(rows: list[dict[str, Any]]) -> None:
    """Most votes still needed first: where the campaign's effort is wanted."""
    rows.sort(key=lambda r: (r["votes_needed"] is None, -(r["votes_needed"] or 0), r["unit"]))


def unit_of(level: str, values: Mapping[Any, Any]) -> tuple[str, str | None]:
    """A unit's name and its parent's, from its codes (`level`, `group_code`,
    `branch_code`, `workplace_code`: a `turnout` row, an hourly bucket or a feed row)."""
    if level == "national":
        return "national", None
    parent = values[_PARENT_COLUMN[level]] if level in _PARENT_COLUMN else "national"
    return values[_UNIT_COLUMN[level]], parent


def turnout_row(threshold: float | None, values: Mapping[Any, Any]) -> dict[str, Any]:
    """A unit's row as the API shows it, from a `turnout` row or a change-feed row (the
    unit's codes and its counts); the stream sends rows of exactly this shape."""
    level = values["level"]
    eligible, voted = values["eligible"], values["voted"]
    unit, parent = unit_of(level, values)
    return {
        "unit": unit,
        "level": level,
        "parent": parent,
        "group_code": values["group_code"] or None,
        "eligible": eligible,
        "voted": voted,
        "turnout": voted / eligible if eligible else None,
        "threshold": threshold,
        "votes_needed": votes_needed(threshold, eligible, voted),
        **{name: values[name] for name in COUNTS if name not in ("eligible", "voted")},
    }


def check_bucket(bucket: str) -> str:
    if bucket not in BUCKETS:
        raise Problem(422, detail=f"bucket must be one of {', '.join(BUCKETS)}.",
                      errors=[{"field": "bucket", "message": "unknown bucket"}])
    return bucket


async def timeline(ctx: ReportingContext, caller: Caller, ballot_id: uuid.UUID, *,
                   level: str, unit: str | None, bucket: str = "hour") -> dict[str, Any]:
    """Net votes per hour (or per local day) in one unit, with the running total.

    Days are summed from the hourly table in the query: an hour belongs to the Europe/
    London day it starts in, so a day is 23 or 25 hours long when the clocks change."""
    check_level(level)
    check_bucket(bucket)

    def where(table: sa.Table) -> list[sa.ColumnElement[bool]]:
        clauses = [table.c.ballot_id == ballot_id, table.c.level == level,
                   scope_filter(caller, table, level)]
        if level != "national":
            clauses.append(table.c[_UNIT_COLUMN[level]] == unit)
        return clauses

    async with ctx.session() as session:
        info = await _ballot_in_scope(session, caller, ballot_id)
        if level != "national" and not unit:
            raise Problem(422, detail=f"unit is required for level {level}: the unit's "
                                      f"code.",
                          errors=[{"field": "unit", "message": "required"}])
        eligible = await session.scalar(
            sa.select(sa.func.sum(turnout.c.eligible)).where(*where(turnout)))
        if not eligible:
            raise Problem(404, detail=f"No unit {unit or 'national'} at level {level} in "
                                      f"ballot {ballot_id} in your scope.")
        start: sa.ColumnElement[datetime] = turnout_hourly.c.hour
        if bucket == "day":
            # hour (timestamptz) -> London wall time -> its midnight -> back to an instant.
            # Constants as SQL literals, not bound parameters: PostgreSQL matches the
            # SELECT and GROUP BY expressions textually, and $1 is not $3.
            zone: sa.ColumnElement[str] = sa.literal_column(f"'{LOCAL_TIME_ZONE}'")
            local_day = sa.func.date_trunc(sa.literal_column("'day'"),
                                           sa.func.timezone(zone, turnout_hourly.c.hour))
            start = sa.func.timezone(zone, local_day)
        start = start.label("start")
        buckets = (await session.execute(
            sa.select(start, sa.func.sum(turnout_hourly.c.votes))
            .where(*where(turnout_hourly)).group_by(start).order_by(start))).all()
    cumulative = 0
    points: list[dict[str, Any]] = []
    for begins, votes in buckets:
        cumulative += int(votes)
        if not votes:
            continue
        if bucket == "hour":
            points.append({"hour": begins, "votes": int(votes), "cumulative": cumulative})
        else:
            local = begins.astimezone(_LOCAL)
            points.append({"day": local.date(), "start": local, "votes": int(votes),
                           "cumulative": cumulative})
    return {
        "ballot_id": ballot_id,
        "level": level,
        "unit": unit or "national",
        "bucket": bucket,
        "time_zone": LOCAL_TIME_ZONE if bucket == "day" else "UTC",
        "eligible": int(eligible),
        "threshold": info.threshold,
        "threshold_votes": (None if info.threshold is None
                            else votes_needed(info.threshold, int(eligible), 0)),
        "buckets": points,
    }


async def list_ballots(ctx: ReportingContext, caller: Caller) -> list[dict[str, Any]]:
    """The ballots in the caller's scope (`ballots_in_scope`), open ones first, newest
    first, with the eligible and voted of the caller's widest level (national for
    national roles, the sum of their groups or branches for organisers and reps)."""
    level = default_level(caller)
    visible = ballots_in_scope(caller).subquery("visible")
    query = (sa.select(visible)
             .order_by(visible.c.closed_at.is_not(None),
                       visible.c.opens_at.desc().nulls_last(), visible.c.ballot_id))
    async with ctx.session() as session:
        found = (await session.execute(query)).all()
    return [{
        "ballot_id": r.ballot_id,
        "name": r.name,
        "kind": r.kind,
        "threshold": r.turnout_threshold,
        "opens_at": r.opens_at,
        "closes_at": r.closes_at,
        "closed_at": r.closed_at,
        "level": level,
        "eligible": int(r.eligible),
        "voted": int(r.voted),
    } for r in found]
