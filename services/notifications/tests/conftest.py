"""The notifications service running in-process on the run's Kafka and a database of its
own, with time in the test's hands and a real HTTP server standing in for contacts."""

from __future__ import annotations

import pytest
from turnout_notifications.main import create_notifications_app
from turnout_notifications.settings import NotificationsSettings

from services.notifications.tests.support import T0, FakeClock, fake_contacts_server
from tests.support.services import running


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


@pytest.fixture
async def fake_contacts():
    async with fake_contacts_server() as server:
        yield server


@pytest.fixture
def notifications_settings(database_url, topics, kafka_bootstrap,
                           fake_contacts) -> NotificationsSettings:
    # The dispatcher's loop is off: tests run its rounds themselves, between events.
    return NotificationsSettings(database_url=database_url,
                                 kafka_bootstrap_servers=kafka_bootstrap,
                                 topic_namespace=topics.namespace,
                                 topic_partitions=topics.partitions,
                                 contacts_url=fake_contacts.url, dispatcher_enabled=False,
                                 provider_rate_per_second=500)


@pytest.fixture
async def notifications_app(notifications_settings, clock):
    app = create_notifications_app(notifications_settings, clock=clock)
    async with running(app, "http://notifications") as client:
        client.app = app  # type: ignore[attr-defined]
        yield client
