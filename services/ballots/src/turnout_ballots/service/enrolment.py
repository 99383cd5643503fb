"""Publishing a roll: one member-enrolled event per member on it, written to the outbox
in chunks, each chunk its own transaction.

Why chunks: a roll of a million members is a million events; in one transaction that is
minutes of locks and gigabytes of WAL held until commit, and a crash near the end loses
it all. Chunks commit as they go, and `enrolments.last_member_id` says where the next one
starts, so a restart resumes (`resume_unfinished`) rather than starting over, and two
instances never write the same chunk (the enrolments row is locked per chunk).

Why SQL builds the events: the roll is already in the database, so each chunk is one
`INSERT ... SELECT` into the outbox and no member crosses the wire. The JSON is not
written by hand: `EnrolmentTemplate` encodes a real envelope (`serde.encode`) with
sentinel values and cuts it where they are, and SQL only splices the member's id, the
event id and the codes back in. A UUID's text and a code (`[A-Za-z0-9_.-]`, see
`turnout_events.common.Code`) need no JSON escaping, so the bytes are exactly those
`serde.encode` would give for the same envelope (tests/test_enrolment.py).
"""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
import structlog
from sqlalchemy.dialects.postgresql import insert

from turnout_events.ballots import MemberEnrolled
from turnout_events.common import Placement
from turnout_events.envelope import Envelope
from turnout_events.serde import encode
from turnout_events.tables import OUTBOX_CHANNEL, outbox

from ..context import BallotsContext
from ..db.tables import enrolments, roll

log = structlog.get_logger("turnout.ballots.enrolment")

# Values no real event has, to find the holes in the encoded template by.
_EVENT_ID = uuid.UUID("00000000-5e17-4e11-8000-00000000e1d0")
_MEMBER_ID = uuid.UUID("00000000-5e17-4e11-8000-0000000004e3")
_CODES = {"group_code": "zz-sentinel-group", "branch_code": "zz-sentinel-branch",
          "workplace_code": "zz-sentinel-workplace", "grade": "zz-sentinel-grade"}
# Hole -> how many times it must appear (the member id is the key and data.member_id).
_HOLES = {"event_id": 1, "member_id": 2, **dict.fromkeys(_CODES, 1)}
_NULLABLE = frozenset({"workplace_code", "grade"})

# Backoff when a chunk fails (the database restarting): doubling, capped.
RETRY_INITIAL, RETRY_MAX = 0.5, 30.0


@dataclass(frozen=True)
class EnrolmentTemplate:
    """An encoded member-enrolled envelope cut into literal text and named holes."""

    parts: tuple[str, ...]  # literal, hole, literal, hole, ..., literal

    @classmethod
    def build(cls, ballot_id: uuid.UUID, *, occurred_at: datetime, actor: str,
              correlation_id: str | None) -> EnrolmentTemplate:
        sample = _envelope(ballot_id, _EVENT_ID, _MEMBER_ID, Placement(**_CODES),
                           occurred_at=occurred_at, actor=actor, correlation_id=correlation_id)
        text = encode(sample).decode()
        by_json = {json.dumps(str(_EVENT_ID)): "event_id",
                   json.dumps(str(_MEMBER_ID)): "member_id",
                   **{json.dumps(value): name for name, value in _CODES.items()}}
        pieces = re.split("(" + "|".join(map(re.escape, by_json)) + ")", text)
        parts = tuple(by_json.get(p, p) if i % 2 else p for i, p in enumerate(pieces))
        holes = [p for i, p in enumerate(parts) if i % 2]
        if {h: holes.count(h) for h in _HOLES} != _HOLES or len(holes) != sum(_HOLES.values()):
            raise RuntimeError("the member-enrolled envelope no longer has the expected shape")
        template = cls(parts)
        # The template must give back the very bytes it was cut from.
        if template.render(_EVENT_ID, _MEMBER_ID, Placement(**_CODES)) != text:
            raise RuntimeError("the member-enrolled template does not reproduce its envelope")
        return template

    def render(self, event_id: uuid.UUID, member_id: uuid.UUID, placement: Placement) -> str:
        """The event's JSON, filled in Python (what the SQL below does, for checking)."""
        values = {"event_id": str(event_id), "member_id": str(member_id),
                  **placement.model_dump()}
        return "".join(
            part if i % 2 == 0 else json.dumps(values[part])
            for i, part in enumerate(self.parts))

    def sql(self, columns: Any) -> sa.ColumnElement[str]:
        """The event's JSON as a SQL expression over `columns` (event_id, member_id and
        the placement codes)."""
        pieces: list[Any] = []
        for i, part in enumerate(self.parts):
            if i % 2 == 0:
                if part:
                    pieces.append(sa.literal(part, sa.Text))
                continue
            value = sa.cast(columns[part], sa.Text)
            quoted = sa.literal('"', sa.Text) + value + sa.literal('"', sa.Text)
            pieces.append(sa.func.coalesce(quoted, sa.literal("null", sa.Text))
                          if part in _NULLABLE else quoted)
        return sa.func.concat(*pieces)


def _envelope(ballot_id: uuid.UUID, event_id: uuid.UUID, member_id: uuid.UUID,
              placement: Placement, *, occurred_at: datetime, actor: str,
              correlation_id: str | None) -> Envelope:
    return Envelope.wrap(MemberEnrolled(ballot_id=ballot_id, member_id=member_id,
                                        placement=placement),
                         actor=actor, occurred_at=occurred_at, correlation_id=correlation_id,
                         event_id=event_id)


async def publish_chunk(ctx: BallotsContext, ballot_id: uuid.UUID) -> bool:
    """Write the next chunk of a roll's member-enrolled events. True when none remain."""
    assert ctx.sessions is not None
    async with ctx.sessions() as session, session.begin():
        progress = (await session.execute(
            sa.select(enrolments).where(enrolments.c.ballot_id == ballot_id)
            .with_for_update())).first()
        if progress is None or progress.completed_at is not None:
            return True
        template = EnrolmentTemplate.build(ballot_id, occurred_at=progress.occurred_at,
                                           actor=progress.actor,
                                           correlation_id=progress.correlation_id)
        after = progress.last_member_id
        chunk = (
            sa.select(roll.c.member_id, roll.c.group_code, roll.c.branch_code,
                      roll.c.workplace_code, roll.c.grade,
                      sa.func.gen_random_uuid().label("event_id"))
            .where(roll.c.ballot_id == ballot_id,
                   roll.c.member_id > after if after is not None else sa.true())
            .order_by(roll.c.member_id)
            .limit(ctx.settings.enrolment_chunk_size)
            .cte("chunk"))
        written = (
            insert(outbox).from_select(
                ["event_id", "topic", "key", "event_type", "event_version", "correlation_id",
                 "payload"],
                sa.select(chunk.c.event_id,
                          sa.literal(ctx.topics.events(MemberEnrolled.source), sa.Text),
                          sa.cast(chunk.c.member_id, sa.Text),
                          sa.literal(MemberEnrolled.event_type, sa.Text),
                          sa.literal(MemberEnrolled.version, sa.Integer),
                          sa.literal(progress.correlation_id, sa.Text),
                          sa.func.convert_to(template.sql(chunk.c), "UTF8"))
                .order_by(chunk.c.member_id))
            .returning(outbox.c.key)
            .cte("written"))
        # UUIDs order as their lowercase text does, so max(key) is the chunk's last member.
        count, last = (await session.execute(
            sa.select(sa.func.count(), sa.func.max(written.c.key)).select_from(written))).one()
        published = progress.published + count
        done = count < ctx.settings.enrolment_chunk_size or published >= progress.total
        await session.execute(
            sa.update(enrolments).where(enrolments.c.ballot_id == ballot_id).values(
                published=published,
                last_member_id=uuid.UUID(last) if last else progress.last_member_id,
                completed_at=sa.func.now() if done else None))
        if count:
            await session.execute(sa.select(sa.func.pg_notify(OUTBOX_CHANNEL, "")))
    log.debug("enrolment.chunk", ballot_id=str(ballot_id), published=published,
              total=progress.total)
    return done


async def publish_roll(ctx: BallotsContext, ballot_id: uuid.UUID) -> None:
    """Write every remaining chunk, waiting out database trouble rather than giving up:
    the ballot cannot close until its roll is published."""
    delay = RETRY_INITIAL
    while True:
        try:
            if await publish_chunk(ctx, ballot_id):
                log.info("enrolment.complete", ballot_id=str(ballot_id))
                return
            delay = RETRY_INITIAL
        except Exception as exc:
            log.warning("enrolment.chunk_failed", ballot_id=str(ballot_id),
                        error=type(exc).__name__, retry_in=delay)
            await asyncio.sleep(delay)  # backoff before retrying, not a race fix
            delay = min(delay * 2, RETRY_MAX)


def start(ctx: BallotsContext, ballot_id: uuid.UUID) -> asyncio.Task:
    """The task publishing this roll, started if this process is not already on it."""
    task = ctx.enrolments.get(ballot_id)
    if task is None or task.done():
        task = asyncio.create_task(publish_roll(ctx, ballot_id),
                                   name=f"enrolment-{ballot_id}")
        ctx.enrolments[ballot_id] = task

        def forget(finished: asyncio.Task) -> None:
            if ctx.enrolments.get(ballot_id) is finished:
                del ctx.enrolments[ballot_id]

        task.add_done_callback(forget)
    return task


async def resume_unfinished(ctx: BallotsContext) -> None:
    """At startup: carry on publishing rolls a previous process did not finish."""
    assert ctx.sessions is not None
    async with ctx.sessions() as session:
        unfinished = (await session.scalars(
            sa.select(enrolments.c.ballot_id).where(enrolments.c.completed_at.is_(None)))).all()
    for ballot_id in unfinished:
        log.info("enrolment.resumed", ballot_id=str(ballot_id))
        start(ctx, ballot_id)


async def stop_all(ctx: BallotsContext) -> None:
    """At shutdown: stop mid-chunk (that chunk rolls back; the next start resumes it)."""
    tasks = list(ctx.enrolments.values())
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
