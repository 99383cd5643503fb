"""Members put straight into a contacts database, for tests of everything but import."""

from __future__ import annotations

import uuid

import sqlalchemy as sa
from turnout_contacts.db.tables import members
from turnout_contacts.domain.masking import mask_email, mask_mobile
from turnout_contacts.service.queries import name_tokens


async def seed_member(ctx, *, group="G1", branch="B1", workplace="W1", grade="g5",
                      first="Alex", last="Jones", mobile: str | None = "+447911123123",
                      email: str | None = "alex.jones@example.org.uk", sms_consent=True,
                      email_consent=False, number: str | None = None) -> uuid.UUID:
    member_id = uuid.uuid4()
    async with ctx.sessions() as session, session.begin():
        await session.execute(sa.insert(members).values(
            member_id=member_id, membership_number=number or f"M{uuid.uuid4().hex[:8]}",
            group_code=group, branch_code=branch, workplace_code=workplace, grade=grade,
            first_name=ctx.cipher.encrypt(member_id, first),
            last_name=ctx.cipher.encrypt(member_id, last),
            name_tokens=name_tokens(ctx, first, last),
            mobile=ctx.cipher.encrypt(member_id, mobile),
            mobile_masked=mask_mobile(mobile) if mobile else None,
            email=ctx.cipher.encrypt(member_id, email),
            email_masked=mask_email(email) if email else None,
            sms_consent=sms_consent, email_consent=email_consent, version=1))
    return member_id
