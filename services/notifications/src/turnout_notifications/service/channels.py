"""The numbers to text, fetched from contacts at send time, in batches, with a service
token: `POST /internal/v1/contact-channels {member_ids}` answers `{member_id, mobile,
first_name}` for the members who may be texted now; anyone absent may not be (no
mobile, no consent, erased, unknown — contacts does not say which).

Numbers live in memory for the few seconds between this call and the provider call and
are never stored, logged or put in an exception.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass

import httpx
import structlog

from turnout_kit.auth import ServiceToken

from ..settings import NotificationsSettings

log = structlog.get_logger("turnout.notifications.channels")

PATH = "/internal/v1/contact-channels"


class ContactsUnavailable(Exception):
    """Contacts did not answer usefully; the messages stay queued for the next round."""


@dataclass(frozen=True, repr=False)  # repr=False: a repr would print the number
class SmsChannel:
    member_id: uuid.UUID
    mobile: str
    first_name: str | None


class ContactChannels:
    def __init__(self, settings: NotificationsSettings,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self._settings = settings
        self._client = httpx.AsyncClient(base_url=settings.contacts_url,
                                         timeout=settings.contacts_timeout_seconds,
                                         transport=transport)
        self._token = ServiceToken(settings, "notifications")

    async def aclose(self) -> None:
        await self._client.aclose()

    async def sms(self, member_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, SmsChannel]:
        found: dict[uuid.UUID, SmsChannel] = {}
        size = self._settings.contacts_batch_size
        for start in range(0, len(member_ids), size):
            batch = [str(m) for m in member_ids[start:start + size]]
            try:
                response = await self._client.post(
                    PATH, json={"member_ids": batch},
                    headers=self._token.headers())
            except httpx.HTTPError as exc:
                log.warning("contacts_unreachable", error=type(exc).__name__)
                raise ContactsUnavailable(type(exc).__name__) from None
            if response.status_code != 200:
                log.warning("contacts_refused", status=response.status_code)
                raise ContactsUnavailable(f"status {response.status_code}")
            for item in response.json()["items"]:
                member_id = uuid.UUID(item["member_id"])
                found[member_id] = SmsChannel(member_id, item["mobile"], item.get("first_name"))
        return found
