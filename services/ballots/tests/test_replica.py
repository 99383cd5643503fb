"""The member replica, fed by contacts' events on the real topic: it converges whatever
the order and however often events arrive, and a ballot's roll is fixed when it opens."""

from __future__ import annotations

import random
import uuid

import pytest
import sqlalchemy as sa
from turnout_ballots.db.tables import member_replica

from services.ballots.tests.seed import (
    consumed,
    create_ballot,
    ctx_of,
    open_ballot,
    produce,
    published,
)
from turnout_events.common import ContactFlags, Placement
from turnout_events.contacts import MemberMoved, MemberRegistered
from turnout_events.envelope import Envelope

pytestmark = pytest.mark.integration

FLAGS = ContactFlags(has_mobile=True, has_email=False, sms_consent=True, email_consent=False)


def placed(branch: str, group: str = "G1", workplace: str | None = "W1") -> Placement:
    return Placement(group_code=group, branch_code=branch, workplace_code=workplace,
                     grade="g5")


def history(member_id: uuid.UUID, branches: list[str]) -> list[Envelope]:
    """A member registered in branches[0], then moved through the rest, version by
    version, as contacts would publish it."""
    events = [MemberRegistered(member_id=member_id, member_version=1,
                               placement=placed(branches[0]), contact=FLAGS)]
    for version, (before, after) in enumerate(zip(branches, branches[1:], strict=False),
                                               start=2):
        events.append(MemberMoved(member_id=member_id, member_version=version,
                                  previous=placed(before), placement=placed(after)))
    return [Envelope.wrap(e, actor="system") for e in events]


async def replica(client) -> dict[uuid.UUID, tuple[str, int]]:
    async with ctx_of(client).engine.connect() as conn:
        rows = (await conn.execute(sa.select(member_replica))).all()
    return {r.member_id: (r.branch_code, r.member_version) for r in rows}


async def test_the_replica_converges_whatever_the_order_and_repeats(
        ballots_app, topics, kafka_bootstrap):
    rng = random.Random(4)
    members = {uuid.uuid4(): branches
               for branches in (["B1"], ["B1", "B2"], ["B1", "B2", "B3", "B4"],
                                ["B5", "B6", "B7"])}
    events = [e for member_id, branches in members.items()
              for e in history(member_id, branches)]
    # Every event once, shuffled, then a second copy of some (a redelivery).
    shuffled = events[:]
    rng.shuffle(shuffled)
    sent = shuffled + rng.sample(events, 4)
    # One member's move arrives before its registration, whatever the shuffle did.
    late = uuid.uuid4()
    members[late] = ["B8", "B9"]
    late_registration = history(late, members[late])
    sent += [late_registration[1], late_registration[0]]

    await produce(kafka_bootstrap, topics.events("contacts"), sent)
    await consumed(ballots_app, events + late_registration)

    assert await replica(ballots_app) == {
        member_id: (branches[-1], len(branches)) for member_id, branches in members.items()}


async def test_the_roll_is_fixed_when_the_ballot_opens(ballots_app, tokens, topics,
                                                       kafka_bootstrap):
    staying, leaving = uuid.uuid4(), uuid.uuid4()
    before = history(staying, ["B1"]) + history(leaving, ["B1"])
    await produce(kafka_bootstrap, topics.events("contacts"), before)
    await consumed(ballots_app, before)
    ballot_id = await open_ballot(ballots_app, tokens, branches=["B1"])
    national = tokens("national")
    b1_rep = tokens("rep", branches=["B1"])

    # After opening: one member moves out of the ballot's scope, one joins it.
    joining = uuid.uuid4()
    after = [history(leaving, ["B1", "B2"])[1]] + history(joining, ["B1"])
    await produce(kafka_bootstrap, topics.events("contacts"), after)
    await consumed(ballots_app, after)
    assert (await replica(ballots_app))[leaving] == ("B2", 2)

    ballot = (await ballots_app.get(f"/v1/ballots/{ballot_id}", headers=national)).json()
    assert ballot["counts"]["eligible"] == 2
    # Still on the roll, placed as at opening; chased and marked by their branch now.
    b2_rep = tokens("rep", branches=["B2"])
    entry = await ballots_app.get(f"/v1/ballots/{ballot_id}/roll/{leaving}", headers=b2_rep)
    assert entry.status_code == 200
    assert entry.json()["placement"]["branch_code"] == "B1"  # as at opening
    gone = await ballots_app.put(f"/v1/ballots/{ballot_id}/votes/{leaving}",
                                 json={"source": "rep"}, headers=b1_rep)
    assert gone.status_code == 404, gone.text
    marked = await ballots_app.put(f"/v1/ballots/{ballot_id}/votes/{leaving}",
                                   json={"source": "rep"}, headers=b2_rep)
    assert marked.status_code == 201, marked.text
    newcomer = await ballots_app.put(f"/v1/ballots/{ballot_id}/votes/{joining}",
                                     json={"source": "rep"}, headers=national)
    assert newcomer.status_code == 404
    enrolled = await published(ballots_app, kafka_bootstrap, topics,
                               of_type="ballots.member-enrolled")
    assert sorted(e.data["member_id"] for e in enrolled) == sorted([str(staying),
                                                                   str(leaving)])

    # A ballot created now takes the replica as it is now.
    later = await create_ballot(ballots_app, tokens, branches=["B2"])
    opened = await ballots_app.post(f"/v1/ballots/{later}/open", headers=national)
    assert opened.json()["counts"]["eligible"] == 1


async def test_a_member_who_moves_is_in_the_scope_of_their_new_branch(
        ballots_app, tokens, topics, kafka_bootstrap):
    """Contacts' chase list shows a member to the rep of the branch they are in now and
    reporting counts them there, so that rep (and that group's organiser) is the one who
    reads and marks them; the branch they left no longer does. Who is on the roll stays
    as it was at opening."""
    moving, staying = uuid.uuid4(), uuid.uuid4()
    before = history(moving, ["B1"]) + history(staying, ["B1"])
    await produce(kafka_bootstrap, topics.events("contacts"), before)
    await consumed(ballots_app, before)
    ballot_id = await open_ballot(ballots_app, tokens, groups=["G1"], branches=[])
    moved = [MemberMoved(member_id=moving, member_version=2, previous=placed("B1"),
                         placement=placed("B2", group="G2"))]
    moved = [Envelope.wrap(e, actor="system") for e in moved]
    await produce(kafka_bootstrap, topics.events("contacts"), moved)
    await consumed(ballots_app, moved)

    b1_rep, b2_rep = tokens("rep", branches=["B1"]), tokens("rep", branches=["B2"])
    g2_organiser = tokens("organiser", groups=["G2"])
    path = f"/v1/ballots/{ballot_id}"
    counts = {name: (await ballots_app.get(path, headers=headers)).json()["counts"]
              for name, headers in (("b1", b1_rep), ("b2", b2_rep), ("g2", g2_organiser))}
    assert [counts[n]["eligible"] for n in ("b1", "b2", "g2")] == [1, 1, 1]
    for headers in (b2_rep, g2_organiser):
        entry = await ballots_app.get(f"{path}/roll/{moving}", headers=headers)
        assert entry.status_code == 200, entry.text
    assert (await ballots_app.get(f"{path}/roll/{moving}", headers=b1_rep)).status_code == 404
    asked = await ballots_app.post(f"{path}/replacement-requests",
                                   json={"member_id": str(moving), "reason": "lost"},
                                   headers=b2_rep)
    assert asked.status_code == 201, asked.text
    refused = await ballots_app.post(f"{path}/votes:import",
                                     content=f"member_id\n{moving}\n".encode(),
                                     headers=tokens("organiser", groups=["G1"]))
    assert refused.status_code == 422, refused.text
    listed = await ballots_app.post(f"{path}/votes:import",
                                    content=f"member_id\n{moving}\n".encode(),
                                    headers=g2_organiser)
    assert listed.status_code == 200, listed.text
    counts = (await ballots_app.get(path, headers=b2_rep)).json()["counts"]
    assert (counts["eligible"], counts["voted"]) == (1, 1)
    assert (await ballots_app.get(path, headers=b1_rep)).json()["counts"]["voted"] == 0
