"""The reporting service running in-process on the run's Kafka and a database of its own."""

from __future__ import annotations

import pytest
from turnout_reporting.main import create_reporting_app
from turnout_reporting.settings import ReportingSettings

from tests.support.services import running


@pytest.fixture
def reporting_settings(database_url, topics, kafka_bootstrap) -> ReportingSettings:
    # Small batches, so that even a test's few thousand events take many transactions.
    return ReportingSettings(database_url=database_url, kafka_bootstrap_servers=kafka_bootstrap,
                             topic_namespace=topics.namespace,
                             topic_partitions=topics.partitions, fold_batch_size=100,
                             fold_poll_ms=100)


@pytest.fixture
async def reporting_app(reporting_settings):
    app = create_reporting_app(reporting_settings)
    async with running(app, "http://reporting") as client:
        client.app = app  # type: ignore[attr-defined]
        yield client
