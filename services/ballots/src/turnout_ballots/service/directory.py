"""Member ids for membership numbers, asked of the contacts service with a service token:
`POST /internal/v1/member-ids {membership_numbers}` answers `{membership_number,
member_id}` for the numbers that name a member. Used for scrutineer lists keyed by
membership number; this service itself never stores a membership number.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import httpx
import structlog

from turnout_kit.auth import Role, issue_token

from ..settings import BallotsSettings

log = structlog.get_logger("turnout.ballots.directory")

TOKEN_TTL = timedelta(hours=1)
PATH = "/internal/v1/member-ids"
BATCH = 10_000  # contacts' limit per call


class DirectoryUnavailable(Exception):
    """Contacts did not answer usefully; nothing can be matched now."""


class MemberDirectory:
    def __init__(self, settings: BallotsSettings,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self._settings = settings
        self._client = httpx.AsyncClient(base_url=settings.contacts_url,
                                         timeout=settings.contacts_timeout_seconds,
                                         transport=transport)
        self._token: str | None = None
        self._token_expires = datetime.min.replace(tzinfo=UTC)

    async def aclose(self) -> None:
        await self._client.aclose()

    def _bearer(self) -> str:
        now = datetime.now(UTC)
        if self._token is None or self._token_expires - now < TOKEN_TTL / 4:
            s = self._settings
            self._token = issue_token(s.jwt_secret, Role.service, "ballots", ttl=TOKEN_TTL,
                                      issuer=s.jwt_issuer, audience=s.jwt_audience, now=now)
            self._token_expires = now + TOKEN_TTL
        return self._token

    async def member_ids(self, numbers: Sequence[str]) -> dict[str, uuid.UUID]:
        """The member id of each number that names a member; unknown ones are absent."""
        found: dict[str, uuid.UUID] = {}
        for start in range(0, len(numbers), BATCH):
            batch = list(numbers[start:start + BATCH])
            try:
                response = await self._client.post(
                    PATH, json={"membership_numbers": batch},
                    headers={"Authorization": f"Bearer {self._bearer()}"})
            except httpx.HTTPError as exc:
                log.warning("contacts_unreachable", error=type(exc).__name__)
                raise DirectoryUnavailable(type(exc).__name__) from None
            if response.status_code != 200:
                log.warning("contacts_refused", status=response.status_code)
                raise DirectoryUnavailable(f"status {response.status_code}")
            for item in response.json()["items"]:
                found[item["membership_number"]] = uuid.UUID(item["member_id"])
        return found
