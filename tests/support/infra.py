"""Where the tests find a real Kafka broker and a real PostgreSQL server.

In order of preference:
1. `KAFKA_BOOTSTRAP_SERVERS` / `DATABASE_URL` from the environment (servers you run);
2. testcontainers, when a Docker engine answers (official apache/kafka and postgres images);
3. the project's local runtime (embedded PostgreSQL + a KRaft broker from Maven Central),
   started here if it is not running, and stopped at the end if this run started it and
   no other test run on this machine is still using it (`_LocalRuntimeUsers`: a run that
   started the broker while another was running would otherwise stop it under that one).

One broker and one database server serve the whole run; tests isolate themselves with
their own topic namespace and their own database.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Infra:
    kafka_bootstrap_servers: str
    database_url: str  # a maintenance database on the server; tests create their own
    how: str


def docker_answers() -> bool:
    if os.environ.get("TURNOUT_TESTS_NO_DOCKER") or shutil.which("docker") is None:
        return False
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@contextlib.contextmanager
def provide_infra() -> Iterator[Infra]:
    stops: list[Callable[[], None]] = []
    try:
        kafka = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
        database = os.environ.get("DATABASE_URL")
        how = []
        if (kafka is None or database is None) and docker_answers():
            if kafka is None:
                kafka = _kafka_container(stops)
                how.append("kafka:testcontainers")
            if database is None:
                database = _postgres_container(stops)
                how.append("postgres:testcontainers")
        if kafka is None or database is None:
            from turnout_local.kafka import LocalKafka
            from turnout_local.paths import local_dir
            from turnout_local.postgres import LocalPostgres

            users = _LocalRuntimeUsers(local_dir() / "test-runs")
            users.enter()
            stops.append(users.leave)

            if database is None:
                pg = LocalPostgres()
                if not pg.status().running:
                    stops.append(users.unless_in_use(pg.stop))
                database = pg.start().url
                how.append("postgres:embedded")
            if kafka is None:
                broker = LocalKafka()
                if not broker.status().running:
                    stops.append(users.unless_in_use(broker.stop))
                kafka = broker.start().bootstrap_servers
                how.append("kafka:local-runtime")
        else:
            how.append("environment")
        yield Infra(kafka, database, ", ".join(how))
    finally:
        for stop in reversed(stops):
            with contextlib.suppress(Exception):
                stop()


class _LocalRuntimeUsers:
    """The test runs on this machine using the local runtime, one file per process id,
    so that the run that started the runtime stops it only once no other run is left."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.mine = folder / str(os.getpid())

    def enter(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.mine.touch()

    def leave(self) -> None:
        self.mine.unlink(missing_ok=True)

    def others(self) -> bool:
        for entry in self.folder.iterdir():
            if entry == self.mine or not entry.name.isdigit():
                continue
            try:
                os.kill(int(entry.name), 0)
            except ProcessLookupError:
                entry.unlink(missing_ok=True)  # a run that died without leaving
            except PermissionError:
                return True  # alive, another user's
            else:
                return True
        return False

    def unless_in_use(self, stop: Callable[[], None]) -> Callable[[], None]:
        def stop_if_alone() -> None:
            if not self.others():
                stop()
        return stop_if_alone


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _kafka_container(stops: list[Callable[[], None]]) -> str:
    # Official apache/kafka image, configured by environment; the advertised listener must
    # name the host port, so it is chosen before the container starts.
    from testcontainers.core.container import DockerContainer
    from testcontainers.core.waiting_utils import wait_for_logs

    port = _free_port()
    container = (
        DockerContainer("apache/kafka:4.1.1")
        .with_bind_ports(9092, port)
        .with_env("KAFKA_NODE_ID", "1")
        .with_env("KAFKA_PROCESS_ROLES", "broker,controller")
        .with_env("KAFKA_LISTENERS", "PLAINTEXT://:9092,CONTROLLER://:9093")
        .with_env("KAFKA_ADVERTISED_LISTENERS", f"PLAINTEXT://127.0.0.1:{port}")
        .with_env("KAFKA_CONTROLLER_LISTENER_NAMES", "CONTROLLER")
        .with_env("KAFKA_LISTENER_SECURITY_PROTOCOL_MAP",
                  "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT")
        .with_env("KAFKA_CONTROLLER_QUORUM_VOTERS", "1@localhost:9093")
        .with_env("KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR", "1")
        .with_env("KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR", "1")
        .with_env("KAFKA_TRANSACTION_STATE_LOG_MIN_ISR", "1")
        .with_env("KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS", "0")
        .with_env("KAFKA_AUTO_CREATE_TOPICS_ENABLE", "false")
    )
    container.start()
    stops.append(container.stop)
    wait_for_logs(container, "Kafka Server started", timeout=120)
    return f"127.0.0.1:{port}"


def _postgres_container(stops: list[Callable[[], None]]) -> str:
    from testcontainers.postgres import PostgresContainer

    container = PostgresContainer("postgres:17-alpine", driver=None)
    container.start()
    stops.append(container.stop)
    return container.get_connection_url()
