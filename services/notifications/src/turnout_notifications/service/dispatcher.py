"""The dispatcher: turns due campaign slots into frozen audiences, and audiences into
texts, one round at a time.

A round (`run_once`) has three steps, each callable on its own (tests put an event or a
crash between them):

0. `rescue_stuck`: messages left in `sending` for longer than the provider could take —
   the process died between claiming a message and recording the provider's answer —
   are resolved without sending anything twice: a provider that can be asked
   (`providers.base.Lookup`, the sandbox) says whether it took the message, which is
   then recorded as sent, or put back in the queue if it never arrived; with a provider
   that cannot be asked the message is failed as `unknown_outcome` and never resent (it
   still counts against the member's daily cap: they may have it).
1. `select_due`: every pending slot of an active campaign whose time has come is
   selected once (`audience.select_slot`: one SQL statement records who is left out
   and why, and freezes the recipients' ids). A slot of a closed ballot is expired.
2. `send_queued`: for each active campaign with work — unless it is inside its quiet
   hours, when what waits is marked deferred until the window ends — in batches: the
   queued messages whose retry is due, else the next frozen recipients made into queued
   messages (`audience.take_batch`); re-check the local state (voted, opted out,
   consent, mobile, cap) and skip who no longer qualifies; fetch the numbers from
   contacts (absent means no consent now); then for each message, at the provider's
   rate: re-check once more and claim it (queued -> sending, committed BEFORE the call),
   render, call the provider with the idempotency key, and record the result with its
   event (reminder-sent / message-failed; no number or text in either) in one unit of
   work.

A transient provider error puts the message back in the queue with backoff (up to
`provider_max_attempts`, then it fails) and ends the round: the provider is likely down
for every message alike, and a round that carried on would burn an attempt of each. A
permanent error fails the message. Once the ballot closes, what is still queued is
cancelled. Time is the context's clock, so tests move it rather than wait.

Several instances may run the dispatcher: a slot is selected under a row lock (SKIP
LOCKED), a part of an audience is taken under one too, a message is claimed by a
conditional update, and claims for one member are serialised by an advisory lock so two
campaigns cannot both pass the per-day cap.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
import structlog
from sqlalchemy.dialects.postgresql import BYTEA

from turnout_events.common import MessageChannel
from turnout_events.notifications import MessageFailed, ReminderSent

from ..context import NotificationsContext
from ..db.tables import audience_parts, ballots, campaign_slots, campaigns, messages
from ..domain.quiet_hours import QuietHours
from ..domain.template import Rendering
from ..providers.base import (
    Accepted,
    PermanentProviderError,
    SmsProvider,
    TransientProviderError,
    can_look_up,
)
from . import audience
from .audience import UNKNOWN_OUTCOME, Queued
from .channels import ContactChannels, ContactsUnavailable, SmsChannel
from .erasure import is_erased, lock_member
from .receipts import apply_early_to_message, error_code

log = structlog.get_logger("turnout.notifications.dispatcher")

BATCH = 200
RESCUE_BATCH = 500
BACKOFF_FIRST = timedelta(seconds=30)
BACKOFF_MAX = timedelta(minutes=30)


class RateLimit:
    """At most `rate` provider calls in any one-second window (below one a second: one
    per 1/rate seconds), and the whole of it: a provider's limit is a count per second.
    A token bucket holding a second's worth lets twice that through in the second after
    a pause; evenly spaced calls lose whatever the event loop is late by. A call counts
    from when it returns, so however long a call takes to reach the provider, the next
    window's first call starts a full second after the last one's arrived. Only whole
    messages per second count (2.5/s sends 2)."""

    def __init__(self, rate_per_second: float) -> None:
        if rate_per_second >= 1:
            self._window, self._capacity = 1.0, int(rate_per_second)
        else:
            self._window, self._capacity = 1.0 / rate_per_second, 1
        # The window's calls, in the order they began: [when it returned], inf until then.
        self._calls: deque[list[float]] = deque()
        self._changed = asyncio.Condition()

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Wait for room in the window, then hold a place in it around one call."""
        mine = [math.inf]
        async with self._changed:
            while True:
                now = time.monotonic()
                while self._calls and self._calls[0][0] <= now - self._window:
                    self._calls.popleft()
                if len(self._calls) < self._capacity:
                    self._calls.append(mine)
                    break
                oldest = self._calls[0][0]
                wait = self._window if oldest == math.inf else oldest + self._window - now
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), wait)
        try:
            yield
        finally:
            mine[0] = time.monotonic()
            async with self._changed:
                self._changed.notify_all()


def limiter_for(rate_per_second: float) -> RateLimit:
    return RateLimit(rate_per_second)


def _open_parts(campaign_id: Any) -> sa.ColumnElement[bool]:
    return sa.exists().where(audience_parts.c.campaign_id == campaign_id,
                             audience_parts.c.taken < audience_parts.c.size)


class _ProviderDown(Exception):
    """The provider answered a transient error: this round sends nothing more."""


class Dispatcher:
    def __init__(self, ctx: NotificationsContext, provider: SmsProvider,
                 channels: ContactChannels, limiter: RateLimit | None = None) -> None:
        self.ctx = ctx
        self.provider = provider
        self.channels = channels
        self.limiter = limiter or limiter_for(ctx.settings.provider_rate_per_second)
        self._task: asyncio.Task | None = None
        self._wake = asyncio.Event()

    # -- the background loop -------------------------------------------------------------

    def start(self) -> asyncio.Task:
        self._task = asyncio.create_task(self._loop(), name="notifications-dispatcher")
        return self._task

    def wake(self) -> None:
        self._wake.set()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _loop(self) -> None:
        # The first round runs at once: messages a crashed predecessor left in `sending`
        # are resolved on start, not one interval later.
        interval = self.ctx.settings.dispatch_interval_seconds
        while True:
            try:
                await self.run_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("dispatcher.round_failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), interval)
            self._wake.clear()

    async def run_once(self) -> dict[str, int]:
        await self.rescue_stuck()
        selected = await self.select_due()
        sent = await self.send_queued()
        return {"slots_selected": selected, "messages_sent": sent}

    # -- step 0: messages a crash left in `sending` --------------------------------------

    async def rescue_stuck(self) -> dict[str, int]:
        """Resolve messages claimed longer than `sending_timeout_seconds` ago with no
        answer recorded; returns how many were found sent, put back in the queue (or
        cancelled with their campaign), or failed as unknown_outcome."""
        now = self.ctx.clock()
        cutoff = now - timedelta(seconds=self.ctx.settings.sending_timeout_seconds)
        assert self.ctx.sessions is not None
        async with self.ctx.sessions() as session:
            stuck = (await session.execute(
                sa.select(messages.c.message_id, messages.c.member_id, messages.c.ballot_id,
                          messages.c.campaign_id, messages.c.idempotency_key,
                          messages.c.attempted_at, messages.c.provider,
                          campaigns.c.status.label("campaign_status"))
                .join(campaigns, campaigns.c.campaign_id == messages.c.campaign_id)
                .where(messages.c.status == "sending", messages.c.attempted_at < cutoff)
                .order_by(messages.c.attempted_at).limit(RESCUE_BATCH))).all()
        outcomes = {"sent": 0, "requeued": 0, "cancelled": 0, "unknown_outcome": 0}
        askable = can_look_up(self.provider)
        for row in stuck:
            if not (askable and row.provider == self.provider.name):
                if await self._resolve(row, "failed", now, error=UNKNOWN_OUTCOME):
                    outcomes["unknown_outcome"] += 1
                continue
            try:
                found = await self.provider.lookup(  # type: ignore[attr-defined]
                    idempotency_key=row.idempotency_key)
            except TransientProviderError:
                break  # the provider cannot say right now: ask again next round
            if found is not None:
                if await self._resolve(row, "sent", now, accepted=found):
                    outcomes["sent"] += 1
            else:
                # Never arrived: it goes (re-checked, same key) unless its campaign was
                # cancelled meanwhile.
                to = "queued" if row.campaign_status == "active" else "cancelled"
                if await self._resolve(row, to, now):
                    outcomes["requeued" if to == "queued" else "cancelled"] += 1
        if any(outcomes.values()):
            log.warning("dispatcher.rescued_stuck_messages", **outcomes)
        return outcomes

    async def _resolve(self, row: Any, to: str, now: datetime, *,
                       accepted: Accepted | None = None, error: str | None = None) -> bool:
        """Move one stuck message on, only if nobody else has since (same claim)."""
        values: dict[str, Any] = {"status": to, "updated_at": sa.func.now()}
        if to == "sent":
            assert accepted is not None
            values.update(provider_message_id=accepted.provider_message_id, error_code=None,
                          next_attempt_at=None)
        elif to == "failed":
            values.update(error_code=error)
        else:  # the provider never had it: as if never claimed
            values.update(attempted_at=None, next_attempt_at=None)
        async with self.ctx.uow() as uow:
            moved = await uow.session.scalar(
                sa.update(messages).where(messages.c.message_id == row.message_id,
                                          messages.c.status == "sending",
                                          messages.c.attempted_at == row.attempted_at)
                .values(**values).returning(messages.c.message_id))
            if moved is None:
                return False
            if to == "sent":
                assert accepted is not None
                uow.emit(ReminderSent(member_id=row.member_id, message_id=row.message_id,
                                      campaign_id=row.campaign_id, ballot_id=row.ballot_id,
                                      channel=MessageChannel.SMS),
                         occurred_at=row.attempted_at)
                await apply_early_to_message(uow, accepted.provider_message_id,
                                             message_id=row.message_id,
                                             member_id=row.member_id, now=now)
            elif to == "failed":
                assert error is not None  # a failure is always settled with its code
                uow.emit(MessageFailed(member_id=row.member_id, message_id=row.message_id,
                                       channel=MessageChannel.SMS, error_code=error,
                                       permanent=False, failed_at=now), occurred_at=now)
            await uow.commit()
        return True

    # -- step 1: due slots -> frozen audiences -------------------------------------------

    async def select_due(self) -> int:
        done = 0
        while await self._select_one(self.ctx.clock()):
            done += 1
        return done

    async def _select_one(self, now: datetime) -> bool:
        async with self.ctx.uow() as uow:
            session = uow.session
            row = (await session.execute(
                sa.select(campaign_slots.c.campaign_id, campaign_slots.c.slot,
                          campaigns.c.ballot_id, campaigns.c.max_per_day,
                          campaigns.c.group_codes, campaigns.c.branch_codes,
                          campaigns.c.workplace_codes, ballots.c.closes_at,
                          ballots.c.closed_at)
                .join(campaigns, campaigns.c.campaign_id == campaign_slots.c.campaign_id)
                .join(ballots, ballots.c.ballot_id == campaigns.c.ballot_id)
                .where(campaign_slots.c.state == "pending", campaign_slots.c.due_at <= now,
                       campaigns.c.status == "active")
                .order_by(campaign_slots.c.due_at)
                .limit(1).with_for_update(of=campaign_slots, skip_locked=True))).first()
            if row is None:
                return False
            where = sa.and_(campaign_slots.c.campaign_id == row.campaign_id,
                            campaign_slots.c.slot == row.slot)
            if row.closed_at is not None or row.closes_at <= now:
                await session.execute(sa.update(campaign_slots).where(where)
                                      .values(state="expired", selected_at=now))
                await uow.commit()
                log.info("dispatcher.slot_expired", campaign_id=str(row.campaign_id),
                         slot=row.slot)
                return True
            counts = await audience.select_slot(
                session, campaign_id=row.campaign_id, slot=row.slot, ballot_id=row.ballot_id,
                cap=row.max_per_day, now=now, group_codes=row.group_codes,
                branch_codes=row.branch_codes, workplace_codes=row.workplace_codes)
            await session.execute(sa.update(campaign_slots).where(where).values(
                state="selected", selected_at=now))
            await uow.commit()
        log.info("dispatcher.slot_selected", campaign_id=str(row.campaign_id), slot=row.slot,
                 **{("recipients" if k == "recipients" else f"skipped_{k}"): v
                    for k, v in counts.items()})
        return True

    # -- step 2: audiences -> texts ------------------------------------------------------

    async def send_queued(self) -> int:
        now = self.ctx.clock()
        ended = sa.or_(ballots.c.closed_at.is_not(None), ballots.c.closes_at <= now)
        assert self.ctx.sessions is not None
        async with self.ctx.sessions() as session:
            ready = (await session.execute(
                sa.select(campaigns, ballots.c.name.label("ballot_name"),
                          ballots.c.closes_at, ballots.c.closed_at)
                .join(ballots, ballots.c.ballot_id == campaigns.c.ballot_id)
                .where(campaigns.c.status == "active", sa.or_(
                    sa.exists().where(messages.c.campaign_id == campaigns.c.campaign_id,
                                      messages.c.status == "queued"),
                    # Once the ballot has closed, the untaken rest is simply never taken.
                    sa.and_(sa.not_(ended), _open_parts(campaigns.c.campaign_id))))
                .order_by(campaigns.c.created_at))).all()
        sent = 0
        for campaign in ready:
            n, provider_up = await self._send_campaign(campaign)
            sent += n
            if not provider_up:
                break
        return sent

    async def _send_campaign(self, campaign: Any) -> tuple[int, bool]:
        """How many went, and False when the provider failed transiently (end of the
        round)."""
        quiet = QuietHours(campaign.quiet_start, campaign.quiet_end, campaign.timezone)
        rendering = Rendering(campaign.ballot_name, campaign.closes_at, campaign.link)
        sent = 0
        while True:
            now = self.ctx.clock()
            if campaign.closed_at is not None or campaign.closes_at <= now:
                await self._close_out(campaign.campaign_id)
                return sent, True
            if quiet.contains(now):
                await self._defer(campaign.campaign_id)
                return sent, True
            if not await self._still_active(campaign.campaign_id):
                return sent, True
            batch = await self._next_batch(campaign, now)
            if not batch:
                return sent, True
            async with self.ctx.uow() as uow:
                skips = await audience.recheck(uow.session, [m.message_id for m in batch],
                                               cap=campaign.max_per_day, now=now)
                await self._skip(uow.session, skips)
                await uow.commit()
            batch = [m for m in batch if m.message_id not in skips]
            try:
                numbers = await self.channels.sms([m.member_id for m in batch])
            except ContactsUnavailable:
                return sent, True  # still queued: the next round asks again
            absent = {m.message_id: "no_consent" for m in batch if m.member_id not in numbers}
            if absent:
                async with self.ctx.uow() as uow:
                    await self._skip(uow.session, absent)
                    await uow.commit()
            for message in batch:
                channel = numbers.get(message.member_id)
                if channel is None:
                    continue
                now = self.ctx.clock()
                if quiet.contains(now) or campaign.closes_at <= now:
                    break  # the window opened, or the ballot closed, mid-batch: see above
                try:
                    if await self._send_one(campaign, message, channel, rendering):
                        sent += 1
                except _ProviderDown:
                    return sent, False

    async def _still_active(self, campaign_id: uuid.UUID) -> bool:
        assert self.ctx.sessions is not None
        async with self.ctx.sessions() as session:
            status = await session.scalar(sa.select(campaigns.c.status)
                                          .where(campaigns.c.campaign_id == campaign_id))
        return status == "active"

    async def _next_batch(self, campaign: Any, now: datetime) -> list[Queued]:
        """Queued messages whose (re)try is due, else the next frozen recipients."""
        assert self.ctx.sessions is not None
        async with self.ctx.sessions() as session:
            due = (await session.execute(
                sa.select(messages.c.message_id, messages.c.member_id,
                          messages.c.ballot_id, messages.c.idempotency_key)
                .where(messages.c.campaign_id == campaign.campaign_id,
                       messages.c.status == "queued",
                       sa.or_(messages.c.next_attempt_at.is_(None),
                              messages.c.next_attempt_at <= now))
                .order_by(messages.c.created_at, messages.c.message_id)
                .limit(BATCH))).all()
        if due:
            return [Queued(*row) for row in due]
        async with self.ctx.uow() as uow:
            taken = await audience.take_batch(uow.session, campaign_id=campaign.campaign_id,
                                              ballot_id=campaign.ballot_id, n=BATCH)
            await uow.commit()
        return taken

    async def _defer(self, campaign_id: uuid.UUID) -> None:
        async with self.ctx.uow() as uow:
            held = await uow.session.execute(
                sa.update(messages).where(messages.c.campaign_id == campaign_id,
                                          messages.c.status == "queued",
                                          messages.c.deferred.is_(False))
                .values(deferred=True, updated_at=sa.func.now()))
            parts = await uow.session.execute(
                sa.update(audience_parts).where(audience_parts.c.campaign_id == campaign_id,
                                                audience_parts.c.taken < audience_parts.c.size,
                                                audience_parts.c.deferred.is_(False))
                .values(deferred=True))
            await uow.commit()
        if held.rowcount or parts.rowcount:  # type: ignore[attr-defined]
            log.info("dispatcher.quiet_hours_deferred", campaign_id=str(campaign_id),
                     messages=held.rowcount, parts=parts.rowcount)  # type: ignore[attr-defined]

    async def _close_out(self, campaign_id: uuid.UUID) -> None:
        """The ballot has closed: a reminder now would only confuse. What is queued is
        cancelled (the untaken rest of the audience counts as cancelled too)."""
        async with self.ctx.uow() as uow:
            result = await uow.session.execute(
                sa.update(messages).where(messages.c.campaign_id == campaign_id,
                                          messages.c.status == "queued")
                .values(status="cancelled", updated_at=sa.func.now()))
            await uow.commit()
        log.info("dispatcher.ballot_closed_queue_cancelled", campaign_id=str(campaign_id),
                 messages=result.rowcount)  # type: ignore[attr-defined]

    @staticmethod
    async def _skip(session: Any, reasons: dict[uuid.UUID, str]) -> None:
        for reason in set(reasons.values()):
            ids = [m for m, r in reasons.items() if r == reason]
            await session.execute(sa.update(messages).where(
                messages.c.message_id.in_(ids), messages.c.status == "queued")
                .values(status="skipped", skip_reason=reason, updated_at=sa.func.now()))

    async def _send_one(self, campaign: Any, message: Queued, channel: SmsChannel,
                        rendering: Rendering) -> bool:
        """True when sent; raises _ProviderDown on a transient provider error."""
        async with self.limiter.slot():
            now = self.ctx.clock()
            if not await self._claim(campaign, message, now):
                return False
            body = rendering.render(campaign.template, first_name=channel.first_name, now=now)
            try:
                accepted = await self.provider.send(idempotency_key=message.idempotency_key,
                                                    to=channel.mobile, body=body)
            except TransientProviderError as exc:
                await self._transient_failure(message, exc.code, now)
                raise _ProviderDown from None
            except PermanentProviderError as exc:
                await self._failed(message, exc.code, now, permanent=True)
                return False
        number = sa.literal(self.ctx.recipient_hash(channel.mobile), BYTEA)
        async with self.ctx.uow() as uow:
            # Under the member's lock, as their erasure takes it: a member erased while
            # this text was on its way keeps no hash of the number (service/erasure.py).
            await uow.session.execute(lock_member(message.member_id))
            await uow.session.execute(sa.update(messages).where(
                messages.c.message_id == message.message_id).values(
                status="sent", provider_message_id=accepted.provider_message_id,
                # How a reply from this number finds the member (service/inbound.py).
                recipient_hash=sa.case((is_erased(message.member_id), sa.null()),
                                       else_=number),
                error_code=None, next_attempt_at=None, updated_at=sa.func.now()))
            uow.emit(ReminderSent(member_id=message.member_id, message_id=message.message_id,
                                  campaign_id=campaign.campaign_id, ballot_id=message.ballot_id,
                                  channel=MessageChannel.SMS), occurred_at=now)
            # Its receipt may have come while this was being recorded.
            await apply_early_to_message(uow, accepted.provider_message_id,
                                         message_id=message.message_id,
                                         member_id=message.member_id, now=now)
            await uow.commit()
        return True

    async def _claim(self, campaign: Any, message: Queued, now: datetime) -> bool:
        """Re-check this member once more and take the message (queued -> sending),
        committed before the provider is called. False when it must not go."""
        async with self.ctx.uow() as uow:
            session = uow.session
            # One claim per member at a time, so the cap sees every other claim.
            await session.execute(lock_member(message.member_id))
            claimed = await audience.claim(session, message.message_id,
                                           cap=campaign.max_per_day, now=now,
                                           provider=self.provider.name)
            await uow.commit()
        return claimed

    async def _transient_failure(self, message: Queued, code: str, now: datetime) -> None:
        assert self.ctx.sessions is not None
        async with self.ctx.sessions() as session:
            attempts = await session.scalar(sa.select(messages.c.attempts).where(
                messages.c.message_id == message.message_id))
        if (attempts or 0) >= self.ctx.settings.provider_max_attempts:
            await self._failed(message, code, now, permanent=False)
            return
        delay = min(BACKOFF_FIRST * 2 ** ((attempts or 1) - 1), BACKOFF_MAX)
        async with self.ctx.uow() as uow:
            # Back in the queue; attempted_at cleared so the cap does not count it.
            await uow.session.execute(sa.update(messages).where(
                messages.c.message_id == message.message_id).values(
                status="queued", attempted_at=None, next_attempt_at=now + delay,
                error_code=error_code(code), updated_at=sa.func.now()))
            await uow.commit()
        log.warning("dispatcher.provider_transient_error", message_id=str(message.message_id),
                    code=error_code(code), retry_in_s=delay.total_seconds())

    async def _failed(self, message: Queued, code: str, now: datetime, *,
                      permanent: bool) -> None:
        async with self.ctx.uow() as uow:
            await uow.session.execute(sa.update(messages).where(
                messages.c.message_id == message.message_id).values(
                status="failed", error_code=error_code(code), updated_at=sa.func.now()))
            uow.emit(MessageFailed(member_id=message.member_id, message_id=message.message_id,
                                   channel=MessageChannel.SMS, error_code=error_code(code),
                                   permanent=permanent, failed_at=now), occurred_at=now)
            await uow.commit()
        log.warning("dispatcher.message_failed", message_id=str(message.message_id),
                    code=error_code(code), permanent=permanent)
