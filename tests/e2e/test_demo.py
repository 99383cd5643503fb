"""The demo `make up` runs, at a small size against the four services running as processes
(their own databases, topics and ports): the union is loaded, the ballot opened over all of
it, reminders reach the sandbox provider, turnout climbs as the simulated reps work, and
loading again changes nothing."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from datetime import timedelta

import httpx
import pytest

from tests.support.isolation import create_database, drop_database
from turnout_kit.redaction import redact_text
from turnout_local import demo, services

pytestmark = pytest.mark.e2e

MEMBERS = 300


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
async def running_services(tmp_path, monkeypatch, infra, topics, kafka_bootstrap):
    """All four services as `turnout up` starts them, each on a free port with a database
    of its own; pid files, logs and the demo's state under tmp_path."""
    monkeypatch.setenv("TURNOUT_LOCAL_DIR", str(tmp_path))
    monkeypatch.setenv("TURNOUT_TOPIC_NAMESPACE", topics.namespace)
    monkeypatch.setenv("TURNOUT_TOPIC_PARTITIONS", str(topics.partitions))
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", kafka_bootstrap)
    # Reminders are picked up within a second instead of five.
    monkeypatch.setenv("NOTIFICATIONS_DISPATCH_INTERVAL_SECONDS", "1")
    databases = []
    try:
        for spec in services.SERVICES:
            monkeypatch.setenv(f"{spec.env_prefix}HTTP_PORT", str(free_port()))
            databases.append(url := await create_database(infra.database_url))
            monkeypatch.setenv(f"{spec.env_prefix}DATABASE_URL", url)
        monkeypatch.setenv("NOTIFICATIONS_CONTACTS_URL", demo.service_url("contacts"))
        for spec in services.SERVICES:
            services.start(spec, {})
        await asyncio.gather(*(asyncio.to_thread(services.wait_ready, spec, timeout=60)
                               for spec in services.SERVICES))
        yield
    finally:
        demo.stop_simulator()
        await asyncio.gather(*(asyncio.to_thread(services.stop, spec)
                               for spec in services.SERVICES))
        for url in databases:
            await drop_database(infra.database_url, url)


async def national_turnout(http: httpx.AsyncClient, ballot_id: str, tokens) -> dict:
    response = await http.get(f"{demo.service_url('reporting')}/v1/ballots/{ballot_id}/turnout",
                              params={"level": "national"}, headers=tokens("national"))
    assert response.status_code == 200, response.text
    [row] = response.json()["items"]
    return row


async def eventually(check, *, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not (result := await check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        await asyncio.sleep(0.3)  # polling other processes, bounded by the deadline
    return result


async def test_the_demo_loads_a_union_and_turnout_climbs_live(running_services, topics,
                                                              kafka_bootstrap, tokens):
    cfg = demo.DemoConfig(kafka_bootstrap_servers=kafka_bootstrap, topics=topics,
                          members=MEMBERS, branches=12, workplaces=30, rate=40,
                          first_reminder_after=timedelta(seconds=1))
    state = await demo.load(cfg)
    assert state.eligible == MEMBERS
    assert demo.start_simulator(state, cfg.rate)

    async with httpx.AsyncClient(timeout=10) as http:
        row = await national_turnout(http, state.ballot_id, tokens)
        assert row["eligible"] == MEMBERS
        assert row["threshold"] == 0.5

        async def voted_at_least(n: int):
            voted = (await national_turnout(http, state.ballot_id, tokens))["voted"]
            return voted if voted >= n else None

        first = await eventually(lambda: voted_at_least(1), timeout=30, what="a first vote")
        later = await eventually(lambda: voted_at_least(first + 5), timeout=20,
                                 what="turnout to keep climbing")
        assert first < later <= MEMBERS

        async def reminders():
            response = await http.get(f"{demo.service_url('notifications')}/v1/sandbox/messages",
                                      headers=tokens("national"))
            return response.json()["items"] if response.status_code == 200 else None

        sent = await eventually(reminders, timeout=20, what="reminders on the sandbox")
        assert all(m["to"].count("•") >= 4 for m in sent)  # masked numbers on the page

    # Loading again is a no-op: the same ballot and campaign, no second simulator.
    again = await demo.load(cfg)
    assert (again.ballot_id, again.campaign_id) == (state.ballot_id, state.campaign_id)
    assert not demo.start_simulator(again, cfg.rate)
    async with httpx.AsyncClient(timeout=10) as http:
        assert (await national_turnout(http, state.ballot_id, tokens))["eligible"] == MEMBERS

    demo.stop_simulator()
    assert demo.simulator_status()["running"] is False
    progress = demo.last_progress()
    assert progress is not None and progress["done"].get("vote", 0) > 0
    # The simulator's log has counts, never a phone number or an email.
    for line in services.log_file(demo.SIMULATOR).read_text().splitlines():
        record = json.loads(line)
        assert all(redact_text(str(v)) == str(v) for v in record.values()), record["event"]
