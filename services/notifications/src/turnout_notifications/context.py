"""What the service's handlers share at run time: created empty with the app, filled by
the startup hook (the engine exists only once the event loop runs)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from turnout_events.relay import OutboxRelay
from turnout_events.topics import TopicRegistry
from turnout_kit.uow import UnitOfWork

from .settings import NotificationsSettings

if TYPE_CHECKING:
    from .service.dispatcher import Dispatcher

Clock = Callable[[], datetime]


def system_clock() -> datetime:
    return datetime.now(UTC)


@dataclass
class NotificationsContext:
    settings: NotificationsSettings
    topics: TopicRegistry
    # Every decision about time (due slots, quiet hours, the per-day cap, days left) asks
    # this clock, so tests can move time instead of waiting for it.
    clock: Clock = system_clock
    engine: AsyncEngine | None = None
    sessions: async_sessionmaker[AsyncSession] | None = None
    relay: OutboxRelay | None = field(default=None, repr=False)
    dispatcher: Dispatcher | None = field(default=None, repr=False)

    @classmethod
    def from_settings(cls, settings: NotificationsSettings,
                      clock: Clock | None = None) -> NotificationsContext:
        return cls(settings=settings, topics=settings.topic_registry(),
                   clock=clock or system_clock)

    def uow(self, actor: str = "system", causation_id=None) -> UnitOfWork:
        if self.sessions is None:
            raise RuntimeError("the notifications service has not started")
        return UnitOfWork(self.sessions, self.topics, actor=actor, causation_id=causation_id)
