"""Reporting settings (env prefix REPORTING_; shared ones fall back to DATABASE_URL etc.)."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from turnout_kit.settings import ServiceSettings


class ReportingSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="REPORTING_")
    service_database: ClassVar[str | None] = "turnout_reporting"

    http_port: int = 8004

    # Events folded per transaction. Bigger batches amortise the round trips (one load,
    # one upsert per table, one commit); smaller ones show changes sooner.
    fold_batch_size: int = Field(default=5000, ge=1, le=100_000)
    # How long a poll waits for more events before folding what it has.
    fold_poll_ms: int = Field(default=200, ge=1, le=10_000)
    # Off for an instance that only serves HTTP (the projections are folded elsewhere).
    fold_enabled: bool = True
