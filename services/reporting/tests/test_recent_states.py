"""The fold's memory of the states batches left lately (`RecentStates`): the newest state
of a member always wins, the last batch's states are never forgotten, and what is kept
stays within the limit, oldest forgotten first."""

from __future__ import annotations

from turnout_reporting.projections.fold import MemberState
from turnout_reporting.projections.folder import RecentStates


def states(version: int, *members: str) -> dict:
    return {m: (MemberState(m, contact_version=version), {}) for m in members}


def version(recent: RecentStates, member: str) -> int | None:
    known = recent.get(member)
    return None if known is None else known[0].contact_version


def test_the_newest_state_wins_whether_batches_are_big_or_small():
    recent = RecentStates(limit=8)  # batches of 2 or more are "big" here
    recent.left(states(1, "a", "b", "c"))
    recent.left(states(2, "a"))  # small: gathered with the next small ones
    recent.keep(states(3, "d"))  # loaded from the database
    recent.left(states(4, "b", "e"))
    recent.left(states(5, "a"))
    assert [version(recent, m) for m in "abcde"] == [5, 4, 1, 3, 4]
    assert version(recent, "z") is None


def test_the_last_batch_is_kept_even_with_no_room_for_older_ones():
    recent = RecentStates(limit=0)
    recent.left(states(1, "a", "b"))
    recent.left(states(2, "c"))
    assert version(recent, "c") == 2
    assert version(recent, "a") is None  # committed: loading it costs a query, no error


def test_older_states_are_kept_up_to_the_limit_oldest_forgotten_first():
    recent = RecentStates(limit=6)
    for n, batch in enumerate(["ab", "cd", "ef", "gh", "ij"], start=1):
        recent.left(states(n, *batch))
    # The last batch (ij) and at most six older states; the oldest went first.
    assert version(recent, "i") == 5 and version(recent, "j") == 5
    kept = [m for m in "abcdefgh" if version(recent, m) is not None]
    assert len(kept) <= 6
    assert kept == list("abcdefgh")[-len(kept):]
    assert version(recent, "g") == 4


def test_forgetting_forgets_everything():
    recent = RecentStates(limit=10)
    recent.left(states(1, "a"))
    recent.left(states(2, "b"))
    recent.forget()
    assert version(recent, "a") is None and version(recent, "b") is None
