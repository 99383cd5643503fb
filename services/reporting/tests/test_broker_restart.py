"""The fold and the broker's comings and goings: it outlives a broker restart, it picks up
topics that did not exist yet when it joined its group, and its lag shows on /metrics."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest
from turnout_reporting.main import create_reporting_app
from turnout_reporting.messaging.consumer import group_id, source_topics
from turnout_reporting.settings import ReportingSettings

from services.reporting.tests.events import publish
from services.reporting.tests.test_exactly_once import (
    _at_least,
    assert_exact,
    assignment,
    synthetic,
    wait_for,
)
from tests.support.events import eventually
from tests.support.isolation import create_topics, delete_topics, unique_name
from tests.support.services import running
from turnout_events.database_url import asyncpg_dsn
from turnout_events.topics import TopicRegistry
from turnout_local.topics import ensure_topics

pytestmark = pytest.mark.integration


async def test_the_fold_goes_on_after_the_broker_restarts(database_url, kafka_bootstrap,
                                                         tokens, infra):
    # Needs the local runtime's own broker (stopping a shared or containerised broker is
    # not ours to do); CI runs on that runtime, so it runs there.
    if "kafka:local-runtime" not in infra.how:
        pytest.skip("restarting the broker needs the local runtime's broker")
    from turnout_local.kafka import LocalKafka

    topics = await create_topics(kafka_bootstrap, partitions=3)
    conn = await asyncpg.connect(asyncpg_dsn(database_url))
    broker = LocalKafka()
    try:
        settings = ReportingSettings(
            database_url=database_url, kafka_bootstrap_servers=kafka_bootstrap,
            topic_namespace=topics.namespace, topic_partitions=topics.partitions,
            fold_batch_size=50, fold_poll_ms=50)
        group = group_id(topics)
        before, before_events = synthetic(members=150, seed=71)
        after, after_events = synthetic(members=250, seed=72)
        national = tokens("national")
        app = create_reporting_app(settings)
        async with running(app, "http://reporting") as client:
            await publish(kafka_bootstrap, topics, before_events)
            await wait_for(lambda: _at_least(conn, group, len(before_events)),
                           "for the events published before the restart to be folded")
            await assert_exact(client, national, before)

            await asyncio.to_thread(broker.stop)
            await asyncio.to_thread(broker.start)

            await publish(kafka_bootstrap, topics, after_events)
            await wait_for(lambda: _at_least(conn, group,
                                             len(before_events) + len(after_events)),
                           "for the events published after the restart to be folded",
                           timeout=120)
            await assert_exact(client, national, before)
            await assert_exact(client, national, after)
            assert app.state.ctx.consumer.folded == len(before_events) + len(after_events)
    finally:
        await conn.close()
        await delete_topics(kafka_bootstrap, topics)


async def test_a_fold_that_joined_before_its_topics_existed_folds_them_once_they_do(
        database_url, kafka_bootstrap, tokens):
    # As after a broker restart that has not loaded the topics yet when the fold rejoins,
    # or a service started before its topics were made: the group hands out no
    # partitions. Kafka's clients look again only when their metadata is refreshed (every
    # five minutes by default: this waited 295 s), and a fold with nothing assigned folds
    # nothing all that time.
    topics = TopicRegistry(namespace=unique_name("t"), partitions=3)
    settings = ReportingSettings(
        database_url=database_url, kafka_bootstrap_servers=kafka_bootstrap,
        topic_namespace=topics.namespace, topic_partitions=topics.partitions,
        fold_batch_size=50, fold_poll_ms=50)
    conn = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        ballot, events = synthetic(members=100, seed=73)
        app = create_reporting_app(settings)
        async with running(app, "http://reporting") as client:
            consumer = app.state.ctx.consumer
            # Every assignment, an empty one too, positions the folder (a new generation).
            await eventually(lambda: consumer.folder.generation > 0, timeout=60,
                             what="the fold to join its group, with nothing to read yet")
            assert not assignment(consumer)

            await ensure_topics(kafka_bootstrap, topics)
            await publish(kafka_bootstrap, topics, events)
            await wait_for(lambda: _at_least(conn, group_id(topics), len(events)),
                           "for the fold to find the new topics and fold them", timeout=60)
            await assert_exact(client, tokens("national"), ballot)
    finally:
        await conn.close()
        await delete_topics(kafka_bootstrap, topics)


async def test_metrics_show_the_records_the_fold_has_yet_to_fold(reporting_app, topics,
                                                                 kafka_bootstrap):
    """`kafka_consumer_lag_records` for the fold's group: records published but not yet
    folded, per topic, 0 once it has caught up."""
    app = reporting_app.app
    consumer = app.state.ctx.consumer
    group = group_id(topics)
    _, events = synthetic(members=40, seed=74)

    def lags() -> dict[str, float]:
        from prometheus_client import REGISTRY
        return {s.labels["topic"]: s.value
                for metric in REGISTRY.collect() if metric.name == "kafka_consumer_lag_records"
                for s in metric.samples if s.labels["group"] == group}

    await eventually(lambda: assignment(consumer), what="the fold to own its partitions")
    await consumer.pause()  # no batch folds until resumed; fetching goes on
    try:
        await publish(kafka_bootstrap, topics, events)
        await eventually(lambda: sum(lags().values()) > 0, timeout=30,
                         what="the gauge to show records waiting to be folded")
    finally:
        consumer.resume()
    await eventually(lambda: consumer.folded == len(events), timeout=60,
                     what="the fold to catch up")
    await eventually(lambda: lags() and not any(lags().values()), timeout=30,
                     what="the gauge to fall to 0 once folded")
    assert set(lags()) == set(source_topics(topics))
    scraped = await reporting_app.get("/metrics")
    assert f'kafka_consumer_lag_records{{group="{group}"' in scraped.text
