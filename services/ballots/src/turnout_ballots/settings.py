"""Ballots settings (env prefix BALLOTS_; shared ones fall back to DATABASE_URL etc.)."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from turnout_kit.settings import MiB, ServiceSettings


class BallotsSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="BALLOTS_")
    service_database: ClassVar[str | None] = "turnout_ballots"

    http_port: int = 8002
    # A scrutineer's list is one member id a line: 500,000 ids are about 19 MiB.
    max_body_bytes: int = Field(default=32 * MiB, ge=0)
    max_import_rows: int = Field(default=500_000, ge=1)
    # Where a scrutineer's list keyed by membership number is matched to member ids
    # (POST /internal/v1/member-ids, with a service token).
    contacts_url: str = "http://127.0.0.1:8001"
    contacts_timeout_seconds: float = Field(default=30.0, gt=0)

    # Opening a ballot writes one member-enrolled event per member on the roll, this many
    # to a transaction, so a roll of a million never sits in one transaction.
    enrolment_chunk_size: int = Field(default=10_000, ge=1, le=100_000)
    # How long `POST /open` waits for the enrolment events before answering 202 (still
    # publishing) instead of 200; the work goes on in the background either way.
    open_wait_seconds: float = Field(default=10.0, ge=0)

    # Connections of the SQLAlchemy engine: every command but vote marks.
    database_pool_size: int = Field(default=10, ge=1)
    # Vote marks are written by this many workers on plain asyncpg connections, each
    # committing up to `mark_batch_size` marks at once (service/group_commit.py).
    mark_workers: int = Field(default=4, ge=1, le=64)
    mark_batch_size: int = Field(default=100, ge=1, le=10_000)
