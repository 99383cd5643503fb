"""The contacts service: `uvicorn turnout_contacts.main:app` or `turnout-contacts`."""

from __future__ import annotations

from pathlib import Path

import structlog
from fastapi import FastAPI
from faststream.kafka import KafkaBroker

from turnout_events.relay import OutboxRelay
from turnout_events.topics import METADATA_MAX_AGE_MS
from turnout_kit.app import create_app, open_database, serve
from turnout_kit.db import session_factory
from turnout_kit.logging import broker_logger, configure_logging
from turnout_kit.readiness import broker_check

from .api import routers
from .context import ContactsContext
from .messaging.subscribers import register_subscribers
from .settings import ContactsSettings

MIGRATIONS = Path(__file__).parent / "db" / "migrations"
log = structlog.get_logger("turnout.contacts")


def create_contacts_app(settings: ContactsSettings | None = None) -> FastAPI:
    settings = settings or ContactsSettings()
    ctx = ContactsContext.from_settings(settings)
    broker = KafkaBroker(settings.kafka_bootstrap_servers, logger=broker_logger(),
                         enable_idempotence=True, acks="all", client_id="contacts",
                         metadata_max_age_ms=METADATA_MAX_AGE_MS)
    register_subscribers(broker, ctx)

    async def start(app: FastAPI) -> None:
        if settings.uses_development_keys:
            log.warning("development_encryption_keys_in_use",
                        hint="set CONTACTS_ENCRYPTION_KEYS and CONTACTS_INDEX_KEY")
        ctx.engine = await open_database(app, settings, MIGRATIONS,
                                         application_name="contacts")
        ctx.sessions = session_factory(ctx.engine)
        app.state.readiness_checks.append(broker_check(broker))
        ctx.relay = OutboxRelay(settings.database_url, settings.kafka_bootstrap_servers,
                                service="contacts")
        ctx.relay.start()

    async def stop(app: FastAPI) -> None:
        if ctx.relay is not None:
            await ctx.relay.stop()
        if ctx.engine is not None:
            await ctx.engine.dispose()

    app = create_app(settings, title="Turnout contacts", version="1.0.0", routers=routers,
                     broker=broker, on_startup=[start], on_shutdown=[stop],
                     # Responses holding contact values in clear are never stored.
                     idempotency_exclude=[r"^/v1/members/[^/]+/reveal$", "/internal/"])
    app.state.ctx = ctx
    return app


def run() -> None:
    settings = ContactsSettings()
    configure_logging("contacts", settings.log_level, settings.log_json)
    serve(create_contacts_app(settings), settings)


def __getattr__(name: str):
    # `uvicorn turnout_contacts.main:app` builds the app on first access, not on import,
    # so importing this module in tests has no side effects.
    if name == "app":
        return create_contacts_app()
    raise AttributeError(name)


if __name__ == "__main__":
    run()
