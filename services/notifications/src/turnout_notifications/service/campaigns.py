"""Campaign commands and the campaign read model (counts).

A campaign is created for a ballot this service already knows (from its ballot-opened
event): its schedule is resolved against the ballot's closing time right away, so what
was accepted is exactly what will run. Slots in the past are due at once; slots at or
after the close are refused.
"""

from __future__ import annotations

import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, time
from typing import Any

import sqlalchemy as sa

from turnout_kit.auth import Caller
from turnout_kit.problems import Problem

from ..context import NotificationsContext
from ..db.tables import ballots, campaign_slots, campaigns, messages
from ..domain.schedule import BadSlot, resolve_slot
from ..domain.template import placeholder_errors, used_placeholders
from .scope import can_read, check_can_create, not_found

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
        await uow.commit()
    return campaign_id


async def change_status(ctx: NotificationsContext, caller: Caller, campaign_id: uuid.UUID,
                        action: str) -> None:
    allowed_from, to = TRANSITIONS[action]
    async with ctx.uow(caller.actor) as uow:
        row = (await uow.session.execute(sa.select(campaigns).where(
            campaigns.c.campaign_id == campaign_id).with_for_update())).first()
        if row is None or not can_read(caller, row.group_codes, row.branch_codes):
            raise not_found(campaign_id)
        check_can_create(caller, row.group_codes)  # who may create it may steer it
        if row.status not in allowed_from:
            raise Problem(409, detail=f"The campaign is {row.status}; it cannot {action}.")
        await uow.session.execute(sa.update(campaigns).where(
            campaigns.c.campaign_id == campaign_id).values(status=to,
                                                            updated_at=sa.func.now()))
        if to == "cancelled":
            # Queued messages will never go; they stop counting as queued.
            await uow.session.execute(sa.update(messages).where(
                messages.c.campaign_id == campaign_id, messages.c.status == "queued")
                .values(status="cancelled", updated_at=sa.func.now()))
        await uow.commit()


async def get_campaign(ctx: NotificationsContext, caller: Caller,
                       campaign_id: uuid.UUID) -> dict[str, Any]:
    assert ctx.sessions is not None
    async with ctx.sessions() as session:
        row = (await session.execute(sa.select(campaigns).where(
            campaigns.c.campaign_id == campaign_id))).first()
        if row is None or not can_read(caller, row.group_codes, row.branch_codes):
            raise not_found(campaign_id)
        slots = (await session.execute(sa.select(campaign_slots).where(
            campaign_slots.c.campaign_id == campaign_id).order_by(campaign_slots.c.slot))).all()
        tallies = (await session.execute(
            sa.select(messages.c.status, messages.c.skip_reason, sa.func.count(),
                      sa.func.count().filter(messages.c.deferred))
            .where(messages.c.campaign_id == campaign_id)
            .group_by(messages.c.status, messages.c.skip_reason))).all()
    return {**_campaign_fields(row), "slots": [_slot_fields(s) for s in slots],
            "counts": _counts(slots, tallies)}


def _counts(slots: list[sa.Row], tallies: list[sa.Row]) -> dict[str, Any]:
    by_status: Counter[str] = Counter()
    skipped: Counter[str] = Counter({reason: 0 for reason in SKIP_REASONS})
    deferred = 0
    for slot in slots:  # left out when the slot's audience was selected
        skipped.update(slot.skipped)
    for status, reason, n, n_deferred in tallies:  # left out just before sending
        by_status[status] += n
        deferred += n_deferred
        if status == "skipped":
            skipped[reason] += n
    return {
        "queued": by_status["queued"] + by_status["sending"],
        # Handed to the provider, delivered or not yet known.
        "sent": by_status["sent"] + by_status["delivered"],
        "delivered": by_status["delivered"],
        "failed": by_status["failed"],
        "cancelled": by_status["cancelled"],
        "skipped": {**skipped, "quiet_hours_deferred": deferred},
    }


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
