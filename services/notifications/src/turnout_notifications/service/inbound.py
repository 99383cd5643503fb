"""What comes back from members and the provider: replies (STOP, YES, anything) and
delivery receipts. The webhooks (api/webhooks.py) verify the provider's signature and
hand over here; the sandbox page simulates a reply through `receive_reply` too.

A reply is matched to a member through the keyed hash of the number it came from: the
latest message sent to that hash names the member and the ballot. Then, in one unit of
work with the record of the call (a replayed call finds it and changes nothing):

- reply-received with the classified intent and never the text (ballots turns "voted"
  into the member's own report, and the member drops out of every later reminder);
- a STOP also publishes opt-out-received (contacts withdraws the consent), marks the
  member opted out here at once (so no reminder goes out before the event comes back)
  and, unless they were opted out already, queues ONE confirmation text;
- an unclassified reply keeps its text, sealed, for a rep to read (GET /v1/replies).

Receipts move a sent message to delivered or failed once, with message-delivered or
message-failed; later receipts for the same message change nothing. A receipt that comes
before its send is recorded is kept until it is (service/receipts.py).

No number, reply text or message body reaches a log line, an event or an exception.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
import structlog
from sqlalchemy.dialects.postgresql import insert

from turnout_events.common import MessageChannel
from turnout_events.notifications import (
    OptOutReceived,
    ReplyIntent,
    ReplyReceived,
)
from turnout_kit.auth import Caller
from turnout_kit.problems import Problem

from ..context import NotificationsContext
from ..db.tables import (
    confirmations,
    early_receipts,
    messages,
    opt_outs,
    replies,
    roll,
    webhook_calls,
)
from ..domain.replies import classify
from ..providers.base import PermanentProviderError, TransientProviderError
from . import paging, receipts
from .erasure import is_erased, lock_member
from .receipts import error_code

log = structlog.get_logger("turnout.notifications.inbound")

STOP_CONFIRMATION = ("You have unsubscribed and will get no more text messages from us. "
                     "Thank you.")
CONFIRMATION_BACKOFF = timedelta(seconds=30)


def call_digest(signature: str, body: bytes) -> bytes:
    """What identifies a webhook call for the replay guard: the same signature over the
    same body is the same call."""
    return hashlib.sha256(signature.encode() + b"\n" + body).digest()


async def _record_call(session: Any, digest: bytes | None, endpoint: str,
                       now: datetime) -> None:
    if digest is None:
        return
    recorded = await session.scalar(
        insert(webhook_calls).values(digest=digest, endpoint=endpoint, received_at=now)
        .on_conflict_do_nothing().returning(webhook_calls.c.digest))
    if recorded is None:
        raise replayed()


async def purge_status_calls(ctx: NotificationsContext, *, batch: int = 10_000) -> int:
    """Forget the delivery-receipt calls older than the replay window (see
    `webhook_calls`), a batch per transaction, and early receipts as old (see
    `early_receipts`); returns how many went."""
    assert ctx.sessions is not None
    before = ctx.clock() - timedelta(days=ctx.settings.webhook_status_replay_days)
    purged = 0
    while True:
        async with ctx.sessions() as session, session.begin():
            old = (sa.select(webhook_calls.c.digest)
                   .where(webhook_calls.c.endpoint == "status",
                          webhook_calls.c.received_at < before)
                   .limit(batch).scalar_subquery())
            gone = len((await session.execute(
                sa.delete(webhook_calls).where(webhook_calls.c.digest.in_(old))
                .returning(webhook_calls.c.digest))).all())
        purged += gone
        if gone < batch:
            break
    # Early receipts whose send was never recorded here (an id of another sender on the
    # same provider account, or a send whose record failed): nothing will claim them.
    async with ctx.sessions() as session, session.begin():
        purged += len((await session.execute(
            sa.delete(early_receipts).where(early_receipts.c.received_at < before)
            .returning(early_receipts.c.provider_message_id))).all())
    return purged


def replayed() -> Problem:
    return Problem(409, detail="This call was received and handled before; a replay "
                               "changes nothing.")


# -- replies ------------------------------------------------------------------------------

@dataclass(frozen=True)
class ReplyOutcome:
    intent: ReplyIntent
    member_id: uuid.UUID | None  # None: the number matches no message we sent
    reply_id: uuid.UUID | None = None
    confirmation_id: uuid.UUID | None = None


async def receive_reply(ctx: NotificationsContext, *, sender_hash: bytes | None,
                        reply_to: str,
                        text: str, provider_message_id: str | None = None,
                        digest: bytes | None = None) -> ReplyOutcome:
    """Handle one reply. `sender_hash` None: not a phone number (a short code, a named
    sender), so nobody we texted. `reply_to` is where a STOP confirmation goes (the
    number the reply came from); it is kept only sealed, and only until the confirmation
    is sent."""
    now = ctx.clock()
    intent = classify(text)
    async with ctx.uow() as uow:
        session = uow.session
        await _record_call(session, digest, "inbound", now)
        latest = None if sender_hash is None else (await session.execute(
            sa.select(messages.c.message_id, messages.c.member_id, messages.c.ballot_id)
            .where(messages.c.recipient_hash == sender_hash,
                   messages.c.attempted_at.is_not(None))
            .order_by(messages.c.attempted_at.desc(), messages.c.message_id.desc())
            .limit(1))).first()
        if latest is None:
            await uow.commit()  # the call is still recorded: a replay stays a replay
            log.info("inbound.unknown_sender", intent=intent.value)
            return ReplyOutcome(intent, None)
        member_id = latest.member_id
        # One member's STOPs, replies, reminder claims and erasure one at a time: two
        # STOPs at once still confirm once, a claim sees an opt-out committed before it,
        # and a reply is either erased with the rest or sees the erasure.
        await session.execute(lock_member(member_id))
        if await session.scalar(sa.select(is_erased(member_id))):
            # Their number's hash was on its way out with a text sent as they were
            # erased: the number is nobody's now.
            await uow.commit()
            log.info("inbound.unknown_sender", intent=intent.value)
            return ReplyOutcome(intent, None)
        reply_id = uuid.uuid4()
        sealed = (ctx.sealer.seal(reply_id, text)
                  if intent is ReplyIntent.UNCLASSIFIED and text.strip() and ctx.sealer
                  else None)
        stored = await session.scalar(
            insert(replies).values(
                reply_id=reply_id, provider_message_id=provider_message_id,
                member_id=member_id, ballot_id=latest.ballot_id,
                in_reply_to=latest.message_id, intent=intent.value, text_sealed=sealed,
                received_at=now)
            .on_conflict_do_nothing().returning(replies.c.reply_id))
        if stored is None:  # the provider's id again, under another signature
            raise replayed()
        actor = f"member:{member_id}"
        uow.emit(ReplyReceived(member_id=member_id, message_id=reply_id,
                               in_reply_to=latest.message_id, ballot_id=latest.ballot_id,
                               channel=MessageChannel.SMS, intent=intent, received_at=now),
                 occurred_at=now, actor=actor)
        confirmation_id = None
        if intent is ReplyIntent.OPT_OUT:
            confirmation_id = await _opt_out(ctx, uow, member_id, reply_id, reply_to, now,
                                             actor)
        await uow.commit()
    log.info("inbound.reply", member_id=str(member_id), reply_id=str(reply_id),
             intent=intent.value, confirmation=confirmation_id is not None)
    if confirmation_id is not None:
        await send_confirmations(ctx, only=[confirmation_id])
    return ReplyOutcome(intent, member_id, reply_id, confirmation_id)


async def _opt_out(ctx: NotificationsContext, uow: Any, member_id: uuid.UUID,
                   reply_id: uuid.UUID, reply_to: str, now: datetime,
                   actor: str) -> uuid.UUID | None:
    session = uow.session
    already = await session.scalar(sa.select(opt_outs.c.member_id).where(
        opt_outs.c.member_id == member_id, opt_outs.c.channel == MessageChannel.SMS.value))
    # Every STOP is passed on (contacts may have been told consent again by a rep since),
    # but only the first of an opt-out is confirmed.
    uow.emit(OptOutReceived(member_id=member_id, channel=MessageChannel.SMS,
                            received_at=now), occurred_at=now, actor=actor)
    stmt = insert(opt_outs).values(member_id=member_id, channel=MessageChannel.SMS.value,
                                   received_at=now)
    await session.execute(stmt.on_conflict_do_update(
        index_elements=[opt_outs.c.member_id, opt_outs.c.channel],
        set_={"received_at": sa.func.greatest(opt_outs.c.received_at,
                                              stmt.excluded.received_at)}))
    if already is not None:
        return None
    confirmation_id = uuid.uuid4()
    assert ctx.sealer is not None
    await session.execute(insert(confirmations).values(
        confirmation_id=confirmation_id, member_id=member_id,
        idempotency_key=f"stop-confirmation:{reply_id}", status="queued",
        to_sealed=ctx.sealer.seal(confirmation_id, reply_to)))
    return confirmation_id


async def send_confirmations(ctx: NotificationsContext,
                             only: list[uuid.UUID] | None = None) -> int:
    """Send queued STOP confirmations whose time has come (all of them, or `only`
    these); returns how many the provider took. Run after each STOP and by the
    service's background loop, which retries those a provider outage held back."""
    assert ctx.sessions is not None and ctx.provider is not None and ctx.sealer is not None
    now = ctx.clock()
    async with ctx.sessions() as session:
        query = (sa.select(confirmations.c.confirmation_id)
                 .where(confirmations.c.status == "queued",
                        sa.or_(confirmations.c.next_attempt_at.is_(None),
                               confirmations.c.next_attempt_at <= now))
                 .order_by(confirmations.c.created_at).limit(100))
        if only is not None:
            query = query.where(confirmations.c.confirmation_id.in_(only))
        due = list((await session.execute(query)).scalars())
    sent = 0
    for confirmation_id in due:
        sent += await _send_confirmation(ctx, confirmation_id)
    return sent


async def _send_confirmation(ctx: NotificationsContext, confirmation_id: uuid.UUID) -> int:
    assert ctx.sessions is not None and ctx.provider is not None and ctx.sealer is not None
    now = ctx.clock()
    where = confirmations.c.confirmation_id == confirmation_id
    async with ctx.sessions() as session, session.begin():
        # Claimed (queued -> sending) and committed before the provider is called.
        claimed = (await session.execute(
            sa.update(confirmations).where(where, confirmations.c.status == "queued",
                                           confirmations.c.to_sealed.is_not(None))
            .values(status="sending", attempts=confirmations.c.attempts + 1,
                    provider=ctx.provider.name, updated_at=sa.func.now())
            .returning(confirmations.c.idempotency_key, confirmations.c.to_sealed,
                       confirmations.c.attempts))).first()
    if claimed is None or claimed.to_sealed is None:
        return 0
    to = ctx.sealer.open(confirmation_id, claimed.to_sealed)
    values: dict[str, Any]
    took = False
    try:
        accepted = await ctx.provider.send(idempotency_key=claimed.idempotency_key, to=to,
                                           body=STOP_CONFIRMATION)
    except TransientProviderError as exc:
        if claimed.attempts >= ctx.settings.provider_max_attempts:
            values = {"status": "failed", "error_code": error_code(exc.code),
                      "to_sealed": None}
        else:
            # Back in the queue, unless the member was erased during the call (their
            # number is gone): then there is nobody left to confirm to.
            values = {"status": sa.case((confirmations.c.to_sealed.is_(None), "cancelled"),
                                        else_="queued"),
                      "error_code": error_code(exc.code),
                      "next_attempt_at": now + CONFIRMATION_BACKOFF * 2 ** (
                          claimed.attempts - 1)}
        log.warning("inbound.confirmation_transient_error",
                    confirmation_id=str(confirmation_id), code=error_code(exc.code))
    except PermanentProviderError as exc:
        values = {"status": "failed", "error_code": error_code(exc.code), "to_sealed": None}
        log.warning("inbound.confirmation_failed", confirmation_id=str(confirmation_id),
                    code=error_code(exc.code))
    else:
        # The number is dropped the moment the provider has the message.
        took = True
        values = {"status": "sent", "provider_message_id": accepted.provider_message_id,
                  "to_sealed": None, "error_code": None, "next_attempt_at": None}
    async with ctx.sessions() as session, session.begin():
        await session.execute(sa.update(confirmations).where(where)
                              .values(**values, updated_at=sa.func.now()))
        if took:
            await receipts.apply_early_to_confirmation(
                session, accepted.provider_message_id, confirmation_id=confirmation_id)
    return 1 if took else 0


# -- delivery receipts --------------------------------------------------------------------

@dataclass(frozen=True)
class ReceiptOutcome:
    kind: str  # "message" | "confirmation" | "early" (no send recorded yet: kept)
    changed: bool  # whether this receipt settled it (and published, for a message)


async def record_receipt(ctx: NotificationsContext, *, provider_message_id: str,
                         status: str, error: str | None,
                         digest: bytes | None = None) -> ReceiptOutcome:
    """A delivery receipt. One for an id with no send recorded yet is kept, and applied
    when the send is (service/receipts.py): outcome "early"."""
    now = ctx.clock()
    async with ctx.uow() as uow:
        session = uow.session
        await _record_call(session, digest, "status", now)
        await receipts.lock_receipt(session, provider_message_id)
        message = (await session.execute(
            sa.select(messages.c.message_id, messages.c.member_id, messages.c.status)
            .where(messages.c.provider_message_id == provider_message_id)
            .limit(1).with_for_update())).first()
        if message is None:
            confirmation = (await session.execute(
                sa.select(confirmations.c.confirmation_id, confirmations.c.status)
                .where(confirmations.c.provider_message_id == provider_message_id)
                .limit(1).with_for_update())).first()
            if confirmation is None:
                await receipts.keep_early(session, provider_message_id, status, error, now)
                await uow.commit()
                log.info("inbound.receipt_early", settles=receipts.settles(status))
                return ReceiptOutcome("early", False)
            changed = await receipts.settle_confirmation(session, confirmation, status,
                                                         error)
            await uow.commit()
            return ReceiptOutcome("confirmation", changed)
        changed = await receipts.settle_message(uow, message, status, error, now, now=now)
        await uow.commit()
    if changed:
        log.info("inbound.receipt", message_id=str(message.message_id),
                 status=receipts.settles(status), code=error_code(error) if error else None)
    return ReceiptOutcome("message", changed)


# -- replies for reps -----------------------------------------------------------------------

async def list_replies(ctx: NotificationsContext, caller: Caller, ballot_id: uuid.UUID, *,
                       intent: ReplyIntent | None = None, limit: int = 100,
                       cursor: str | None = None) -> dict[str, Any]:
    """A ballot's replies, newest first, a page at a time, limited to the members the
    caller may see (by their placement on the ballot's roll: a rep's branches, an
    organiser's groups). The text is there only for unclassified replies, the ones a
    person has to read."""
    assert ctx.sessions is not None and ctx.sealer is not None
    query = (sa.select(replies, roll.c.group_code, roll.c.branch_code)
             .join(roll, sa.and_(roll.c.ballot_id == replies.c.ballot_id,
                                 roll.c.member_id == replies.c.member_id))
             .where(replies.c.ballot_id == ballot_id, caller.scope_clause(roll))
             .order_by(replies.c.received_at.desc(), replies.c.reply_id.desc())
             .limit(limit + 1))
    if intent is not None:
        query = query.where(replies.c.intent == intent.value)
    if cursor:
        received_at, after = paging.decode_cursor(cursor)
        query = query.where(sa.tuple_(replies.c.received_at, replies.c.reply_id)
                            < sa.tuple_(sa.literal(received_at), sa.literal(after)))
    async with ctx.sessions() as session:
        rows = (await session.execute(query)).all()
    page = rows[:limit]
    return {
        "items": [{"reply_id": r.reply_id, "member_id": r.member_id,
                   "ballot_id": r.ballot_id, "in_reply_to": r.in_reply_to,
                   "intent": r.intent,
                   "text": (ctx.sealer.open(r.reply_id, r.text_sealed)
                            if r.text_sealed is not None else None),
                   "group_code": r.group_code, "branch_code": r.branch_code,
                   "received_at": r.received_at} for r in page],
        "next_cursor": (paging.encode_cursor(page[-1].received_at, page[-1].reply_id)
                        if len(rows) > limit else None),
    }
