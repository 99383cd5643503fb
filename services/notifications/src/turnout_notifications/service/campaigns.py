"""Campaign commands and the campaign read model (counts).

A campaign is created for a ballot this service already knows (from its ballot-opened
event): its schedule is resolved against the ballot's closing time right away, so what
was accepted is exactly what will run. Slots in the past are due at once; slots at or
after the close are refused.

Counts are exact at every moment: each member of a selected slot's audience is in one
place only — a skip counted at selection (`audience_skips`), a recipient not yet taken
from the frozen audience (`audience_parts`: queued, or cancelled once the campaign is
cancelled or the ballot closed), or a message row with its status. All three carry the
member's branch, so a rep's counts are those of their branches.
"""

from __future__ import annotations

import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, time
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert

from turnout_kit.auth import Caller
from turnout_kit.problems import Problem

from ..context import NotificationsContext
from ..db.tables import (
    audience_parts,
    audience_skips,
    ballots,
    campaign_branches,
    campaign_slots,
    campaigns,
    messages,
    roll,
)
from ..domain.schedule import BadSlot, resolve_slot
from ..domain.template import placeholder_errors, used_placeholders
from . import paging
from .scope import check_can_create, counted_branches, not_found, visible

SKIP_REASONS = ("voted", "no_consent", "no_mobile", "capped", "opted_out")

# action -> (states it may start from, state it leads to)
TRANSITIONS = {
    "pause": ({"active", "paused"}, "paused"),
    "resume": ({"active", "paused"}, "active"),
    "cancel": ({"active", "paused", "cancelled"}, "cancelled"),
}


@dataclass(frozen=True)
class CampaignSpec:
    ballot_id: uuid.UUID
    channel: str
    template: str
    schedule: list[str]
    link: str | None = None
    quiet_start: time | None = None
    quiet_end: time | None = None
    timezone: str | None = None
    max_per_day: int | None = None
    group_codes: list[str] = field(default_factory=list)
    branch_codes: list[str] = field(default_factory=list)
    workplace_codes: list[str] = field(default_factory=list)


def _invalid(errors: list[dict[str, str]]) -> Problem:
    n = len(errors)
    return Problem(422, detail=f"The campaign has {n} invalid field{'s' if n > 1 else ''}; "
                               "see `errors`.", errors=errors)


async def create_campaign(ctx: NotificationsContext, caller: Caller,
                          spec: CampaignSpec) -> uuid.UUID:
    check_can_create(caller, spec.group_codes)
    errors = [{"field": "template", "message": m} for m in placeholder_errors(spec.template)]
    if not errors and "link" in used_placeholders(spec.template) and not spec.link:
        errors.append({"field": "link", "message": "the template uses {link}: give a link"})
    settings = ctx.settings
    if spec.max_per_day is not None and spec.max_per_day > settings.max_per_day:
        # "Never twice in a day" unless whoever runs the deployment said otherwise: a
        # campaign may not allow more than the deployment does.
        errors.append({"field": "max_per_day", "message": (
            f"at most {settings.max_per_day} message(s) per member per day here "
            "(NOTIFICATIONS_MAX_PER_DAY)")})
    async with ctx.uow(caller.actor) as uow:
        ballot = (await uow.session.execute(
            sa.select(ballots).where(ballots.c.ballot_id == spec.ballot_id))).first()
        if ballot is None:
            errors.append({"field": "ballot_id", "message": (
                "no open ballot with this id is known here yet (campaigns are for ballots "
                "that have opened)")})
        elif ballot.closed_at is not None:
            errors.append({"field": "ballot_id", "message": "the ballot has closed"})
        slots: list[tuple[str, datetime]] = []
        if ballot is not None:
            for i, raw in enumerate(spec.schedule):
                try:
                    due = resolve_slot(raw, ballot.closes_at)
                except BadSlot as bad:
                    errors.append({"field": f"schedule[{i}]", "message": str(bad)})
                    continue
                if due >= ballot.closes_at:
                    errors.append({"field": f"schedule[{i}]",
                                   "message": "is at or after the ballot closes"})
                elif any(due == d for _, d in slots):
                    errors.append({"field": f"schedule[{i}]",
                                   "message": "repeats an earlier slot"})
                else:
                    slots.append((raw, due))
        if errors:
            raise _invalid(errors)
        campaign_id = uuid.uuid4()
        await uow.session.execute(sa.insert(campaigns).values(
            campaign_id=campaign_id, ballot_id=spec.ballot_id, channel=spec.channel,
            template=spec.template, link=spec.link,
            quiet_start=spec.quiet_start or settings.quiet_hours_start,
            quiet_end=spec.quiet_end or settings.quiet_hours_end,
            timezone=spec.timezone or settings.timezone,
            max_per_day=spec.max_per_day or settings.max_per_day,
            group_codes=sorted(set(spec.group_codes)),
            branch_codes=sorted(set(spec.branch_codes)),
            workplace_codes=sorted(set(spec.workplace_codes)),
            status="active", created_by=caller.actor))
        await uow.session.execute(sa.insert(campaign_slots), [
            {"campaign_id": campaign_id, "slot": n, "spec": raw, "due_at": due}
            for n, (raw, due) in enumerate(sorted(slots, key=lambda s: s[1]))])
        await _record_reach(uow.session, campaign_id, spec)
        await uow.commit()
    return campaign_id


async def _record_reach(session: Any, campaign_id: uuid.UUID, spec: CampaignSpec) -> None:
    """The branches the campaign reaches, so that their reps can read it before any slot
    runs: those it names, and those of the enrolled members its filters admit (each
    selection adds any the roll has gained since)."""
    on_roll = sa.select(sa.literal(campaign_id), roll.c.branch_code).distinct().where(
        roll.c.ballot_id == spec.ballot_id, roll.c.enrolled, roll.c.branch_code.is_not(None))
    for column, codes in ((roll.c.group_code, spec.group_codes),
                          (roll.c.branch_code, spec.branch_codes),
                          (roll.c.workplace_code, spec.workplace_codes)):
        if codes:
            on_roll = on_roll.where(column.in_(sorted(set(codes))))
    await session.execute(insert(campaign_branches).from_select(
        ["campaign_id", "branch_code"], on_roll).on_conflict_do_nothing())
    if spec.branch_codes:
        await session.execute(insert(campaign_branches).values(
            [{"campaign_id": campaign_id, "branch_code": b} for b in sorted(set(
                spec.branch_codes))]).on_conflict_do_nothing())


async def change_status(ctx: NotificationsContext, caller: Caller, campaign_id: uuid.UUID,
                        action: str) -> None:
    allowed_from, to = TRANSITIONS[action]
    async with ctx.uow(caller.actor) as uow:
        row = (await uow.session.execute(sa.select(campaigns).where(
            campaigns.c.campaign_id == campaign_id, visible(caller)).with_for_update(
                of=campaigns))).first()
        if row is None:
            raise not_found(campaign_id)
        check_can_create(caller, row.group_codes)  # who may create it may steer it
        if row.status not in allowed_from:
            raise Problem(409, detail=f"The campaign is {row.status}; it cannot {action}.")
        await uow.session.execute(sa.update(campaigns).where(
            campaigns.c.campaign_id == campaign_id).values(status=to,
                                                            updated_at=sa.func.now()))
        if to == "cancelled":
            # Queued messages will never go; they stop counting as queued (so do the
            # recipients not yet taken from the frozen audience: see _counts).
            await uow.session.execute(sa.update(messages).where(
                messages.c.campaign_id == campaign_id, messages.c.status == "queued")
                .values(status="cancelled", updated_at=sa.func.now()))
        await uow.commit()


async def get_campaign(ctx: NotificationsContext, caller: Caller,
                       campaign_id: uuid.UUID) -> dict[str, Any]:
    branches = counted_branches(caller)
    assert ctx.sessions is not None
    async with ctx.sessions() as session:
        row = (await session.execute(
            sa.select(campaigns, ballots.c.closes_at, ballots.c.closed_at)
            .join(ballots, ballots.c.ballot_id == campaigns.c.ballot_id, isouter=True)
            .where(campaigns.c.campaign_id == campaign_id, visible(caller)))).first()
        if row is None:
            raise not_found(campaign_id)
        slots = (await session.execute(sa.select(campaign_slots).where(
            campaign_slots.c.campaign_id == campaign_id).order_by(campaign_slots.c.slot))).all()
        counts = await _counts(session, campaign_id, branches, ended=(
            row.status == "cancelled" or row.closed_at is not None
            or (row.closes_at is not None and row.closes_at <= ctx.clock())))
    return {**_campaign_fields(row), "slots": [_slot_fields(s) for s in slots],
            "counts": counts, "counts_branch_codes": branches}


async def _counts(session: Any, campaign_id: uuid.UUID, branches: list[str] | None, *,
                  ended: bool) -> dict[str, Any]:
    """`ended`: the campaign was cancelled or its ballot closed — what still waits will
    never go, and counts as cancelled."""
    def mine(table: sa.Table) -> sa.ColumnElement[bool]:
        where = table.c.campaign_id == campaign_id
        return where if branches is None else sa.and_(where, table.c.branch_code.in_(branches))

    tallies = (await session.execute(
        sa.select(messages.c.status, messages.c.skip_reason, sa.func.count(),
                  sa.func.count().filter(messages.c.deferred))
        .where(mine(messages)).group_by(messages.c.status, messages.c.skip_reason))).all()
    untaken = audience_parts.c.size - audience_parts.c.taken
    waiting, waiting_deferred = (await session.execute(
        sa.select(sa.func.coalesce(sa.func.sum(untaken), 0),
                  sa.func.coalesce(sa.func.sum(untaken).filter(audience_parts.c.deferred), 0))
        .where(mine(audience_parts), audience_parts.c.taken < audience_parts.c.size))).one()
    selected_out = (await session.execute(
        sa.select(audience_skips.c.reason, sa.func.sum(audience_skips.c.n))
        .where(mine(audience_skips)).group_by(audience_skips.c.reason))).all()

    by_status: Counter[str] = Counter()
    skipped: Counter[str] = Counter({reason: 0 for reason in SKIP_REASONS})
    deferred = int(waiting_deferred)
    for reason, n in selected_out:  # left out when the slot's audience was selected
        skipped[reason] += int(n)
    for status, reason, n, n_deferred in tallies:  # left out just before sending
        by_status[status] += n
        deferred += n_deferred
        if status == "skipped":
            skipped[reason] += n
    queued = by_status["queued"] + int(waiting)
    return {
        # In the provider's hands right now (`sending`) stays queued either way.
        "queued": by_status["sending"] + (0 if ended else queued),
        # Handed to the provider, delivered or not yet known.
        "sent": by_status["sent"] + by_status["delivered"],
        "delivered": by_status["delivered"],
        "failed": by_status["failed"],
        "cancelled": by_status["cancelled"] + (queued if ended else 0),
        "skipped": {**skipped, "quiet_hours_deferred": deferred},
    }


async def list_campaigns(ctx: NotificationsContext, caller: Caller, *,
                         ballot_id: uuid.UUID | None = None, status: str | None = None,
                         cursor: str | None = None, limit: int = 50) -> dict[str, Any]:
    """The campaigns the caller may read, newest first, a page at a time."""
    query = (sa.select(campaigns).where(visible(caller))
             .order_by(campaigns.c.created_at.desc(), campaigns.c.campaign_id.desc()))
    if ballot_id is not None:
        query = query.where(campaigns.c.ballot_id == ballot_id)
    if status is not None:
        query = query.where(campaigns.c.status == status)
    if cursor:
        created_at, after = paging.decode_cursor(cursor)
        query = query.where(sa.tuple_(campaigns.c.created_at, campaigns.c.campaign_id)
                            < sa.tuple_(sa.literal(created_at), sa.literal(after)))
    assert ctx.sessions is not None
    async with ctx.sessions() as session:
        rows = (await session.execute(query.limit(limit + 1))).all()
        page = rows[:limit]
        slots = (await session.execute(sa.select(campaign_slots).where(
            campaign_slots.c.campaign_id.in_([r.campaign_id for r in page]))
            .order_by(campaign_slots.c.campaign_id, campaign_slots.c.slot))).all()
    slots_of: dict[uuid.UUID, list[dict[str, Any]]] = {}
    for slot in slots:
        slots_of.setdefault(slot.campaign_id, []).append(_slot_fields(slot))
    return {
        "items": [{**_campaign_fields(r), "slots": slots_of.get(r.campaign_id, [])}
                  for r in page],
        "next_cursor": encode_cursor(page[-1]) if len(rows) > limit else None,
    }


def encode_cursor(row: sa.Row) -> str:
    return paging.encode_cursor(row.created_at, row.campaign_id)


def _campaign_fields(row: sa.Row) -> dict[str, Any]:
    return {
        "campaign_id": row.campaign_id, "ballot_id": row.ballot_id, "channel": row.channel,
        "template": row.template, "link": row.link, "status": row.status,
        "quiet_hours": {"start": row.quiet_start, "end": row.quiet_end,
                        "timezone": row.timezone},
        "max_per_day": row.max_per_day,
        "audience": {"group_codes": row.group_codes, "branch_codes": row.branch_codes,
                     "workplace_codes": row.workplace_codes},
        "created_by": row.created_by, "created_at": row.created_at,
    }


def _slot_fields(slot: sa.Row) -> dict[str, Any]:
    return {"slot": slot.slot, "spec": slot.spec, "due_at": slot.due_at, "state": slot.state,
            "selected_at": slot.selected_at}
