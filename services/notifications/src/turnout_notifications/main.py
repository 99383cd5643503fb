"""The notifications service: `uvicorn turnout_notifications.main:app` or
`turnout-notifications`."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import datetime, timedelta
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
from .context import Clock, NotificationsContext
from .messaging.subscribers import register_subscribers
from .providers.base import SmsProvider
from .providers.sandbox import SandboxProvider
from .providers.twilio import TwilioProvider
from .service.channels import ContactChannels
from .service.dispatcher import Dispatcher
from .service.inbound import purge_status_calls, send_confirmations
from .settings import NotificationsSettings

MIGRATIONS = Path(__file__).parent / "db" / "migrations"
log = structlog.get_logger("turnout.notifications")


def build_provider(ctx: NotificationsContext) -> SmsProvider:
    """The provider the settings choose: the sandbox unless told otherwise."""
    if ctx.settings.provider == "twilio":
        return TwilioProvider.from_settings(ctx.settings)
    assert ctx.sessions is not None
    return SandboxProvider(ctx.sessions, ctx.clock)


PURGE_EVERY = timedelta(hours=1)


async def _confirmations_loop(ctx: NotificationsContext) -> None:
    # STOP confirmations go out as the STOP is handled; this only retries those a
    # provider outage held back. And once an hour, old receipts' replay-guard rows go.
    purged_at: datetime | None = None
    while True:
        await asyncio.sleep(ctx.settings.dispatch_interval_seconds)
        try:
            await send_confirmations(ctx)
        except Exception:
            log.exception("confirmations.round_failed")
        now = ctx.clock()
        if purged_at is None or now - purged_at >= PURGE_EVERY:
            purged_at = now
            try:
                purged = await purge_status_calls(ctx)
                if purged:
                    log.info("webhooks.status_calls_purged", rows=purged)
            except Exception:
                log.exception("webhooks.purge_failed")


def create_notifications_app(settings: NotificationsSettings | None = None, *,
                             clock: Clock | None = None) -> FastAPI:
    """`clock` replaces the system clock for every decision about time (tests)."""
    settings = settings or NotificationsSettings()
    ctx = NotificationsContext.from_settings(settings, clock)
    broker = KafkaBroker(settings.kafka_bootstrap_servers, logger=broker_logger(),
                         enable_idempotence=True, acks="all", client_id="notifications",
                         metadata_max_age_ms=METADATA_MAX_AGE_MS)
    register_subscribers(broker, ctx)
    channels = ContactChannels(settings)
    background: list[asyncio.Task] = []

    async def start(app: FastAPI) -> None:
        ctx.engine = await open_database(app, settings, MIGRATIONS,
                                         application_name="notifications")
        ctx.sessions = session_factory(ctx.engine)
        app.state.readiness_checks.append(broker_check(broker))
        ctx.relay = OutboxRelay(settings.database_url, settings.kafka_bootstrap_servers,
                                service="notifications")
        ctx.relay.start()
        ctx.provider = build_provider(ctx)
        log.info("provider_selected", provider=ctx.provider.name)
        if settings.uses_development_keys:
            log.warning("development_keys_in_use",
                        hint="set NOTIFICATIONS_RECIPIENT_HASH_KEY and "
                             "NOTIFICATIONS_REPLY_ENCRYPTION_KEY")
        ctx.dispatcher = Dispatcher(ctx, ctx.provider, channels)
        if settings.dispatcher_enabled:
            ctx.dispatcher.start()
            background.append(asyncio.create_task(_confirmations_loop(ctx),
                                                  name="notifications-confirmations"))

    async def stop(app: FastAPI) -> None:
        if ctx.dispatcher is not None:
            await ctx.dispatcher.stop()
        for task in background:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        background.clear()
        if isinstance(ctx.provider, TwilioProvider):
            await ctx.provider.aclose()
        await channels.aclose()
        if ctx.relay is not None:
            await ctx.relay.stop()
        if ctx.engine is not None:
            await ctx.engine.dispose()

    app = create_app(settings, title="Turnout notifications", version="1.0.0",
                     routers=routers, broker=broker, on_startup=[start], on_shutdown=[stop],
                     # The sandbox's page holds message texts: never stored for replay.
                     idempotency_exclude=["/v1/sandbox/"])
    app.state.ctx = ctx
    return app


def run() -> None:
    settings = NotificationsSettings()
    configure_logging("notifications", settings.log_level, settings.log_json)
    serve(create_notifications_app(settings), settings)


def __getattr__(name: str):
    # `uvicorn turnout_notifications.main:app` builds the app on first access, not on
    # import, so importing this module in tests has no side effects.
    if name == "app":
        return create_notifications_app()
    raise AttributeError(name)


if __name__ == "__main__":
    run()
