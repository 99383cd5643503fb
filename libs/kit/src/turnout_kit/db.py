"""PostgreSQL plumbing: engines, sessions, creating a service's database, migrations.

Each service owns its database and its Alembic migrations (`db/migrations` with an
`env.py` that calls `turnout_kit.alembic_env.run`). On startup a service may call
`ensure_database` then `run_migrations`; both are safe when several instances start
at once.
"""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Any

import structlog
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.pool import NullPool

from .settings import to_async_url

log = structlog.get_logger("turnout_kit.db")

# Databases tried, in order, to run CREATE DATABASE from: some managed services forbid
# connecting to `postgres` but allow `template1`.
_MAINTENANCE_DATABASES = ("postgres", "template1")


def create_engine(url: str, *, application_name: str | None = None, **pool: Any) -> AsyncEngine:
    """An async engine on asyncpg. `pool` overrides the defaults below (pool_size,
    max_overflow, pool_pre_ping, ... anything `create_async_engine` takes)."""
    options: dict[str, Any] = {
        # A pooled connection may have been cut by a PostgreSQL restart or failover;
        # the ping is one round trip and saves a failed request.
        "pool_pre_ping": True,
        "pool_size": 10,
        "max_overflow": 10,
    }
    options.update(pool)
    if application_name:
        # Shows in pg_stat_activity, which is how one finds who holds a lock.
        connect_args = dict(options.pop("connect_args", {}))
        server_settings = dict(connect_args.get("server_settings", {}))
        server_settings.setdefault("application_name", application_name)
        connect_args["server_settings"] = server_settings
        options["connect_args"] = connect_args
    if options.get("poolclass") is NullPool:
        options.pop("pool_size", None)
        options.pop("max_overflow", None)
    return create_async_engine(to_async_url(url), **options)


def session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    # expire_on_commit=False: objects stay readable after commit (building the response
    # after committing) instead of each attribute access triggering lazy IO, which
    # async sessions cannot do.
    return async_sessionmaker(engine, expire_on_commit=False)


def _quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _advisory_key(name: str) -> int:
    # A stable 32-bit key per name (hash() is randomised per process).
    return zlib.crc32(name.encode())


async def ensure_database(url: str) -> bool:
    """Create the database named in `url` if it does not exist. True if it was created.

    Several instances may start together: an advisory lock on the server serialises
    them, and a concurrent creation we lost the race to is not an error either.
    """
    target = make_url(to_async_url(url))
    name = target.database
    if not name:
        raise ValueError("the database URL names no database")
    if name in _MAINTENANCE_DATABASES:
        return False
    last_error: Exception | None = None
    for maintenance in _MAINTENANCE_DATABASES:
        engine = create_async_engine(
            target.set(database=maintenance), poolclass=NullPool, isolation_level="AUTOCOMMIT"
        )
        try:
            async with engine.connect() as conn:
                return await _create_if_missing(conn, name)
        except Exception as exc:
            if _is_missing_database(exc):
                last_error = exc
                continue
            raise
        finally:
            await engine.dispose()
    assert last_error is not None
    raise last_error


async def _create_if_missing(conn: AsyncConnection, name: str) -> bool:
    key = _advisory_key(f"turnout.ensure_database:{name}")
    await conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": key})
    try:
        exists = await conn.scalar(
            text("SELECT 1 FROM pg_database WHERE datname = :name"), {"name": name}
        )
        if exists:
            return False
        try:
            # CREATE DATABASE takes no bind parameters; the name is quoted instead.
            await conn.execute(text(f"CREATE DATABASE {_quote_ident(name)}"))
        except Exception as exc:
            if _is_duplicate_database(exc):
                return False
            raise
        log.info("database_created", database=name)
        return True
    finally:
        await conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})


def _sqlstate(exc: BaseException) -> str | None:
    # SQLAlchemy wraps the asyncpg error; asyncpg errors carry the SQLSTATE.
    for candidate in (exc, getattr(exc, "orig", None), getattr(exc, "__cause__", None)):
        code = getattr(candidate, "sqlstate", None) or getattr(candidate, "pgcode", None)
        if code:
            return str(code)
    return None


def _is_missing_database(exc: BaseException) -> bool:
    return _sqlstate(exc) == "3D000"  # invalid_catalog_name


def _is_duplicate_database(exc: BaseException) -> bool:
    # 42P04 duplicate_database; 23505 when two CREATEs race on pg_database's index.
    return _sqlstate(exc) in ("42P04", "23505")


def alembic_config(alembic_ini_or_dir: str | Path, url: str | None = None) -> Any:
    """An Alembic `Config` for a service's migrations.

    Accepts the path of an `alembic.ini`, a directory holding one, or the migrations
    directory itself (the one with `env.py`), for services that keep no ini file.
    """
    from alembic.config import Config

    path = Path(alembic_ini_or_dir)
    if path.is_dir() and (path / "alembic.ini").is_file():
        path = path / "alembic.ini"
    if path.is_file():
        config = Config(str(path))
        # A relative script_location in the ini is relative to the ini, not to the cwd.
        location = config.get_main_option("script_location")
        if location and not Path(location).is_absolute() and "%(here)s" not in location:
            config.set_main_option("script_location", str(path.parent / location))
    elif path.is_dir() and (path / "env.py").is_file():
        config = Config()
        config.set_main_option("script_location", str(path))
    else:
        raise FileNotFoundError(f"no alembic.ini or migrations directory at {path}")
    if url is not None:
        # ConfigParser interpolation treats "%" specially; passwords may contain one.
        config.set_main_option("sqlalchemy.url", to_async_url(url).replace("%", "%%"))
    return config


async def run_migrations(
    alembic_ini_or_dir: str | Path, url: str, *, revision: str = "head"
) -> None:
    """`alembic upgrade <revision>` for one service, from async code.

    Runs on one connection in one transaction (PostgreSQL DDL is transactional), under
    an advisory lock, so instances starting together migrate once, one after another.
    The service's env.py must use `turnout_kit.alembic_env.run`, which picks up the
    connection handed over here.
    """
    from alembic import command

    config = alembic_config(alembic_ini_or_dir, url)
    script_location = config.get_main_option("script_location") or ""
    # Advisory locks are scoped to the current database: one key serialises everything
    # that migrates this database.
    key = _advisory_key("turnout.migrations")
    engine = create_async_engine(to_async_url(url), poolclass=NullPool)
    try:
        async with engine.begin() as conn:
            await conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": key})

            def upgrade(sync_conn: Any) -> None:
                config.attributes["connection"] = sync_conn
                command.upgrade(config, revision)

            await conn.run_sync(upgrade)
    finally:
        await engine.dispose()
    log.info("migrations_applied", revision=revision, script_location=script_location)
