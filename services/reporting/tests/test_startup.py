"""Reporting keeps serving while Kafka is away at start-up, and joins when it can."""

from __future__ import annotations

import socket
import uuid

import pytest
from turnout_reporting.main import create_reporting_app
from turnout_reporting.settings import ReportingSettings

from tests.support.services import running

pytestmark = pytest.mark.integration


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens here once the socket closes


async def test_the_service_starts_and_answers_without_kafka(database_url, topics, tokens):
    settings = ReportingSettings(database_url=database_url,
                                 kafka_bootstrap_servers=f"127.0.0.1:{closed_port()}",
                                 topic_namespace=topics.namespace)
    async with running(create_reporting_app(settings), "http://reporting") as client:
        assert (await client.get("/healthz")).status_code == 200
        ready = await client.get("/readyz")
        assert ready.status_code == 503 and "kafka" in ready.json()["failed"]
        unknown = await client.get(f"/v1/ballots/{uuid.uuid4()}/turnout",
                                   headers=tokens("national"))
        assert unknown.status_code == 404
