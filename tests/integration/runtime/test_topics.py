"""The topic registry applied to a real broker."""

from __future__ import annotations

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from tests.support.isolation import delete_topics, unique_name
from turnout_events.topics import TopicRegistry
from turnout_local.topics import ensure_topics

pytestmark = pytest.mark.integration


async def test_topics_are_created_once_co_partitioned_and_keep_everything(kafka_bootstrap):
    registry = TopicRegistry(namespace=unique_name("t"), partitions=4)
    created = await ensure_topics(kafka_bootstrap, registry)
    try:
        assert sorted(created) == sorted(s.name for s in registry.specs())
        assert await ensure_topics(kafka_bootstrap, registry) == []  # idempotent

        admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
        await admin.start()
        try:
            described = await admin.describe_topics(registry.all_event_topics())
            partitions = {t["topic"]: len(t["partitions"]) for t in described}
            assert partitions == dict.fromkeys(registry.all_event_topics(), 4)

            configs = await admin.describe_configs(
                [ConfigResource(ConfigResourceType.TOPIC, t) for t in registry.all_event_topics()])
            for response in configs:
                for resource in response.resources:
                    values = {entry[0]: entry[1] for entry in resource[4]}
                    assert values["retention.ms"] == "-1", resource[3]
        finally:
            await admin.close()
    finally:
        await delete_topics(kafka_bootstrap, registry)
