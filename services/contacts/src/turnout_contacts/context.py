"""What the service's handlers share at run time: created empty with the app, filled by
the startup hook (the engine exists only once the event loop runs)."""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from turnout_events.relay import OutboxRelay
from turnout_events.topics import TopicRegistry
from turnout_kit.uow import UnitOfWork

from .domain.crypto import BlindIndex, ContactCipher
from .settings import ContactsSettings


@dataclass
class ContactsContext:
    settings: ContactsSettings
    topics: TopicRegistry
    cipher: ContactCipher
    index: BlindIndex
    engine: AsyncEngine | None = None
    sessions: async_sessionmaker[AsyncSession] | None = None
    relay: OutboxRelay | None = field(default=None, repr=False)

    @classmethod
    def from_settings(cls, settings: ContactsSettings) -> ContactsContext:
        return cls(
            settings=settings,
            topics=settings.topic_registry(),
            cipher=ContactCipher.from_setting(settings.encryption_keys.get_secret_value()),
            index=BlindIndex(settings.index_key.get_secret_value().encode()),
        )

    def uow(self, actor: str = "system", causation_id=None) -> UnitOfWork:
        if self.sessions is None:
            raise RuntimeError("the contacts service has not started")
        return UnitOfWork(self.sessions, self.topics, actor=actor, causation_id=causation_id)
