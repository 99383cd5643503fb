"""Calls to another service's internal API (`/internal/v1/...`): a POST per batch of
values, with a service token, each answering `{"items": [...]}`.

    client = InternalClient(settings, base_url=settings.contacts_url,
                            timeout=settings.contacts_timeout_seconds, subject="ballots",
                            peer="contacts", unavailable=DirectoryUnavailable)
    items = await client.items("/internal/v1/member-ids", "membership_numbers",
                               numbers, batch=10_000)

A call that fails (unreachable, or any answer but 200) raises `unavailable`, logged as
`{peer}_unreachable` / `{peer}_refused`: with the error's type or the status, never a
value sent or a body received (they may be numbers or names).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import httpx
import structlog

from .auth import ServiceToken
from .settings import ServiceSettings

log = structlog.get_logger("turnout.kit.internal")


class InternalClient:
    def __init__(self, settings: ServiceSettings, *, base_url: str, timeout: float,
                 subject: str, peer: str, unavailable: type[Exception],
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self._client = httpx.AsyncClient(base_url=base_url, timeout=timeout,
                                         transport=transport)
        self._token = ServiceToken(settings, subject)
        self._peer = peer
        self._unavailable = unavailable

    async def aclose(self) -> None:
        await self._client.aclose()

    async def items(self, path: str, field: str, values: Sequence[str], *,
                    batch: int) -> list[dict[str, Any]]:
        """Every item answered for `values`, sent `batch` at a time as `{field: [...]}`."""
        found: list[dict[str, Any]] = []
        for start in range(0, len(values), batch):
            try:
                response = await self._client.post(
                    path, json={field: list(values[start:start + batch])},
                    headers=self._token.headers())
            except httpx.HTTPError as exc:
                log.warning(f"{self._peer}_unreachable", error=type(exc).__name__)
                raise self._unavailable(type(exc).__name__) from None
            if response.status_code != 200:
                log.warning(f"{self._peer}_refused", status=response.status_code)
                raise self._unavailable(f"status {response.status_code}")
            found += response.json()["items"]
        return found
