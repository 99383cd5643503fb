"""The Turnout services as local processes: started detached by `turnout up`, each with a
pid file and a log under `.local/services/`, stopped by `turnout down`. Other long-lived
helpers (the demo's simulated reps) run the same way, through `spawn` and `stop_process`.

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


def pid_file(spec: ServiceSpec | str) -> Path:
    return _dir() / f"{_name(spec)}.pid"


def log_file(spec: ServiceSpec | str) -> Path:
    return _dir() / f"{_name(spec)}.log"


def _name(spec: ServiceSpec | str) -> str:
    return spec if isinstance(spec, str) else spec.name


def start(spec: ServiceSpec, env: dict[str, str]) -> None:
    spawn(spec.name, [sys.executable, "-m", spec.module], env)


def spawn(name: str, argv: list[str], env: dict[str, str]) -> bool:
    """Start `argv` detached (its own session, so `turnout up` may exit), output appended
    to the log, pid recorded. False, and nothing started, if it already runs."""
    if running(name):
        return False
    log = open(log_file(name), "ab")  # noqa: SIM115 - handed to the child process
    proc = subprocess.Popen(
        argv, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL, start_new_session=True,
    )
    pid_file(name).write_text(str(proc.pid))
    return True


def running(name: str) -> bool:
    return read_pid(pid_file(name)) is not None


def stop_process(name: str, *, timeout: float = 30.0) -> None:
    if (pid := read_pid(pid_file(name))) is not None:
        stop_pid(pid, timeout=timeout)
    pid_file(name).unlink(missing_ok=True)


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
    stop_process(spec.name)


def status(spec: ServiceSpec) -> dict[str, object]:
    alive = running(spec.name)
    ready = False
    if alive:
        try:
            ready = httpx.get(f"{spec.url}/readyz", timeout=2).status_code == 200
        except httpx.HTTPError:
            ready = False
    return {"mode": "process", "running": alive and ready, "url": spec.url,
            "log": str(log_file(spec))}
