"""The services as `turnout up` runs them: separate processes, configured by environment,
ready when /readyz says so, stopped cleanly."""

from __future__ import annotations

import json
import socket

import httpx
import pytest

from turnout_local import services

pytestmark = pytest.mark.e2e


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_contacts_runs_as_a_process_and_logs_json(tmp_path, monkeypatch, database_url,
                                                        topics, kafka_bootstrap, tokens):
    port = free_port()
    monkeypatch.setenv("TURNOUT_LOCAL_DIR", str(tmp_path))
    monkeypatch.setenv("CONTACTS_HTTP_PORT", str(port))
    spec = next(s for s in services.SERVICES if s.name == "contacts")
    env = {"CONTACTS_DATABASE_URL": database_url, "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
           "TURNOUT_TOPIC_NAMESPACE": topics.namespace,
           "TURNOUT_TOPIC_PARTITIONS": str(topics.partitions)}
    services.start(spec, env)
    try:
        services.wait_ready(spec, timeout=60)
        async with httpx.AsyncClient(base_url=spec.url) as client:
            assert (await client.get("/healthz")).json() == {"status": "ok"}
            ready = (await client.get("/readyz")).json()
            assert ready["checks"] == {"database": "ok", "kafka": "ok"}
            listed = await client.get("/v1/members", headers=tokens("national"))
            assert listed.status_code == 200
            assert listed.json() == {"items": [], "next_cursor": None}
            assert (await client.get("/v1/members")).status_code == 401
            assert "text/plain" in (await client.get("/metrics")).headers["content-type"]
    finally:
        services.stop(spec)
    assert services.status(spec)["running"] is False
    lines = services.log_file(spec).read_text().splitlines()
    records = [json.loads(line) for line in lines if line.startswith("{")]
    assert any(r.get("event") == "service_started" for r in records)
    assert all(r.get("service") == "contacts" for r in records)


async def test_a_service_serves_the_event_contract_under_its_topic_names(
        database_url, topics, kafka_bootstrap):
    from turnout_contacts.main import create_contacts_app
    from turnout_contacts.settings import ContactsSettings

    from tests.support.services import running

    settings = ContactsSettings(database_url=database_url, kafka_bootstrap_servers=kafka_bootstrap,
                                topic_namespace=topics.namespace,
                                topic_partitions=topics.partitions)
    async with running(create_contacts_app(settings)) as client:
        document = (await client.get("/asyncapi.json")).json()
    assert document["asyncapi"].startswith("3.")
    addresses = {c["address"] for c in document["channels"].values()}
    assert topics.events("ballots") in addresses and topics.dead_letter in addresses
