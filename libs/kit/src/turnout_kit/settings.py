"""Service settings: one base class, subclassed by each service with its own env prefix.

    class ContactsSettings(ServiceSettings):
        model_config = SettingsConfigDict(env_prefix="CONTACTS_")
        service_database: ClassVar[str | None] = "turnout_contacts"
        http_port: int = 8001

Most settings are the service's own (`CONTACTS_HTTP_PORT`). A few describe the shared
environment and are normally set once for the whole system, without a prefix
(`DATABASE_URL`, `KAFKA_BOOTSTRAP_SERVERS`, `TURNOUT_JWT_SECRET`, ...); a service-prefixed
variable still overrides them (`CONTACTS_DATABASE_URL` beats `DATABASE_URL`).

Precedence, highest first: constructor arguments, `<PREFIX>_<FIELD>` environment
variables, the shared unprefixed variable (see `SHARED_ENV`), the field default.

Why a custom source rather than `AliasChoices` on each field: the prefix belongs to the
subclass, but the fields are declared on the base, and pydantic-settings does not apply
`env_prefix` to aliases by default; rewriting aliases per subclass would mean mutating
inherited `FieldInfo`s. A source that runs after the prefixed env source and fills in
only what is still missing says the same thing in one place.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

if TYPE_CHECKING:
    from sqlalchemy.engine import URL

    from turnout_events.topics import TopicRegistry

log = logging.getLogger(__name__)

# Deliberately long enough for HS256 (RFC 7518 wants >= 256 bits) and obviously not a
# real secret, so a token signed with it is recognisable in any review.
DEVELOPMENT_JWT_SECRET = "turnout-development-only-jwt-secret-do-not-use-in-production"
MIN_JWT_SECRET_LENGTH = 32

DEFAULT_DATABASE_URL = "postgresql+asyncpg://postgres@127.0.0.1:55432/postgres"
MiB = 1024 * 1024

# Field -> the unprefixed variable it falls back to.
SHARED_ENV: dict[str, str] = {
    "database_url": "DATABASE_URL",
    "kafka_bootstrap_servers": "KAFKA_BOOTSTRAP_SERVERS",
    "topic_namespace": "TURNOUT_TOPIC_NAMESPACE",
    "topic_partitions": "TURNOUT_TOPIC_PARTITIONS",
    "topic_replication_factor": "TURNOUT_TOPIC_REPLICATION_FACTOR",
    "jwt_secret": "TURNOUT_JWT_SECRET",
    "jwt_issuer": "TURNOUT_JWT_ISSUER",
    "jwt_audience": "TURNOUT_JWT_AUDIENCE",
    "jwks_url": "TURNOUT_JWKS_URL",
    "service_secret": "TURNOUT_SERVICE_SECRET",
    "http_host": "TURNOUT_HTTP_HOST",
    "max_body_bytes": "TURNOUT_MAX_BODY_BYTES",
    "log_level": "TURNOUT_LOG_LEVEL",
    "log_json": "TURNOUT_LOG_JSON",
}

_LOG_LEVELS = ("CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG")
_warned_dev_secret = False


def make_url(url: str) -> URL:
    """SQLAlchemy's URL parser, imported when first needed: a fold process (reporting)
    unpickles its settings without validating them again, and need not import
    SQLAlchemy for that."""
    from sqlalchemy.engine import make_url as parse

    return parse(url)


def to_async_url(url: str) -> str:
    """The SQLAlchemy asyncpg URL for a PostgreSQL URL in any of the usual spellings
    (`postgres://`, `postgresql://`, `postgresql+psycopg://`, `postgresql+asyncpg://`)."""
    parsed = make_url(url)
    backend = parsed.drivername.split("+", 1)[0]
    if backend not in ("postgresql", "postgres"):
        raise ValueError(f"not a PostgreSQL URL (scheme {parsed.drivername!r})")
    query = dict(parsed.query)
    # libpq spells it sslmode, asyncpg's connect() takes ssl: managed PostgreSQL URLs are
    # usually written for libpq.
    if "sslmode" in query and "ssl" not in query:
        query["ssl"] = query.pop("sslmode")
    return parsed.set(drivername="postgresql+asyncpg", query=query).render_as_string(
        hide_password=False
    )


class SharedEnvSource(PydanticBaseSettingsSource):
    """Fills shared fields still unset from their unprefixed variables (`SHARED_ENV`),
    and names the service's own database on the shared server (`service_database`)."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        name = SHARED_ENV.get(field_name)
        value = os.environ.get(name) if name else None
        return (value or None), field_name, False

    def __call__(self) -> dict[str, Any]:
        found: dict[str, Any] = {}
        for field_name, field in self.settings_cls.model_fields.items():
            if field_name in self.current_state or field_name not in SHARED_ENV:
                continue
            value, key, _ = self.get_field_value(field, field_name)
            if value is not None:
                found[key] = value
        if "database_url" not in self.current_state:
            database = getattr(self.settings_cls, "service_database", None)
            shared = found.get("database_url", DEFAULT_DATABASE_URL)
            if database:
                # DATABASE_URL names a server (the local runtime hands out the `postgres`
                # maintenance database); each service keeps its data in its own database.
                shared = make_url(shared).set(database=database).render_as_string(
                    hide_password=False
                )
            found["database_url"] = shared
        return found


class ServiceSettings(BaseSettings):
    """Settings every service has. Subclass with your own `env_prefix`."""

    model_config = SettingsConfigDict(
        env_prefix="TURNOUT_",
        env_ignore_empty=True,  # `CONTACTS_DATABASE_URL=` must not blank the shared one
        extra="ignore",
        # A startup error is printed and logged: it must not show a secret or a URL's
        # password.
        hide_input_in_errors=True,
    )

    # When set, a database URL taken from the shared DATABASE_URL (or the default) gets
    # this database name; a service-prefixed URL is used exactly as given.
    service_database: ClassVar[str | None] = None

    database_url: str = Field(default=DEFAULT_DATABASE_URL, repr=False)
    kafka_bootstrap_servers: str = "127.0.0.1:9092"
    topic_namespace: str = "turnout"
    topic_partitions: int = Field(default=6, ge=1)
    topic_replication_factor: int = Field(default=1, ge=1)

    jwt_secret: SecretStr = SecretStr(DEVELOPMENT_JWT_SECRET)
    jwt_issuer: str = "turnout-local"
    jwt_audience: str = "turnout"
    # When set, bearer tokens are RS256/ES256 tokens from an OIDC provider, checked
    # against its published keys; the shared secret is not accepted at all.
    jwks_url: str | None = None
    # With a JWKS, the key the services sign their calls to one another with (the
    # identity provider's tokens are for people): required then, and good only for
    # tokens of the `service` role. Without a JWKS, the shared secret serves.
    service_secret: SecretStr | None = Field(default=None, repr=False)

    http_host: str = "127.0.0.1"
    http_port: int = Field(default=8000, ge=0, le=65535)
    max_body_bytes: int = Field(default=25 * MiB, ge=0)

    log_level: str = "INFO"
    log_json: bool = True

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (
            init_settings,
            env_settings,
            dotenv_settings,
            SharedEnvSource(settings_cls),
            file_secret_settings,
        )

    @field_validator("database_url")
    @classmethod
    def _asyncpg_url(cls, value: str) -> str:
        return to_async_url(value)

    @field_validator("log_level", mode="before")
    @classmethod
    def _known_level(cls, value: object) -> str:
        level = str(value).strip().upper()
        if level not in _LOG_LEVELS:
            raise ValueError(f"log level must be one of {', '.join(_LOG_LEVELS)}")
        return level

    @field_validator("jwt_secret", "service_secret")
    @classmethod
    def _long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < MIN_JWT_SECRET_LENGTH:
            # The message must not include the value: this error may be printed or logged.
            raise ValueError(
                f"must be at least {MIN_JWT_SECRET_LENGTH} characters (HS256 needs a "
                "256-bit key); generate one with `python -c 'import secrets; "
                "print(secrets.token_urlsafe(48))'`"
            )
        return value

    @model_validator(mode="after")
    def _services_can_call_each_other(self) -> ServiceSettings:
        if self.jwks_url is not None and self.service_secret is None:
            raise ValueError(
                "TURNOUT_SERVICE_SECRET must be set with TURNOUT_JWKS_URL: the services "
                "sign their calls to one another with it (the identity provider's tokens "
                "are for people); use the same value for every service")
        return self

    @model_validator(mode="after")
    def _warn_about_development_secret(self) -> ServiceSettings:
        global _warned_dev_secret
        if self.uses_development_jwt_secret and not _warned_dev_secret:
            _warned_dev_secret = True
            log.warning(
                "TURNOUT_JWT_SECRET is not set: using the built-in development secret. "
                "Anyone can mint tokens for this deployment; set a secret or TURNOUT_JWKS_URL."
            )
        return self

    @property
    def uses_development_jwt_secret(self) -> bool:
        return (self.jwks_url is None
                and self.jwt_secret.get_secret_value() == DEVELOPMENT_JWT_SECRET)

    def database_url_for_display(self) -> str:
        """The database URL without its password, for logs and status output."""
        return make_url(self.database_url).render_as_string(hide_password=True)

    def topic_registry(self) -> TopicRegistry:
        """The topic names and layout these settings describe."""
        from turnout_events.topics import TopicRegistry

        return TopicRegistry(
            namespace=self.topic_namespace,
            partitions=self.topic_partitions,
            replication_factor=self.topic_replication_factor,
        )
