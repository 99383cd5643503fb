"""What the ballots service consumes:

- contacts' member-registered and member-moved: the member replica the roll is
  snapshotted from (service/replica.py);
- contacts' member-contacted with outcome "voted" and a ballot: a voted mark from the
  conversation;
- notifications' reply-received with intent "voted" and a ballot: the member's own
  report by SMS.

Events come in batches: the replica's placements are applied in one transaction per
batch (a roster import registers tens of thousands of members at once, and the roll is
snapshotted from this replica); each vote report in its own unit of work. Every effect
is recorded with its inbox claim, so a redelivery changes nothing. A vote event that
cannot be applied (the ballot is not open, the member is not on its roll) is recorded as
handled and logged: retrying would not change the answer.
"""

from __future__ import annotations

import uuid
from datetime import datetime

import structlog
from faststream.kafka import KafkaBroker

from turnout_events.ballots import VoteSource
from turnout_events.consumer import subscribe_event_batches
from turnout_events.contacts import (
    ConversationOutcome,
    MemberContacted,
    MemberMoved,
    MemberRegistered,
)
from turnout_events.envelope import Envelope, EventData
from turnout_events.inbox import claim, claim_many
from turnout_events.notifications import ReplyIntent, ReplyReceived
from turnout_kit.problems import Problem

from ..context import BallotsContext
from ..service.marks import record_mark
from ..service.replica import apply_placements

log = structlog.get_logger("turnout.ballots.consumer")

REPLICA = "ballots.member-replica"
VOTE_REPORTS = "ballots.vote-reports"


def register_subscribers(broker: KafkaBroker, ctx: BallotsContext) -> None:
    topics = ctx.topics

    async def on_events(items: list[tuple[Envelope, EventData]]) -> None:
        placements = [(e, p) for e, p in items if isinstance(p, MemberRegistered | MemberMoved)]
        if placements:
            await _apply_placements(ctx, placements)  # type: ignore[arg-type]
        for envelope, payload in items:
            await on_vote_report(envelope, payload)

    async def on_vote_report(envelope: Envelope, payload: EventData) -> None:
        match payload:
            case MemberContacted(outcome=ConversationOutcome.VOTED, ballot_id=uuid.UUID()):
                await _apply_vote(ctx, envelope, payload.ballot_id, payload.member_id,
                                  VoteSource.CONVERSATION, payload.contacted_at,
                                  payload.conversation_id)
            case ReplyReceived(intent=ReplyIntent.VOTED, ballot_id=uuid.UUID()):
                await _apply_vote(ctx, envelope, payload.ballot_id, payload.member_id,
                                  VoteSource.SMS_REPLY, payload.received_at)
            case _:
                return  # not ours to act on

    # The group is named after the namespace as well, so that two deployments (or two
    # tests) sharing a broker never share committed offsets.
    subscribe_event_batches(broker, [topics.events("contacts"), topics.events("notifications")],
                            group_id=f"{topics.namespace}.ballots", handler=on_events,
                            dead_letter_topic=topics.dead_letter)


async def _apply_placements(ctx: BallotsContext,
                            items: list[tuple[Envelope, MemberRegistered | MemberMoved]]) -> None:
    async with ctx.uow() as uow:
        new = await claim_many(uow.session, REPLICA, [e.id for e, _ in items])
        await apply_placements(uow.session, [(p.member_id, p.member_version, p.placement)
                                             for e, p in items if e.id in new])
        await uow.commit()


async def _apply_vote(ctx: BallotsContext, envelope: Envelope, ballot_id: uuid.UUID | None,
                      member_id: uuid.UUID, source: VoteSource, voted_at: datetime,
                      conversation_id: uuid.UUID | None = None) -> None:
    assert ballot_id is not None
    async with ctx.uow(envelope.actor, causation_id=envelope.id) as uow:
        if not await claim(uow.session, VOTE_REPORTS, envelope.id):
            return
        try:
            await record_mark(uow, None, ballot_id, member_id, source=source,
                              actor=envelope.actor, voted_at=voted_at,
                              conversation_id=conversation_id)
        except Problem as refused:
            # Ids and the reason only: the problem's detail names no person.
            log.info("vote_report_not_applied", event_id=str(envelope.id),
                     event_type=envelope.type, ballot_id=str(ballot_id),
                     status=refused.status, reason=refused.detail)
        await uow.commit()
