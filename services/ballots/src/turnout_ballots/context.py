"""What the service's handlers share at run time: created empty with the app, filled by
the startup hook (the engine exists only once the event loop runs)."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field

import asyncpg
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from turnout_events.relay import OutboxRelay
from turnout_events.topics import TopicRegistry
from turnout_kit.uow import UnitOfWork

from .service.directory import MemberDirectory
from .service.group_commit import GroupCommit
from .settings import BallotsSettings


@dataclass
class BallotsContext:
    settings: BallotsSettings
    topics: TopicRegistry
    engine: AsyncEngine | None = None
    sessions: async_sessionmaker[AsyncSession] | None = None
    # Plain asyncpg connections for vote marks, the one hot path (service/marks.py), and
    # the group commit that writes them (service/group_commit.py).
    pool: asyncpg.Pool | None = field(default=None, repr=False)
    marks: GroupCommit | None = field(default=None, repr=False)
    relay: OutboxRelay | None = field(default=None, repr=False)
    # Rolls whose member-enrolled events this process is writing (service/enrolment.py).
    enrolments: dict[uuid.UUID, asyncio.Task] = field(default_factory=dict, repr=False)
    # Membership numbers to member ids, from contacts (service/directory.py).
    directory: MemberDirectory | None = field(default=None, repr=False)

    @classmethod
    def from_settings(cls, settings: BallotsSettings) -> BallotsContext:
        return cls(settings=settings, topics=settings.topic_registry())

    def uow(self, actor: str = "system", causation_id=None) -> UnitOfWork:
        if self.sessions is None:
            raise RuntimeError("the ballots service has not started")
        return UnitOfWork(self.sessions, self.topics, actor=actor, causation_id=causation_id)
