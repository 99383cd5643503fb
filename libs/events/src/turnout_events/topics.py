"""The topic registry: which topic each service's stream lives on, how many partitions
every topic has, and how they are configured.

Every topic has the same partition count so that one member's events land on the same
partition number in every topic (they are all keyed by member id with the same
partitioner). Tests isolate themselves by using their own namespace.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

# How often every client refreshes what it knows of the cluster. Kafka's default, five
# minutes, is also how long a consumer that joined before its topics existed (or while a
# restarted broker was still loading them) goes on with no partitions and folds nothing:
# measured at 295 s for reporting's fold. A metadata request is small; every 10 s is
# nothing to a broker.
METADATA_MAX_AGE_MS = 10_000

SOURCES = ("contacts", "ballots", "notifications")

DEFAULT_PARTITIONS = 6

# Event topics keep everything: projections are rebuilt by replaying them from the start.
EVENT_TOPIC_CONFIG = {
    "retention.ms": "-1",
    "retention.bytes": "-1",
    "cleanup.policy": "delete",
    "min.insync.replicas": "1",
}
# Dead letters are kept for a month: long enough for someone to look, fix and replay.
DEAD_LETTER_TOPIC_CONFIG = {"retention.ms": str(30 * 24 * 3600 * 1000), "cleanup.policy": "delete"}


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    replication_factor: int
    config: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class TopicRegistry:
    namespace: str = "turnout"
    partitions: int = DEFAULT_PARTITIONS
    replication_factor: int = 1

    @classmethod
    def from_env(cls) -> TopicRegistry:
        return cls(
            namespace=os.environ.get("TURNOUT_TOPIC_NAMESPACE", "turnout"),
            partitions=int(os.environ.get("TURNOUT_TOPIC_PARTITIONS", DEFAULT_PARTITIONS)),
            replication_factor=int(os.environ.get("TURNOUT_TOPIC_REPLICATION_FACTOR", 1)),
        )

    def events(self, source: str) -> str:
        """The topic carrying one service's event stream, e.g. `turnout.ballots.events`."""
        if source not in SOURCES:
            raise KeyError(f"no event topic for source {source!r}; known: {', '.join(SOURCES)}")
        return f"{self.namespace}.{source}.events"

    @property
    def dead_letter(self) -> str:
        return f"{self.namespace}.dead-letter"

    def all_event_topics(self) -> list[str]:
        return [self.events(s) for s in SOURCES]

    def specs(self) -> list[TopicSpec]:
        rf = self.replication_factor
        event_config = dict(EVENT_TOPIC_CONFIG)
        event_config["min.insync.replicas"] = str(min(2, rf))
        return [
            *(TopicSpec(t, self.partitions, rf, event_config) for t in self.all_event_topics()),
            TopicSpec(self.dead_letter, self.partitions, rf, dict(DEAD_LETTER_TOPIC_CONFIG)),
        ]
