"""Test data for the ballots service: replica members put straight into its database, or
contacts events produced onto the test's topics; ballots created and opened over HTTP."""

from __future__ import annotations

import functools
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from turnout_ballots.db.tables import member_replica

from tests.support.events import eventually as eventually_within
from tests.support.events import produce as produce_envelopes
from tests.support.kafka import read_to_end
from tests.support.outbox import outbox_drained
from turnout_events.envelope import Envelope, EventData
from turnout_events.serde import decode
from turnout_events.tables import inbox


def ctx_of(client):
    return client.app.state.ctx


async def seed_member(ctx, *, group="G1", branch="B1", workplace: str | None = "W1",
                      grade: str | None = "g5", version: int = 1) -> uuid.UUID:
    """A member in the replica, as if contacts' member-registered had been consumed."""
    [member_id] = await seed_members(ctx, 1, group=group, branch=branch, workplace=workplace,
                                     grade=grade, version=version)
    return member_id


async def seed_members(ctx, count: int, *, group="G1", branch="B1",
                       workplace: str | None = "W1", grade: str | None = "g5",
                       version: int = 1) -> list[uuid.UUID]:
    ids = [uuid.uuid4() for _ in range(count)]
    async with ctx.sessions() as session, session.begin():
        await session.execute(sa.insert(member_replica), [
            {"member_id": m, "group_code": group, "branch_code": branch,
             "workplace_code": workplace, "grade": grade, "member_version": version}
            for m in ids])
    return ids


async def produce(bootstrap: str, topic: str, payloads: Iterable[EventData | Envelope], *,
                  actor: str = "system") -> list[Envelope]:
    """Publish events as their producer would (same key, same headers); returns them."""
    envelopes = [p if isinstance(p, Envelope) else Envelope.wrap(p, actor=actor)
                 for p in payloads]
    await produce_envelopes(bootstrap, topic, envelopes)
    return envelopes


# The ballots tests wait at most 30 s for an effect.
eventually = functools.partial(eventually_within, timeout=30.0)


def ballot_body(*, groups=(), branches=("B1",), threshold: float | None = 0.5,
                name="Pay 2026 industrial action ballot", kind="statutory") -> dict:
    opens = datetime.now(UTC).replace(microsecond=0)
    return {"name": name, "kind": kind, "opens_at": opens.isoformat(),
            "closes_at": (opens + timedelta(days=21)).isoformat(),
            "turnout_threshold": threshold,
            "scope": {"group_codes": list(groups), "branch_codes": list(branches)}}


async def create_ballot(client, tokens, **body: Any) -> uuid.UUID:
    response = await client.post("/v1/ballots", json=ballot_body(**body),
                                 headers=tokens("national"))
    assert response.status_code == 201, response.text
    return uuid.UUID(response.json()["ballot_id"])


async def open_ballot(client, tokens, **body: Any) -> uuid.UUID:
    ballot_id = await create_ballot(client, tokens, **body)
    response = await client.post(f"/v1/ballots/{ballot_id}/open", headers=tokens("national"))
    assert response.status_code == 200, response.text
    return ballot_id


async def published(client, kafka_bootstrap, topics, *, of_type: str | None = None
                    ) -> list[Envelope]:
    """Every event the service has published so far (its outbox drained first)."""
    await outbox_drained(ctx_of(client).engine)
    records = await read_to_end(kafka_bootstrap, [topics.events("ballots")])
    envelopes = [decode(r.value) for r in records]
    return [e for e in envelopes if of_type is None or e.type == of_type]


async def consumed(client, envelopes: Iterable[Envelope], *, timeout: float = 60.0) -> None:
    """Wait until the service has handled these events (their ids are in its inbox)."""
    wanted = {e.id for e in envelopes}

    async def done() -> bool:
        async with ctx_of(client).engine.connect() as conn:
            seen = set((await conn.execute(
                sa.select(inbox.c.event_id).where(inbox.c.event_id.in_(wanted)))).scalars())
        return seen == wanted

    await eventually(done, timeout=timeout, what=f"{len(wanted)} events to be consumed")
