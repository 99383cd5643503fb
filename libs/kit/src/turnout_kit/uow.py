"""The unit of work: one database transaction around one command, and the events the
command caused written to the outbox in that same transaction.

    async with UnitOfWork(sessions, topics, actor=caller.actor) as uow:
        member = await uow.session.get(...)
        ...change state...
        uow.emit(MemberMoved(...))
        await uow.commit()

Leaving the block without `commit()` (an exception, an early return) rolls everything
back, events included: no event is ever published for a change that did not happen.
"""

from __future__ import annotations

from datetime import datetime
from types import TracebackType

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from turnout_events.envelope import SYSTEM_ACTOR, Envelope, EventData
from turnout_events.outbox import add_events
from turnout_events.topics import TopicRegistry

from .logging import get_correlation_id


class UnitOfWork:
    def __init__(self, sessions: async_sessionmaker[AsyncSession], topics: TopicRegistry, *,
                 actor: str = SYSTEM_ACTOR, causation_id=None) -> None:
        self._sessions = sessions
        self.topics = topics
        self.actor = actor
        self.causation_id = causation_id
        self.events: list[Envelope] = []
        self._session: AsyncSession | None = None

    @property
    def session(self) -> AsyncSession:
        if self._session is None:
            raise RuntimeError("use the unit of work inside `async with`")
        return self._session

    async def __aenter__(self) -> UnitOfWork:
        self._session = self._sessions()
        await self._session.begin()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        session, self._session = self._session, None
        if session is None:
            return
        try:
            if session.in_transaction():
                await session.rollback()
        finally:
            await session.close()

    def emit(self, payload: EventData, *, occurred_at: datetime | None = None,
             actor: str | None = None) -> Envelope:
        envelope = Envelope.wrap(payload, actor=actor or self.actor, occurred_at=occurred_at,
                                 correlation_id=get_correlation_id(),
                                 causation_id=self.causation_id)
        self.events.append(envelope)
        return envelope

    async def commit(self) -> None:
        session = self.session
        if self.events:
            await add_events(session, self.events, self.topics)
        await session.commit()
