"""The ballots service running in-process on the run's Kafka and a database of its own."""

from __future__ import annotations

import pytest
from turnout_ballots.main import create_ballots_app
from turnout_ballots.settings import BallotsSettings

from tests.support.services import running


@pytest.fixture
def ballots_settings(database_url, topics, kafka_bootstrap) -> BallotsSettings:
    # A small enrolment chunk, so that even the tests' small rolls are written in
    # several chunks.
    return BallotsSettings(database_url=database_url, kafka_bootstrap_servers=kafka_bootstrap,
                           topic_namespace=topics.namespace,
                           topic_partitions=topics.partitions, enrolment_chunk_size=7)


@pytest.fixture
async def ballots_app(ballots_settings):
    app = create_ballots_app(ballots_settings)
    async with running(app, "http://ballots") as client:
        client.app = app  # type: ignore[attr-defined]
        yield client
