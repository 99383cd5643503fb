"""Notifications settings (env prefix NOTIFICATIONS_; shared ones fall back to DATABASE_URL
etc.)."""

from __future__ import annotations

from datetime import time
from typing import ClassVar, Literal

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from turnout_kit.settings import ServiceSettings


class NotificationsSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="NOTIFICATIONS_")
    service_database: ClassVar[str | None] = "turnout_notifications"

    http_port: int = 8003

    # Where the numbers come from at send time (POST /internal/v1/contact-channels).
    contacts_url: str = "http://127.0.0.1:8001"
    contacts_timeout_seconds: float = Field(default=10.0, gt=0)
    # Contacts answers at most 1,000 ids per call.
    contacts_batch_size: int = Field(default=500, ge=1, le=1000)

    provider: Literal["sandbox"] = "sandbox"
    # What the provider accepts from us; the dispatcher never goes faster.
    provider_rate_per_second: float = Field(default=20.0, gt=0)
    # Transient provider errors are retried with backoff this many times, then the
    # message is failed.
    provider_max_attempts: int = Field(default=5, ge=1)

    # Defaults of a campaign that does not say otherwise.
    quiet_hours_start: time = time(21, 0)
    quiet_hours_end: time = time(9, 0)
    timezone: str = "Europe/London"
    max_per_day: int = Field(default=1, ge=1)

    # The dispatcher wakes this often to look for due slots and queued messages. Tests
    # turn it off and drive the dispatcher themselves with a clock of their own.
    dispatcher_enabled: bool = True
    dispatch_interval_seconds: float = Field(default=5.0, gt=0)
