"""Erasure of a member's personal data (UK GDPR art. 17), keeping pseudonymous counts.

Removed: names, mobile, personal email (ciphertext and masked forms), the name search
tokens, the personal-fields digest, and every conversation note; consents are withdrawn.
Kept: the member id (pseudonymous, and what every event already published refers to),
the placement (so turnout and coverage counts stay right), the conversation log without
its notes (channel, outcome, when, by which rep: counts of contacts made), and the
membership number.

The membership number stays because it is the membership system's key for the person:
without it, the next roster import would not recognise the row and would register the
member afresh, contact details and all. Keeping it lets the import see that this member
was erased and leave their personal fields empty (the import's rule, not this module's).

The reveal audit log is kept as it is: it is the DPO's record of who saw the member's
details and why, and it holds no contact values (reasons are cleaned when written).

Events: one `contact-updated` (reason `erasure`, every flag false, `changed` naming every
attribute an erasure clears, whether or not the member had it) and one `consent-changed`
(via `erasure`) per withdrawn consent. The first erasure always publishes, even for a
member with no mobile, email or consent left: another service may still hold something of
theirs from before (the notifications service keeps replies to texts sent to a number the
member removed later) and must hear that it is to go. A second erasure finds nothing left
and publishes nothing.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any, cast

import sqlalchemy as sa
import structlog
from sqlalchemy.engine import CursorResult

from turnout_events.common import MessageChannel
from turnout_events.contacts import (
    ConsentChanged,
    ConsentSource,
    ContactAttribute,
    ContactChangeReason,
    ContactUpdated,
)
from turnout_kit.auth import Caller
from turnout_kit.idempotency import forget
from turnout_kit.problems import Problem

from ..context import ContactsContext
from ..db.tables import conversations, members
from ..domain.member import Member

log = structlog.get_logger("turnout.contacts.erasure")

# What an erasure clears, as its contact-updated names it.
ERASED = (ContactAttribute.MOBILE, ContactAttribute.EMAIL, ContactAttribute.SMS_CONSENT,
          ContactAttribute.EMAIL_CONSENT)


@dataclass(frozen=True)
class Erasure:
    member_id: uuid.UUID
    already_erased: bool
    removed: list[str]  # field names, never values
    notes_removed: int
    events: int


async def erase_personal_data(ctx: ContactsContext, caller: Caller,
                              member_id: uuid.UUID) -> Erasure:
    async with ctx.uow(caller.actor) as uow:
        session = uow.session
        row = (await session.execute(
            sa.select(members).where(members.c.member_id == member_id)
            .with_for_update())).first()
        if row is None or not caller.can_see(row.group_code, row.branch_code):
            raise Problem(404, detail=f"No member {member_id}.")
        member = Member.from_row(row)

        removed = [name for name, column in (("first_name", "first_name"),
                                             ("last_name", "last_name"), ("mobile", "mobile"),
                                             ("personal_email", "email"))
                   if getattr(row, column) is not None]
        if row.name_tokens:
            removed.append("name_tokens")
        if row.personal_digest is not None:
            removed.append("personal_digest")
        # An UPDATE's result is a CursorResult (execute is typed as any Result).
        notes = cast("CursorResult[Any]", await session.execute(
            sa.update(conversations)
            .where(conversations.c.member_id == member_id, conversations.c.note.is_not(None))
            .values(note=None))).rowcount

        changed = [attr for attr, present in (
            (ContactAttribute.MOBILE, member.has_mobile),
            (ContactAttribute.EMAIL, member.has_email),
            (ContactAttribute.SMS_CONSENT, member.sms_consent),
            (ContactAttribute.EMAIL_CONSENT, member.email_consent)) if present]
        after = member
        if changed or row.erased_at is None:
            after = after.bumped(has_mobile=False, has_email=False, sms_consent=False,
                                 email_consent=False)
            uow.emit(ContactUpdated(member_id=member_id, member_version=after.version,
                                    contact=after.contact, changed=list(ERASED),
                                    reason=ContactChangeReason.ERASURE))
            for channel, had in ((MessageChannel.SMS, member.sms_consent),
                                 (MessageChannel.EMAIL, member.email_consent)):
                if had:
                    after = after.bumped()
                    uow.emit(ConsentChanged(member_id=member_id, member_version=after.version,
                                            channel=channel, granted=False,
                                            via=ConsentSource.ERASURE, contact=after.contact))

        # Stored idempotent responses (a PATCH answer shows the member's name) are personal
        # data too, kept up to a day outside this table's reach: they go with the rest.
        await forget(session, path_containing=str(member_id))  # type: ignore[arg-type]
        already = row.erased_at is not None and not removed and not changed and not notes
        if not already:
            await session.execute(
                sa.update(members).where(members.c.member_id == member_id).values(
                    first_name=None, last_name=None, name_tokens=[], mobile=None,
                    mobile_masked=None, email=None, email_masked=None, personal_digest=None,
                    sms_consent=False, email_consent=False, version=after.version,
                    erased_at=sa.func.coalesce(members.c.erased_at, sa.func.now()),
                    updated_at=sa.func.now()))
            await uow.commit()
    if not already:
        log.info("personal_data_erased", member_id=str(member_id), actor=caller.actor,
                 removed=removed, notes_removed=notes, events=len(uow.events))
    return Erasure(member_id=member_id, already_erased=already, removed=removed,
                   notes_removed=notes, events=len(uow.events))
