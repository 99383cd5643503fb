"""The fold in processes of its own (`fold_processes` 2): they share the partitions as one
consumer group, count every event once, report their lag on the service's `/metrics`,
and one killed with SIGKILL is replaced while the other carries on; stopping the
service stops them, and killing it makes them stop by themselves."""

from __future__ import annotations

import asyncio
import os
import signal

import httpx
import psutil
import pytest
from turnout_reporting.main import create_reporting_app
from turnout_reporting.messaging.consumer import group_id
from turnout_reporting.settings import ReportingSettings

from services.reporting.tests.events import publish
from services.reporting.tests.test_exactly_once import (
    _at_least,
    assert_exact,
    consumed,
    reporting_db,  # noqa: F401  (a fixture, used by name)
    service_process,
    synthetic,
    wait_for,
)
from services.reporting.tests.test_rebuild import rebuild_to_the_end
from tests.support.isolation import create_topics, delete_topics
from tests.support.services import running
from turnout_local import services

pytestmark = pytest.mark.integration


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def folded_total(metrics: str) -> int:
    return sum(int(float(line.rsplit(" ", 1)[1])) for line in metrics.splitlines()
               if line.startswith("reporting_events_folded_total "))


def lag_lines(metrics: str, group: str) -> list[int]:
    prefix = f'kafka_consumer_lag_records{{group="{group}",'
    return [int(float(line.rsplit(" ", 1)[1])) for line in metrics.splitlines()
            if line.startswith(prefix)]


async def fold_connections(db) -> set[str]:
    """The application names of the fold processes' connections to the test's database."""
    return {r[0] for r in await db.fetch(
        "SELECT application_name FROM pg_stat_activity "
        "WHERE application_name LIKE 'reporting-fold-%' AND datname = current_database()")}


async def both_folding(db) -> bool:
    return await fold_connections(db) == {"reporting-fold-0", "reporting-fold-1"}


def two_fold_processes(database_url: str, kafka_bootstrap: str, topics) -> ReportingSettings:
    return ReportingSettings(
        database_url=database_url, kafka_bootstrap_servers=kafka_bootstrap,
        topic_namespace=topics.namespace, topic_partitions=topics.partitions,
        fold_batch_size=50, fold_poll_ms=50, fold_processes=2)


async def test_two_fold_processes_count_each_event_once_and_a_killed_one_is_replaced(
        database_url, reporting_db, kafka_bootstrap, tokens):  # noqa: F811
    topics = await create_topics(kafka_bootstrap, partitions=4)
    try:
        settings = two_fold_processes(database_url, kafka_bootstrap, topics)
        group = group_id(topics)
        first_wave, first_events = synthetic(members=600, seed=61)
        second_wave, second_events = synthetic(members=1500, seed=62)
        total = len(first_events) + len(second_events)
        national = tokens("national")

        app = create_reporting_app(settings)
        async with running(app, "http://reporting") as client:
            workers = app.state.ctx.fold_processes
            assert app.state.ctx.consumer is None  # the service process only serves
            pids = workers.pids()
            assert len(pids) == 2 and all(pids), pids

            await wait_for(lambda: both_folding(reporting_db),
                           "for both fold processes to connect")
            await publish(kafka_bootstrap, topics, first_events)
            await wait_for(lambda: _at_least(reporting_db, group, len(first_events)),
                           "for the first wave to be consumed")
            await assert_exact(client, national, first_wave)

            async def no_lag() -> bool:
                metrics = (await client.get("/metrics")).text
                lags = lag_lines(metrics, group)
                return bool(lags) and sum(lags) == 0

            await wait_for(no_lag, "for /metrics to show the fold caught up")
            metrics = (await client.get("/metrics")).text
            # The records the fold processes folded, counted on the service's /metrics;
            # every metric there once (the children's beside the service's own).
            assert folded_total(metrics) == len(first_events)
            families = [line.split()[2] for line in metrics.splitlines()
                        if line.startswith("# TYPE ")]
            assert len(families) == len(set(families)), sorted(
                f for f in families if families.count(f) > 1)

            # One process killed with SIGKILL a little way into the second wave.
            await publish(kafka_bootstrap, topics, second_events)
            await wait_for(lambda: _at_least(reporting_db, group,
                                             len(first_events) + len(second_events) // 5),
                           "for the second wave to be under way")
            victim = pids[0]
            os.kill(victim, signal.SIGKILL)
            assert await consumed(reporting_db, group) < total, "killed after the end"

            async def replaced() -> bool:
                now = workers.pids()
                return now[0] is not None and now[0] != victim and now[1] == pids[1]

            await wait_for(replaced, "for the killed fold process to be replaced")
            await wait_for(lambda: _at_least(reporting_db, group, total),
                           "for the fold to consume everything")
            assert await consumed(reporting_db, group) == total
            # The killed process's count survives it (a file of its own); only a batch it
            # committed and was killed before counting can be missing, and a batch cut
            # short before its commit is folded again and counted twice.
            counted = folded_total((await client.get("/metrics")).text)
            assert counted >= total - settings.fold_batch_size, (counted, total)
            await assert_exact(client, national, first_wave)
            await assert_exact(client, national, second_wave)
            running_pids = [pid for pid in workers.pids() if pid is not None]
        # Stopping the service stops its fold processes.
        assert not any(alive(pid) for pid in running_pids)
    finally:
        await delete_topics(kafka_bootstrap, topics)


async def test_a_rebuild_beside_fold_processes_swaps_in_and_they_go_on_from_it(
        database_url, reporting_db, kafka_bootstrap, tokens):  # noqa: F811
    """The rebuild runs in the service process and the live fold in others: at the swap
    they find the offsets they folded from replaced, go back to the new tables' offsets
    and go on from there, counting events that arrive after the swap exactly once."""
    topics = await create_topics(kafka_bootstrap, partitions=4)
    try:
        settings = two_fold_processes(database_url, kafka_bootstrap, topics)
        group = group_id(topics)
        before, before_events = synthetic(members=500, seed=63)
        during, during_events = synthetic(members=800, seed=64)
        after, after_events = synthetic(members=300, seed=65)
        national = tokens("national")

        app = create_reporting_app(settings)
        async with running(app, "http://reporting") as client:
            await publish(kafka_bootstrap, topics, before_events)
            await wait_for(lambda: _at_least(reporting_db, group, len(before_events)),
                           "for the first ballot to be consumed")
            rebuilding = asyncio.create_task(rebuild_to_the_end(client, tokens("admin")))
            await publish(kafka_bootstrap, topics, during_events)  # while it rebuilds
            status, _ = await rebuilding
            assert status["state"] == "done", status
            await publish(kafka_bootstrap, topics, after_events)
            total = len(before_events) + len(during_events) + len(after_events)
            await wait_for(lambda: _at_least(reporting_db, group, total),
                           "for the fold processes to consume everything")
            assert await consumed(reporting_db, group) == total
            for ballot in (before, during, after):
                await assert_exact(client, national, ballot)
            assert all(workers_alive for workers_alive in app.state.ctx.fold_processes.pids())
    finally:
        await delete_topics(kafka_bootstrap, topics)


async def test_the_service_process_as_the_local_runtime_runs_it_folds_in_two_children(
        tmp_path, monkeypatch, database_url, reporting_db, topics,  # noqa: F811
        kafka_bootstrap, tokens):
    """`python -m turnout_reporting.main` with REPORTING_FOLD_PROCESSES=2: two child
    processes fold (their records counted on the service's /metrics), and stopping the
    service leaves none behind."""
    ballot, envelopes = synthetic(members=400, seed=66)
    spec, env = service_process(monkeypatch, tmp_path, database_url, kafka_bootstrap, topics,
                                REPORTING_FOLD_BATCH_SIZE="50", REPORTING_FOLD_POLL_MS="50",
                                REPORTING_FOLD_PROCESSES="2")
    group = group_id(topics)
    services.start(spec, env)
    try:
        services.wait_ready(spec, timeout=60)
        service = psutil.Process(int(services.pid_file(spec).read_text()))
        await publish(kafka_bootstrap, topics, envelopes)
        await wait_for(lambda: _at_least(reporting_db, group, len(envelopes)),
                       "for the service to consume the ballot")
        folders = await fold_connections(reporting_db)
        children = {p.pid for p in service.children(recursive=True)}
        async with httpx.AsyncClient(base_url=spec.url) as client:
            await assert_exact(client, tokens("national"), ballot)
            metrics = (await client.get("/metrics")).text
        assert folded_total(metrics) == len(envelopes)
        assert lag_lines(metrics, group)  # the fold's lag, measured by the service
        # Each child folded, over connections of its own.
        assert folders == {"reporting-fold-0", "reporting-fold-1"}
    finally:
        services.stop(spec)

    async def all_gone() -> bool:
        return not any(alive(pid) for pid in children)

    # The children stop on the same SIGTERM as the service, and may outlive it by moments.
    await wait_for(all_gone, "for the service's child processes to exit", timeout=30)


async def test_fold_processes_stop_by_themselves_when_the_service_is_killed(
        tmp_path, monkeypatch, database_url, reporting_db, topics,  # noqa: F811
        kafka_bootstrap):
    """A service killed with SIGKILL cannot stop its fold processes: they notice they are
    orphaned and stop on their own, so no fold goes on unsupervised (and a restarted
    service does not find its partitions held by strays)."""
    spec, env = service_process(monkeypatch, tmp_path, database_url, kafka_bootstrap, topics,
                                REPORTING_FOLD_PROCESSES="2")
    services.start(spec, env)
    try:
        services.wait_ready(spec, timeout=60)
        service = psutil.Process(int(services.pid_file(spec).read_text()))

        await wait_for(lambda: both_folding(reporting_db),
                       "for both fold processes to connect")
        children = [p.pid for p in service.children(recursive=True)]
        assert len(children) >= 2, children
        service.kill()

        async def all_gone() -> bool:
            return not any(alive(pid) for pid in [service.pid, *children])

        await wait_for(all_gone, "for the orphaned fold processes to stop", timeout=30)
    finally:
        services.stop(spec)
