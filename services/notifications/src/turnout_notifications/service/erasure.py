"""A member's erasure, as contacts announces it (contact-updated with reason `erasure`, or
consent-changed via `erasure`): what this service holds that could identify them or that
they wrote goes; the pseudonymous record that counts are made of stays.

Removed, in the transaction that applies the event (service/state.py, with the inbox):
- the sealed text of every reply they sent, and the provider's id of each reply (a key
  into the provider's log, which holds the number it came from); the reply row stays with
  its intent and time, since GET /v1/replies and the counts read those;
- the keyed hash of their number on every message sent to them, so a later SMS from that
  number is tied to nobody;
- the sealed number of a STOP confirmation not sent yet; a queued one is cancelled;
- what the sandbox provider keeps of their texts (a masked number and the body, which
  greets them by name): the sandbox stands for the provider, and its table is here.

Kept: member id, ballot, campaign, message statuses, skip reasons, times, the roll's
placement, contact flags, opt-outs, and the provider's id of each reminder (delivery
receipts may still come, and delivered/failed are counts). The member is also recorded
in `erasures`, for good, like contacts' own `erased_at`: contacts never hands out an
erased member's number again, so no reminder can reach them (the contact flags, all
false since the erasure, already leave them out of every audience), and the record is
what keeps a text or a reply in flight at the moment of erasure from tying the number
back to them.

The member's advisory lock (the one reminder claims and replies take) is held while the
data goes: a reply being stored or a reminder being recorded for them either commits
before, and is erased with the rest, or waits and then sees the record.

Idempotent: a second erasure of the same member finds nothing left to remove.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert

from ..db.tables import confirmations, erasures, messages, replies, sandbox_messages


@dataclass(frozen=True)
class Forgotten:
    """How much went, for the log line (counts, never values). `members`: those not
    erased here before (contacts' contact-updated and consent-changed of one erasure
    may come in two batches; the second finds nothing left)."""
    members: int
    replies: int
    number_hashes: int
    confirmations: int
    sandbox_messages: int


def lock_member(member_id: uuid.UUID) -> sa.Executable:
    """The member's transaction-scoped lock: their erasure, reminder claims, the record
    of a text sent to them and their replies, one at a time."""
    return sa.select(sa.func.pg_advisory_xact_lock(sa.func.hashtext(str(member_id))))


def is_erased(member_id: uuid.UUID) -> sa.ColumnElement[bool]:
    return sa.exists().where(erasures.c.member_id == member_id)


async def forget_members(session: Any, erased: Mapping[uuid.UUID, datetime]) -> Forgotten:
    """Erase these members' personal data (member id -> when contacts erased them) in the
    caller's transaction. Call it before the transaction writes anything else a reply
    might also write (opt-outs): the member locks come first, or the two could deadlock."""
    ids = sorted(erased)
    if not ids:
        return Forgotten(0, 0, 0, 0, 0)
    for member_id in ids:  # in one order, so two erasures cannot wait on each other
        await session.execute(lock_member(member_id))
    newly = len((await session.execute(
        insert(erasures).values([{"member_id": m, "erased_at": erased[m]} for m in ids])
        .on_conflict_do_nothing(index_elements=[erasures.c.member_id])
        .returning(erasures.c.member_id))).all())

    replied = (await session.execute(
        sa.update(replies)
        .where(replies.c.member_id.in_(ids),
               sa.or_(replies.c.text_sealed.is_not(None),
                      replies.c.provider_message_id.is_not(None)))
        .values(text_sealed=None, provider_message_id=None))).rowcount

    # A message carries a hash only once sent, and a sent message has been attempted:
    # `attempted_at IS NOT NULL` lets the member's partial index find them.
    mine = sa.and_(messages.c.member_id.in_(ids), messages.c.attempted_at.is_not(None))
    sandbox = (await session.execute(
        sa.delete(sandbox_messages).where(sandbox_messages.c.idempotency_key.in_(
            sa.union(sa.select(messages.c.idempotency_key).where(mine),
                     sa.select(confirmations.c.idempotency_key)
                     .where(confirmations.c.member_id.in_(ids))))))).rowcount
    hashes = (await session.execute(
        sa.update(messages).where(mine, messages.c.recipient_hash.is_not(None))
        .values(recipient_hash=None, updated_at=sa.func.now()))).rowcount

    # One in flight (`sending`) keeps its status: the provider call already has the
    # number, and what it answers is recorded as usual, without a number to keep.
    held = (await session.execute(
        sa.update(confirmations)
        .where(confirmations.c.member_id.in_(ids),
               sa.or_(confirmations.c.to_sealed.is_not(None),
                      confirmations.c.status == "queued"))
        .values(to_sealed=None,
                status=sa.case((confirmations.c.status == "queued", "cancelled"),
                               else_=confirmations.c.status),
                next_attempt_at=None, updated_at=sa.func.now()))).rowcount

    return Forgotten(newly, replied, hashes, held, sandbox)
