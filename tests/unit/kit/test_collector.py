"""Pausing the cyclic garbage collector around hot loops (turnout_kit.collector)."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from tests.support.events import eventually
from turnout_kit import collector
from turnout_kit.collector import CollectorPause, collector_paused

pytestmark = pytest.mark.unit


class Node:
    """An object that can be put in a reference cycle and watched through a weakref."""

    def __init__(self) -> None:
        self.other: Node | None = None


def make_cycle() -> weakref.ref[Node]:
    a, b = Node(), Node()
    a.other, b.other = b, a
    return weakref.ref(a)


@pytest.fixture(autouse=True)
def no_pause_yet(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Each test starts with no pause and collection on, whatever runs beside it in this
    process (a fold consumer of another test pauses the process's collector too)."""
    was_enabled = gc.isenabled()
    monkeypatch.setattr(collector, "_pauses", 0)
    monkeypatch.setattr(collector, "_enable_after", False)
    gc.enable()
    yield
    if not was_enabled:
        gc.disable()


def test_a_pause_turns_automatic_collection_off_and_back_on() -> None:
    with collector_paused():
        assert not gc.isenabled()
        # Objects outside cycles are freed as ever; a cycle waits.
        plain = weakref.ref(Node())
        assert plain() is None
        cycle = make_cycle()
        assert cycle() is not None
    assert gc.isenabled()
    gc.collect()
    assert cycle() is None


def test_overlapping_pauses_end_with_the_last() -> None:
    collector.pause()
    collector.pause()
    collector.resume()
    assert not gc.isenabled(), "the first pause to end turned collection back on"
    collector.resume()
    assert gc.isenabled()


def test_a_pause_leaves_collection_off_if_it_was_off_before() -> None:
    gc.disable()
    with collector_paused():
        pass
    assert not gc.isenabled()


def test_resume_without_pause_is_an_error() -> None:
    with pytest.raises(RuntimeError):
        collector.resume()


async def test_a_long_pause_still_collects_cycles_on_schedule() -> None:
    pause = CollectorPause(every_s=0.05)
    pause.start()
    try:
        assert not gc.isenabled()
        cycle = make_cycle()
        await eventually(lambda: cycle() is None, what="the scheduled collection",
                         timeout=10)
        assert not gc.isenabled(), "the scheduled collection turned collection back on"
    finally:
        await pause.stop()
    assert gc.isenabled()
    await pause.stop()  # a second stop changes nothing
    assert gc.isenabled() and not collector.paused()


async def test_pauses_of_a_fold_and_a_rebuild_overlap() -> None:
    fold, rebuild = CollectorPause(), CollectorPause()
    fold.start()
    rebuild.start()
    await rebuild.stop()
    assert not gc.isenabled()
    await fold.stop()
    assert gc.isenabled()
