"""The app factory: a FastAPI app with everything every Turnout service serves.

    app = create_app(settings, title="contacts", version="1",
                     routers=[members.router], broker=broker,
                     on_startup=[open_db], on_shutdown=[close_db])

gives `/healthz`, `/readyz`, `/metrics`, OpenAPI at `/docs`, problem-details errors,
correlation ids, an access log without query strings, a body size limit, bearer-token
auth configured from the settings (`app.state.token_verifier`), `Idempotency-Key` on
mutating requests (once a startup hook has set `app.state.engine`; the service's
migrations must include `turnout_kit.idempotency.metadata`), and a lifespan that starts
and stops the FastStream broker.

The broker is a plain `faststream.kafka.KafkaBroker` started in the lifespan, not
FastStream's FastAPI integration (deprecated since 0.7.3).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import structlog
from fastapi import APIRouter, FastAPI
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from sqlalchemy.ext.asyncio import AsyncEngine

from turnout_events.lag import CONSUMER_LAG, faststream_lag

from .auth import TokenVerifier
from .db import create_engine, ensure_database, run_migrations
from .idempotency import IdempotencyMiddleware, PathPattern
from .middleware import (
    AccessMiddleware,
    BodySizeLimitMiddleware,
    CorrelationIdMiddleware,
    NulCharacterMiddleware,
    UnhandledErrorMiddleware,
)
from .problems import install_problem_handlers
from .readiness import ReadinessCheck, database_check, run_checks
from .settings import ServiceSettings
from .startup import start_with_retry

log = structlog.get_logger("turnout_kit.app")

Hook = Callable[[FastAPI], Awaitable[Any]]


def create_app(
    settings: ServiceSettings,
    *,
    title: str,
    version: str,
    routers: Sequence[APIRouter] = (),
    broker: Any | None = None,
    on_startup: Sequence[Hook] = (),
    on_shutdown: Sequence[Hook] = (),
    readiness_checks: Sequence[ReadinessCheck] = (),
    token_verifier: TokenVerifier | None = None,
    idempotency: bool = True,
    idempotency_exclude: Sequence[PathPattern] = (),
    **fastapi_options: Any,
) -> FastAPI:
    """Build a service's app.

    Hooks receive the app (put engines and the like on `app.state`). Startup hooks run
    in order before the broker starts (a consumer may need the database); shutdown
    hooks run in order after it stops. `app.state.readiness_checks` is a list that
    startup hooks may append to, e.g. `database_check(engine)` once the engine exists.

    `idempotency_exclude` lists paths whose responses must never be stored (they hold
    contact values in clear): prefixes, or regexes when they start with `^`.
    """

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if settings.uses_development_jwt_secret:
            log.warning("development_jwt_secret_in_use",
                        hint="set TURNOUT_JWT_SECRET or TURNOUT_JWKS_URL")
        for hook in on_startup:
            await hook(app)
        retry: asyncio.Task[None] | None = None
        lag = None
        if broker is not None:
            retry = await start_with_retry(broker)
            lag = faststream_lag(broker)
            CONSUMER_LAG.add(lag)
        log.info("service_started", title=title, version=version,
                 port=settings.http_port)
        try:
            yield
        finally:
            if retry is not None:
                retry.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await retry
            if lag is not None:
                CONSUMER_LAG.remove(lag)
            if broker is not None:
                try:
                    await broker.stop()
                except Exception:
                    log.exception("kafka_broker_stop_failed")
            for hook in on_shutdown:
                try:
                    await hook(app)
                except Exception:
                    # One failing hook must not keep the others from releasing resources.
                    log.exception("shutdown_hook_failed", hook=getattr(hook, "__name__", "?"))
            log.info("service_stopped", title=title)

    # FastAPI's native OpenTelemetry hooks are off: we export Prometheus metrics and JSON
    # logs, and asking OpenTelemetry whether a provider is configured on every request
    # cost ~3% of a vote mark's CPU for nothing.
    fastapi_options.setdefault("telemetry", {"tracing": False, "metrics": False,
                                             "logs": False})
    app = FastAPI(title=title, version=version, lifespan=lifespan, **fastapi_options)
    app.state.settings = settings
    app.state.token_verifier = token_verifier or TokenVerifier.from_settings(settings)
    app.state.broker = broker
    app.state.readiness_checks = list(readiness_checks)

    install_problem_handlers(app)
    # add_middleware puts each new one outermost, so this is innermost-first.
    # Idempotency reads the whole body before the app runs, so it sits inside the size
    # limit; and inside the error, log and correlation layers, so its answers (replays,
    # 409s, 422s) are logged, counted and carry the correlation id like any other.
    if idempotency:
        app.add_middleware(
            IdempotencyMiddleware,
            engine_getter=lambda: getattr(app.state, "engine", None),
            verifier_getter=lambda: app.state.token_verifier,
            exclude_paths=idempotency_exclude,
        )
    # Outside idempotency (a refused request stores nothing), inside the size limit.
    app.add_middleware(NulCharacterMiddleware)
    app.add_middleware(BodySizeLimitMiddleware, max_body_bytes=settings.max_body_bytes)
    app.add_middleware(UnhandledErrorMiddleware)
    app.add_middleware(AccessMiddleware)
    app.add_middleware(CorrelationIdMiddleware)

    for router in routers:
        app.include_router(router)
    # After the service's routes: a request is matched against the routes in order, and
    # the probes are a few requests a minute where the service's own are thousands a
    # second (their paths overlap none of the services').
    _add_operational_routes(app)
    return app


def _add_operational_routes(app: FastAPI) -> None:
    # Not in the OpenAPI document: they are for orchestrators and scrapers, not clients.
    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        """Alive: the process answers. Deliberately checks nothing else, so a database
        outage does not get every instance restarted."""
        return {"status": "ok"}

    @app.get("/readyz", include_in_schema=False)
    async def readyz() -> JSONResponse:
        ok, results = await run_checks(app.state.readiness_checks)
        body: dict[str, Any] = {"status": "ready" if ok else "unavailable", "checks": results}
        if not ok:
            body["failed"] = sorted(name for name, r in results.items() if r != "ok")
        return JSONResponse(body, status_code=200 if ok else 503)

    @app.get("/asyncapi.json", include_in_schema=False)
    async def asyncapi() -> JSONResponse:
        """The event contract (AsyncAPI 3.0) as this deployment names its topics: what
        other systems subscribe to. Generated from the same models the services use."""
        from turnout_events.schemas import asyncapi_document

        return JSONResponse(asyncapi_document(app.state.settings.topic_registry()))

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)


async def open_database(app: FastAPI, settings: ServiceSettings, migrations: Path, *,
                        application_name: str, **pool: Any) -> AsyncEngine:
    """A service's own database, ready to use: created if missing, migrated to head, an
    engine on `app.state.engine` (the idempotency middleware writes through it) and a
    readiness check. Call from the service's startup hook."""
    await ensure_database(settings.database_url)
    await run_migrations(migrations, settings.database_url)
    engine = create_engine(settings.database_url, application_name=application_name, **pool)
    app.state.engine = engine
    app.state.readiness_checks.append(database_check(engine))
    return engine


def serve(app: FastAPI, settings: ServiceSettings) -> None:
    """Run the app with uvicorn, logging through ours (no uvicorn access log: it would
    print query strings)."""
    import uvicorn

    uvicorn.run(
        app,
        host=settings.http_host,
        port=settings.http_port,
        log_config=None,
        access_log=False,
        server_header=False,
    )
