"""Each service's migrations build the schema its code declares (`db/tables.py`, and the
shared outbox, inbox and idempotency tables): a column, index or type changed in one and
not in the other fails here, rather than on a fresh install or at the next autogenerate.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import MetaData

from turnout_events.tables import metadata as messaging_metadata
from turnout_kit.db import create_engine, run_migrations
from turnout_kit.idempotency import metadata as idempotency_metadata

pytestmark = pytest.mark.integration

SERVICES = ("contacts", "ballots", "notifications", "reporting")


def declared(service: str) -> tuple[Path, list[MetaData]]:
    """The service's migrations folder, and the metadata its Alembic env.py compares."""
    main = importlib.import_module(f"turnout_{service}.main")
    tables = importlib.import_module(f"turnout_{service}.db.tables")
    return main.MIGRATIONS, [tables.metadata, messaging_metadata, idempotency_metadata]


@pytest.mark.parametrize("service", SERVICES)
async def test_the_migrations_build_the_declared_schema(service, database_url):
    migrations, metadata = declared(service)
    await run_migrations(migrations, database_url)
    engine = create_engine(database_url)
    try:
        async with engine.connect() as conn:
            differences = await conn.run_sync(lambda sync: compare_metadata(
                MigrationContext.configure(sync, opts={"compare_type": True}), metadata))
    finally:
        await engine.dispose()
    assert differences == []
