"""What the service's handlers share at run time: created empty with the app, filled by
the startup hook (engines and pools exist only once the event loop runs)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import asyncpg
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from turnout_events.topics import TopicRegistry

from .messaging.consumer import FoldConsumer
from .messaging.processes import CommittedLag, FoldProcesses
from .settings import ReportingSettings


@dataclass
class ReportingContext:
    settings: ReportingSettings
    topics: TopicRegistry
    # Queries (the HTTP side) go through SQLAlchemy; the fold through a plain asyncpg
    # pool of its own (see projections/store.py).
    engine: AsyncEngine | None = None
    sessions: async_sessionmaker[AsyncSession] | None = None
    pool: asyncpg.Pool | None = field(default=None, repr=False)
    consumer: FoldConsumer | None = field(default=None, repr=False)
    # Or, with fold_processes > 1, the processes that fold and their lag.
    fold_processes: FoldProcesses | None = field(default=None, repr=False)
    fold_lag: CommittedLag | None = field(default=None, repr=False)
    # A rebuild this instance coordinates (service/rebuild.py), while it runs.
    rebuild: asyncio.Task[None] | None = field(default=None, repr=False)

    @classmethod
    def from_settings(cls, settings: ReportingSettings) -> ReportingContext:
        return cls(settings=settings, topics=settings.topic_registry())

    def session(self) -> AsyncSession:
        if self.sessions is None:
            raise RuntimeError("the reporting service has not started")
        return self.sessions()
