"""The idempotent-consumer inbox: claim an event id in the same transaction as its effect.

    async with session.begin():
        if await claim(session, "ballots.member-replica", envelope.id):
            ...apply the effect...

If the event was already processed the claim returns False and the caller skips the
effect; if the transaction rolls back, the claim rolls back with it.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable

from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from .tables import inbox


async def claim(
    session: AsyncSession | AsyncConnection, consumer: str, event_id: uuid.UUID
) -> bool:
    return bool(await claim_many(session, consumer, [event_id]))


async def claim_many(
    session: AsyncSession | AsyncConnection, consumer: str, event_ids: Iterable[uuid.UUID]
) -> set[uuid.UUID]:
    """Record the ids; return those that were not recorded before (to be applied now)."""
    ids = list(dict.fromkeys(event_ids))
    if not ids:
        return set()
    stmt = (
        insert(inbox)
        .values([{"consumer": consumer, "event_id": i} for i in ids])
        .on_conflict_do_nothing(index_elements=["consumer", "event_id"])
        .returning(inbox.c.event_id)
    )
    result = await session.execute(stmt)
    return set(result.scalars())
