"""The consumer-lag gauge (`kafka_consumer_lag_records`): records on the broker that a
group has not consumed yet, per topic, as `/metrics` shows them."""

from __future__ import annotations

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from prometheus_client import REGISTRY

from turnout_events.lag import CONSUMER_LAG, aiokafka_lag

pytestmark = pytest.mark.integration


def lag_of(group: str, topic: str) -> float | None:
    return REGISTRY.get_sample_value("kafka_consumer_lag_records",
                                     {"group": group, "topic": topic})


async def test_the_lag_is_what_the_group_has_not_consumed_yet(topics, kafka_bootstrap):
    topic = topics.events("ballots")
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    await producer.start()
    try:
        for _ in range(10):
            await producer.send_and_wait(topic, b"{}", partition=0)
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(bootstrap_servers=kafka_bootstrap, group_id=None,
                                enable_auto_commit=False, auto_offset_reset="earliest")
    await consumer.start()
    source = aiokafka_lag(consumer, "lag-test")
    CONSUMER_LAG.add(source)
    try:
        consumer.assign([TopicPartition(topic, 0)])
        # Nothing fetched yet: the log end is not known, so no figure rather than a wrong one.
        assert lag_of("lag-test", topic) is None
        read = 0
        while read < 4:
            batch = await consumer.getmany(TopicPartition(topic, 0), timeout_ms=5000,
                                           max_records=4 - read)
            read += sum(len(records) for records in batch.values())
        assert lag_of("lag-test", topic) == 6
        while read < 10:
            batch = await consumer.getmany(timeout_ms=5000)
            read += sum(len(records) for records in batch.values())
        assert lag_of("lag-test", topic) == 0
    finally:
        CONSUMER_LAG.remove(source)
        await consumer.stop()
    assert lag_of("lag-test", topic) is None
