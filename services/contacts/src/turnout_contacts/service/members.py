"""Command handlers for one member: contact details and consent, placement, conversations.

Each runs in one unit of work: the row is locked, changed, and every event the change
causes is staged in the outbox in the same transaction. A command that changes nothing
publishes nothing.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import cast

import sqlalchemy as sa

from turnout_events.common import MessageChannel
from turnout_events.contacts import (
    ConsentChanged,
    ConsentSource,
    ContactAttribute,
    ContactChangeReason,
    ContactUpdated,
    ConversationChannel,
    ConversationOutcome,
    MemberContacted,
    MemberMoved,
)
from turnout_kit.auth import Caller, Role
from turnout_kit.problems import Problem

from ..context import ContactsContext
from ..db.tables import conversations, members
from ..domain.masking import mask_email, mask_mobile
from ..domain.member import InvalidValue, Member, normalise_email, normalise_mobile, placement_of
from .scope import load_member_row

UNSET = object()


@dataclass(frozen=True)
class ContactChange:
    """What a caller asked to change; UNSET fields are left alone, None removes a value."""

    mobile: object = UNSET
    email: object = UNSET
    sms_consent: object = UNSET
    email_consent: object = UNSET


def _invalid(field: str, reason: InvalidValue | str) -> Problem:
    return Problem(422, detail=f"{field}: {reason}",
                   errors=[{"field": field, "message": str(reason)}])


async def update_contact(ctx: ContactsContext, caller: Caller, member_id: uuid.UUID,
                         change: ContactChange,
                         reason: ContactChangeReason = ContactChangeReason.REP_EDIT) -> Member:
    values: dict[str, object] = {}
    if change.mobile is not UNSET:
        try:
            # When set, mobile and email hold the API's str or None (typed object for UNSET).
            values["mobile"] = normalise_mobile(cast(str, change.mobile)) if change.mobile else None
        except InvalidValue as exc:
            raise _invalid("mobile", exc) from None
    if change.email is not UNSET:
        try:
            values["email"] = normalise_email(cast(str, change.email)) if change.email else None
        except InvalidValue as exc:
            raise _invalid("personal_email", exc) from None

    async with ctx.uow(caller.actor) as uow:
        row = await load_member_row(uow.session, caller, member_id, for_update=True)
        member = Member.from_row(row)
        current = {
            "mobile": ctx.cipher.decrypt(member_id, row.mobile),
            "email": ctx.cipher.decrypt(member_id, row.email),
        }
        update: dict[str, object] = {}
        changed: list[ContactAttribute] = []
        for attr, name in ((ContactAttribute.MOBILE, "mobile"), (ContactAttribute.EMAIL, "email")):
            if name in values and values[name] != current[name]:
                value = values[name]
                update[name] = ctx.cipher.encrypt(member_id, value)  # type: ignore[arg-type]
                masker = mask_mobile if name == "mobile" else mask_email
                update[f"{name}_masked"] = masker(value) if value else None  # type: ignore[arg-type]
                changed.append(attr)
        after = member
        if changed:
            after = after.bumped(has_mobile=update.get("mobile", row.mobile) is not None,
                                 has_email=update.get("email", row.email) is not None)
            uow.emit(ContactUpdated(member_id=member_id, member_version=after.version,
                                    contact=after.contact, changed=changed, reason=reason))
        for channel, name in ((MessageChannel.SMS, "sms_consent"),
                              (MessageChannel.EMAIL, "email_consent")):
            wanted = getattr(change, name)
            if wanted is UNSET or wanted is None or bool(wanted) == getattr(after, name):
                continue
            after = after.bumped(**{name: bool(wanted)})
            update[name] = bool(wanted)
            uow.emit(ConsentChanged(member_id=member_id, member_version=after.version,
                                    channel=channel, granted=bool(wanted),
                                    via=ConsentSource.REP if reason is ContactChangeReason.REP_EDIT
                                    else ConsentSource.MEMBER_REQUEST,
                                    contact=after.contact))
        if after.version != member.version:
            await uow.session.execute(
                sa.update(members).where(members.c.member_id == member_id)
                .values(**update, version=after.version, updated_at=sa.func.now()))
            await uow.commit()
        return after


async def update_placement(ctx: ContactsContext, caller: Caller, member_id: uuid.UUID, *,
                           group_code: object = UNSET, branch_code: object = UNSET,
                           workplace_code: object = UNSET, grade: object = UNSET) -> Member:
    async with ctx.uow(caller.actor) as uow:
        row = await load_member_row(uow.session, caller, member_id, for_update=True)
        member = Member.from_row(row)
        before = member.placement
        wanted = {
            "group_code": before.group_code if group_code is UNSET else group_code,
            "branch_code": before.branch_code if branch_code is UNSET else branch_code,
            "workplace_code": before.workplace_code if workplace_code is UNSET else workplace_code,
            "grade": before.grade if grade is UNSET else grade,
        }
        try:
            after_placement = placement_of(**wanted)
        except InvalidValue as exc:
            raise Problem(422, detail=str(exc)) from None
        if after_placement == before:
            return member
        if not caller.can_see(after_placement.group_code, after_placement.branch_code):
            # Moving a member out of the caller's own branches (or groups) would take
            # their counts with them: a branch's turnout could be raised by moving its
            # non-voters away. Transfers go through whoever holds both ends.
            raise Problem(403, detail=(
                "You can move members only within your own branches; an organiser of "
                "the group can transfer them to another branch." if caller.role is Role.rep
                else "You can move members only within your own groups; the national team "
                "can transfer them to another group."))
        after = member.bumped(placement=after_placement)
        await uow.session.execute(
            sa.update(members).where(members.c.member_id == member_id)
            .values(**after_placement.model_dump(), version=after.version,
                    updated_at=sa.func.now()))
        uow.emit(MemberMoved(member_id=member_id, member_version=after.version,
                             previous=before, placement=after_placement))
        await uow.commit()
        return after


async def log_conversation(ctx: ContactsContext, caller: Caller, member_id: uuid.UUID, *,
                           channel: ConversationChannel, outcome: ConversationOutcome,
                           ballot_id: uuid.UUID | None = None, note: str | None = None,
                           contacted_at: datetime | None = None) -> uuid.UUID:
    if outcome is ConversationOutcome.VOTED and ballot_id is None:
        # The ballots service marks the vote in the ballot the event names, and reporting
        # counts conversations by ballot: without one, "they told me they voted" would be
        # logged and the vote itself silently lost.
        raise _invalid("ballot_id", 'required when the outcome is "voted": that outcome '
                                    "marks the member's vote in a ballot, so say which one")
    conversation_id = uuid.uuid4()
    contacted_at = contacted_at or datetime.now(UTC)
    async with ctx.uow(caller.actor) as uow:
        row = await load_member_row(uow.session, caller, member_id, for_update=True)
        member = Member.from_row(row)
        await uow.session.execute(sa.insert(conversations).values(
            conversation_id=conversation_id, member_id=member_id, ballot_id=ballot_id,
            channel=channel.value, outcome=outcome.value,
            note=ctx.cipher.encrypt(member_id, note) if note else None,
            logged_by=caller.actor, contacted_at=contacted_at))
        after = member.bumped()
        uow.emit(MemberContacted(member_id=member_id, member_version=after.version,
                                 conversation_id=conversation_id, ballot_id=ballot_id,
                                 channel=channel, outcome=outcome, contacted_at=contacted_at))
        update: dict[str, object] = {}
        if outcome is ConversationOutcome.DO_NOT_CONTACT:
            # The member asked not to be contacted: every messaging consent goes.
            for channel_, name in ((MessageChannel.SMS, "sms_consent"),
                                   (MessageChannel.EMAIL, "email_consent")):
                if getattr(after, name):
                    after = after.bumped(**{name: False})
                    update[name] = False
                    uow.emit(ConsentChanged(member_id=member_id, member_version=after.version,
                                            channel=channel_, granted=False,
                                            via=ConsentSource.MEMBER_REQUEST,
                                            contact=after.contact))
        await uow.session.execute(
            sa.update(members).where(members.c.member_id == member_id)
            .values(**update, version=after.version, updated_at=sa.func.now()))
        await uow.commit()
    return conversation_id
