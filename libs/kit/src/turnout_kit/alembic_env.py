"""The body of every service's Alembic `env.py`, which then reads:

    from turnout_events.tables import metadata as messaging
    from turnout_kit import alembic_env
    from contacts.db.tables import metadata

    alembic_env.run([metadata, messaging])

It follows Alembic's asyncio recipe, in three modes:

* called from `turnout_kit.db.run_migrations` (service startup, tests): the connection
  handed over in `config.attributes["connection"]` is used, inside its transaction;
* the `alembic` command line with a URL (`sqlalchemy.url`, the `url` argument, or the
  `DATABASE_URL` environment variable): an async engine of its own;
* `alembic upgrade --sql` (offline): SQL is printed, nothing connects.

Unlike Alembic's template it does not call `logging.config.fileConfig`: that would
replace the service's logging (JSON, redaction) with the ini file's.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from typing import Any

from sqlalchemy import MetaData, pool, text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from .settings import to_async_url

Metadata = MetaData | Sequence[MetaData] | None


def run(
    target_metadata: Metadata,
    version_table_schema: str | None = None,
    *,
    url: str | None = None,
    version_table: str = "alembic_version",
    **configure: Any,
) -> None:
    """Run the migrations Alembic asked for. Call once from env.py.

    `version_table_schema` keeps Alembic's bookkeeping in a schema of the service's own
    (created if missing) when services share one database; `configure` goes to
    `context.configure` (e.g. `include_schemas=True`).
    """
    from alembic import context

    options: dict[str, Any] = {
        "target_metadata": target_metadata,
        "version_table": version_table,
        "version_table_schema": version_table_schema,
        # Autogenerate should notice column type changes, not only new columns.
        "compare_type": True,
        **configure,
    }

    if context.is_offline_mode():
        context.configure(url=_url(context.config, url), literal_binds=True,
                          dialect_opts={"paramstyle": "named"}, **options)
        with context.begin_transaction():
            context.run_migrations()
        return

    shared = context.config.attributes.get("connection")
    if shared is not None:
        _run_on(shared, version_table_schema, options)
        return
    asyncio.run(_run_async(_url(context.config, url), version_table_schema, options))


def _url(config: Any, url: str | None) -> str:
    found = url or config.get_main_option("sqlalchemy.url") or os.environ.get("DATABASE_URL")
    if not found:
        raise RuntimeError(
            "no database URL: set sqlalchemy.url, pass url= to alembic_env.run, "
            "or set DATABASE_URL"
        )
    return to_async_url(found)


def _run_on(connection: Connection, schema: str | None, options: dict[str, Any]) -> None:
    from alembic import context

    if schema:
        quoted = '"' + schema.replace('"', '""') + '"'
        connection.execute(text(f"CREATE SCHEMA IF NOT EXISTS {quoted}"))
    context.configure(connection=connection, **options)
    with context.begin_transaction():
        context.run_migrations()


async def _run_async(url: str, schema: str | None, options: dict[str, Any]) -> None:
    engine = create_async_engine(url, poolclass=pool.NullPool)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(_run_on, schema, options)
    finally:
        await engine.dispose()
