"""The reveal log and the reveal anomalies, as the DPO and the national team read them.

Entries are listed newest first and paged by their id (ids grow with every entry, so a
page boundary never skips or repeats one, even while reps keep revealing). Audit entries
are never changed or deleted here, not even by erasure: they are the record of who saw
whose contact details, which the DPO has to be able to show.
"""

from __future__ import annotations

import base64
import csv
import io
import uuid
from collections.abc import Iterable
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from turnout_kit.problems import Problem

from ..context import ContactsContext
from ..db.tables import members, reveal_anomalies, reveal_audit

CSV_COLUMNS = ("revealed_at", "revealed_by", "role", "member_id", "fields", "reason")
# A cell starting with one of these is a formula to a spreadsheet; reasons are typed by
# people, so they are written with a leading apostrophe (OWASP "CSV injection").
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def encode_cursor(entry_id: int) -> str:
    return base64.urlsafe_b64encode(entry_id.to_bytes(8, "big")).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
    except ValueError:
        raw = b""
    if len(raw) != 8:
        raise Problem(422, detail="cursor is not one this service handed out",
                      errors=[{"field": "cursor", "message": "unknown cursor"}])
    return int.from_bytes(raw, "big")


def _actor_filter(column: sa.Column, rep: str) -> sa.ColumnElement[bool]:
    """`rep:abc` matches that actor exactly; a bare `abc` matches that subject in any
    role (one person may reveal as a rep and, later, as an organiser)."""
    if ":" in rep:
        return column == rep
    return sa.func.substr(column, sa.func.strpos(column, ":") + 1) == rep


def _check_range(since: datetime | None, until: datetime | None) -> None:
    if since is not None and until is not None and until <= since:
        raise Problem(422, detail="until must be later than since.",
                      errors=[{"field": "until", "message": "must be later than since"}])


def _page(rows: list[Any], limit: int, shape) -> dict[str, Any]:
    page = rows[:limit]
    return {"items": [shape(r) for r in page],
            "next_cursor": encode_cursor(page[-1].id) if len(rows) > limit else None}


def reveal_entry(row: Any) -> dict[str, Any]:
    return {"id": row.id, "revealed_at": row.revealed_at, "revealed_by": row.revealed_by,
            "role": row.role, "member_id": row.member_id, "reason": row.reason,
            "fields": list(row.fields)}


def anomaly_entry(row: Any) -> dict[str, Any]:
    return {"id": row.id, "detected_at": row.detected_at, "subject": row.subject,
            "member_id": row.member_id, "reveals_in_last_hour": row.reveals_in_last_hour,
            "hourly_limit": row.hourly_limit}


async def list_reveals(ctx: ContactsContext, *, rep: str | None = None,
                       member_id: uuid.UUID | None = None, since: datetime | None = None,
                       until: datetime | None = None, cursor: str | None = None,
                       limit: int | None = None) -> dict[str, Any]:
    """Reveal entries, newest first. `since` is inclusive, `until` exclusive."""
    _check_range(since, until)
    limit = limit or ctx.settings.page_size
    query = sa.select(reveal_audit).order_by(reveal_audit.c.id.desc()).limit(limit + 1)
    if rep:
        query = query.where(_actor_filter(reveal_audit.c.revealed_by, rep))
    if member_id is not None:
        query = query.where(reveal_audit.c.member_id == member_id)
    if since is not None:
        query = query.where(reveal_audit.c.revealed_at >= since)
    if until is not None:
        query = query.where(reveal_audit.c.revealed_at < until)
    if cursor:
        query = query.where(reveal_audit.c.id < decode_cursor(cursor))
    async with ctx.sessions() as session:  # type: ignore[misc]
        rows = list((await session.execute(query)).all())
    return _page(rows, limit, reveal_entry)


async def member_reveals(ctx: ContactsContext, member_id: uuid.UUID) -> list[dict[str, Any]]:
    """Every reveal of one member's values, oldest first: the reveal part of a subject
    access request. Refused attempts (anomalies) are not included: nothing was disclosed.
    Erased members are still known (their id is kept), so their entries can be exported."""
    async with ctx.sessions() as session:  # type: ignore[misc]
        known = (await session.execute(
            sa.select(members.c.member_id).where(members.c.member_id == member_id))).first()
        rows = (await session.execute(
            sa.select(reveal_audit).where(reveal_audit.c.member_id == member_id)
            .order_by(reveal_audit.c.id))).all()
    if known is None and not rows:
        raise Problem(404, detail=f"No member {member_id}.")
    return [reveal_entry(r) for r in rows]


async def list_anomalies(ctx: ContactsContext, *, rep: str | None = None,
                         since: datetime | None = None, until: datetime | None = None,
                         cursor: str | None = None, limit: int | None = None) -> dict[str, Any]:
    """Callers who passed the hourly reveal limit, newest first: one entry per breach."""
    _check_range(since, until)
    limit = limit or ctx.settings.page_size
    query = sa.select(reveal_anomalies).order_by(reveal_anomalies.c.id.desc()).limit(limit + 1)
    if rep:
        query = query.where(_actor_filter(reveal_anomalies.c.subject, rep))
    if since is not None:
        query = query.where(reveal_anomalies.c.detected_at >= since)
    if until is not None:
        query = query.where(reveal_anomalies.c.detected_at < until)
    if cursor:
        query = query.where(reveal_anomalies.c.id < decode_cursor(cursor))
    async with ctx.sessions() as session:  # type: ignore[misc]
        rows = list((await session.execute(query)).all())
    return _page(rows, limit, anomaly_entry)


def _cell(value: Any) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, list):
        return ";".join(value)
    text = str(value)
    return "'" + text if text.startswith(_FORMULA_START) else text


def reveals_csv(entries: Iterable[dict[str, Any]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(CSV_COLUMNS)
    for entry in entries:
        writer.writerow([_cell(entry[column]) for column in CSV_COLUMNS])
    return out.getvalue()
