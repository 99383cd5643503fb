"""What the dispatcher needs of an SMS provider. Adapters (the sandbox here; a
Twilio-compatible HTTP API next) turn their own errors into the two below, so the
dispatcher decides retry-or-fail without knowing which provider it talks to.

Every call carries the message's idempotency key: an adapter whose provider honours one
passes it on, so a retry after a lost answer cannot send a second text.

An adapter whose provider can say whether it took a message (by that key) also offers
`lookup`: after a crash between the call and recording its answer, the dispatcher asks
instead of guessing. Without it, such a message is failed as `unknown_outcome` and never
resent (see service/dispatcher.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable


@dataclass(frozen=True)
class Accepted:
    provider_message_id: str


class ProviderError(Exception):
    """The provider did not take the message. `code` is a short code for our records and
    the message-failed event (e.g. "unreachable"); never a number or the text."""

    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


class TransientProviderError(ProviderError):
    """Worth retrying later: a timeout, a 5xx, a rate limit."""


class PermanentProviderError(ProviderError):
    """Retrying will not help: an invalid or unreachable number, a refused sender."""


class SmsProvider(Protocol):
    name: str

    async def send(self, *, idempotency_key: str, to: str, body: str) -> Accepted: ...


@runtime_checkable
class Lookup(Protocol):
    async def lookup(self, *, idempotency_key: str) -> Accepted | None:
        """The message the provider took under this key, or None when it never got one.
        Raises TransientProviderError when it cannot tell right now."""
        ...


def can_look_up(provider: object) -> bool:
    return isinstance(provider, Lookup)
