"""Each member's vote status per ballot, kept from the ballots service's events for the
chase list: enrolled (on the roll), voted (a mark the ballots service holds).

Events reach us at least once and, across a retraction and a later mark, not
necessarily in order (a replay, a relay that was down while another was not). So:

- every event is applied once, through the inbox, in the same transaction as its effect;
- enrolment only ever sets `enrolled`, and a vote only `voted`: whichever arrives first
  creates the row, the other fills in its half;
- voted and retracted events carry an order key (`voted_changed_at`) and an event older
  than the one already applied changes nothing. The key is the time the ballots service
  recorded the change (the envelope's `occurred_at`), or a vote's own `voted_at` when
  that is later. Not `voted_at` alone: a scrutineer's list can report, after a
  retraction, a vote cast before it, and that vote must stand.
- on a tie the retraction wins, whatever the order of arrival, so every replica
  converges; and when in doubt a rep keeps chasing rather than skipping a member.
"""

from __future__ import annotations

import uuid
from typing import TypeAlias

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert

from turnout_events.ballots import MemberEnrolled, Voted, VoteRetracted
from turnout_events.envelope import Envelope
from turnout_events.inbox import claim_many

from ..context import ContactsContext
from ..db.tables import vote_status

CONSUMER = "contacts.vote-status"

BallotMemberEvent: TypeAlias = MemberEnrolled | Voted | VoteRetracted


async def apply_ballot_events(ctx: ContactsContext,
                              items: list[tuple[Envelope, BallotMemberEvent]]) -> int:
    """Apply a batch of ballots events in one transaction; returns how many were new.

    Within the batch, each member's enrolments collapse to one row and their vote marks
    to the one that wins by the rule above, so each statement touches a row once; the
    upserts still compare with what is stored, so the result is the same as applying the
    events one by one, in any order.
    """
    async with ctx.uow() as uow:
        new = await claim_many(uow.session, CONSUMER, [e.id for e, _ in items])
        enrol: dict[tuple[uuid.UUID, uuid.UUID], dict] = {}
        marks: dict[tuple[uuid.UUID, uuid.UUID], dict] = {}
        for envelope, event in items:
            if envelope.id not in new:
                continue
            key = (event.ballot_id, event.member_id)
            if isinstance(event, MemberEnrolled):
                enrol[key] = {"ballot_id": key[0], "member_id": key[1], "enrolled": True}
                continue
            if isinstance(event, Voted):
                voted, at = True, max(envelope.occurred_at, event.voted_at)
            else:
                voted, at = False, envelope.occurred_at
            held = marks.get(key)
            if held is None or (at, not voted) > (held["voted_changed_at"], not held["voted"]):
                marks[key] = {"ballot_id": key[0], "member_id": key[1], "enrolled": False,
                              "voted": voted, "voted_changed_at": at}
        if enrol:
            await uow.session.execute(_enrol_many(list(enrol.values())))
        if marks:
            await uow.session.execute(_set_voted_many(list(marks.values())))
        await uow.commit()
    return len(new)


def _enrol_many(rows: list[dict]) -> sa.Executable:
    stmt = insert(vote_status).values(rows)
    return stmt.on_conflict_do_update(
        index_elements=[vote_status.c.ballot_id, vote_status.c.member_id],
        set_={"enrolled": True, "updated_at": sa.func.now()},
        where=vote_status.c.enrolled.is_(False))


def _set_voted_many(rows: list[dict]) -> sa.Executable:
    stmt = insert(vote_status).values(rows)
    current = vote_status.c.voted_changed_at
    incoming = stmt.excluded.voted_changed_at
    # Newer wins; on a tie a retraction (voted false) wins.
    newer = sa.or_(current.is_(None), current < incoming,
                   sa.and_(current == incoming, stmt.excluded.voted.is_(False)))
    return stmt.on_conflict_do_update(
        index_elements=[vote_status.c.ballot_id, vote_status.c.member_id],
        set_={"voted": stmt.excluded.voted, "voted_changed_at": incoming,
              "updated_at": sa.func.now()},
        where=newer)
