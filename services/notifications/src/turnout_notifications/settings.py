"""Notifications settings (env prefix NOTIFICATIONS_; shared ones fall back to DATABASE_URL
etc.)."""

from __future__ import annotations

import base64
import binascii
from datetime import time
from typing import ClassVar, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from turnout_kit.settings import ServiceSettings

# Development secrets, recognisable on sight, so the service runs with no configuration;
# production sets its own (NOTIFICATIONS_RECIPIENT_HASH_KEY and friends).
DEVELOPMENT_RECIPIENT_HASH_KEY = "development-only-recipient-hash-key-do-not-use"
DEVELOPMENT_REPLY_KEY = "ZGV2ZWxvcG1lbnQtb25seS1yZXBseS1rZXktMzJieXQ="
DEVELOPMENT_SANDBOX_WEBHOOK_SECRET = "development-only-sandbox-webhook-secret"


class NotificationsSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="NOTIFICATIONS_")
    service_database: ClassVar[str | None] = "turnout_notifications"

    http_port: int = 8003

    # Where the numbers come from at send time (POST /internal/v1/contact-channels).
    contacts_url: str = "http://127.0.0.1:8001"
    contacts_timeout_seconds: float = Field(default=10.0, gt=0)
    # Contacts answers at most 1,000 ids per call.
    contacts_batch_size: int = Field(default=500, ge=1, le=1000)

    # sandbox (the default: nothing leaves the machine) or twilio (any provider speaking
    # Twilio's Messages API and webhooks).
    provider: Literal["sandbox", "twilio"] = "sandbox"
    twilio_base_url: str = "https://api.twilio.com"
    twilio_account_sid: str | None = None
    twilio_auth_token: SecretStr | None = None
    # What members see as the sender: a number in E.164 or an alphanumeric sender id.
    twilio_sender_id: str | None = None
    # Where the provider posts delivery receipts; default: the public base URL's
    # /v1/webhooks/sms/status, or none (no receipts) when that is not set either.
    twilio_status_callback_url: str | None = None
    twilio_timeout_seconds: float = Field(default=10.0, gt=0)
    # The sandbox signs simulated inbound calls the provider's way, with this secret.
    sandbox_webhook_secret: SecretStr = SecretStr(DEVELOPMENT_SANDBOX_WEBHOOK_SECRET)
    # The sandbox page (GET /sandbox) answers only on loopback unless this is set (e.g.
    # a demo in Docker reached from the host).
    sandbox_page_remote: bool = False

    # The scheme and host the provider calls us on (e.g. https://turnout.example.org).
    # Webhook signatures cover the full URL the provider used: behind a proxy that is not
    # the URL this process sees. Unset: the URL of the request as received.
    public_base_url: str | None = None
    # Numbers given without a country code in inbound calls are read as this region's.
    default_region: str = "GB"
    # HMAC-SHA256 key for the hash of each number a message went to (how a reply finds
    # its member without the number being stored).
    recipient_hash_key: SecretStr = SecretStr(DEVELOPMENT_RECIPIENT_HASH_KEY)
    # AES-256-GCM key (base64 of 32 bytes) sealing the text of unclassified replies and
    # the number a STOP confirmation goes to until it is sent.
    reply_encryption_key: SecretStr = SecretStr(DEVELOPMENT_REPLY_KEY)
    # What the provider accepts from us; the dispatcher never goes faster.
    provider_rate_per_second: float = Field(default=20.0, gt=0)
    # Transient provider errors are retried with backoff this many times, then the
    # message is failed.
    provider_max_attempts: int = Field(default=5, ge=1)
    # A message claimed this long ago with no answer recorded was orphaned by a crash
    # mid-call; the dispatcher then asks the provider (or fails it as unknown_outcome).
    # Must exceed the longest a provider call can take.
    sending_timeout_seconds: float = Field(default=300.0, gt=0)

    # Defaults of a campaign that does not say otherwise.
    quiet_hours_start: time = time(21, 0)
    quiet_hours_end: time = time(9, 0)
    timezone: str = "Europe/London"
    max_per_day: int = Field(default=1, ge=1)

    # The dispatcher wakes this often to look for due slots and queued messages. Tests
    # turn it off and drive the dispatcher themselves with a clock of their own.
    dispatcher_enabled: bool = True
    dispatch_interval_seconds: float = Field(default=5.0, gt=0)
    # How long a delivery receipt's call is remembered as seen (the replay guard): past
    # that a replay is still harmless (a message settles once), so the rows go.
    webhook_status_replay_days: int = Field(default=14, ge=1)

    @field_validator("reply_encryption_key")
    @classmethod
    def _aes_256_key(cls, value: SecretStr) -> SecretStr:
        try:
            raw = base64.b64decode(value.get_secret_value(), validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("must be base64") from None
        if len(raw) != 32:
            raise ValueError("must be 32 bytes (AES-256), base64-encoded")
        return value

    @field_validator("public_base_url", "twilio_base_url", "twilio_status_callback_url")
    @classmethod
    def _no_trailing_slash(cls, value: str | None) -> str | None:
        return value.rstrip("/") if value else value

    @model_validator(mode="after")
    def _provider_configured(self) -> NotificationsSettings:
        if self.provider == "twilio":
            missing = [name for name in ("twilio_account_sid", "twilio_auth_token",
                                         "twilio_sender_id") if not getattr(self, name)]
            if missing:
                # Names only: never a value.
                raise ValueError("provider twilio needs " + ", ".join(
                    f"NOTIFICATIONS_{n.upper()}" for n in missing))
        return self

    @property
    def status_callback_url(self) -> str | None:
        if self.twilio_status_callback_url:
            return self.twilio_status_callback_url
        if self.public_base_url:
            return f"{self.public_base_url}/v1/webhooks/sms/status"
        return None

    @property
    def webhook_secret(self) -> str:
        """The secret inbound webhooks are signed with: the provider's auth token, or the
        sandbox's own secret."""
        if self.provider == "twilio":
            assert self.twilio_auth_token is not None
            return self.twilio_auth_token.get_secret_value()
        return self.sandbox_webhook_secret.get_secret_value()

    @property
    def uses_development_keys(self) -> bool:
        return (self.recipient_hash_key.get_secret_value() == DEVELOPMENT_RECIPIENT_HASH_KEY
                or self.reply_encryption_key.get_secret_value() == DEVELOPMENT_REPLY_KEY)
