"""What the service's handlers share at run time: created empty with the app, filled by
the startup hook (the engine exists only once the event loop runs)."""

from __future__ import annotations

import base64
import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from turnout_events.relay import OutboxRelay
from turnout_events.topics import TopicRegistry
from turnout_kit.uow import UnitOfWork

from .domain.replies import normalise_number, recipient_hash
from .settings import NotificationsSettings

if TYPE_CHECKING:
    from .providers.base import SmsProvider
    from .service.dispatcher import Dispatcher

Clock = Callable[[], datetime]


def system_clock() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, repr=False)
class Sealer:
    """AES-256-GCM for the little this service keeps that a person wrote or is reached
    on (an unclassified reply, a number until its STOP confirmation is sent). Layout:
    12-byte nonce | ciphertext+tag; the owning row's id is the associated data, so a
    value copied onto another row does not open."""

    aead: AESGCM

    @classmethod
    def from_base64(cls, key: str) -> Sealer:
        return cls(AESGCM(base64.b64decode(key)))

    def seal(self, owner: uuid.UUID, text: str) -> bytes:
        nonce = os.urandom(12)
        return nonce + self.aead.encrypt(nonce, text.encode(), owner.bytes)

    def open(self, owner: uuid.UUID, blob: bytes) -> str:
        return self.aead.decrypt(blob[:12], blob[12:], owner.bytes).decode()


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
    # The provider chosen in settings (sandbox or twilio); set by the startup hook.
    provider: SmsProvider | None = field(default=None, repr=False)
    sealer: Sealer | None = field(default=None, repr=False)

    @classmethod
    def from_settings(cls, settings: NotificationsSettings,
                      clock: Clock | None = None) -> NotificationsContext:
        return cls(settings=settings, topics=settings.topic_registry(),
                   clock=clock or system_clock,
                   sealer=Sealer.from_base64(settings.reply_encryption_key.get_secret_value()))

    def recipient_hash(self, number: str) -> bytes:
        """The keyed hash of a number, as stored with each message sent to it and looked
        up when a reply comes from it (normalised first, so both sides agree)."""
        e164 = normalise_number(number, self.settings.default_region) or number
        return recipient_hash(self.settings.recipient_hash_key.get_secret_value().encode(),
                              e164)

    def uow(self, actor: str = "system", causation_id=None) -> UnitOfWork:
        if self.sessions is None:
            raise RuntimeError("the notifications service has not started")
        return UnitOfWork(self.sessions, self.topics, actor=actor, causation_id=causation_id)
