"""What the notifications service consumes: ballots events (ballots, the roll, votes),
contacts events (contact flags, consent) and its own notifications events (opt-outs,
read back so the state rebuilds from the log like everything else).

One consumer group reads the three co-partitioned topics, in batches: a ballot opening
enrols a million members, and one transaction per batch is what keeps up with that. The
handlers do not rely on order between topics (see service/state.py); a new group starts
from the earliest offset, so a fresh database is rebuilt from the whole history.
"""

from __future__ import annotations

from faststream.kafka import KafkaBroker

from turnout_events.consumer import subscribe_event_batches
from turnout_events.envelope import Envelope, EventData

from ..context import NotificationsContext
from ..service.state import apply_events


def consumer_group(ctx: NotificationsContext) -> str:
    # Namespaced like the topics, so deployments (or test runs) sharing a cluster do not
    # share offsets: `turnout.notifications` in production.
    return f"{ctx.topics.namespace}.notifications"


def register_subscribers(broker: KafkaBroker, ctx: NotificationsContext) -> None:
    async def on_events(items: list[tuple[Envelope, EventData]]) -> None:
        await apply_events(ctx, items)  # unknown and foreign event types are skipped there

    topics = ctx.topics
    subscribe_event_batches(
        broker, [topics.events("ballots"), topics.events("contacts"),
                 topics.events("notifications")],
        group_id=consumer_group(ctx), handler=on_events, dead_letter_topic=topics.dead_letter)
