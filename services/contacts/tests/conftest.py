"""The contacts service running in-process on the run's Kafka and a database of its own."""

from __future__ import annotations

import pytest
from turnout_contacts.main import create_contacts_app
from turnout_contacts.settings import ContactsSettings

from tests.support.services import running


@pytest.fixture
def contacts_settings(database_url, topics, kafka_bootstrap) -> ContactsSettings:
    return ContactsSettings(database_url=database_url, kafka_bootstrap_servers=kafka_bootstrap,
                            topic_namespace=topics.namespace,
                            topic_partitions=topics.partitions, reveals_per_hour=3)


@pytest.fixture
async def contacts_app(contacts_settings):
    app = create_contacts_app(contacts_settings)
    async with running(app, "http://contacts") as client:
        client.app = app  # type: ignore[attr-defined]
        yield client
