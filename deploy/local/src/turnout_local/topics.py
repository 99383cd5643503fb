"""Create the registry's topics on a broker (idempotent: existing topics are left alone)."""

from __future__ import annotations

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from turnout_events.topics import TopicRegistry


async def ensure_topics(bootstrap_servers: str, registry: TopicRegistry) -> list[str]:
    """Create any missing topic of the registry; returns the names it created."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [spec for spec in registry.specs() if spec.name not in existing]
        if not missing:
            return []
        response = await admin.create_topics(
            [NewTopic(s.name, s.partitions, s.replication_factor, topic_configs=s.config)
             for s in missing]
        )
        created = []
        for name, code, message in _errors(response):
            if code and code != TopicAlreadyExistsError.errno:
                raise RuntimeError(f"creating topic {name} failed: error {code} {message or ''}")
            # The broker's topic list lags a creation a moment: a topic it did not list
            # may already exist, and then this call did not create it.
            if not code:
                created.append(name)
        return created
    finally:
        await admin.close()


def _errors(response) -> list[tuple[str, int, str | None]]:
    out = []
    for entry in response.topic_errors:
        # CreateTopicsResponse v0 has (name, code); later versions add a message.
        name, code, *rest = entry
        out.append((name, code, rest[0] if rest else None))
    return out
