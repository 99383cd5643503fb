"""Member ids for membership numbers, asked of the contacts service with a service token:
`POST /internal/v1/member-ids {membership_numbers}` answers `{membership_number,
member_id}` for the numbers that name a member. Used for scrutineer lists keyed by
membership number; this service itself never stores a membership number.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

import httpx

from turnout_kit.internal import InternalClient

from ..settings import BallotsSettings

PATH = "/internal/v1/member-ids"
BATCH = 10_000  # contacts' limit per call


class DirectoryUnavailable(Exception):
    """Contacts did not answer usefully; nothing can be matched now."""


class MemberDirectory:
    def __init__(self, settings: BallotsSettings,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self._contacts = InternalClient(
            settings, base_url=settings.contacts_url,
            timeout=settings.contacts_timeout_seconds, subject="ballots", peer="contacts",
            unavailable=DirectoryUnavailable, transport=transport)

    async def aclose(self) -> None:
        await self._contacts.aclose()

    async def member_ids(self, numbers: Sequence[str]) -> dict[str, uuid.UUID]:
        """The member id of each number that names a member; unknown ones are absent."""
        items = await self._contacts.items(PATH, "membership_numbers", numbers, batch=BATCH)
        return {item["membership_number"]: uuid.UUID(item["member_id"]) for item in items}
