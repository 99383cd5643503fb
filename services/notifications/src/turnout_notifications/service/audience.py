"""Who gets a reminder, decided from local state in SQL, in three steps.

1. `select_slot`, when a slot falls due: ONE statement classifies every enrolled member
   in the campaign's audience (left out because voted, opted out, no consent, no mobile
   or capped; otherwise a recipient), counts who was left out by branch and reason
   (`audience_skips`) and freezes the recipients' ids in parts of at most PART_SIZE per
   branch (`audience_parts`). Nothing is written per member: on a million-member roll
   this is one pass over the roll hash-joined to the flags and a few hundred array rows
   (see bench/select_recipients.py), where a message row per recipient up front cost
   half a million index insertions.
2. `take_batch`, as the dispatcher sends: the next ids (a cursor per part, parts in
   order) become queued messages, each with its unique idempotency key (member x
   campaign x slot), and the cursors move past them in the same statement, so no id is
   taken twice and no reminder is queued twice.
3. `recheck`, just before sending: the same rules applied to those messages again, so a
   vote, an opt-out, a withdrawn consent or another campaign's text that came since
   selection stops the message.

Counts stay exact throughout: every member of a selected slot is, at any moment, in
exactly one place — a skip count, a part's untaken ids, or a message row.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

CAP_WINDOW = timedelta(hours=24)
PART_SIZE = 1000
UNKNOWN_OUTCOME = "unknown_outcome"

# Messages that count against the per-member cap: handed to the provider (or being), or
# lost in a crash with no way to tell whether the provider took them — the member may
# have the text, so another one today would break the promise.
def _counted(m: str) -> str:
    return (f"({m}.status IN ('sending', 'sent', 'delivered') "
            f"OR ({m}.status = 'failed' AND {m}.error_code = '{UNKNOWN_OUTCOME}'))")


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
      AND {_counted("x")}
      AND x.attempted_at > :since)""")

# The classification is MATERIALIZED: read twice (skips, parts) but computed once.
_SELECT = sa.text(f"""
WITH recent AS (
    SELECT member_id, count(*) AS n FROM messages x
    WHERE {_counted("x")} AND attempted_at > :since
    GROUP BY member_id
), audience AS MATERIALIZED (
    SELECT r.member_id, coalesce(r.branch_code, '') AS branch_code, {_SELECT_REASON} AS reason
    FROM roll r
    LEFT JOIN member_contact c ON c.member_id = r.member_id
    LEFT JOIN opt_outs o ON o.member_id = r.member_id AND o.channel = 'sms'
    LEFT JOIN recent ON recent.member_id = r.member_id
    WHERE r.ballot_id = :ballot_id AND r.enrolled
      AND (cardinality(CAST(:groups AS text[])) = 0 OR r.group_code = ANY(:groups))
      AND (cardinality(CAST(:branches AS text[])) = 0 OR r.branch_code = ANY(:branches))
      AND (cardinality(CAST(:workplaces AS text[])) = 0
           OR r.workplace_code = ANY(:workplaces))
), skips AS (
    INSERT INTO audience_skips (campaign_id, slot, branch_code, reason, n)
    SELECT :campaign_id, :slot, branch_code, reason, count(*)
    FROM audience WHERE reason IS NOT NULL
    GROUP BY branch_code, reason
    RETURNING branch_code, reason, n
), numbered AS (
    -- Each branch's recipients in parts of :part_size; parts are sent in the order
    -- (k, branch): every branch's first part before any branch's second.
    SELECT member_id, branch_code,
           (row_number() OVER (PARTITION BY branch_code) - 1) / :part_size AS k
    FROM audience WHERE reason IS NULL
), parts AS (
    INSERT INTO audience_parts (campaign_id, slot, part, branch_code, member_ids, size)
    SELECT :campaign_id, :slot, row_number() OVER (ORDER BY k, branch_code), branch_code,
           array_agg(member_id), count(*)
    FROM numbered GROUP BY k, branch_code
    RETURNING branch_code, size
), reached AS (
    INSERT INTO campaign_branches (campaign_id, branch_code)
    SELECT DISTINCT :campaign_id, branch_code
    FROM (SELECT branch_code FROM skips UNION SELECT branch_code FROM parts) b
    ON CONFLICT DO NOTHING
)
SELECT reason, sum(n)::int FROM skips GROUP BY reason
UNION ALL
SELECT 'recipients', coalesce(sum(size), 0)::int FROM parts
""")

# The next :n ids, from as many parts as it takes (earliest slot, then part order). The
# parts are locked (SKIP LOCKED: two dispatchers take from different parts) and their
# cursors moved in the same statement that queues the messages.
_TAKE = sa.text("""
WITH locked AS MATERIALIZED (
    SELECT slot, part, taken, size FROM audience_parts
    WHERE campaign_id = :campaign_id AND taken < size
    ORDER BY slot, part
    LIMIT :max_parts
    FOR UPDATE SKIP LOCKED
), cut AS (
    SELECT slot, part, taken,
           least(size - taken, :n - coalesce(sum(size - taken) OVER (
               ORDER BY slot, part ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 0))
               AS k
    FROM locked
), moved AS (
    UPDATE audience_parts p SET taken = p.taken + cut.k
    FROM cut
    WHERE p.campaign_id = :campaign_id AND p.slot = cut.slot AND p.part = cut.part
      AND cut.k > 0
    RETURNING p.slot, p.branch_code, p.deferred,
              p.member_ids[cut.taken + 1 : cut.taken + cut.k] AS ids
)
INSERT INTO messages (message_id, idempotency_key, campaign_id, slot, ballot_id, member_id,
                      channel, status, deferred, branch_code)
SELECT gen_random_uuid(), m::text || ':' || :campaign_key || ':' || moved.slot,
       :campaign_id, moved.slot, :ballot_id, m, 'sms', 'queued', moved.deferred,
       moved.branch_code
FROM moved, unnest(moved.ids) AS m
ON CONFLICT (idempotency_key) DO NOTHING
RETURNING message_id, member_id, ballot_id, idempotency_key
""")
# A batch spans at most this many parts (most are a branch's full thousand).
MAX_PARTS_PER_BATCH = 50

_RECHECK = sa.text(f"""
SELECT m.message_id, {_RECHECK_REASON} AS reason
FROM messages m
LEFT JOIN roll r ON r.ballot_id = m.ballot_id AND r.member_id = m.member_id
LEFT JOIN member_contact c ON c.member_id = m.member_id
LEFT JOIN opt_outs o ON o.member_id = m.member_id AND o.channel = 'sms'
WHERE m.message_id = ANY(:ids)
""")


# Re-check and take one queued message in one statement: `sending` when it may go,
# `skipped` (with the reason) when it may not, no row when someone else took it.
_CLAIM = sa.text(f"""
WITH verdict AS (
    SELECT m.message_id, {_RECHECK_REASON} AS reason
    FROM messages m
    LEFT JOIN roll r ON r.ballot_id = m.ballot_id AND r.member_id = m.member_id
    LEFT JOIN member_contact c ON c.member_id = m.member_id
    LEFT JOIN opt_outs o ON o.member_id = m.member_id AND o.channel = 'sms'
    WHERE m.message_id = :id AND m.status = 'queued'
)
UPDATE messages m SET
    status = CASE WHEN v.reason IS NULL THEN 'sending' ELSE 'skipped' END,
    skip_reason = v.reason,
    attempts = m.attempts + CASE WHEN v.reason IS NULL THEN 1 ELSE 0 END,
    attempted_at = CASE WHEN v.reason IS NULL THEN CAST(:now AS timestamptz)
                        ELSE m.attempted_at END,
    provider = CASE WHEN v.reason IS NULL THEN CAST(:provider AS text) ELSE m.provider END,
    updated_at = now()
FROM verdict v
WHERE m.message_id = v.message_id
RETURNING m.status
""")


@dataclass(frozen=True)
class Queued:
    """A message about to be sent: what the dispatcher needs, and no number."""
    message_id: uuid.UUID
    member_id: uuid.UUID
    ballot_id: uuid.UUID
    idempotency_key: str


async def select_slot(conn: AsyncSession | AsyncConnection, *, campaign_id: uuid.UUID,
                      slot: int, ballot_id: uuid.UUID, cap: int, now: datetime,
                      group_codes: Sequence[str] = (), branch_codes: Sequence[str] = (),
                      workplace_codes: Sequence[str] = ()) -> dict[str, int]:
    """Freeze the slot's recipients; returns {"recipients": n, "voted": n, ...}."""
    rows = (await conn.execute(_SELECT, {
        "campaign_id": campaign_id, "slot": slot, "ballot_id": ballot_id, "cap": cap,
        "since": now - CAP_WINDOW, "part_size": PART_SIZE,
        "groups": list(group_codes), "branches": list(branch_codes),
        "workplaces": list(workplace_codes)})).all()
    return {reason: n for reason, n in rows}


async def take_batch(conn: AsyncSession | AsyncConnection, *, campaign_id: uuid.UUID,
                     ballot_id: uuid.UUID, n: int) -> list[Queued]:
    """Queue up to `n` more of the campaign's frozen recipients (earliest slot first);
    empty when none are left (or another dispatcher holds the rest)."""
    rows = (await conn.execute(_TAKE, {"campaign_id": campaign_id, "ballot_id": ballot_id,
                                       "campaign_key": str(campaign_id), "n": n,
                                       "max_parts": MAX_PARTS_PER_BATCH})).all()
    return [Queued(*row) for row in rows]


async def recheck(conn: AsyncSession | AsyncConnection, message_ids: Sequence[uuid.UUID], *,
                  cap: int, now: datetime) -> dict[uuid.UUID, str]:
    """The messages among these that must no longer go, with the reason."""
    if not message_ids:
        return {}
    rows = (await conn.execute(_RECHECK, {"ids": list(message_ids), "cap": cap,
                                          "since": now - CAP_WINDOW})).all()
    return {message_id: reason for message_id, reason in rows if reason is not None}


async def claim(conn: AsyncSession | AsyncConnection, message_id: uuid.UUID, *, cap: int,
                now: datetime, provider: str) -> bool:
    """Re-check one queued message and take it (queued -> sending, attempted now) when
    it may still go, or skip it with the reason; False unless taken. The caller holds the
    member's lock, so the cap counts every other claim."""
    status = await conn.scalar(_CLAIM, {"id": message_id, "cap": cap, "provider": provider,
                                        "now": now, "since": now - CAP_WINDOW})
    return status == "sending"
