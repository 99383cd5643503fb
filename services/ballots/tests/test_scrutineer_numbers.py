"""A scrutineer's list keyed by membership number: the contacts service (running for real,
on its own database and the same topics) matches the numbers to members; a number that
names nobody, or a member not on the roll, refuses the whole list; if contacts cannot
answer, nothing is marked."""

from __future__ import annotations

import httpx
import pytest
import sqlalchemy as sa
from turnout_ballots.db.tables import member_replica, votes
from turnout_ballots.main import create_ballots_app
from turnout_ballots.service.directory import MemberDirectory
from turnout_contacts.db.tables import members
from turnout_contacts.main import create_contacts_app
from turnout_contacts.settings import ContactsSettings

from services.ballots.tests.seed import open_ballot, published
from tests.support.events import eventually
from tests.support.isolation import create_database, drop_database
from tests.support.services import running
from turnout_local.synthetic import generate_union, roster_csv_bytes

pytestmark = pytest.mark.integration


def listing(*numbers: str) -> bytes:
    return ("membership_number,name\n" + "".join(f"{n},\n" for n in numbers)).encode()


async def test_a_list_of_membership_numbers_marks_the_members_it_names(
        ballots_settings, topics, kafka_bootstrap, tokens, infra):
    union = list(generate_union(members=30, groups=2, branches=3, workplaces=6,
                                contact_coverage=0.5, seed=5))
    national = tokens("national")
    contacts_db = await create_database(infra.database_url)
    try:
        contacts = create_contacts_app(ContactsSettings(
            database_url=contacts_db, kafka_bootstrap_servers=kafka_bootstrap,
            topic_namespace=topics.namespace, topic_partitions=topics.partitions))
        async with running(contacts, "http://contacts") as contacts_client:
            imported = await contacts_client.post(
                "/v1/members:import", content=roster_csv_bytes(union),
                headers={**national, "Content-Type": "text/csv"})
            assert imported.status_code < 300, imported.text
            async with contacts.state.ctx.sessions() as session:
                ids = dict((await session.execute(
                    sa.select(members.c.membership_number, members.c.member_id))).all())

            ballots = create_ballots_app(ballots_settings)
            ballots.state.ctx.directory = MemberDirectory(
                ballots_settings, transport=httpx.ASGITransport(app=contacts))
            async with running(ballots, "http://ballots") as client:
                client.app = ballots  # type: ignore[attr-defined]

                async def replicated() -> bool:
                    async with ballots.state.ctx.engine.connect() as conn:
                        return await conn.scalar(sa.select(sa.func.count())
                                                 .select_from(member_replica)) == len(union)

                await eventually(replicated, what="ballots to hold every member contacts has")
                in_g1 = [m.membership_number for m in union if m.group_code == union[0].group_code]
                ballot_id = await open_ballot(client, tokens, groups=[union[0].group_code],
                                              branches=[])
                path = f"/v1/ballots/{ballot_id}/votes:import"
                csv = {"Content-Type": "text/csv"}

                # A number nobody has, and one of a member not on this ballot's roll:
                # both lines listed, nothing marked.
                outside = next(m.membership_number for m in union
                               if m.group_code != union[0].group_code)
                refused = await client.post(path, content=listing(in_g1[0], "NOSUCH-1", outside),
                                            headers={**national, **csv})
                assert refused.status_code == 422, refused.text
                assert [(e["row"], e["field"]) for e in refused.json()["errors"]] == [
                    (3, "membership_number"), (4, "membership_number")]
                assert "NOSUCH-1" not in refused.text and outside not in refused.text

                # Contacts away: 503, nothing marked.
                ballots.state.ctx.directory = MemberDirectory(
                    ballots_settings.model_copy(update={"contacts_url": "http://127.0.0.1:9"}))
                away = await client.post(path, content=listing(*in_g1[:2]),
                                         headers={**national, **csv})
                assert away.status_code == 503, away.text
                assert "nothing was marked" in away.json()["detail"]
                async with ballots.state.ctx.engine.connect() as conn:
                    assert await conn.scalar(sa.select(sa.func.count()).select_from(votes)) == 0

                ballots.state.ctx.directory = MemberDirectory(
                    ballots_settings, transport=httpx.ASGITransport(app=contacts))
                marked = await client.post(path, content=listing(*in_g1, in_g1[0]),
                                           headers={**national, **csv})
                assert marked.status_code == 200, marked.text
                assert marked.json() == {"lines": len(in_g1) + 1, "members": len(in_g1),
                                         "marked": len(in_g1), "already_voted": 0,
                                         "duplicate_lines": 1}
                voted = await published(client, kafka_bootstrap, topics,
                                        of_type="ballots.voted")
                assert sorted(e.data["member_id"] for e in voted) == sorted(
                    str(ids[n]) for n in in_g1)
                assert {e.data["vote_source"] for e in voted} == {"scrutineer"}
    finally:
        await drop_database(infra.database_url, contacts_db)
