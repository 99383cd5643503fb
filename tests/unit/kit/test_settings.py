"""Settings: service prefix beats the shared variable, which beats the default."""

from __future__ import annotations

import logging
from typing import ClassVar

import pytest
from pydantic import ValidationError
from pydantic_settings import SettingsConfigDict

from turnout_kit.settings import DEVELOPMENT_JWT_SECRET, ServiceSettings, to_async_url

from .conftest import TEST_SECRET

pytestmark = pytest.mark.unit


class ContactsSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="CONTACTS_")
    service_database: ClassVar[str | None] = "turnout_contacts"
    http_port: int = 8001


class PlainSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="TESTSVC_")


def test_defaults() -> None:
    s = PlainSettings()
    assert s.database_url == "postgresql+asyncpg://postgres@127.0.0.1:55432/postgres"
    assert s.kafka_bootstrap_servers == "127.0.0.1:9092"
    assert s.topic_namespace == "turnout"
    assert s.topic_partitions == 6
    assert s.jwt_issuer == "turnout-local"
    assert s.jwt_audience == "turnout"
    assert s.jwks_url is None
    assert s.max_body_bytes == 25 * 1024 * 1024
    assert s.log_level == "INFO"
    assert s.log_json is True
    assert s.http_port == 8000
    assert s.uses_development_jwt_secret


def test_service_defaults_override_base_defaults() -> None:
    assert ContactsSettings().http_port == 8001


def test_shared_variables_are_used_without_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://u:p@db.internal:5432/turnout")
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "k1:9092,k2:9092")
    monkeypatch.setenv("TURNOUT_TOPIC_NAMESPACE", "t123")
    monkeypatch.setenv("TURNOUT_TOPIC_PARTITIONS", "3")
    monkeypatch.setenv("TURNOUT_JWT_SECRET", TEST_SECRET)
    monkeypatch.setenv("TURNOUT_LOG_JSON", "false")
    s = PlainSettings()
    assert s.database_url == "postgresql+asyncpg://u:p@db.internal:5432/turnout"
    assert s.kafka_bootstrap_servers == "k1:9092,k2:9092"
    assert s.topic_namespace == "t123"
    assert s.topic_partitions == 3
    assert s.jwt_secret.get_secret_value() == TEST_SECRET
    assert not s.uses_development_jwt_secret
    assert s.log_json is False


def test_service_prefix_beats_shared_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://shared@db:5432/postgres")
    monkeypatch.setenv("CONTACTS_DATABASE_URL", "postgresql://own@db:5432/contacts_db")
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "shared:9092")
    monkeypatch.setenv("CONTACTS_KAFKA_BOOTSTRAP_SERVERS", "own:9092")
    monkeypatch.setenv("TURNOUT_JWT_SECRET", TEST_SECRET)
    monkeypatch.setenv("CONTACTS_JWT_SECRET", TEST_SECRET + "-contacts")
    monkeypatch.setenv("CONTACTS_HTTP_PORT", "9001")
    s = ContactsSettings()
    # A service-specific URL is taken exactly as given, database name included.
    assert s.database_url == "postgresql+asyncpg://own@db:5432/contacts_db"
    assert s.kafka_bootstrap_servers == "own:9092"
    assert s.jwt_secret.get_secret_value() == TEST_SECRET + "-contacts"
    assert s.http_port == 9001


def test_constructor_arguments_beat_everything(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONTACTS_KAFKA_BOOTSTRAP_SERVERS", "own:9092")
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "shared:9092")
    s = ContactsSettings(kafka_bootstrap_servers="explicit:9092",
                         database_url="postgresql://x@h/explicit")
    assert s.kafka_bootstrap_servers == "explicit:9092"
    assert s.database_url == "postgresql+asyncpg://x@h/explicit"


def test_other_services_prefixes_are_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BALLOTS_HTTP_PORT", "7777")
    monkeypatch.setenv("HTTP_PORT", "7778")
    assert ContactsSettings().http_port == 8001


def test_shared_server_url_gets_the_services_own_database(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert ContactsSettings().database_url.endswith("/turnout_contacts")
    monkeypatch.setenv("DATABASE_URL", "postgresql://postgres@127.0.0.1:55432/postgres")
    assert (ContactsSettings().database_url
            == "postgresql+asyncpg://postgres@127.0.0.1:55432/turnout_contacts")
    # Without service_database, the shared URL is used as it is.
    assert PlainSettings().database_url.endswith("/postgres")


def test_empty_service_variable_does_not_blank_the_shared_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "shared:9092")
    monkeypatch.setenv("CONTACTS_KAFKA_BOOTSTRAP_SERVERS", "")
    assert ContactsSettings().kafka_bootstrap_servers == "shared:9092"


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("postgresql://u@h:5432/d", "postgresql+asyncpg://u@h:5432/d"),
        ("postgres://u@h:5432/d", "postgresql+asyncpg://u@h:5432/d"),
        ("postgresql+psycopg://u@h/d", "postgresql+asyncpg://u@h/d"),
        ("postgresql+asyncpg://u:p%40ss@h/d", "postgresql+asyncpg://u:p%40ss@h/d"),
        ("postgresql://u@h/d?sslmode=require", "postgresql+asyncpg://u@h/d?ssl=require"),
    ],
)
def test_database_urls_become_asyncpg_urls(given: str, expected: str) -> None:
    assert to_async_url(given) == expected
    assert PlainSettings(database_url=given).database_url == expected


def test_non_postgres_url_is_refused() -> None:
    with pytest.raises(ValidationError, match="not a PostgreSQL URL"):
        PlainSettings(database_url="mysql://u@h/d")


def test_database_url_is_kept_out_of_repr() -> None:
    s = PlainSettings(database_url="postgresql://u:hunter2@h/d", jwt_secret=TEST_SECRET)
    assert "hunter2" not in repr(s)
    assert TEST_SECRET not in repr(s)
    assert s.database_url_for_display() == "postgresql+asyncpg://u:***@h/d"


def test_short_jwt_secret_is_refused_without_echoing_it() -> None:
    with pytest.raises(ValidationError) as info:
        PlainSettings(jwt_secret="short-secret")
    assert "at least 32 characters" in str(info.value)
    assert "short-secret" not in str(info.value)


def test_development_secret_is_announced(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="turnout_kit.settings"):
        s = PlainSettings()
    assert s.jwt_secret.get_secret_value() == DEVELOPMENT_JWT_SECRET
    assert any("development secret" in r.getMessage() for r in caplog.records)


def test_no_warning_when_a_secret_or_jwks_is_configured(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    with caplog.at_level(logging.WARNING, logger="turnout_kit.settings"):
        PlainSettings(jwt_secret=TEST_SECRET)
        monkeypatch.setenv("TURNOUT_JWKS_URL", "https://idp.example/jwks")
        monkeypatch.setenv("TURNOUT_SERVICE_SECRET", "s" * 40)
        s = PlainSettings()
    assert s.jwks_url == "https://idp.example/jwks"
    assert not s.uses_development_jwt_secret
    assert caplog.records == []


def test_an_identity_provider_needs_a_service_secret_beside_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without one, the services could not call one another (no reminder could be
    sent): refused at start-up, with what to set and no value in the message."""
    monkeypatch.setenv("TURNOUT_JWKS_URL", "https://idp.example/jwks")
    with pytest.raises(ValidationError, match="TURNOUT_SERVICE_SECRET must be set"):
        PlainSettings()
    monkeypatch.setenv("TURNOUT_SERVICE_SECRET", "too-short-secret")
    with pytest.raises(ValidationError) as refused:
        PlainSettings()
    assert "at least 32 characters" in str(refused.value)
    assert "too-short-secret" not in str(refused.value)


def test_log_level_is_normalised_and_checked() -> None:
    assert PlainSettings(log_level="debug").log_level == "DEBUG"
    with pytest.raises(ValidationError):
        PlainSettings(log_level="chatty")


def test_topic_registry_follows_the_settings() -> None:
    registry = PlainSettings(topic_namespace="t9", topic_partitions=3).topic_registry()
    assert registry.namespace == "t9"
    assert registry.partitions == 3
