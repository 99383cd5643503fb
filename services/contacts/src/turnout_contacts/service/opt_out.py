"""Opt-outs received by the notification service (a member replied STOP): the consent for
that channel is withdrawn here, in the directory that owns it, and `consent-changed`
tells everyone else, in the same unit of work as the change and the inbox claim.

An opt-out is applied whenever it arrives, even after a rep has since recorded consent
again: withdrawing a consent by mistake costs a reminder, sending one to a member who
said STOP costs their trust (and breaks PECR).
"""

from __future__ import annotations

import sqlalchemy as sa
import structlog

from turnout_events.common import MessageChannel
from turnout_events.contacts import ConsentChanged, ConsentSource
from turnout_events.envelope import Envelope
from turnout_events.inbox import claim
from turnout_events.notifications import OptOutReceived

from ..context import ContactsContext
from ..db.tables import members
from ..domain.member import Member

CONSUMER = "contacts.opt-out"

log = structlog.get_logger("turnout.contacts.opt_out")

CONSENT_COLUMN = {MessageChannel.SMS: "sms_consent", MessageChannel.EMAIL: "email_consent"}


async def apply_opt_out(ctx: ContactsContext, envelope: Envelope,
                        event: OptOutReceived) -> bool:
    """Withdraw the member's consent on the event's channel; True when consent-changed was
    published, False when there was nothing to withdraw or the event was seen before."""
    async with ctx.uow("system", causation_id=envelope.id) as uow:
        if not await claim(uow.session, CONSUMER, envelope.id):
            return False
        row = (await uow.session.execute(
            sa.select(members).where(members.c.member_id == event.member_id)
            .with_for_update())).first()
        if row is None:
            # Nothing to withdraw; the claim is committed so a redelivery is not looked
            # up again. Only the pseudonymous id is logged.
            log.warning("opt_out.unknown_member", member_id=str(event.member_id),
                        event_id=str(envelope.id))
            await uow.commit()
            return False
        column = CONSENT_COLUMN.get(event.channel)
        member = Member.from_row(row)
        if column is None or not getattr(member, column):
            # Already withdrawn (or erased), or a channel we hold no consent for.
            await uow.commit()
            return False
        after = member.bumped(**{column: False})
        await uow.session.execute(
            sa.update(members).where(members.c.member_id == event.member_id)
            .values({column: False, "version": after.version, "updated_at": sa.func.now()}))
        uow.emit(ConsentChanged(member_id=event.member_id, member_version=after.version,
                                channel=event.channel, granted=False,
                                via=ConsentSource.STOP_REPLY, contact=after.contact))
        await uow.commit()
    log.info("opt_out.consent_withdrawn", member_id=str(event.member_id),
             channel=event.channel.value, member_version=after.version)
    return True
