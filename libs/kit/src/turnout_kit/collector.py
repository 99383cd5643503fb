"""The cyclic garbage collector, paused around work that holds many objects and makes no
cycles: the reporting fold, a roster import.

CPython runs a young-generation collection whenever the objects it tracks grow by a
threshold (700 by default), and each one walks every young object still alive. A fold
holds a batch of Kafka records and the states it folds for a batch or two, so those are
walked again and again; raising the threshold only spaces the walks out (measured in a
fold process catching up a million members: 64 collections took 1.6 of its 30 CPU
seconds at a threshold of 100,000). Paused, objects that are not in a cycle are still
freed the moment their last reference goes, by reference counting; only cycles wait,
for one full collection on a schedule (`CollectorPause`, for a pause with no end in
sight) or for the end of the pause (`collector_paused`, for a bounded piece of work).

Pauses nest and overlap (two imports at once, a rebuild beside the live fold): automatic
collection comes back when the last one ends, and only if it was on when the first
began.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections.abc import Iterator

# How often a long pause collects. A full collection walks every object the collector
# tracks: about 0.2 s in a fold process holding half a million members' states (one
# tuple each), 0.45 s in a rebuild holding a million. A process that only folds makes
# few cycles (exceptions with their tracebacks, a closed connection's objects), and
# they wait at most a minute. A process that also serves HTTP makes more: a request
# through FastAPI leaves a few dozen objects in cycles (24 measured through httpx's
# ASGI transport), a few megabytes a second under heavy load, so it collects every 10 s.
COLLECT_EVERY_S = 60.0
COLLECT_EVERY_S_BESIDE_REQUESTS = 10.0

_pauses = 0
_enable_after = False


def pause() -> None:
    """Automatic collection off until the matching `resume`."""
    global _pauses, _enable_after
    if _pauses == 0:
        _enable_after = gc.isenabled()
        gc.disable()
    _pauses += 1


def resume() -> None:
    global _pauses
    if _pauses == 0:
        raise RuntimeError("resume() without a pause()")
    _pauses -= 1
    if _pauses == 0 and _enable_after:
        gc.enable()


def paused() -> bool:
    return _pauses > 0


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """Automatic collection off for the block (for work that ends: cycles made in it are
    collected as usual afterwards)."""
    pause()
    try:
        yield
    finally:
        resume()


class CollectorPause:
    """Automatic collection off from `start` to `stop`, and a full collection every
    `every_s` seconds meanwhile, for a loop that runs for as long as the process does
    (the fold consumer) or for minutes (a rebuild). Start it in the running event loop.
    """

    def __init__(self, every_s: float = COLLECT_EVERY_S_BESIDE_REQUESTS) -> None:
        self.every_s = every_s
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is not None:
            return
        pause()
        self._task = asyncio.get_running_loop().create_task(
            self._collect_on_schedule(), name="scheduled-garbage-collection")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        try:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        finally:
            resume()

    async def _collect_on_schedule(self) -> None:
        while True:
            await asyncio.sleep(self.every_s)  # an interval, not a wait for a condition
            gc.collect()
