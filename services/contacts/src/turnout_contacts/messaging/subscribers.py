"""What the contacts service consumes: ballots events (vote status for the chase list)
and notifications events (opt-outs withdraw consent).

One consumer group reads both topics. They are co-partitioned by member id, so one
instance sees all of a member's events, each topic in order; the handlers do not rely on
order between the two topics (see service/vote_status.py). Decoding, dead-lettering,
retries and skipping unknown types are `subscribe_event_batches`'s; a new group starts from
the earliest offset, so a fresh database is rebuilt from the whole history.
"""

from __future__ import annotations

from faststream.kafka import KafkaBroker

from turnout_events.ballots import MemberEnrolled, Voted, VoteRetracted
from turnout_events.consumer import subscribe_event_batches
from turnout_events.envelope import Envelope, EventData
from turnout_events.notifications import OptOutReceived

from ..context import ContactsContext
from ..service.opt_out import apply_opt_out
from ..service.vote_status import apply_ballot_events


def consumer_group(ctx: ContactsContext) -> str:
    # Namespaced like the topics, so deployments (or test runs) sharing a cluster do not
    # share offsets: `turnout.contacts` in production.
    return f"{ctx.topics.namespace}.contacts"


def register_subscribers(broker: KafkaBroker, ctx: ContactsContext) -> None:
    async def on_events(items: list[tuple[Envelope, EventData]]) -> None:
        # Vote status changes come by the million when a ballot opens: one transaction
        # per batch. Opt-outs are rare and each publishes an event: one unit of work each.
        ballot_events = [(e, p) for e, p in items
                         if isinstance(p, MemberEnrolled | Voted | VoteRetracted)]
        if ballot_events:
            await apply_ballot_events(ctx, ballot_events)  # type: ignore[arg-type]
        for envelope, event in items:
            if isinstance(event, OptOutReceived):
                await apply_opt_out(ctx, envelope, event)
        # Every other known event (ballot-opened, reminder-sent, ...) is not ours to act on.

    subscribe_event_batches(
        broker, [ctx.topics.events("ballots"), ctx.topics.events("notifications")],
        group_id=consumer_group(ctx), handler=on_events,
        dead_letter_topic=ctx.topics.dead_letter)
