"""Per-test isolation on shared servers: a topic namespace and a database of one's own."""

from __future__ import annotations

import uuid

import asyncpg
from aiokafka.admin import AIOKafkaAdminClient
from sqlalchemy.engine import make_url

from turnout_events.database_url import asyncpg_dsn
from turnout_events.topics import TopicRegistry
from turnout_local.topics import ensure_topics


def unique_name(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:10]}"


async def create_topics(bootstrap_servers: str, partitions: int = 3) -> TopicRegistry:
    registry = TopicRegistry(namespace=unique_name("t"), partitions=partitions)
    await ensure_topics(bootstrap_servers, registry)
    return registry


async def delete_topics(bootstrap_servers: str, registry: TopicRegistry) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers)
    await admin.start()
    try:
        await admin.delete_topics([s.name for s in registry.specs()])
    finally:
        await admin.close()


async def create_database(server_url: str) -> str:
    """Create an empty database; return its SQLAlchemy (asyncpg) URL."""
    name = unique_name("test_")
    conn = await asyncpg.connect(asyncpg_dsn(server_url))
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return (make_url(server_url).set(drivername="postgresql+asyncpg", database=name)
            .render_as_string(hide_password=False))


async def drop_database(server_url: str, database_url: str) -> None:
    name = make_url(database_url).database
    conn = await asyncpg.connect(asyncpg_dsn(server_url))
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()
