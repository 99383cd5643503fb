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

from turnout_kit.internal import InternalClient

from ..settings import NotificationsSettings

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
        self._batch = settings.contacts_batch_size
        self._contacts = InternalClient(
            settings, base_url=settings.contacts_url,
            timeout=settings.contacts_timeout_seconds, subject="notifications",
            peer="contacts", unavailable=ContactsUnavailable, transport=transport)

    async def aclose(self) -> None:
        await self._contacts.aclose()

    async def sms(self, member_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, SmsChannel]:
        items = await self._contacts.items(PATH, "member_ids", [str(m) for m in member_ids],
                                           batch=self._batch)
        return {channel.member_id: channel for channel in (
            SmsChannel(uuid.UUID(item["member_id"]), item["mobile"], item.get("first_name"))
            for item in items)}
