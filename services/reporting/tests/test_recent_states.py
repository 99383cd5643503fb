"""The fold's memory of the states batches left lately (`RecentStates`): the newest state
of a member always wins, the last batch's states are never forgotten, and what is kept
stays within about the limit, the oldest generation forgotten first."""

from __future__ import annotations

from turnout_reporting.projections.fold import MemberState
from turnout_reporting.projections.folder import RecentStates


def states(version: int, *members: str) -> dict:
    return {m: (MemberState(m, contact_version=version), {}) for m in members}


def version(recent: RecentStates, member: str) -> int | None:
    known = recent.get(member)
    return None if known is None else known[0].contact_version


def test_the_newest_state_wins_across_batches_and_generations():
    recent = RecentStates(limit=8)  # generations of up to 4 states
    recent.left(states(1, "a", "b", "c"))
    recent.left(states(2, "a"))
    recent.keep(states(3, "d"))  # loaded from the database
    recent.left(states(4, "b", "e"))  # a, b, c (1) and d become the previous generation
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


def test_with_room_for_every_member_none_is_forgotten():
    # What a catch-up relies on to never load a state back (the default limit is a
    # million members per fold process).
    members = [f"m{n}" for n in range(1000)]
    recent = RecentStates(limit=2000)
    for n in range(0, 1000, 10):
        recent.left(states(n, *members[n:n + 10]))
    recent.left(states(5000, *members[::100]))  # a later batch touches a few again
    found, unknown = recent.find(members)
    assert unknown == []
    assert [found[m][0].contact_version for m in members[:12]] == [5000] + [0] * 9 + [10, 10]


def test_forgetting_forgets_everything():
    recent = RecentStates(limit=10)
    recent.left(states(1, "a"))
    recent.left(states(2, "b"))
    recent.forget()
    assert version(recent, "a") is None and version(recent, "b") is None
