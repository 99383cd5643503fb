"""What a fold process runs (see `processes.py`), from its settings to its stop.

    python -m turnout_reporting.messaging.fold_process INDEX PARENT_PID < pickled settings

Its imports are inside, and only what folding needs (no FastAPI, no SQLAlchemy): the
parent imports this module only to name it, and a child that starts sooner takes its
share of the partitions sooner.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..settings import ReportingSettings

PARENT_CHECK_S = 1.0


def fold_process_main(index: int, parent: int) -> None:
    """A child's whole life: read its settings from stdin, then fold until told to stop
    (SIGTERM, SIGINT) or orphaned."""
    import asyncio
    import pickle

    from turnout_kit.logging import configure_logging

    from ..settings import ReportingSettings

    settings = pickle.load(sys.stdin.buffer)  # from the parent, through a pipe
    if not isinstance(settings, ReportingSettings):
        raise SystemExit("a fold process expects the service's settings on stdin")
    configure_logging(f"reporting-fold-{index}", settings.log_level, settings.log_json)
    asyncio.run(_fold_until_stopped(settings, index, parent))


async def _fold_until_stopped(settings: ReportingSettings, index: int, parent: int) -> None:
    import asyncio
    import contextlib
    import signal

    import structlog

    from turnout_kit.collector import COLLECT_EVERY_S
    from turnout_kit.startup import start_with_retry

    from ..projections.store import fold_pool
    from .consumer import FoldConsumer

    log = structlog.get_logger("turnout.reporting.processes")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    pool = await fold_pool(settings.database_url, f"reporting-fold-{index}")
    # This process only folds: no requests leave cycles behind for the collector.
    consumer = FoldConsumer(settings, settings.topic_registry(), pool,
                            collect_every_s=COLLECT_EVERY_S)
    starter = await start_with_retry(consumer, name="fold_consumer")
    try:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), PARENT_CHECK_S)
            if os.getppid() != parent:
                log.warning("fold_process_orphaned", index=index)
                break
    finally:
        if starter is not None and not starter.done():
            starter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await starter
        await consumer.stop()
        await pool.close()


if __name__ == "__main__":
    fold_process_main(int(sys.argv[1]), int(sys.argv[2]))
