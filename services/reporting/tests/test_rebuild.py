"""Rebuilding the projections from the log: the new numbers equal the live ones (and the
generator's truth), the old numbers are served whole until the new ones replace them,
events arriving meanwhile are all counted once, and another instance folding at the
same time cannot write numbers folded from the old tables into the new ones."""

from __future__ import annotations

import asyncio
import json
import time

import asyncpg
import httpx
import pytest
from turnout_reporting.main import create_reporting_app
from turnout_reporting.messaging.consumer import group_id
from turnout_reporting.projections.store import StaleOffsets, commit_batch, take_offsets
from turnout_reporting.service.rebuild import REBUILD_LOCK
from turnout_reporting.synthetic import generate_ballot

from services.reporting.tests.events import as_envelope, publish, shuffled
from services.reporting.tests.test_exactly_once import (
    assert_exact,
    assignment,
    consumed,
    synthetic,
    wait_for,
)
from services.reporting.tests.test_projection import numbers, until_equal
from tests.support.isolation import create_topics, delete_topics
from tests.support.services import running
from turnout_events.database_url import asyncpg_dsn

pytestmark = pytest.mark.integration


@pytest.fixture
async def reporting_db(database_url):
    conn = await asyncpg.connect(asyncpg_dsn(database_url))
    yield conn
    await conn.close()


async def timeline(client: httpx.AsyncClient, headers: dict, ballot) -> dict:
    response = await client.get(f"/v1/ballots/{ballot.ballot_id}/timeline",
                                params={"level": "national"}, headers=headers)
    assert response.status_code == 200, response.text
    return {b["hour"]: b["votes"] for b in response.json()["buckets"]}


async def rebuild_to_the_end(client: httpx.AsyncClient, admin: dict, *,
                             timeout: float = 120.0) -> tuple[dict, list[str]]:
    """Start a rebuild through the API and follow it until it ends; returns its last
    status and the states it was seen in."""
    started = await client.post("/v1/admin/rebuild", headers=admin)
    assert started.status_code == 202, started.text
    rebuild_id = started.json()["rebuild_id"]
    assert started.headers["location"] == f"/v1/admin/rebuild/{rebuild_id}"
    seen = [started.json()["state"]]
    deadline = time.monotonic() + timeout
    while True:
        response = await client.get(f"/v1/admin/rebuild/{rebuild_id}", headers=admin)
        assert response.status_code == 200, response.text
        status = response.json()
        if status["state"] != seen[-1]:
            seen.append(status["state"])
        if status["state"] in ("done", "failed"):
            return status, seen
        assert time.monotonic() < deadline, f"the rebuild did not end: {status}"
        await asyncio.sleep(0.05)  # polling interval while waiting with a deadline


async def test_a_rebuild_gives_the_live_numbers_and_serves_the_old_ones_until_then(
        reporting_app, reporting_db, tokens, topics, kafka_bootstrap):
    ballot = generate_ballot(members=400, seed=61)
    await publish(kafka_bootstrap, topics, shuffled([as_envelope(e) for e in ballot.events]))
    national = tokens("national")
    live = await until_equal(reporting_app, national, ballot)
    live_timeline = await timeline(reporting_app, national, ballot)
    assert live == ballot.truth

    # A campaign team keeps reading while the rebuild runs: every read is whole.
    reads: list[dict] = []
    done = asyncio.Event()

    async def keep_reading() -> None:
        while not done.is_set():
            reads.append(await numbers(reporting_app, national, ballot.ballot_id))

    reader = asyncio.create_task(keep_reading())
    try:
        status, states = await rebuild_to_the_end(reporting_app, tokens("admin"))
    finally:
        done.set()
        await reader
    assert status["state"] == "done", status
    assert states[0] == "folding" and states[-1] == "done"
    assert status["events_folded"] == status["events_total"] == len(ballot.events)
    assert len(reads) >= 3
    assert all(read == ballot.truth for read in reads)

    assert await numbers(reporting_app, national, ballot.ballot_id) == live
    assert await timeline(reporting_app, national, ballot) == live_timeline
    # Stream clients were told: one feed row replacing the ballot's numbers whole.
    (reset,) = [json.loads(r["changes"]) for r in await reporting_db.fetch(
        "SELECT changes FROM turnout_changes WHERE ballot_id = $1 ORDER BY seq",
        ballot.ballot_id) if json.loads(r["changes"]).get("reset")]
    assert {(r["level"], r["group_code"], r["branch_code"], r["workplace_code"])
            for r in reset["rows"] if r["eligible"]} == {k[1:] for k in ballot.truth}
    # Nothing of the rebuild is left behind, and the live fold goes on from the new tables.
    assert await reporting_db.fetchval(
        "SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'reporting_%'") == 0
    more = generate_ballot(members=50, seed=62)
    await publish(kafka_bootstrap, topics, [as_envelope(e) for e in more.events])
    await until_equal(reporting_app, national, more)
    assert await numbers(reporting_app, national, ballot.ballot_id) == live


async def test_only_admins_rebuild_and_only_one_at_a_time(reporting_app, reporting_db, tokens):
    assert (await reporting_app.post("/v1/admin/rebuild")).status_code == 401
    refused = await reporting_app.post("/v1/admin/rebuild", headers=tokens("national"))
    assert refused.status_code == 403
    admin = tokens("admin")
    unknown = await reporting_app.get(
        "/v1/admin/rebuild/00000000-0000-4000-8000-000000000000", headers=admin)
    assert unknown.status_code == 404

    # Someone (another instance) holds the rebuild lock: this one is refused.
    await reporting_db.execute("SELECT pg_advisory_lock($1)", REBUILD_LOCK)
    try:
        busy = await reporting_app.post("/v1/admin/rebuild", headers=admin)
    finally:
        await reporting_db.execute("SELECT pg_advisory_unlock($1)", REBUILD_LOCK)
    assert busy.status_code == 409
    assert busy.headers["content-type"].startswith("application/problem+json")
    assert await reporting_db.fetchval("SELECT count(*) FROM rebuilds") == 0

    status, _ = await rebuild_to_the_end(reporting_app, admin)  # empty topics: nothing to do
    assert status["state"] == "done" and status["events_folded"] == 0


async def test_events_arriving_during_a_rebuild_are_all_counted_once(
        reporting_app, reporting_db, tokens, topics, kafka_bootstrap):
    first, first_events = synthetic(members=300, seed=63)
    second, second_events = synthetic(members=500, seed=64)
    await publish(kafka_bootstrap, topics, first_events)
    await until_equal(reporting_app, tokens("national"), first)

    async def keep_publishing() -> None:
        chunk = len(second_events) // 8 + 1
        for i in range(0, len(second_events), chunk):
            await publish(kafka_bootstrap, topics, second_events[i:i + chunk])
            await asyncio.sleep(0.1)  # a steady trickle, not a race fix

    publisher = asyncio.create_task(keep_publishing())
    status, _ = await rebuild_to_the_end(reporting_app, tokens("admin"))
    await publisher
    assert status["state"] == "done", status
    total = len(first_events) + len(second_events)
    group = group_id(topics)
    await wait_for(lambda: _consumed_all(reporting_db, group, total),
                   f"for all {total} records to be folded")
    national = tokens("national")
    await assert_exact(reporting_app, national, first)
    await assert_exact(reporting_app, national, second)


async def _consumed_all(conn, group: str, total: int) -> bool:
    return await consumed(conn, group) >= total


async def test_a_batch_folded_from_the_replaced_tables_is_refused(
        reporting_app, reporting_db, tokens, topics, kafka_bootstrap, database_url):
    """What keeps another instance's fold from writing into the new tables numbers
    folded from the old ones: its positions name the offsets table they came from."""
    ballot = generate_ballot(members=100, seed=65)
    await publish(kafka_bootstrap, topics, [as_envelope(e) for e in ballot.events])
    await until_equal(reporting_app, tokens("national"), ballot)
    group = group_id(topics)
    partitions = [(r["topic"], r["partition"]) for r in await reporting_db.fetch(
        'SELECT topic, "partition" FROM consumer_offsets WHERE "group" = $1', group)]
    before = await take_offsets(reporting_db, group, partitions)

    status, _ = await rebuild_to_the_end(reporting_app, tokens("admin"))
    assert status["state"] == "done"
    after = await take_offsets(reporting_db, group, partitions)
    assert after.offsets == before.offsets  # the same position, in another table
    assert after.table != before.table

    with pytest.raises(StaleOffsets):
        await commit_batch(reporting_db, group, None, before, before.offsets)
    assert (await take_offsets(reporting_db, group, partitions)).offsets == after.offsets


async def test_two_instances_a_rebuild_repairs_wrong_numbers_while_events_arrive(
        database_url, reporting_db, kafka_bootstrap, tokens, reporting_settings):
    topics = await create_topics(kafka_bootstrap, partitions=4)
    try:
        # No states kept in memory: every batch folds from what the tables hold, so a
        # batch folded from the old tables and written into the new would show.
        settings = reporting_settings.model_copy(update={
            "topic_namespace": topics.namespace, "topic_partitions": topics.partitions,
            "fold_batch_size": 50, "fold_recent_states": 0})
        group = group_id(topics)
        first, first_events = synthetic(members=400, seed=66)
        second, second_events = synthetic(members=800, seed=67)
        total = len(first_events) + len(second_events)
        national = tokens("national")

        coordinator, other = create_reporting_app(settings), create_reporting_app(settings)
        async with running(coordinator, "http://reporting-1") as client, \
                running(other, "http://reporting-2"):
            mine = coordinator.state.ctx.consumer
            theirs = other.state.ctx.consumer

            async def sharing() -> bool:
                return bool(assignment(mine)) and bool(assignment(theirs)) and len(
                    assignment(mine) | assignment(theirs)) == 3 * topics.partitions

            await wait_for(sharing, "for both instances to own a share of the partitions")
            await publish(kafka_bootstrap, topics, first_events)
            await wait_for(lambda: _consumed_all(reporting_db, group, len(first_events)),
                           "for the first wave to be folded")
            await assert_exact(client, national, first)
            # A fold bug, say: members placed in a branch that does not exist.
            await reporting_db.execute(
                "UPDATE member_states SET branch_code = 'B-WRONG', "
                "workplace_code = 'W-WRONG'")
            await reporting_db.execute("UPDATE turnout SET voted = voted + 3")

            async def keep_publishing() -> None:
                chunk = len(second_events) // 10 + 1
                for i in range(0, len(second_events), chunk):
                    await publish(kafka_bootstrap, topics, second_events[i:i + chunk])
                    await asyncio.sleep(0.1)  # a steady trickle, not a race fix

            publisher = asyncio.create_task(keep_publishing())
            status, _ = await rebuild_to_the_end(client, tokens("admin"))
            await publisher
            assert status["state"] == "done", status
            await wait_for(lambda: _consumed_all(reporting_db, group, total),
                           f"for all {total} records to be folded")
            assert theirs.folded > 0
            await assert_exact(client, national, first)
            await assert_exact(client, national, second)
            assert await reporting_db.fetchval(
                "SELECT count(*) FROM member_states WHERE branch_code = 'B-WRONG'") == 0
    finally:
        await delete_topics(kafka_bootstrap, topics)
