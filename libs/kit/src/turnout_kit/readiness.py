"""Readiness checks for `/readyz`: can this instance do its work right now?

A check is a named coroutine function that raises (or returns False) when its
dependency is unusable. Each runs with its own timeout and all run concurrently, so
one hung dependency answers "timeout" instead of hanging the probe.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import structlog
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

log = structlog.get_logger("turnout_kit.readiness")

DEFAULT_TIMEOUT = 2.0


@dataclass(frozen=True)
class ReadinessCheck:
    name: str
    probe: Callable[[], Awaitable[object]]
    timeout: float = DEFAULT_TIMEOUT


async def _run(check: ReadinessCheck) -> str:
    try:
        result = await asyncio.wait_for(check.probe(), timeout=check.timeout)
    except TimeoutError:
        outcome = f"timeout after {check.timeout:g}s"
    except Exception as exc:
        # The exception's type only: its message may name hosts and users, and the
        # probe's answer is readable by anyone who can reach the port.
        outcome = f"failed: {type(exc).__name__}"
        # No traceback: probes run every few seconds, and an outage would bury the log.
        log.warning("readiness_check_failed", check=check.name,
                    error=f"{type(exc).__name__}: {exc}")
    else:
        if result is False:
            outcome = "failed"
        else:
            return "ok"
    return outcome


async def run_checks(checks: Sequence[ReadinessCheck]) -> tuple[bool, dict[str, str]]:
    """(all passed, {check name: "ok" | what went wrong})."""
    outcomes = await asyncio.gather(*(_run(c) for c in checks))
    results = {c.name: outcome for c, outcome in zip(checks, outcomes, strict=True)}
    return all(o == "ok" for o in outcomes), results


def database_check(engine: AsyncEngine, *, timeout: float = DEFAULT_TIMEOUT) -> ReadinessCheck:
    async def probe() -> None:
        async with engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    return ReadinessCheck("database", probe, timeout)


def kafka_check(
    bootstrap_servers: str, *, timeout: float = DEFAULT_TIMEOUT, **client_options: Any
) -> ReadinessCheck:
    """Kafka answers a metadata request. A short-lived client per probe: it works
    whether or not this service's broker is connected (a relay-only service has none).
    `client_options` go to aiokafka (security_protocol, sasl_*, ssl_context)."""
    from aiokafka.client import AIOKafkaClient

    async def probe() -> None:
        client = AIOKafkaClient(
            bootstrap_servers=bootstrap_servers,
            request_timeout_ms=max(int(timeout * 1000), 1),
            client_id="turnout-readiness",
            **client_options,
        )
        try:
            await client.bootstrap()  # connects and fetches cluster metadata
        finally:
            await client.close()

    return ReadinessCheck("kafka", probe, timeout)


def broker_check(broker: Any, *, timeout: float = DEFAULT_TIMEOUT) -> ReadinessCheck:
    """The service's own FastStream broker is connected and the cluster answers."""

    async def probe() -> bool:
        return bool(await broker.ping(timeout=timeout))

    return ReadinessCheck("kafka", probe, timeout + 0.5)
