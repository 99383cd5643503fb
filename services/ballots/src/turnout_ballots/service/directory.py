"""Member ids for membership numbers, asked of the contacts service with a service token:
`POST /internal/v1/member-ids {membership_numbers}` answers `{membership_number,
member_id}` for the numbers that name a member. Used for scrutineer lists keyed by
membership number; this service itself never stores a membership number.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

import httpx
import structlog

from turnout_kit.auth import ServiceToken

from ..settings import BallotsSettings

log = structlog.get_logger("turnout.ballots.directory")

PATH = "/internal/v1/member-ids"
BATCH = 10_000  # contacts' limit per call


class DirectoryUnavailable(Exception):
    """Contacts did not answer usefully; nothing can be matched now."""


class MemberDirectory:
    def __init__(self, settings: BallotsSettings,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self._client = httpx.AsyncClient(base_url=settings.contacts_url,
                                         timeout=settings.contacts_timeout_seconds,
                                         transport=transport)
        self._token = ServiceToken(settings, "ballots")

    async def aclose(self) -> None:
        await self._client.aclose()

    async def member_ids(self, numbers: Sequence[str]) -> dict[str, uuid.UUID]:
        """The member id of each number that names a member; unknown ones are absent."""
        found: dict[str, uuid.UUID] = {}
        for start in range(0, len(numbers), BATCH):
            batch = list(numbers[start:start + BATCH])
            try:
                response = await self._client.post(
                    PATH, json={"membership_numbers": batch},
                    headers=self._token.headers())
            except httpx.HTTPError as exc:
                log.warning("contacts_unreachable", error=type(exc).__name__)
                raise DirectoryUnavailable(type(exc).__name__) from None
            if response.status_code != 200:
                log.warning("contacts_refused", status=response.status_code)
                raise DirectoryUnavailable(f"status {response.status_code}")
            for item in response.json()["items"]:
                found[item["membership_number"]] = uuid.UUID(item["member_id"])
        return found
