"""The Turnout services as local processes: started detached by `turnout up`, each with a
pid file and a log under `.local/`, stopped by `turnout down`.

A service is run only if its package is installed in the workspace, so `turnout up`
starts "whichever services exist" as they are built.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from .paths import local_dir
from .process import read_pid, stop_pid


@dataclass(frozen=True)
class ServiceSpec:
    name: str
    module: str
    port: int

    @property
    def env_prefix(self) -> str:
        return self.name.upper() + "_"

    def installed(self) -> bool:
        package = self.module.partition(".")[0]
        return importlib.util.find_spec(package) is not None

    def port_from_env(self) -> int:
        return int(os.environ.get(f"{self.env_prefix}HTTP_PORT", self.port))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port_from_env()}"


SERVICES = (
    ServiceSpec("contacts", "turnout_contacts.main", 8001),
    ServiceSpec("ballots", "turnout_ballots.main", 8002),
    ServiceSpec("notifications", "turnout_notifications.main", 8003),
    ServiceSpec("reporting", "turnout_reporting.main", 8004),
)


def installed_services() -> list[ServiceSpec]:
    return [s for s in SERVICES if s.installed()]


def _dir() -> Path:
    path = local_dir() / "services"
    path.mkdir(parents=True, exist_ok=True)
    return path


def pid_file(spec: ServiceSpec) -> Path:
    return _dir() / f"{spec.name}.pid"


def log_file(spec: ServiceSpec) -> Path:
    return _dir() / f"{spec.name}.log"


def start(spec: ServiceSpec, env: dict[str, str]) -> None:
    if read_pid(pid_file(spec)) is not None:
        return
    log = open(log_file(spec), "ab")  # noqa: SIM115 - handed to the child process
    proc = subprocess.Popen(
        [sys.executable, "-m", spec.module],
        env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL, start_new_session=True,
    )
    pid_file(spec).write_text(str(proc.pid))


def wait_ready(spec: ServiceSpec, *, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if read_pid(pid_file(spec)) is None:
            tail = log_file(spec).read_text(errors="replace")[-3000:]
            raise RuntimeError(f"the {spec.name} service exited during start-up:\n{tail}")
        try:
            response = httpx.get(f"{spec.url}/readyz", timeout=2)
            if response.status_code == 200:
                return
            last = f"readyz {response.status_code}: {response.text[:200]}"
        except httpx.HTTPError as exc:
            last = type(exc).__name__
        time.sleep(0.3)  # polling an external process for readiness, bounded by the deadline
    raise TimeoutError(f"{spec.name} not ready after {timeout:.0f}s ({last}); "
                       f"see {log_file(spec)}")


def stop(spec: ServiceSpec) -> None:
    if (pid := read_pid(pid_file(spec))) is not None:
        stop_pid(pid, timeout=30)
    pid_file(spec).unlink(missing_ok=True)


def status(spec: ServiceSpec) -> dict[str, object]:
    running = read_pid(pid_file(spec)) is not None
    ready = False
    if running:
        try:
            ready = httpx.get(f"{spec.url}/readyz", timeout=2).status_code == 200
        except httpx.HTTPError:
            ready = False
    return {"mode": "process", "running": running and ready, "url": spec.url,
            "log": str(log_file(spec))}
