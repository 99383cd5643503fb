"""The change feed behind the live stream: replaying it gives the committed numbers, and
a listener is told of every committed batch."""

from __future__ import annotations

import asyncio
import json

import asyncpg
import pytest
from turnout_reporting.projections.changes import CHANNEL
from turnout_reporting.synthetic import generate_ballot

from services.reporting.tests.events import as_envelope, publish, shuffled
from services.reporting.tests.test_projection import COLUMNS, until_equal
from turnout_events.database_url import asyncpg_dsn

pytestmark = pytest.mark.integration


async def test_replaying_the_feed_gives_the_committed_numbers(reporting_app, tokens, topics,
                                                              kafka_bootstrap, database_url):
    ballot = generate_ballot(members=200, seed=8)
    listener = await asyncpg.connect(asyncpg_dsn(database_url))
    notified: list[int] = []
    last_seen = asyncio.Event()
    last_seq = None

    def on_notify(*args) -> None:
        notified.append(int(args[3]))
        if last_seq is not None and notified[-1] >= last_seq:
            last_seen.set()

    await listener.add_listener(CHANNEL, on_notify)
    try:
        await publish(kafka_bootstrap, topics,
                      shuffled([as_envelope(e) for e in ballot.events]))
        await until_equal(reporting_app, tokens("national"), ballot)
        feed = await listener.fetch("SELECT seq, ballot_id, changes FROM turnout_changes "
                                    "ORDER BY seq")
        last_seq = feed[-1]["seq"]
        if notified and max(notified) >= last_seq:
            last_seen.set()
        # The listener may hear of the last commit after the numbers are already equal.
        await asyncio.wait_for(last_seen.wait(), timeout=10)
    finally:
        await listener.close()

    # Later rows overwrite earlier ones: the last word on every unit is its number now.
    replayed: dict[tuple, list[int]] = {}
    hours: dict[tuple, int] = {}
    for entry in feed:
        assert entry["ballot_id"] == ballot.ballot_id
        changes = json.loads(entry["changes"])
        for row in changes["rows"]:
            key = (ballot.ballot_id, row["level"], row["group_code"], row["branch_code"],
                   row["workplace_code"])
            replayed[key] = [row[c] for c in COLUMNS]
        for bucket in changes["hours"]:
            hours[(bucket["level"], bucket["group_code"], bucket["branch_code"],
                   bucket["workplace_code"], bucket["hour"])] = bucket["votes"]
    truth = {k: v for k, v in ballot.truth.items() if v[0] > 0}
    assert {k: v for k, v in replayed.items() if v[0] > 0} == truth
    national_votes = sum(v for k, v in hours.items() if k[0] == "national")
    assert national_votes == ballot.truth[(ballot.ballot_id, "national", "", "", "")][1]

    seqs = [entry["seq"] for entry in feed]
    assert seqs == sorted(set(seqs))
    assert max(notified) == seqs[-1]
