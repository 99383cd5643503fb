"""The sandbox provider, the default: nothing leaves the machine. Each message is stored
in `sandbox_messages` (with the number masked) and listed at `GET /v1/sandbox/messages`,
so a demo or a test shows exactly what members would have received.

It can also play the ways a real provider fails (`fault`), so that an outage, a lost
answer or a call that never returns can be shown and tested against the real dispatcher
rather than a stand-in."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from datetime import datetime
from enum import StrEnum

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from ..db.tables import sandbox_messages
from .base import Accepted, PermanentProviderError, TransientProviderError


class SandboxFault(StrEnum):
    # Refuses every call, lookups included, like a provider answering 503: nothing taken.
    UNAVAILABLE = "unavailable"
    # Takes the message, then the answer never arrives (a read timeout): the sender sees
    # a transient error for a message the provider has.
    ANSWER_LOST = "answer_lost"
    # The call never returns, before or after taking the message: what a process killed
    # mid-call leaves behind, when the call is the last thing it did.
    STALL_BEFORE_ACCEPT = "stall_before_accept"
    STALL_AFTER_ACCEPT = "stall_after_accept"
    # Refuses every message for good, like a number that does not exist.
    REJECTED = "rejected"


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
        # None: behaves. Set it to play a failure until it is set back.
        self.fault: SandboxFault | None = None
        self._coming: tuple[int, SandboxFault] | None = None

    def fail_after(self, messages: int, fault: SandboxFault) -> None:
        """Take the next `messages` messages, then play `fault` until it is set back: an
        outage in the middle of a campaign."""
        self._coming = (messages, fault)

    async def send(self, *, idempotency_key: str, to: str, body: str) -> Accepted:
        if self._coming is not None:
            left, coming = self._coming
            if left == 0:
                self.fault, self._coming = coming, None
            else:
                self._coming = (left - 1, coming)
        fault = self.fault
        if fault is SandboxFault.UNAVAILABLE:
            raise TransientProviderError("unavailable")
        if fault is SandboxFault.REJECTED:
            raise PermanentProviderError("invalid_number")
        if fault is SandboxFault.STALL_BEFORE_ACCEPT:
            await _forever()
        # Like a real provider honouring an idempotency key: the same key twice is one
        # message, and the second call gets the first one's id.
        stmt = insert(sandbox_messages).values(
            provider_message_id=f"SB{uuid.uuid4().hex}", idempotency_key=idempotency_key,
            to_masked=mask_number(to), body=body, accepted_at=self._clock(),
        ).on_conflict_do_nothing(index_elements=["idempotency_key"]).returning(
            sandbox_messages.c.provider_message_id)
        async with self._sessions() as session, session.begin():
            provider_id = await session.scalar(stmt)
            if provider_id is None:  # taken before under this key
                provider_id = await session.scalar(
                    sa.select(sandbox_messages.c.provider_message_id)
                    .where(sandbox_messages.c.idempotency_key == idempotency_key))
        assert provider_id is not None
        if fault is SandboxFault.ANSWER_LOST:
            raise TransientProviderError("timeout")
        if fault is SandboxFault.STALL_AFTER_ACCEPT:
            await _forever()
        return Accepted(provider_message_id=provider_id)

    async def lookup(self, *, idempotency_key: str) -> Accepted | None:
        if self.fault is SandboxFault.UNAVAILABLE:
            raise TransientProviderError("unavailable")
        async with self._sessions() as session:
            provider_id = await session.scalar(
                sa.select(sandbox_messages.c.provider_message_id)
                .where(sandbox_messages.c.idempotency_key == idempotency_key))
        return Accepted(provider_message_id=provider_id) if provider_id else None


async def _forever() -> None:
    await asyncio.Event().wait()
