"""Contacts settings (env prefix CONTACTS_; shared ones fall back to DATABASE_URL etc.)."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field, SecretStr
from pydantic_settings import SettingsConfigDict

from turnout_kit.settings import MiB, ServiceSettings

# Development keys, recognisable on sight, so `make up` works with no configuration; the
# service logs a warning while they are in use. Production sets CONTACTS_ENCRYPTION_KEYS.
DEVELOPMENT_ENCRYPTION_KEYS = "dev1:ZGV2ZWxvcG1lbnQtb25seS1rZXktMzItYnl0ZXMhISE="
DEVELOPMENT_INDEX_KEY = "development-only-blind-index-key-do-not-use"


class ContactsSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="CONTACTS_")
    service_database: ClassVar[str | None] = "turnout_contacts"

    http_port: int = 8001
    # Roster files are big; other bodies stay small. By default a union of a million
    # members (the largest ballot the design plans for) imports in one file: measured,
    # a synthetic roster of 1,000,000 rows is 60 MB, imports in 52 s (re-imports in
    # 21 s), and the benchmark's process (this app with its worker processes' parent)
    # peaked at 2.6 GB. A bigger union raises both.
    max_body_bytes: int = Field(default=128 * MiB, ge=0)
    max_import_rows: int = Field(default=1_000_000, ge=1)

    # AES-256-GCM keys for contact values at rest, as `id:base64key` separated by commas.
    # The first encrypts; all decrypt, so a new key can be put first and old rows
    # re-encrypted later (`turnout contacts rotate-keys`).
    encryption_keys: SecretStr = SecretStr(DEVELOPMENT_ENCRYPTION_KEYS)
    # HMAC key for the blind index that lets reps search by name without storing names
    # in clear.
    index_key: SecretStr = SecretStr(DEVELOPMENT_INDEX_KEY)

    reveals_per_hour: int = Field(default=20, ge=1)
    page_size: int = Field(default=50, ge=1, le=500)

    @property
    def uses_development_keys(self) -> bool:
        return (self.encryption_keys.get_secret_value() == DEVELOPMENT_ENCRYPTION_KEYS
                or self.index_key.get_secret_value() == DEVELOPMENT_INDEX_KEY)
