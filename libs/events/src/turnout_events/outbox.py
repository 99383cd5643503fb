"""Adding events to the outbox inside the caller's transaction.

Nothing here talks to Kafka: the state change and its events commit or roll back together,
and the relay (`relay.py`) publishes committed rows later. `pg_notify` is transactional in
PostgreSQL, so the relay is woken only when the events are actually committed.
"""

from __future__ import annotations

from collections.abc import Iterable

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from .envelope import Envelope
from .serde import encode
from .tables import OUTBOX_CHANNEL, outbox
from .topics import TopicRegistry


def outbox_rows(envelopes: Iterable[Envelope], topics: TopicRegistry) -> list[dict]:
    return [
        {
            "event_id": env.id,
            "topic": topics.events(env.source),
            "key": env.key,
            "event_type": env.type,
            "event_version": env.version,
            "correlation_id": env.correlation_id,
            "payload": encode(env),
        }
        for env in envelopes
    ]


async def add_events(
    session: AsyncSession | AsyncConnection,
    envelopes: Iterable[Envelope],
    topics: TopicRegistry,
) -> int:
    """Stage events for publishing in the session's current transaction."""
    rows = outbox_rows(envelopes, topics)
    if not rows:
        return 0
    await session.execute(sa.insert(outbox), rows)
    await session.execute(sa.select(sa.func.pg_notify(OUTBOX_CHANNEL, "")))
    return len(rows)
