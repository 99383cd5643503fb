"""Delivery receipts: a sent message (or STOP confirmation) settled from the provider's
word, once, whenever that word comes — including before the send it reports on is
recorded here.

The dispatcher records a send (status `sent` and the provider's message id) once the
provider has answered it, and the provider may call back with the receipt at about the
same moment: the two race. A receipt that finds nothing with its id is kept
(`early_receipts`) and applied when the send is recorded, in that transaction. Both
sides first take a transaction-level advisory lock on the provider's message id, so
one of them always sees what the other committed: the receipt finds the send, or the
send finds the receipt.
"""

from __future__ import annotations

import re
import uuid
from datetime import datetime
from typing import Any, NamedTuple

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert

from turnout_events.common import MessageChannel
from turnout_events.notifications import MessageDelivered, MessageFailed

from ..db.tables import confirmations, early_receipts, messages

# Delivery statuses that settle a message; the others (queued, sent, read, ...) say
# nothing we record.
DELIVERED = frozenset({"delivered"})
FAILED = frozenset({"failed", "undelivered"})
# Provider error codes that mean the number will never take a text: the event says so,
# so contacts may clear has_mobile. (Twilio: unknown number, landline or unreachable
# carrier, invalid number, not a mobile, blocked by the member.)
PERMANENT_CODES = frozenset({"30005", "30006", "21211", "21614", "21610", "30004"})
# Seed of the advisory-lock keys taken per provider message id (any fixed number: it
# keeps these keys apart from other advisory locks on the same hashes).
_LOCK_SEED = 0x7265636569707473  # "receipts"


def error_code(code: str) -> str:
    """A provider's error code made into one of ours (events take codes, not text)."""
    cleaned = re.sub(r"[^A-Za-z0-9_.-]", "_", code).strip("_.-")[:40]
    return cleaned or "provider_error"


def settles(status: str) -> str | None:
    """`delivered`, `failed`, or None for a status that settles nothing."""
    status = status.strip().lower()
    return "delivered" if status in DELIVERED else "failed" if status in FAILED else None


async def lock_receipt(session: Any, provider_message_id: str) -> None:
    """Serialise the receipt and the record of the send for one provider message id
    (held until the transaction ends)."""
    await session.execute(sa.select(sa.func.pg_advisory_xact_lock(
        sa.func.hashtextextended(provider_message_id, _LOCK_SEED))))


async def settle_message(uow: Any, message: Any, status: str, error: str | None,
                         at: datetime, *, now: datetime) -> bool:
    """Settle a `sent` message (`message_id`, `member_id`, `status`) from a receipt
    received `at`, recorded `now`; False, and nothing done, for a status that settles
    nothing or a message that is not `sent` (settled already: a second receipt, or a
    "failed" after "delivered")."""
    outcome = settles(status)
    if outcome is None or message.status != "sent":
        return False
    code = error_code(error) if error else None
    await uow.session.execute(sa.update(messages).where(
        messages.c.message_id == message.message_id).values(
        status=outcome, error_code=code if outcome == "failed" else None,
        updated_at=sa.func.now()))
    if outcome == "delivered":
        uow.emit(MessageDelivered(member_id=message.member_id, message_id=message.message_id,
                                  channel=MessageChannel.SMS, delivered_at=at),
                 occurred_at=now)
    else:
        uow.emit(MessageFailed(member_id=message.member_id, message_id=message.message_id,
                               channel=MessageChannel.SMS,
                               error_code=code or status.strip().lower(),
                               permanent=(error or "") in PERMANENT_CODES, failed_at=at),
                 occurred_at=now)
    return True


async def settle_confirmation(session: Any, confirmation: Any, status: str,
                              error: str | None) -> bool:
    """A STOP confirmation's receipt is kept for the record only: it is not a reminder,
    and no event describes it."""
    outcome = settles(status)
    if outcome is None or confirmation.status != "sent":
        return False
    await session.execute(sa.update(confirmations).where(
        confirmations.c.confirmation_id == confirmation.confirmation_id).values(
        status=outcome, error_code=error_code(error) if error and outcome == "failed"
        else None, updated_at=sa.func.now()))
    return True


async def keep_early(session: Any, provider_message_id: str, status: str,
                     error: str | None, now: datetime) -> None:
    """A receipt for an id with no send recorded yet: kept if it settles anything (the
    first such receipt wins, as it would have on the message)."""
    if settles(status) is None:
        return
    await session.execute(insert(early_receipts).values(
        provider_message_id=provider_message_id, status=status, error=error,
        received_at=now).on_conflict_do_nothing())


async def _take_early(session: Any, provider_message_id: str) -> Any:
    await lock_receipt(session, provider_message_id)
    return (await session.execute(
        sa.delete(early_receipts)
        .where(early_receipts.c.provider_message_id == provider_message_id)
        .returning(early_receipts.c.status, early_receipts.c.error,
                   early_receipts.c.received_at))).first()


class _JustSent(NamedTuple):
    """A message or confirmation the caller has just recorded as sent."""

    message_id: uuid.UUID | None = None
    member_id: uuid.UUID | None = None
    confirmation_id: uuid.UUID | None = None
    status: str = "sent"


async def apply_early_to_message(uow: Any, provider_message_id: str, *,
                                 message_id: uuid.UUID, member_id: uuid.UUID,
                                 now: datetime) -> bool:
    """Call in the transaction that records the send of a message (now `sent`)."""
    early = await _take_early(uow.session, provider_message_id)
    if early is None:
        return False
    return await settle_message(uow, _JustSent(message_id, member_id), early.status,
                                early.error, early.received_at, now=now)


async def apply_early_to_confirmation(session: Any, provider_message_id: str, *,
                                      confirmation_id: uuid.UUID) -> bool:
    """Call in the transaction that records the send of a STOP confirmation."""
    early = await _take_early(session, provider_message_id)
    if early is None:
        return False
    return await settle_confirmation(session, _JustSent(confirmation_id=confirmation_id),
                                     early.status, early.error)
