"""Consumer lag, for Prometheus: per consumer group and topic, the records on the broker
that the group has not consumed yet — the log end as of the consumer's last fetch minus
the consumer's position. Computed when `/metrics` is scraped, from what the consumers
already know: nothing is asked of the broker.

    CONSUMER_LAG.add(faststream_lag(broker))   # a service's FastStream subscribers
    CONSUMER_LAG.add(source)                   # anything yielding (group, topic, records)

A lag that grows is the first sign of a consumer that fell behind or stopped (the
dashboard's numbers going stale, votes not reaching reporting); `kafka_consumer_lag_records`
is what to alert on.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from prometheus_client import REGISTRY
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

# (group, topic, records not consumed yet) for each partition a consumer owns.
LagSource = Callable[[], Iterable[tuple[str, str, int]]]


class ConsumerLag(Collector):
    def __init__(self) -> None:
        self._sources: list[LagSource] = []

    def add(self, source: LagSource) -> None:
        self._sources.append(source)

    def remove(self, source: LagSource) -> None:
        if source in self._sources:
            self._sources.remove(source)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        gauge = GaugeMetricFamily(
            "kafka_consumer_lag_records",
            "Records on the broker that the consumer group has not consumed yet, as of "
            "its last fetch", labels=["group", "topic"])
        totals: dict[tuple[str, str], int] = defaultdict(int)
        for source in list(self._sources):
            try:
                for group, topic, records in source():
                    totals[(group, topic)] += records
            except Exception:  # a consumer starting or stopping under us: next scrape
                continue
        for (group, topic), records in sorted(totals.items()):
            gauge.add_metric([group, topic], records)
        yield gauge


CONSUMER_LAG = ConsumerLag()
REGISTRY.register(CONSUMER_LAG)


def _position(consumer: AIOKafkaConsumer, tp: TopicPartition) -> int | None:
    """The consumer's position on `tp` if it has one, without awaiting
    (`AIOKafkaConsumer.position` is a coroutine that may fetch it: a scrape must not)."""
    try:
        state = consumer._subscription.subscription.assignment.state_value(tp)
    except AttributeError:  # not subscribed or not assigned (a rebalance)
        return None
    if state is None or not state.has_valid_position:
        return None
    return int(state.position)


def aiokafka_lag(consumer: AIOKafkaConsumer, group: str,
                 position: Callable[[TopicPartition], int | None] | None = None
                 ) -> LagSource:
    """The lag of a consumer's assigned partitions; `position` says where the group
    stands on one (default: the consumer's own position)."""
    position_of = position or (lambda tp: _position(consumer, tp))

    def lag() -> Iterator[tuple[str, str, int]]:
        for tp in consumer.assignment():
            end = consumer.highwater(tp)
            at = position_of(tp)
            if end is not None and at is not None:
                yield group, tp.topic, max(0, end - at)
    return lag


def faststream_lag(broker: Any) -> LagSource:
    """Every subscriber of a FastStream `KafkaBroker` (each has its aiokafka consumer
    once started)."""
    def lag() -> Iterator[tuple[str, str, int]]:
        for subscriber in broker.subscribers:
            consumer = getattr(subscriber, "consumer", None)
            if consumer is not None:
                yield from aiokafka_lag(consumer, getattr(subscriber, "group_id", None) or "")()
    return lag
