"""Publishing a roll (service/enrolment.py): the member-enrolled events SQL writes are
byte for byte what the contract's encoder writes, every member gets exactly one, and a
publication cut short resumes where it stopped."""

from __future__ import annotations

import uuid
from collections import Counter
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa
from turnout_ballots.db.tables import enrolments
from turnout_ballots.service import enrolment
from turnout_ballots.service.enrolment import EnrolmentTemplate

from services.ballots.tests.seed import (
    create_ballot,
    ctx_of,
    eventually,
    open_ballot,
    published,
    seed_members,
)
from turnout_events.ballots import MemberEnrolled
from turnout_events.common import Placement
from turnout_events.envelope import Envelope
from turnout_events.registry import parse_payload
from turnout_events.serde import decode, encode
from turnout_events.tables import outbox

PLACEMENTS = [
    Placement(group_code="G1", branch_code="B1", workplace_code="W1", grade="g5"),
    Placement(group_code="NW-3", branch_code="b.7_x", workplace_code=None, grade=None),
    Placement(group_code="G", branch_code="B" * 40, workplace_code="W", grade=None),
]


@pytest.mark.unit
@pytest.mark.parametrize("correlation_id", [None, "req-42"])
@pytest.mark.parametrize("placement", PLACEMENTS)
def test_the_template_gives_the_encoders_bytes(placement, correlation_id):
    ballot_id, event_id, member_id = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    opened = datetime(2026, 3, 1, 9, 0, 0, 123456, tzinfo=UTC)
    template = EnrolmentTemplate.build(ballot_id, occurred_at=opened, actor="national:n-1",
                                       correlation_id=correlation_id)
    rendered = template.render(event_id, member_id, placement)
    recorded_at = decode(rendered.encode()).recorded_at  # the template's own
    expected = Envelope(
        id=event_id, type=MemberEnrolled.event_type, version=MemberEnrolled.version,
        occurred_at=opened, recorded_at=recorded_at, source="ballots", key=str(member_id),
        correlation_id=correlation_id, actor="national:n-1",
        data=MemberEnrolled(ballot_id=ballot_id, member_id=member_id,
                            placement=placement).model_dump(mode="json"))
    assert rendered.encode() == encode(expected)


async def outbox_enrolments(ctx, ballot_id) -> list[bytes]:
    async with ctx.engine.connect() as conn:
        return list((await conn.execute(sa.select(outbox.c.payload).where(
            outbox.c.event_type == MemberEnrolled.event_type))).scalars())


@pytest.mark.integration
async def test_a_roll_is_published_in_chunks_one_event_per_member(
        ballots_app, tokens, topics, kafka_bootstrap):
    ctx = ctx_of(ballots_app)
    members = await seed_members(ctx, 40, branch="B1", workplace=None)
    members += await seed_members(ctx, 3, branch="B2", grade=None)
    ballot_id = await open_ballot(ballots_app, tokens, branches=["B1", "B2"])

    enrolled = await published(ballots_app, kafka_bootstrap, topics,
                               of_type=MemberEnrolled.event_type)
    assert Counter(e.data["member_id"] for e in enrolled) == Counter(map(str, members))
    assert len({e.id for e in enrolled}) == len(members)
    for envelope in enrolled:
        payload = parse_payload(envelope)
        assert payload.ballot_id == ballot_id and envelope.key == str(payload.member_id)
    raw = await outbox_enrolments(ctx, ballot_id)
    assert all(encode(decode(payload)) == payload for payload in raw)
    async with ctx.engine.connect() as conn:
        progress = (await conn.execute(sa.select(enrolments))).one()
    assert (progress.total, progress.published) == (43, 43)  # in 7 chunks of 7 or fewer


@pytest.mark.integration
async def test_a_publication_cut_short_resumes_where_it_stopped(ballots_app, tokens):
    ctx = ctx_of(ballots_app)
    await seed_members(ctx, 30, branch="B1")
    ballot_id = await open_ballot(ballots_app, tokens)
    # Make it look as if the process died after two chunks: the events after them were
    # never written, and the progress row says so.
    async with ctx.engine.begin() as conn:
        kept = (await conn.execute(
            sa.select(outbox.c.key).where(outbox.c.event_type == MemberEnrolled.event_type)
            .order_by(outbox.c.key).limit(14))).scalars().all()
        await conn.execute(sa.delete(outbox).where(
            outbox.c.event_type == MemberEnrolled.event_type, outbox.c.key > kept[-1]))
        await conn.execute(sa.update(enrolments).values(
            published=14, last_member_id=uuid.UUID(kept[-1]), completed_at=None))
    national = tokens("national")
    ballot = (await ballots_app.get(f"/v1/ballots/{ballot_id}", headers=national)).json()
    assert ballot["enrolment"] == {"total": 30, "published": 14, "complete": False}
    refused = await ballots_app.post(f"/v1/ballots/{ballot_id}/close", headers=national)
    assert refused.status_code == 409 and "14 of 30" in refused.json()["detail"]

    # The refused close restarted the publication; a restart would too.
    await enrolment.resume_unfinished(ctx)

    async def complete():
        got = await ballots_app.get(f"/v1/ballots/{ballot_id}", headers=national)
        return got.json()["enrolment"]["complete"]

    await eventually(complete, what="the roll to be published")
    payloads = await outbox_enrolments(ctx, ballot_id)
    assert len(payloads) == 30
    assert len({decode(p).data["member_id"] for p in payloads}) == 30
    closed = await ballots_app.post(f"/v1/ballots/{ballot_id}/close", headers=national)
    assert closed.status_code == 200, closed.text


@pytest.mark.integration
async def test_opening_answers_202_while_the_roll_is_still_being_published(
        ballots_app, tokens):
    ctx = ctx_of(ballots_app)
    await seed_members(ctx, 50, branch="B1")
    ballot_id = await create_ballot(ballots_app, tokens)
    ctx.settings.open_wait_seconds = 0  # do not wait at all
    response = await ballots_app.post(f"/v1/ballots/{ballot_id}/open",
                                      headers=tokens("national"))
    assert response.status_code == 202, response.text
    assert response.json()["status"] == "open"
    assert response.json()["enrolment"]["complete"] is False

    async def complete():
        got = await ballots_app.get(f"/v1/ballots/{ballot_id}", headers=tokens("national"))
        return got.json()["enrolment"]["complete"]

    await eventually(complete, what="the roll to be published")
