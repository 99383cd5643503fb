"""The sandbox provider, the default: nothing leaves the machine. Each message is stored
in `sandbox_messages` (with the number masked) and listed at `GET /v1/sandbox/messages`,
so a demo or a test shows exactly what members would have received."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from ..db.tables import sandbox_messages
from .base import Accepted


def mask_number(number: str) -> str:
    """+447911123123 -> +44••••••••123: enough to tell messages apart on the page."""
    if len(number) <= 6:
        return "•" * len(number)
    return number[:3] + "•" * (len(number) - 6) + number[-3:]


class SandboxProvider:
    name = "sandbox"

    def __init__(self, sessions: async_sessionmaker[AsyncSession],
                 clock: Callable[[], datetime]) -> None:
        self._sessions = sessions
        self._clock = clock

    async def send(self, *, idempotency_key: str, to: str, body: str) -> Accepted:
        # Like a real provider honouring an idempotency key: the same key twice is one
        # message, and the second call gets the first one's id.
        stmt = insert(sandbox_messages).values(
            provider_message_id=f"SB{uuid.uuid4().hex}", idempotency_key=idempotency_key,
            to_masked=mask_number(to), body=body, accepted_at=self._clock(),
        ).on_conflict_do_nothing(index_elements=["idempotency_key"])
        async with self._sessions() as session, session.begin():
            await session.execute(stmt)
            provider_id = await session.scalar(
                sa.select(sandbox_messages.c.provider_message_id)
                .where(sandbox_messages.c.idempotency_key == idempotency_key))
        assert provider_id is not None
        return Accepted(provider_message_id=provider_id)
