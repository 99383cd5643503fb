"""The ballots service: `uvicorn turnout_ballots.main:app` or `turnout-ballots`."""

from __future__ import annotations

from pathlib import Path

import asyncpg
import structlog
from fastapi import FastAPI
from faststream.kafka import KafkaBroker

from turnout_events.database_url import asyncpg_dsn
from turnout_events.relay import OutboxRelay
from turnout_events.topics import METADATA_MAX_AGE_MS
from turnout_kit.app import create_app, open_database, serve
from turnout_kit.db import session_factory
from turnout_kit.logging import broker_logger, configure_logging
from turnout_kit.readiness import broker_check

from .api import routers, votes
from .context import BallotsContext
from .messaging.subscribers import register_subscribers
from .service import enrolment
from .service.directory import MemberDirectory
from .service.group_commit import GroupCommit
from .service.marks import write_marks
from .settings import BallotsSettings

MIGRATIONS = Path(__file__).parent / "db" / "migrations"
log = structlog.get_logger("turnout.ballots")


def create_ballots_app(settings: BallotsSettings | None = None) -> FastAPI:
    settings = settings or BallotsSettings()
    ctx = BallotsContext.from_settings(settings)
    broker = KafkaBroker(settings.kafka_bootstrap_servers, logger=broker_logger(),
                         enable_idempotence=True, acks="all", client_id="ballots",
                         metadata_max_age_ms=METADATA_MAX_AGE_MS)
    register_subscribers(broker, ctx)

    async def start(app: FastAPI) -> None:
        ctx.engine = await open_database(app, settings, MIGRATIONS,
                                         application_name="ballots",
                                         pool_size=settings.database_pool_size)
        ctx.sessions = session_factory(ctx.engine)
        ctx.pool = await asyncpg.create_pool(
            asyncpg_dsn(settings.database_url), min_size=2,
            max_size=settings.mark_workers + 2,  # the writers, and re-reads after a race
            server_settings={"application_name": "ballots-marks"})
        ctx.marks = GroupCommit(ctx.pool, write_marks, workers=settings.mark_workers,
                                max_batch=settings.mark_batch_size)
        ctx.marks.start()
        app.state.readiness_checks.append(broker_check(broker))
        ctx.relay = OutboxRelay(settings.database_url, settings.kafka_bootstrap_servers,
                                service="ballots")
        ctx.relay.start()
        if ctx.directory is None:  # tests may have put one of their own
            ctx.directory = MemberDirectory(settings)
        # Rolls a previous process was still publishing when it stopped.
        await enrolment.resume_unfinished(ctx)

    async def stop(app: FastAPI) -> None:
        await enrolment.stop_all(ctx)
        if ctx.directory is not None:
            await ctx.directory.aclose()
        if ctx.relay is not None:
            await ctx.relay.stop()
        if ctx.marks is not None:
            await ctx.marks.stop()
        if ctx.pool is not None:
            await ctx.pool.close()
        if ctx.engine is not None:
            await ctx.engine.dispose()

    # Vote marks first: requests are matched against the routers in order, and marks are
    # most of them (no path of one router matches another's).
    ordered = [votes.router, *(r for r in routers if r is not votes.router)]
    app = create_app(settings, title="Turnout ballots", version="1.0.0", routers=ordered,
                     broker=broker, on_startup=[start], on_shutdown=[stop])
    app.state.ctx = ctx
    return app


def run() -> None:
    settings = BallotsSettings()
    configure_logging("ballots", settings.log_level, settings.log_json)
    serve(create_ballots_app(settings), settings)


def __getattr__(name: str):
    # `uvicorn turnout_ballots.main:app` builds the app on first access, not on import,
    # so importing this module in tests has no side effects.
    if name == "app":
        return create_ballots_app()
    raise AttributeError(name)


if __name__ == "__main__":
    run()
