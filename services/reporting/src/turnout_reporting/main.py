"""The reporting service: `uvicorn turnout_reporting.main:app` or `turnout-reporting`."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

from fastapi import FastAPI

from turnout_events.lag import CONSUMER_LAG
from turnout_kit.app import create_app, open_database, serve, start_with_retry
from turnout_kit.db import session_factory
from turnout_kit.logging import configure_logging
from turnout_kit.readiness import kafka_check

from .api import routers
from .api.stream import close_change_hub
from .context import ReportingContext
from .messaging.consumer import FoldConsumer
from .messaging.processes import CommittedLag, FoldProcesses
from .projections.store import fold_pool
from .settings import ReportingSettings

MIGRATIONS = Path(__file__).parent / "db" / "migrations"


def create_reporting_app(settings: ReportingSettings | None = None) -> FastAPI:
    settings = settings or ReportingSettings()
    ctx = ReportingContext.from_settings(settings)

    async def start(app: FastAPI) -> None:
        ctx.engine = await open_database(app, settings, MIGRATIONS,
                                         application_name="reporting")
        ctx.sessions = session_factory(ctx.engine)
        app.state.readiness_checks.append(kafka_check(settings.kafka_bootstrap_servers))
        if settings.fold_enabled and settings.fold_processes > 1:
            ctx.fold_processes = FoldProcesses(settings)
            await ctx.fold_processes.start()
            ctx.fold_lag = CommittedLag(settings, ctx.sessions)
            await ctx.fold_lag.start()
            CONSUMER_LAG.add(ctx.fold_lag)
        elif settings.fold_enabled:
            ctx.pool = await fold_pool(settings.database_url, "reporting-fold")
            ctx.consumer = FoldConsumer(settings, ctx.topics, ctx.pool)
            # Kafka may be away when the service starts: serve the numbers already
            # folded and keep trying to join the group in the background.
            app.state.fold_starter = await start_with_retry(ctx.consumer,
                                                            name="fold_consumer")
            CONSUMER_LAG.add(ctx.consumer.lag)

    async def stop(app: FastAPI) -> None:
        if ctx.rebuild is not None and not ctx.rebuild.done():
            # Interrupted: it drops its shadow tables; the live numbers are untouched.
            ctx.rebuild.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ctx.rebuild
        starter = getattr(app.state, "fold_starter", None)
        if starter is not None and not starter.done():
            starter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await starter
        if ctx.fold_lag is not None:
            CONSUMER_LAG.remove(ctx.fold_lag)
            await ctx.fold_lag.stop()
            ctx.fold_lag = None
        if ctx.fold_processes is not None:
            await ctx.fold_processes.stop()
            ctx.fold_processes = None
        if ctx.consumer is not None:
            CONSUMER_LAG.remove(ctx.consumer.lag)
            await ctx.consumer.stop()
            ctx.consumer = None
        if ctx.pool is not None:
            await ctx.pool.close()
            ctx.pool = None
        # Stream clients are told to go (the hub's LISTEN connection closes with them).
        await close_change_hub(app)
        if ctx.engine is not None:
            await ctx.engine.dispose()

    app = create_app(settings, title="Turnout reporting", version="1.0.0", routers=routers,
                     on_startup=[start], on_shutdown=[stop])
    app.state.ctx = ctx
    return app


def run() -> None:
    settings = ReportingSettings()
    configure_logging("reporting", settings.log_level, settings.log_json)
    serve(create_reporting_app(settings), settings)


def __getattr__(name: str):
    # `uvicorn turnout_reporting.main:app` builds the app on first access, not on import,
    # so importing this module in tests has no side effects.
    if name == "app":
        return create_reporting_app()
    raise AttributeError(name)


if __name__ == "__main__":
    run()
