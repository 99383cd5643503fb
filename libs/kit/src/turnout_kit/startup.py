"""Starting a Kafka client that may not be reachable yet, without holding the service up.

Its own module, light to import: a fold process (reporting) starts its consumer with it
and should not pay for FastAPI and SQLAlchemy, which it never uses.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import structlog

log = structlog.get_logger("turnout_kit.startup")

# Reconnect schedule when Kafka is not there at startup: doubling, capped.
BROKER_RETRY_INITIAL_DELAY = 1.0
BROKER_RETRY_MAX_DELAY = 30.0


async def start_with_retry(component: Any, *, name: str = "kafka_broker"
                           ) -> asyncio.Task[None] | None:
    """Start a Kafka client (the FastStream broker, a plain consumer: anything with
    `start()` and `stop()`); if Kafka is not reachable, keep trying in the background
    and return that task (cancel it on shutdown).

    The service still comes up: HTTP commands write to the outbox, which drains when
    Kafka is back, reads serve what is already stored, and `/readyz` reports Kafka as
    failing meanwhile.
    """
    try:
        await component.start()
        return None
    except Exception as exc:
        log.error(f"{name}_start_failed", error=type(exc).__name__,
                  retry_in_s=BROKER_RETRY_INITIAL_DELAY)
        await _reset(component)
    return asyncio.create_task(_keep_starting(component, name), name=f"{name}-start")


async def _reset(component: Any) -> None:
    # A failed start can leave half the subscribers running; stop everything so the
    # next attempt starts from scratch instead of doubling consumers.
    with contextlib.suppress(Exception):
        await component.stop()


async def _keep_starting(component: Any, name: str) -> None:
    delay = BROKER_RETRY_INITIAL_DELAY
    while True:
        await asyncio.sleep(delay)
        try:
            await component.start()
        except Exception as exc:
            delay = min(delay * 2, BROKER_RETRY_MAX_DELAY)
            log.warning(f"{name}_start_failed", error=type(exc).__name__,
                        retry_in_s=delay)
            await _reset(component)
        else:
            log.info(f"{name}_started")
            return


__all__ = ["start_with_retry"]
