"""Revealing a member's contact values: audited, and limited per caller per rolling hour.

One transaction does everything: take the caller's lock, count their reveals in the last
hour, read and decrypt the member, write the audit row. The audit row therefore exists
if and only if the values left the database, and the count cannot race: a caller's
concurrent requests queue on a transaction-scoped advisory lock keyed by their actor id,
so each one counts after the previous one committed (READ COMMITTED takes a fresh
snapshot per statement).

Past the limit nothing is decrypted; the refusal is recorded as an anomaly that national
and admin can list. One anomaly row per breach, not per request: a breach starts with the
first refusal after the caller's latest granted reveal and lasts until a reveal is granted
again (at most an hour, when the oldest reveal leaves the window). Further refusals in the
same breach add to that row's `reveals_in_last_hour` (granted + refused attempts), so the
DPO sees how hard someone pushed without a row per click.
"""

from __future__ import annotations

import hashlib
import math
import re
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa
import structlog
from sqlalchemy.ext.asyncio import AsyncSession

from turnout_kit.auth import Caller
from turnout_kit.problems import Problem
from turnout_kit.redaction import redact_text

from ..context import ContactsContext
from ..db.tables import members, reveal_anomalies, reveal_audit
from .scope import not_found

log = structlog.get_logger("turnout.contacts.reveal")

WINDOW = timedelta(hours=1)
# The fields a reveal can disclose, in the order they are recorded.
FIELDS = ("first_name", "last_name", "mobile", "personal_email")
_COLUMNS = {"first_name": "first_name", "last_name": "last_name", "mobile": "mobile",
            "personal_email": "email"}
NAME_PLACEHOLDER = "[name]"


@dataclass(frozen=True)
class Revealed:
    member_id: uuid.UUID
    values: dict[str, str | None]
    fields: list[str]
    revealed_at: datetime


def caller_lock_key(actor: str) -> int:
    """A signed 64-bit advisory-lock key for one caller (stable across processes)."""
    digest = hashlib.blake2b(f"turnout.contacts.reveal:{actor}".encode(), digest_size=8)
    return int.from_bytes(digest.digest(), "big", signed=True)


async def reveal(ctx: ContactsContext, caller: Caller, member_id: uuid.UUID, reason: str,
                 fields: tuple[str, ...] = FIELDS) -> Revealed:
    limit = ctx.settings.reveals_per_hour
    async with ctx.uow(caller.actor) as uow:
        session = uow.session
        await session.execute(sa.select(sa.func.pg_advisory_xact_lock(
            caller_lock_key(caller.actor))))
        # The clock after the lock: time spent queueing must not stretch the window.
        now: datetime = (await session.execute(sa.select(sa.func.clock_timestamp()))).scalar_one()
        recent = await _granted_since(session, caller.actor, now - WINDOW)

        # Scope before the limit: an out-of-scope id is a plain 404 and no anomaly.
        # FOR SHARE: an erasure in flight finishes first, and then there is nothing to
        # reveal; a reveal in flight finishes before an erasure starts.
        row = (await session.execute(
            sa.select(members).where(members.c.member_id == member_id)
            .with_for_update(read=True))).first()
        if row is None or not caller.can_see(row.group_code, row.branch_code):
            raise not_found(member_id)
        if row.erased_at is not None:
            raise Problem(410, detail=f"Member {member_id}'s personal data has been erased; "
                                      "there is nothing to reveal.")
        if len(recent) >= limit:
            retry_after = _retry_after(recent, limit, now)
            await _record_anomaly(session, caller, member_id, len(recent), limit)
            await uow.commit()
            raise Problem(
                429, detail=f"You have revealed contact details {len(recent)} times in the "
                            f"last hour; the limit is {limit}. This has been logged. "
                            f"Try again in {math.ceil(retry_after / 60)} minutes.",
                headers={"Retry-After": str(retry_after)})

        clear = {name: ctx.cipher.decrypt(member_id, getattr(row, column))
                 for name, column in _COLUMNS.items()}
        values = {name: clear[name] for name in fields}
        disclosed = [name for name in FIELDS if name in fields and clear[name] is not None]
        await session.execute(sa.insert(reveal_audit).values(
            revealed_at=now, revealed_by=caller.actor, role=caller.role.value,
            member_id=member_id, fields=disclosed,
            reason=clean_reason(reason, clear["first_name"], clear["last_name"])))
        await uow.commit()
    log.info("contact_revealed", member_id=str(member_id), actor=caller.actor,
             fields=disclosed)
    return Revealed(member_id=member_id, values=values, fields=disclosed, revealed_at=now)


def clean_reason(reason: str, *names: str | None) -> str:
    """The reason as stored: contact values and the member's own names taken out, so the
    audit log (kept after erasure, shown to the DPO, exported for a subject access
    request) holds no contact values in clear even when a rep typed one in."""
    text = redact_text(reason)
    for name in filter(None, names):
        text = re.sub(rf"(?<!\w){re.escape(name)}(?!\w)", NAME_PLACEHOLDER, text,
                      flags=re.IGNORECASE)
    return text


async def _granted_since(session: AsyncSession, actor: str, since: datetime) -> list[datetime]:
    return list((await session.execute(
        sa.select(reveal_audit.c.revealed_at)
        .where(reveal_audit.c.revealed_by == actor, reveal_audit.c.revealed_at > since)
        .order_by(reveal_audit.c.revealed_at))).scalars())


def _retry_after(recent: list[datetime], limit: int, now: datetime) -> int:
    """Seconds until enough of the caller's reveals leave the window for one more. With
    the limit lowered since, more than one may have to leave first."""
    frees_up = recent[len(recent) - limit] + WINDOW
    return max(1, math.ceil((frees_up - now).total_seconds()))


async def _record_anomaly(session: AsyncSession, caller: Caller, member_id: uuid.UUID,
                          granted: int, limit: int) -> None:
    last_granted = sa.select(sa.func.max(reveal_audit.c.revealed_at)).where(
        reveal_audit.c.revealed_by == caller.actor).scalar_subquery()
    open_breach = (await session.execute(
        sa.select(reveal_anomalies.c.id)
        .where(reveal_anomalies.c.subject == caller.actor,
               reveal_anomalies.c.detected_at >= sa.func.coalesce(last_granted, sa.text(
                   "'-infinity'::timestamptz")))
        .order_by(reveal_anomalies.c.id.desc()).limit(1))).scalar()
    if open_breach is not None:
        await session.execute(
            sa.update(reveal_anomalies).where(reveal_anomalies.c.id == open_breach)
            .values(reveals_in_last_hour=reveal_anomalies.c.reveals_in_last_hour + 1))
        return
    await session.execute(sa.insert(reveal_anomalies).values(
        detected_at=sa.func.clock_timestamp(), subject=caller.actor, member_id=member_id,
        reveals_in_last_hour=granted + 1, hourly_limit=limit))
    log.warning("reveal_limit_exceeded", actor=caller.actor, member_id=str(member_id),
                granted_in_last_hour=granted, hourly_limit=limit)
