"""Database helpers that can be checked without a PostgreSQL server."""

from __future__ import annotations

import io
import socket
import textwrap
from pathlib import Path

import pytest
from alembic import command

from turnout_kit.db import alembic_config, create_engine, ensure_database, session_factory

pytestmark = pytest.mark.unit


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_engine_is_asyncpg_whatever_the_url_spelling() -> None:
    engine = create_engine("postgresql://u:p@db:5432/contacts", application_name="contacts")
    try:
        assert engine.url.drivername == "postgresql+asyncpg"
        assert engine.url.database == "contacts"
        assert engine.pool.size() == 10
    finally:
        await engine.dispose()
    engine = create_engine("postgres://u@db/x", pool_size=3, max_overflow=0)
    try:
        assert engine.pool.size() == 3
    finally:
        await engine.dispose()


async def test_session_factory_keeps_objects_readable_after_commit() -> None:
    engine = create_engine("postgresql://u@db/x")
    try:
        factory = session_factory(engine)
        assert factory.kw["expire_on_commit"] is False
        assert factory.kw["bind"] is engine
    finally:
        await engine.dispose()


async def test_ensure_database_leaves_maintenance_databases_alone() -> None:
    # No server at this address: returning False proves nothing was attempted.
    assert await ensure_database(f"postgresql://u@127.0.0.1:{closed_port()}/postgres") is False
    with pytest.raises(ValueError):
        await ensure_database("postgresql://u@127.0.0.1:5432")


async def test_ensure_database_reports_an_unreachable_server() -> None:
    with pytest.raises(OSError):
        await ensure_database(f"postgresql://u@127.0.0.1:{closed_port()}/turnout_x")


ENV_PY = """
import sqlalchemy as sa
from turnout_kit import alembic_env

metadata = sa.MetaData()
alembic_env.run(metadata, version_table="contacts_alembic_version")
"""

REVISION = """
import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade():
    op.create_table("members", sa.Column("id", sa.Integer, primary_key=True))


def downgrade():
    op.drop_table("members")
"""


@pytest.fixture
def migrations(tmp_path: Path) -> Path:
    root = tmp_path / "db" / "migrations"
    (root / "versions").mkdir(parents=True)
    (root / "env.py").write_text(textwrap.dedent(ENV_PY))
    (root / "versions" / "0001_members.py").write_text(textwrap.dedent(REVISION))
    return root


def test_config_from_a_migrations_directory(migrations: Path) -> None:
    config = alembic_config(migrations, "postgresql://u:p%40ss@db/contacts")
    assert config.get_main_option("script_location") == str(migrations)
    # "%" survives ConfigParser interpolation.
    assert config.get_main_option("sqlalchemy.url") == "postgresql+asyncpg://u:p%40ss@db/contacts"


def test_config_from_an_ini_file_or_its_directory(migrations: Path) -> None:
    service = migrations.parent.parent
    (service / "alembic.ini").write_text("[alembic]\nscript_location = db/migrations\n")
    for given in (service, service / "alembic.ini"):
        config = alembic_config(given)
        assert Path(config.get_main_option("script_location")) == migrations


def test_config_for_a_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        alembic_config(tmp_path / "nothing-here")


def test_env_runs_offline_through_the_kit(migrations: Path) -> None:
    """`alembic upgrade head --sql`: env.py's call into alembic_env renders the SQL."""
    config = alembic_config(migrations, "postgresql://u@db/contacts")
    buffer = io.StringIO()
    config.output_buffer = buffer
    command.upgrade(config, "head", sql=True)
    sql = buffer.getvalue()
    assert "CREATE TABLE members" in sql
    assert "contacts_alembic_version" in sql
