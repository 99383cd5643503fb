"""Contact channels for the notification service: the numbers it may text, at send time.

Events carry flags only; the notification service asks here, in batches, right before
sending, so a number is never stored outside this (erasable) database. The rule for who
may be texted lives in the query, not in the caller: a member without a mobile, without
SMS consent, or erased is simply absent from the answer, exactly like an unknown id, so
the caller cannot tell why and never receives anything it may not use.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
import structlog

from ..context import ContactsContext
from ..db.tables import members

log = structlog.get_logger("turnout.contacts.channels")

MAX_BATCH = 1000


def textable() -> sa.ColumnElement[bool]:
    return sa.and_(members.c.mobile.is_not(None), members.c.sms_consent.is_(True),
                   members.c.erased_at.is_(None))


async def sms_channels(ctx: ContactsContext, member_ids: Sequence[uuid.UUID], *,
                       actor: str) -> list[dict[str, Any]]:
    """`{member_id, mobile, first_name}` for each id that may be texted, in the order
    asked (duplicates once)."""
    wanted = list(dict.fromkeys(member_ids))
    if len(wanted) > MAX_BATCH:
        raise ValueError(f"at most {MAX_BATCH} member ids per call")
    if not wanted:
        return []
    async with ctx.sessions() as session:  # type: ignore[misc]
        rows = (await session.execute(
            sa.select(members.c.member_id, members.c.mobile, members.c.first_name)
            .where(members.c.member_id.in_(wanted), textable()))).all()
    found = {r.member_id: r for r in rows}
    out = [{"member_id": member_id,
            "mobile": ctx.cipher.decrypt(member_id, found[member_id].mobile),
            "first_name": ctx.cipher.decrypt(member_id, found[member_id].first_name)}
           for member_id in wanted if member_id in found]
    log.info("contact_channels_served", actor=actor, asked=len(wanted), textable=len(out))
    return out
