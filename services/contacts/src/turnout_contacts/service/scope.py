"""Scope: which members a caller may see. Out of scope looks exactly like not found."""

from __future__ import annotations

import uuid

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from turnout_kit.auth import Caller
from turnout_kit.problems import Problem

from ..db.tables import members


def not_found(member_id: uuid.UUID) -> Problem:
    return Problem(404, detail=f"No member {member_id} in your scope.")


def scope_filter(caller: Caller, table: sa.Table = members) -> sa.ColumnElement[bool]:
    """A WHERE clause limiting rows to the caller's branches or groups."""
    return caller.scope_clause(table)


async def load_member_row(session: AsyncSession, caller: Caller, member_id: uuid.UUID, *,
                          for_update: bool = False) -> sa.Row:
    query = sa.select(members).where(members.c.member_id == member_id)
    if for_update:
        # One command at a time per member: its events get consecutive versions in the
        # order they are published.
        query = query.with_for_update()
    row = (await session.execute(query)).first()
    if row is None or not caller.can_see(row.group_code, row.branch_code):
        raise not_found(member_id)
    return row
