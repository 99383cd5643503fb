"""Exactly-once under the failures issue 5 names: a reporting process killed with SIGKILL
at any point, restarted, ends with the generator's ground truth (nothing lost, nothing
counted twice); two instances in one consumer group share the partitions, together count
every event once, and when one leaves mid-stream the other takes its partitions over.

The position the fold has reached is read from the reporting database's
consumer_offsets (the only record of it, written with the effects): with topics of the
test's own, the stored offsets summed over every partition are the number of records
consumed, so "caught up" is that sum reaching the number of records published."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
from collections.abc import Awaitable, Callable
from datetime import datetime

import asyncpg
import httpx
import pytest
from turnout_reporting.main import create_reporting_app
from turnout_reporting.messaging.consumer import FoldConsumer, group_id, source_topics
from turnout_reporting.settings import ReportingSettings
from turnout_reporting.synthetic import SyntheticBallot, generate_ballot

from services.reporting.tests.events import as_envelope, publish, shuffled
from services.reporting.tests.test_projection import numbers
from tests.support.events import eventually
from tests.support.isolation import create_topics, delete_topics
from tests.support.services import running
from turnout_events.database_url import asyncpg_dsn
from turnout_kit import collector
from turnout_local import services

pytestmark = pytest.mark.integration

Offsets = dict[tuple[str, int], int]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def synthetic(members: int, seed: int) -> tuple[SyntheticBallot, list]:
    """A generated ballot and its events as the services would publish them, shuffled
    across topics and members."""
    ballot = generate_ballot(members=members, seed=seed)
    return ballot, shuffled([as_envelope(e) for e in ballot.events], seed=seed)


async def stored_offsets(conn: asyncpg.Connection, group: str) -> Offsets:
    rows = await conn.fetch('SELECT topic, "partition", next_offset FROM consumer_offsets '
                            'WHERE "group" = $1', group)
    return {(r["topic"], r["partition"]): r["next_offset"] for r in rows}


async def consumed(conn: asyncpg.Connection, group: str) -> int:
    return sum((await stored_offsets(conn, group)).values())


async def wait_for(condition: Callable[[], Awaitable[bool]], what: str, *,
                   timeout: float = 90.0) -> None:
    await eventually(condition, what=what.removeprefix("for "), timeout=timeout)


async def assert_exact(client: httpx.AsyncClient, headers: dict,
                       ballot: SyntheticBallot) -> None:
    """Every unit's counts and the national turnout timeline are the generator's truth:
    called once everything is consumed, so any double count or loss shows."""
    assert await numbers(client, headers, ballot.ballot_id) == ballot.truth
    timeline = await client.get(f"/v1/ballots/{ballot.ballot_id}/timeline",
                                params={"level": "national"}, headers=headers)
    assert timeline.status_code == 200, timeline.text
    truth_hours = {hour: n for (unit, hour), n in ballot.hourly_truth.items()
                   if unit[1] == "national" and n}
    assert {datetime.fromisoformat(b["hour"]): b["votes"]
            for b in timeline.json()["buckets"]} == truth_hours


def service_process(monkeypatch, tmp_path, database_url: str, kafka_bootstrap: str, topics,
                    **settings: str) -> tuple[services.ServiceSpec, dict[str, str]]:
    """The reporting service as the local runtime starts it (`services.start(spec, env)`),
    on a port, a state folder, a database and topics of the test's own; `settings` are
    more of its environment variables."""
    monkeypatch.setenv("TURNOUT_LOCAL_DIR", str(tmp_path))
    monkeypatch.setenv("REPORTING_HTTP_PORT", str(free_port()))
    spec = next(s for s in services.SERVICES if s.name == "reporting")
    env = {"REPORTING_DATABASE_URL": database_url, "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
           "TURNOUT_TOPIC_NAMESPACE": topics.namespace,
           "TURNOUT_TOPIC_PARTITIONS": str(topics.partitions), **settings}
    return spec, env


@pytest.fixture
async def reporting_db(database_url):
    """A plain connection to the reporting database, to watch the stored offsets."""
    conn = await asyncpg.connect(asyncpg_dsn(database_url))
    yield conn
    await conn.close()


# -- kill -9 ---------------------------------------------------------------------------


def _reap(pid: int) -> None:
    # The child of this process: collect its exit so it does not linger as a zombie.
    # (subprocess may have collected it already.)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)


async def test_a_process_killed_with_sigkill_mid_stream_neither_loses_nor_double_counts(
        tmp_path, monkeypatch, database_url, reporting_db, topics, kafka_bootstrap, tokens):
    ballot, envelopes = synthetic(members=1000, seed=41)
    total = len(envelopes)
    await publish(kafka_bootstrap, topics, envelopes)
    group = group_id(topics)

    # Small batches: the stream takes a few hundred transactions, so a kill lands in it.
    spec, env = service_process(monkeypatch, tmp_path, database_url, kafka_bootstrap, topics,
                                REPORTING_FOLD_BATCH_SIZE="20", REPORTING_FOLD_POLL_MS="50")

    def start() -> int:
        services.start(spec, env)
        pid = int(services.pid_file(spec).read_text())
        services.wait_ready(spec, timeout=60)
        return pid

    try:
        # Killed twice, early and late: the second run resumes from what the first
        # committed, and is itself cut short.
        positions = []
        for kill_at in (total // 4, 2 * total // 3):
            pid = start()
            await wait_for(lambda n=kill_at: _at_least(reporting_db, group, n),
                           f"for the fold to pass {kill_at} of {total} records")
            os.killpg(pid, signal.SIGKILL)
            _reap(pid)
            after = await consumed(reporting_db, group)
            assert kill_at <= after < total, (
                f"the kill did not land mid-stream ({after} of {total} consumed)")
            positions.append(after)
        assert positions[0] < positions[1]

        start()
        await wait_for(lambda: _at_least(reporting_db, group, total),
                       f"for the restarted fold to consume all {total} records")
        assert await consumed(reporting_db, group) == total
        async with httpx.AsyncClient(base_url=spec.url) as client:
            await assert_exact(client, tokens("national"), ballot)
    finally:
        services.stop(spec)


async def _at_least(conn: asyncpg.Connection, group: str, n: int) -> bool:
    return await consumed(conn, group) >= n


# -- two instances in one group --------------------------------------------------------


def assignment(consumer: FoldConsumer) -> set:
    # The fold consumer joins the group in the background after start-up; its aiokafka
    # consumer exists once it has.
    kafka = consumer._consumer
    return set(kafka.assignment()) if kafka is not None else set()


async def test_two_instances_share_the_partitions_and_together_count_each_event_once(
        database_url, reporting_db, kafka_bootstrap, tokens):
    topics = await create_topics(kafka_bootstrap, partitions=4)
    try:
        settings = ReportingSettings(
            database_url=database_url, kafka_bootstrap_servers=kafka_bootstrap,
            topic_namespace=topics.namespace, topic_partitions=topics.partitions,
            fold_batch_size=20, fold_poll_ms=50)
        group = group_id(topics)
        partitions = len(source_topics(topics)) * topics.partitions
        first_wave, first_events = synthetic(members=600, seed=51)
        second_wave, second_events = synthetic(members=1000, seed=52)
        total = len(first_events) + len(second_events)
        national = tokens("national")

        first, second = create_reporting_app(settings), create_reporting_app(settings)
        async with running(first, "http://reporting-1") as client:
            async with running(second, "http://reporting-2"):
                staying = first.state.ctx.consumer
                leaving = second.state.ctx.consumer

                async def sharing() -> bool:
                    mine, theirs = assignment(staying), assignment(leaving)
                    return (bool(mine) and bool(theirs) and not mine & theirs
                            and len(mine | theirs) == partitions)

                await wait_for(sharing, "for both instances to own a share of the partitions")
                assert collector.paused(), "the fold runs with automatic garbage collection"
                leaving_partitions = {(tp.topic, tp.partition) for tp in assignment(leaving)}

                await publish(kafka_bootstrap, topics, first_events)
                await wait_for(lambda: _at_least(reporting_db, group, len(first_events)),
                               "for the first wave to be consumed")
                await assert_exact(client, national, first_wave)
                assert staying.folded > 0 and leaving.folded > 0
                # Every record applied by exactly one of them.
                assert staying.folded + leaving.folded == len(first_events)

                # A second wave; one instance leaves a quarter of the way through it.
                await publish(kafka_bootstrap, topics, second_events)
                await wait_for(
                    lambda: _at_least(reporting_db, group,
                                      len(first_events) + len(second_events) // 4),
                    "for the second wave to be under way")
            left_at = await stored_offsets(reporting_db, group)
            assert sum(left_at.values()) < total, "the second wave ended before the stop"

            async def took_over() -> bool:
                return len(assignment(staying)) == partitions

            await wait_for(took_over, "for the remaining instance to own every partition")
            await wait_for(lambda: _at_least(reporting_db, group, total),
                           "for the remaining instance to consume the rest")
            done = await stored_offsets(reporting_db, group)
            assert sum(done.values()) == total
            # The partitions the leaver owned went on from where it stopped...
            assert any(done[p] > left_at.get(p, 0) for p in leaving_partitions)
            # ...and still no record was applied twice, nor skipped.
            assert staying.folded + leaving.folded == total
            await assert_exact(client, national, first_wave)
            await assert_exact(client, national, second_wave)
        # Both stopped: the collector is as it was before their folds.
        assert not collector.paused()
    finally:
        await delete_topics(kafka_bootstrap, topics)
