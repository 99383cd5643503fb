"""The local runtime as a whole: PostgreSQL and Kafka, each either embedded (started here)
or external (named by DATABASE_URL / KAFKA_BOOTSTRAP_SERVERS and only checked)."""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass

from turnout_events.topics import TopicRegistry

from . import services
from .kafka import LocalKafka, broker_answers
from .postgres import LocalPostgres
from .topics import ensure_topics


@dataclass(frozen=True)
class Endpoints:
    database_url: str
    kafka_bootstrap_servers: str
    embedded_postgres: bool
    embedded_kafka: bool


def external_database_url() -> str | None:
    return os.environ.get("DATABASE_URL") or None


def external_kafka() -> str | None:
    return os.environ.get("KAFKA_BOOTSTRAP_SERVERS") or None


def start(*, create_topics: bool = True) -> Endpoints:
    """Start whatever is embedded, wait for both to answer, create the topics. Idempotent."""
    database_url = external_database_url()
    if database_url is None:
        database_url = LocalPostgres().start().url
    kafka = external_kafka()
    if kafka is None:
        kafka = LocalKafka().start().bootstrap_servers
    elif not broker_answers(kafka, timeout=10):
        raise RuntimeError(f"KAFKA_BOOTSTRAP_SERVERS={kafka} does not answer")
    if create_topics:
        asyncio.run(ensure_topics(kafka, TopicRegistry.from_env()))
    return Endpoints(database_url, kafka, external_database_url() is None, external_kafka() is None)


def start_services(endpoints: Endpoints) -> list[services.ServiceSpec]:
    """Start every installed service against the runtime and wait until each is ready."""
    env = {"DATABASE_URL": endpoints.database_url,
           "KAFKA_BOOTSTRAP_SERVERS": endpoints.kafka_bootstrap_servers,
           # Reporting folds in two processes of its own (a restart or a rebuild catches
           # up about twice as fast as in one), unless told otherwise.
           "REPORTING_FOLD_PROCESSES": os.environ.get("REPORTING_FOLD_PROCESSES", "2")}
    started = services.installed_services()
    for spec in started:
        services.start(spec, env)
    for spec in started:
        services.wait_ready(spec)
    return started


def stop() -> None:
    """Stop the services, then what this runtime embeds; external servers are not ours."""
    for spec in reversed(services.SERVICES):
        services.stop(spec)
    if external_kafka() is None:
        LocalKafka().stop()
    if external_database_url() is None:
        LocalPostgres().stop()


def status() -> dict[str, dict[str, object]]:
    out: dict[str, dict[str, object]] = {}
    if (url := external_database_url()) is not None:
        out["postgres"] = {"mode": "external", "url": _hide_password(url)}
    else:
        pg = LocalPostgres().status()
        out["postgres"] = {"mode": "embedded", "running": pg.running, "url": pg.url,
                           "log": str(pg.log_file)}
    if (servers := external_kafka()) is not None:
        out["kafka"] = {"mode": "external", "bootstrap_servers": servers,
                        "running": broker_answers(servers, timeout=5)}
    else:
        k = LocalKafka().status()
        out["kafka"] = {"mode": "embedded", "running": k.running,
                        "bootstrap_servers": k.bootstrap_servers, "log": str(k.log_dir)}
    for spec in services.installed_services():
        out[spec.name] = services.status(spec)
    return out


def _hide_password(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)
