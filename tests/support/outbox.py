"""Waiting for a service's outbox to drain: then everything it committed is on Kafka."""

from __future__ import annotations

import asyncio
import time

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from turnout_events.tables import outbox


async def outbox_drained(engine: AsyncEngine, *, timeout: float = 30.0) -> int:
    """Wait until no committed event is waiting to be published; return how many events
    the outbox has published in all."""
    deadline = time.monotonic() + timeout
    while True:
        async with engine.connect() as conn:
            pending, total = (await conn.execute(sa.select(
                sa.func.count().filter(outbox.c.published_at.is_(None)),
                sa.func.count()))).one()
        if pending == 0:
            return total
        if time.monotonic() > deadline:
            raise AssertionError(f"{pending} outbox events still unpublished after {timeout}s")
        await asyncio.sleep(0.05)
