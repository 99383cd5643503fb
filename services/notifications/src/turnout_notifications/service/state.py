"""The state the dispatcher chooses recipients from, kept from other services' events so
that choosing the audience of a million-member ballot calls nobody:

- ballots (name, closing time) from ballot-opened and ballot-closed;
- the roll: enrolment (with the roll's placement, for audience filters) and vote status,
  with the rules of contacts' service/vote_status.py: enrolment only sets `enrolled`, a
  vote only `voted`, whichever comes first creates the row; voted and retracted carry an
  order key (`occurred_at`, or a vote's own `voted_at` when later), an older event
  changes nothing, and on a tie the retraction wins — here that errs towards one more
  reminder rather than a member left out, and every replica converges whatever the
  order of arrival;
- contact flags per member: the flags of the highest `member_version` seen (events
  without flags, like member-moved, are not ours);
- opt-outs (our own opt-out-received, read back from the topic, so the state rebuilds
  from the log): kept until the member themselves gives SMS consent again later
  (consent-changed granted via member_request);
- erasures (contact-updated with reason erasure, or consent-changed via erasure): the
  member's personal data here goes (service/erasure.py); their flags, all false, are
  applied like any other.

Everything is applied in one transaction per batch, with the inbox, so a redelivered
event changes nothing; within a batch each key collapses to the one row that wins, so each
statement touches a row once and the result is that of applying the events one by one.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime

import sqlalchemy as sa
import structlog
from sqlalchemy.dialects.postgresql import insert

from turnout_events.ballots import BallotClosed, BallotOpened, MemberEnrolled, Voted, VoteRetracted
from turnout_events.common import MessageChannel
from turnout_events.contacts import (
    ConsentChanged,
    ConsentSource,
    ContactChangeReason,
    ContactUpdated,
    MemberRegistered,
)
from turnout_events.envelope import Envelope, EventData
from turnout_events.inbox import claim_many
from turnout_events.notifications import OptOutReceived

from ..context import NotificationsContext
from ..db.tables import ballots, member_contact, opt_outs, roll
from .erasure import forget_members

log = structlog.get_logger("turnout.notifications.state")

CONSUMER = "notifications.state"

STATE_EVENTS = (BallotOpened, BallotClosed, MemberEnrolled, Voted, VoteRetracted,
                MemberRegistered, ContactUpdated, ConsentChanged, OptOutReceived)

Key = tuple[uuid.UUID, uuid.UUID]


async def apply_events(ctx: NotificationsContext,
                       items: Sequence[tuple[Envelope, EventData]]) -> int:
    """Apply a batch in one transaction; returns how many events were new."""
    items = [(e, p) for e, p in items if isinstance(p, STATE_EVENTS)]
    if not items:
        return 0
    async with ctx.uow() as uow:
        session = uow.session
        new = await claim_many(session, CONSUMER, [e.id for e, _ in items])
        opened: dict[uuid.UUID, dict] = {}
        closed: dict[uuid.UUID, datetime] = {}
        enrol: dict[Key, dict] = {}
        marks: dict[Key, dict] = {}
        flags: dict[uuid.UUID, dict] = {}
        opted: dict[tuple[uuid.UUID, str], datetime] = {}
        regranted: dict[uuid.UUID, datetime] = {}
        erased: dict[uuid.UUID, datetime] = {}
        for envelope, event in items:
            if envelope.id not in new:
                continue
            match event:
                case BallotOpened():
                    opened[event.ballot_id] = {
                        "ballot_id": event.ballot_id, "name": event.ballot_name,
                        "opens_at": event.opens_at, "closes_at": event.closes_at}
                case BallotClosed():
                    closed[event.ballot_id] = event.closed_at
                case MemberEnrolled():
                    p = event.placement
                    enrol[(event.ballot_id, event.member_id)] = {
                        "ballot_id": event.ballot_id, "member_id": event.member_id,
                        "enrolled": True, "group_code": p.group_code,
                        "branch_code": p.branch_code, "workplace_code": p.workplace_code}
                case Voted() | VoteRetracted():
                    _keep_winning_mark(marks, envelope, event)
                case MemberRegistered() | ContactUpdated() | ConsentChanged():
                    held = flags.get(event.member_id)
                    if held is None or held["member_version"] < event.member_version:
                        flags[event.member_id] = {
                            "member_id": event.member_id,
                            "member_version": event.member_version,
                            **event.contact.model_dump(
                                include={"has_mobile", "sms_consent", "has_email",
                                         "email_consent"})}
                    if (isinstance(event, ConsentChanged) and event.granted
                            and event.via is ConsentSource.MEMBER_REQUEST):
                        key = event.member_id
                        regranted[key] = max(regranted.get(key, envelope.occurred_at),
                                             envelope.occurred_at)
                    if _erasure(event):
                        erased[event.member_id] = min(
                            erased.get(event.member_id, envelope.occurred_at),
                            envelope.occurred_at)
                case OptOutReceived():
                    key2 = (event.member_id, event.channel.value)
                    opted[key2] = max(opted.get(key2, event.received_at), event.received_at)
        # First: it takes the members' locks, which a reply takes before its opt-out.
        forgotten = await forget_members(session, erased)
        if opened:
            await session.execute(_upsert_ballots(list(opened.values())))
        for ballot_id, closed_at in closed.items():
            await session.execute(sa.update(ballots).where(ballots.c.ballot_id == ballot_id)
                                  .values(closed_at=closed_at, updated_at=sa.func.now()))
        if enrol:
            await session.execute(_enrol(list(enrol.values())))
        if marks:
            await session.execute(_set_voted(list(marks.values())))
        if flags:
            await session.execute(_set_flags(list(flags.values())))
        if opted:
            await session.execute(_opt_out([{"member_id": m, "channel": c, "received_at": at}
                                            for (m, c), at in opted.items()]))
        for member_id, at in regranted.items():
            await session.execute(sa.delete(opt_outs).where(
                opt_outs.c.member_id == member_id,
                opt_outs.c.channel == MessageChannel.SMS.value,
                opt_outs.c.received_at < at))
        await uow.commit()
    if any(vars(forgotten).values()):
        log.info("erasure.applied", member_ids=[str(m) for m in sorted(erased)],
                 newly_erased=forgotten.members, replies=forgotten.replies,
                 number_hashes=forgotten.number_hashes,
                 confirmations=forgotten.confirmations,
                 sandbox_messages=forgotten.sandbox_messages)
    return len(new)


def _erasure(event: EventData) -> bool:
    return ((isinstance(event, ContactUpdated) and event.reason is ContactChangeReason.ERASURE)
            or (isinstance(event, ConsentChanged) and event.via is ConsentSource.ERASURE))


def _keep_winning_mark(marks: dict[Key, dict], envelope: Envelope,
                       event: Voted | VoteRetracted) -> None:
    voted = isinstance(event, Voted)
    at = max(envelope.occurred_at, event.voted_at) if isinstance(event, Voted) \
        else envelope.occurred_at
    key = (event.ballot_id, event.member_id)
    held = marks.get(key)
    if held is None or (at, not voted) > (held["voted_changed_at"], not held["voted"]):
        marks[key] = {"ballot_id": key[0], "member_id": key[1], "enrolled": False,
                      "voted": voted, "voted_changed_at": at}


def _upsert_ballots(rows: list[dict]) -> sa.Executable:
    stmt = insert(ballots).values(rows)
    return stmt.on_conflict_do_update(
        index_elements=[ballots.c.ballot_id],
        set_={"name": stmt.excluded.name, "opens_at": stmt.excluded.opens_at,
              "closes_at": stmt.excluded.closes_at, "updated_at": sa.func.now()})


def _enrol(rows: list[dict]) -> sa.Executable:
    stmt = insert(roll).values(rows)
    return stmt.on_conflict_do_update(
        index_elements=[roll.c.ballot_id, roll.c.member_id],
        set_={"enrolled": True, "group_code": stmt.excluded.group_code,
              "branch_code": stmt.excluded.branch_code,
              "workplace_code": stmt.excluded.workplace_code})


def _set_voted(rows: list[dict]) -> sa.Executable:
    stmt = insert(roll).values(rows)
    current, incoming = roll.c.voted_changed_at, stmt.excluded.voted_changed_at
    newer = sa.or_(current.is_(None), current < incoming,
                   sa.and_(current == incoming, stmt.excluded.voted.is_(False)))
    return stmt.on_conflict_do_update(
        index_elements=[roll.c.ballot_id, roll.c.member_id],
        set_={"voted": stmt.excluded.voted, "voted_changed_at": incoming}, where=newer)


def _set_flags(rows: list[dict]) -> sa.Executable:
    stmt = insert(member_contact).values(rows)
    return stmt.on_conflict_do_update(
        index_elements=[member_contact.c.member_id],
        set_={c: stmt.excluded[c] for c in ("member_version", "has_mobile", "sms_consent",
                                            "has_email", "email_consent")},
        where=member_contact.c.member_version < stmt.excluded.member_version)


def _opt_out(rows: list[dict]) -> sa.Executable:
    stmt = insert(opt_outs).values(rows)
    return stmt.on_conflict_do_update(
        index_elements=[opt_outs.c.member_id, opt_outs.c.channel],
        set_={"received_at": sa.func.greatest(opt_outs.c.received_at,
                                              stmt.excluded.received_at)})
