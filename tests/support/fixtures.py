"""Shared fixtures, loaded by the root conftest.py: one Kafka broker and one PostgreSQL
server for the whole run (see tests/support/infra.py for where they come from), and
per-test isolation."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from tests.support.infra import Infra, provide_infra
from tests.support.isolation import create_database, create_topics, delete_topics, drop_database
from turnout_events.topics import TopicRegistry


@pytest.fixture(scope="session")
def infra() -> Iterator[Infra]:
    with provide_infra() as found:
        print(f"\n[turnout tests] Kafka {found.kafka_bootstrap_servers}, "
              f"PostgreSQL from {found.how}")
        yield found


@pytest.fixture(scope="session")
def kafka_bootstrap(infra: Infra) -> str:
    return infra.kafka_bootstrap_servers


@pytest.fixture
async def topics(kafka_bootstrap: str) -> AsyncIterator[TopicRegistry]:
    """A topic set (all event topics + dead letter) no other test uses."""
    registry = await create_topics(kafka_bootstrap)
    yield registry
    await delete_topics(kafka_bootstrap, registry)


@pytest.fixture
async def database_url(infra: Infra) -> AsyncIterator[str]:
    """An empty database of the test's own (postgresql+asyncpg URL), dropped afterwards."""
    url = await create_database(infra.database_url)
    yield url
    await drop_database(infra.database_url, url)


@pytest.fixture(scope="session")
def tokens():
    """Bearer tokens signed the way the services (in tests) verify them."""
    from tests.support.services import TokenMaker

    return TokenMaker()
