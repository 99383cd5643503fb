"""Who gets a reminder, decided from local state in SQL.

`select_slot` is ONE statement: it classifies every enrolled member in the campaign's
audience (skipped because voted, opted out, no consent, no mobile or capped; otherwise a
recipient), queues a message for each recipient with its idempotency key
(member x campaign x slot, unique, so a slot selected twice queues nobody twice), and
returns the counts. On a million-member roll it is one pass over the roll joined by hash
to the flags (see bench/select_recipients.py).

`recheck` applies the same rules to messages already queued, just before sending: a vote,
an opt-out or a withdrawn consent that arrived since selection stops the message.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

CAP_WINDOW = timedelta(hours=24)

# Messages that count against the per-member cap: handed to the provider (or being).
_COUNTED = "('sending', 'sent', 'delivered')"


def _reason(sent_recently: str) -> str:
    """The reason a member is left out, first match wins; NULL means "send". `r` is the
    roll row, `c` the contact flags, `o` an SMS opt-out; `sent_recently` counts the
    member's messages in the cap window. No roll row (a message whose member left the
    roll) counts as voted: there is nobody to remind."""
    return f"""
    CASE
        WHEN r.member_id IS NULL OR r.voted THEN 'voted'
        WHEN o.member_id IS NOT NULL THEN 'opted_out'
        WHEN c.member_id IS NULL OR NOT c.sms_consent THEN 'no_consent'
        WHEN NOT c.has_mobile THEN 'no_mobile'
        WHEN {sent_recently} >= :cap THEN 'capped'
    END"""

_SELECT_REASON = _reason("coalesce(recent.n, 0)")
_RECHECK_REASON = _reason(f"""(
    SELECT count(*) FROM messages x
    WHERE x.member_id = m.member_id AND x.message_id <> m.message_id
      AND x.status IN {_COUNTED} AND x.attempted_at > :since)""")

_SELECT = sa.text(f"""
WITH recent AS (
    SELECT member_id, count(*) AS n FROM messages
    WHERE status IN {_COUNTED} AND attempted_at > :since
    GROUP BY member_id
), audience AS (
    SELECT r.member_id, {_SELECT_REASON} AS reason
    FROM roll r
    LEFT JOIN member_contact c ON c.member_id = r.member_id
    LEFT JOIN opt_outs o ON o.member_id = r.member_id AND o.channel = 'sms'
    LEFT JOIN recent ON recent.member_id = r.member_id
    WHERE r.ballot_id = :ballot_id AND r.enrolled
      AND (cardinality(CAST(:groups AS text[])) = 0 OR r.group_code = ANY(:groups))
      AND (cardinality(CAST(:branches AS text[])) = 0 OR r.branch_code = ANY(:branches))
      AND (cardinality(CAST(:workplaces AS text[])) = 0
           OR r.workplace_code = ANY(:workplaces))
), queued AS (
    INSERT INTO messages (message_id, idempotency_key, campaign_id, slot, ballot_id,
                          member_id, channel, status)
    SELECT gen_random_uuid(), member_id::text || ':' || :campaign_key, :campaign_id, :slot,
           :ballot_id, member_id, 'sms', 'queued'
    FROM audience WHERE reason IS NULL
    ON CONFLICT (idempotency_key) DO NOTHING
    RETURNING 1
)
SELECT reason, count(*) AS n FROM audience WHERE reason IS NOT NULL GROUP BY reason
UNION ALL
SELECT 'queued', count(*) FROM queued
""")

_RECHECK = sa.text(f"""
SELECT m.message_id, {_RECHECK_REASON} AS reason
FROM messages m
LEFT JOIN roll r ON r.ballot_id = m.ballot_id AND r.member_id = m.member_id
LEFT JOIN member_contact c ON c.member_id = m.member_id
LEFT JOIN opt_outs o ON o.member_id = m.member_id AND o.channel = 'sms'
WHERE m.message_id = ANY(:ids)
""")


async def select_slot(conn: AsyncSession | AsyncConnection, *, campaign_id: uuid.UUID,
                      slot: int, ballot_id: uuid.UUID, cap: int, now: datetime,
                      group_codes: Sequence[str] = (), branch_codes: Sequence[str] = (),
                      workplace_codes: Sequence[str] = ()) -> dict[str, int]:
    """Queue the slot's recipients; returns {"queued": n, "voted": n, ...}."""
    rows = (await conn.execute(_SELECT, {
        "campaign_id": campaign_id, "campaign_key": f"{campaign_id}:{slot}", "slot": slot,
        "ballot_id": ballot_id, "cap": cap, "since": now - CAP_WINDOW,
        "groups": list(group_codes), "branches": list(branch_codes),
        "workplaces": list(workplace_codes)})).all()
    return {reason: n for reason, n in rows}


async def recheck(conn: AsyncSession | AsyncConnection, message_ids: Sequence[uuid.UUID], *,
                  cap: int, now: datetime) -> dict[uuid.UUID, str]:
    """The messages among these that must no longer go, with the reason."""
    if not message_ids:
        return {}
    rows = (await conn.execute(_RECHECK, {"ids": list(message_ids), "cap": cap,
                                          "since": now - CAP_WINDOW})).all()
    return {message_id: reason for message_id, reason in rows if reason is not None}
