"""Readiness checks against dependencies that are not there (no servers needed)."""

from __future__ import annotations

import socket

import pytest

from turnout_kit.db import create_engine
from turnout_kit.readiness import broker_check, database_check, kafka_check, run_checks

pytestmark = pytest.mark.unit


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_unreachable_kafka_fails_the_check() -> None:
    ok, results = await run_checks([kafka_check(f"127.0.0.1:{closed_port()}", timeout=2)])
    assert not ok
    assert results["kafka"].startswith(("failed", "timeout"))


async def test_unreachable_database_fails_the_check() -> None:
    engine = create_engine(f"postgresql://u@127.0.0.1:{closed_port()}/x")
    try:
        ok, results = await run_checks([database_check(engine, timeout=2)])
    finally:
        await engine.dispose()
    assert not ok
    assert results["database"].startswith(("failed", "timeout"))


class Broker:
    def __init__(self, answers: bool) -> None:
        self.answers = answers

    async def ping(self, timeout: float | None) -> bool:
        return self.answers


async def test_broker_check_uses_the_brokers_ping() -> None:
    assert await run_checks([broker_check(Broker(True))]) == (True, {"kafka": "ok"})
    assert await run_checks([broker_check(Broker(False))]) == (False, {"kafka": "failed"})


async def test_no_checks_means_ready() -> None:
    assert await run_checks([]) == (True, {})
