"""Reads: members as a rep sees them (names, masked contact values), scoped to the caller."""

from __future__ import annotations

import base64
import uuid
from typing import Any

import sqlalchemy as sa

from turnout_kit.auth import Caller
from turnout_kit.problems import Problem

from ..context import ContactsContext
from ..db.tables import members
from .scope import load_member_row, scope_filter


def member_view(ctx: ContactsContext, row: Any) -> dict[str, Any]:
    m = row._mapping
    member_id = m["member_id"]
    return {
        "member_id": member_id,
        "membership_number": m["membership_number"],
        "first_name": ctx.cipher.decrypt(member_id, m["first_name"]),
        "last_name": ctx.cipher.decrypt(member_id, m["last_name"]),
        "placement": {"group_code": m["group_code"], "branch_code": m["branch_code"],
                      "workplace_code": m["workplace_code"], "grade": m["grade"]},
        "mobile": m["mobile_masked"],
        "personal_email": m["email_masked"],
        "has_mobile": m["mobile"] is not None,
        "has_email": m["email"] is not None,
        "sms_consent": m["sms_consent"],
        "email_consent": m["email_consent"],
        "hard_to_reach": m["mobile"] is None and m["email"] is None,
        "erased": m["erased_at"] is not None,
        "missing_from_last_import": m["missing_since_import_id"] is not None,
        "version": m["version"],
    }


async def get_member(ctx: ContactsContext, caller: Caller, member_id: uuid.UUID) -> dict:
    async with ctx.sessions() as session:  # type: ignore[misc]
        return member_view(ctx, await load_member_row(session, caller, member_id))


def encode_cursor(member_id: uuid.UUID) -> str:
    return base64.urlsafe_b64encode(member_id.bytes).decode().rstrip("=")


def decode_cursor(cursor: str) -> uuid.UUID:
    try:
        return uuid.UUID(bytes=base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except ValueError:
        raise Problem(422, detail="cursor is not one this service handed out") from None


async def list_members(ctx: ContactsContext, caller: Caller, *, branch: str | None = None,
                       q: str | None = None, cursor: str | None = None,
                       limit: int | None = None) -> dict[str, Any]:
    limit = min(limit or ctx.settings.page_size, 500)
    query = sa.select(members).where(scope_filter(caller)).order_by(members.c.member_id)
    if branch:
        query = query.where(members.c.branch_code == branch)
    if q and q.strip():
        term = q.strip()
        # Membership numbers match as typed; names match whole (first, last or both)
        # through the blind index, since names are not stored in clear.
        query = query.where(sa.or_(members.c.membership_number == term,
                                   members.c.name_tokens.contains([ctx.index.token(term)])))
    if cursor:
        query = query.where(members.c.member_id > decode_cursor(cursor))
    async with ctx.sessions() as session:  # type: ignore[misc]
        rows = (await session.execute(query.limit(limit + 1))).all()
    page = rows[:limit]
    return {
        "items": [member_view(ctx, r) for r in page],
        "next_cursor": encode_cursor(page[-1].member_id) if len(rows) > limit else None,
    }


def name_tokens(ctx: ContactsContext, first: str | None, last: str | None) -> list[str]:
    parts = [p for p in (first, last) if p]
    tokens = {ctx.index.token(p) for p in parts}
    if first and last:
        tokens.add(ctx.index.token(f"{first} {last}"))
    return sorted(tokens)
