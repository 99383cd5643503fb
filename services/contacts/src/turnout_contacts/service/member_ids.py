"""Membership numbers to member ids, for the ballots service.

A scrutineer's list names members by membership number; the ballots service knows them
by member id only (events carry no membership number: the number is known to the member,
their employer and the union, so it stays in this erasable database with everything else
that identifies a person). It asks here, with a service token, when such a list comes.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

import sqlalchemy as sa

from ..context import ContactsContext
from ..db.tables import members

MAX_NUMBERS = 10_000


async def member_ids(ctx: ContactsContext, numbers: Sequence[str]) -> dict[str, uuid.UUID]:
    """The member id of each membership number that names a member (unknown ones are
    absent). Erased members are found too: their number and id are kept, and a vote
    they cast still counts."""
    wanted = list(dict.fromkeys(numbers))
    if len(wanted) > MAX_NUMBERS:
        raise ValueError(f"at most {MAX_NUMBERS} membership numbers per call")
    if not wanted:
        return {}
    async with ctx.sessions() as session:  # type: ignore[misc]
        rows = await session.execute(
            sa.select(members.c.membership_number, members.c.member_id)
            .where(members.c.membership_number.in_(wanted)))
        return {number: member_id for number, member_id in rows.all()}
