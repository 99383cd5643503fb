"""The dispatcher: turns due campaign slots into queued messages, and queued messages into
texts, one round at a time.

A round (`run_once`) has two steps, each callable on its own (tests put an event between
them):

1. `select_due`: every pending slot of an active campaign whose time has come is
   selected once (`audience.select_slot`: one SQL statement queues a message per
   recipient, each with its unique idempotency key, and records who was left out and
   why). A slot of a closed ballot is expired instead.
2. `send_queued`: for each active campaign with queued messages — unless it is inside
   its quiet hours, when the messages are marked deferred and wait for the next round
   after the window — in batches: re-check the local state (voted, opted out, consent,
   mobile, cap) and skip who no longer qualifies; fetch the numbers from contacts (absent
   means no consent now); then for each message, at the provider's rate: re-check once
   more and claim it (queued -> sending, committed BEFORE the call), render, call the
   provider with the idempotency key, and record the result with its event
   (reminder-sent / message-failed; no number or text in either) in one unit of work.

Transient provider errors put the message back in the queue with backoff, up to
`provider_max_attempts`; permanent ones fail it. Time is the context's clock, so tests
move it rather than wait.

Several instances may run the dispatcher: a slot is selected under a row lock (SKIP
LOCKED), a message is claimed by a conditional update, and claims for one member are
serialised by an advisory lock so two campaigns cannot both pass the per-day cap.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import uuid
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
import structlog
from aiolimiter import AsyncLimiter

from turnout_events.common import MessageChannel
from turnout_events.notifications import MessageFailed, ReminderSent

from ..context import NotificationsContext
from ..db.tables import ballots, campaign_slots, campaigns, messages
from ..domain.quiet_hours import QuietHours
from ..domain.template import Rendering
from ..providers.base import PermanentProviderError, SmsProvider, TransientProviderError
from . import audience
from .channels import ContactChannels, ContactsUnavailable, SmsChannel

log = structlog.get_logger("turnout.notifications.dispatcher")

BATCH = 200
BACKOFF_FIRST = timedelta(seconds=30)
BACKOFF_MAX = timedelta(minutes=30)


def limiter_for(rate_per_second: float) -> AsyncLimiter:
    # aiolimiter's bucket holds max_rate tokens: below one message a second, it is one
    # token per 1/rate seconds instead.
    if rate_per_second >= 1:
        return AsyncLimiter(rate_per_second, 1.0)
    return AsyncLimiter(1, 1.0 / rate_per_second)


def error_code(code: str) -> str:
    """A provider's error code made into one of ours (events take codes, not text)."""
    cleaned = re.sub(r"[^A-Za-z0-9_.-]", "_", code).strip("_.-")[:40]
    return cleaned or "provider_error"


class Dispatcher:
    def __init__(self, ctx: NotificationsContext, provider: SmsProvider,
                 channels: ContactChannels, limiter: AsyncLimiter | None = None) -> None:
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
        selected = await self.select_due()
        sent = await self.send_queued()
        return {"slots_selected": selected, "messages_sent": sent}

    # -- step 1: due slots -> queued messages --------------------------------------------

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
            queued = counts.pop("queued", 0)
            await session.execute(sa.update(campaign_slots).where(where).values(
                state="selected", selected_at=now, skipped=counts))
            await uow.commit()
        log.info("dispatcher.slot_selected", campaign_id=str(row.campaign_id), slot=row.slot,
                 queued=queued, **{f"skipped_{k}": v for k, v in counts.items()})
        return True

    # -- step 2: queued messages -> texts ------------------------------------------------

    async def send_queued(self) -> int:
        assert self.ctx.sessions is not None
        async with self.ctx.sessions() as session:
            ready = (await session.execute(
                sa.select(campaigns, ballots.c.name.label("ballot_name"),
                          ballots.c.closes_at)
                .join(ballots, ballots.c.ballot_id == campaigns.c.ballot_id)
                .where(campaigns.c.status == "active",
                       sa.exists().where(messages.c.campaign_id == campaigns.c.campaign_id,
                                         messages.c.status == "queued"))
                .order_by(campaigns.c.created_at))).all()
        sent = 0
        for campaign in ready:
            sent += await self._send_campaign(campaign)
        return sent

    async def _send_campaign(self, campaign: Any) -> int:
        quiet = QuietHours(campaign.quiet_start, campaign.quiet_end, campaign.timezone)
        rendering = Rendering(campaign.ballot_name, campaign.closes_at, campaign.link)
        sent = 0
        while True:
            now = self.ctx.clock()
            if quiet.contains(now):
                await self._defer(campaign.campaign_id)
                return sent
            if not await self._still_active(campaign.campaign_id):
                return sent
            batch = await self._next_batch(campaign.campaign_id, now)
            if not batch:
                return sent
            cap = campaign.max_per_day
            async with self.ctx.uow() as uow:
                skips = await audience.recheck(uow.session, [m.message_id for m in batch],
                                               cap=cap, now=now)
                await self._skip(uow.session, skips)
                await uow.commit()
            batch = [m for m in batch if m.message_id not in skips]
            try:
                numbers = await self.channels.sms([m.member_id for m in batch])
            except ContactsUnavailable:
                return sent  # still queued: the next round asks again
            absent = {m.message_id: "no_consent" for m in batch if m.member_id not in numbers}
            if absent:
                async with self.ctx.uow() as uow:
                    await self._skip(uow.session, absent)
                    await uow.commit()
            for message in batch:
                channel = numbers.get(message.member_id)
                if channel is None:
                    continue
                if quiet.contains(self.ctx.clock()):
                    break  # the window opened mid-batch; the loop above defers the rest
                if await self._send_one(campaign, message, channel, rendering):
                    sent += 1

    async def _still_active(self, campaign_id: uuid.UUID) -> bool:
        assert self.ctx.sessions is not None
        async with self.ctx.sessions() as session:
            status = await session.scalar(sa.select(campaigns.c.status)
                                          .where(campaigns.c.campaign_id == campaign_id))
        return status == "active"

    async def _next_batch(self, campaign_id: uuid.UUID, now: datetime) -> list[Any]:
        assert self.ctx.sessions is not None
        async with self.ctx.sessions() as session:
            return list((await session.execute(
                sa.select(messages.c.message_id, messages.c.member_id,
                          messages.c.ballot_id, messages.c.idempotency_key)
                .where(messages.c.campaign_id == campaign_id, messages.c.status == "queued",
                       sa.or_(messages.c.next_attempt_at.is_(None),
                              messages.c.next_attempt_at <= now))
                .order_by(messages.c.created_at, messages.c.message_id)
                .limit(BATCH))).all())

    async def _defer(self, campaign_id: uuid.UUID) -> None:
        async with self.ctx.uow() as uow:
            result = await uow.session.execute(
                sa.update(messages).where(messages.c.campaign_id == campaign_id,
                                          messages.c.status == "queued",
                                          messages.c.deferred.is_(False))
                .values(deferred=True, updated_at=sa.func.now()))
            await uow.commit()
        if result.rowcount:  # type: ignore[attr-defined]
            log.info("dispatcher.quiet_hours_deferred", campaign_id=str(campaign_id),
                     messages=result.rowcount)  # type: ignore[attr-defined]

    @staticmethod
    async def _skip(session: Any, reasons: dict[uuid.UUID, str]) -> None:
        for reason in set(reasons.values()):
            ids = [m for m, r in reasons.items() if r == reason]
            await session.execute(sa.update(messages).where(
                messages.c.message_id.in_(ids), messages.c.status == "queued")
                .values(status="skipped", skip_reason=reason, updated_at=sa.func.now()))

    async def _send_one(self, campaign: Any, message: Any, channel: SmsChannel,
                        rendering: Rendering) -> bool:
        async with self.limiter:
            now = self.ctx.clock()
            if not await self._claim(campaign, message, now):
                return False
            body = rendering.render(campaign.template, first_name=channel.first_name, now=now)
            try:
                accepted = await self.provider.send(idempotency_key=message.idempotency_key,
                                                    to=channel.mobile, body=body)
            except TransientProviderError as exc:
                await self._transient_failure(message, exc.code, now)
                return False
            except PermanentProviderError as exc:
                await self._failed(message, exc.code, now, permanent=True)
                return False
        async with self.ctx.uow() as uow:
            await uow.session.execute(sa.update(messages).where(
                messages.c.message_id == message.message_id).values(
                status="sent", provider_message_id=accepted.provider_message_id,
                error_code=None, next_attempt_at=None, updated_at=sa.func.now()))
            uow.emit(ReminderSent(member_id=message.member_id, message_id=message.message_id,
                                  campaign_id=campaign.campaign_id, ballot_id=message.ballot_id,
                                  channel=MessageChannel.SMS), occurred_at=now)
            await uow.commit()
        return True

    async def _claim(self, campaign: Any, message: Any, now: datetime) -> bool:
        """Re-check this member once more and take the message (queued -> sending),
        committed before the provider is called. False when it must not go."""
        async with self.ctx.uow() as uow:
            session = uow.session
            # One claim per member at a time, so the cap sees every other claim.
            await session.execute(sa.select(sa.func.pg_advisory_xact_lock(
                sa.func.hashtext(str(message.member_id)))))
            skip = await audience.recheck(session, [message.message_id],
                                          cap=campaign.max_per_day, now=now)
            if skip:
                await self._skip(session, skip)
                await uow.commit()
                return False
            claimed = await session.scalar(
                sa.update(messages).where(messages.c.message_id == message.message_id,
                                          messages.c.status == "queued")
                .values(status="sending", attempts=messages.c.attempts + 1,
                        attempted_at=now, provider=self.provider.name,
                        updated_at=sa.func.now())
                .returning(messages.c.message_id))
            await uow.commit()
        return claimed is not None

    async def _transient_failure(self, message: Any, code: str, now: datetime) -> None:
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

    async def _failed(self, message: Any, code: str, now: datetime, *, permanent: bool) -> None:
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
