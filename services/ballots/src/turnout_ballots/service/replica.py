"""The member replica: each member's placement as contacts' events describe it.

Events about one member can arrive twice, or out of order (a member-moved before the
member-registered it follows, after a consumer rewinds or when a topic is replayed). The
upsert keeps whichever placement has the higher `member_version`, so any order of the
same events ends in the same row, and a repeated event changes nothing.
"""

from __future__ import annotations

import uuid

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from turnout_events.common import Placement

from ..db.tables import member_replica


async def apply_placements(session: AsyncSession,
                           changes: list[tuple[uuid.UUID, int, Placement]]) -> int:
    """Record a batch of placements in one statement: per member the highest version in
    the batch, upserted unless a later version is already held. Returns rows changed."""
    latest: dict[uuid.UUID, tuple[int, Placement]] = {}
    for member_id, version, placement in changes:
        held = latest.get(member_id)
        if held is None or version > held[0]:
            latest[member_id] = (version, placement)
    if not latest:
        return 0
    rows = [{"member_id": m, "member_version": v, **p.model_dump()}
            for m, (v, p) in latest.items()]
    new = insert(member_replica).values(rows)
    upsert = new.on_conflict_do_update(
        index_elements=["member_id"],
        set_={**{k: new.excluded[k] for k in rows[0] if k != "member_id"},
              "updated_at": sa.func.now()},
        where=member_replica.c.member_version < new.excluded.member_version,
    ).returning(member_replica.c.member_id)
    return len((await session.execute(upsert)).all())
