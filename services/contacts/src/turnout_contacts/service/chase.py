"""The chase list: members of the caller's scope enrolled in a ballot who have not voted,
best prospects first, masked like every other member read.

Order, best first:

1. `will_vote`: their latest conversation in this ballot says they will vote (or that
   they need a replacement paper, which means they mean to);
2. `undecided`;
3. `not_contacted`: no conversation in this ballot yet;
4. `no_answer`: contacted without an answer (no answer, wrong number, or a "voted" the
   ballots service has not confirmed or has since retracted);
5. `wont_vote`: said they will not vote; people change their minds, but last;

and within a tier, those contacted longest ago first (not yet contacted before all).
Hard-to-reach members (neither mobile nor personal email) come after every tier, in the
same order among themselves, flagged `hard_to_reach`.

Left out: voted, not enrolled, erased, and members whose latest conversation of all (any
ballot, or none) was `do_not_contact`: they asked not to be contacted, and a chase list
is a list of people to contact. A later conversation (they got back in touch) puts them
back.

Pages are keyset pages over the sort key (hard_to_reach, tier, last contact, member id),
so members added or changed on earlier pages neither shift nor repeat later ones. A member
whose own key changes while someone pages (a conversation is logged) may move across the
cursor: that is the list following the campaign, not a bug.
"""

from __future__ import annotations

import base64
import json
import uuid
from datetime import datetime
from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from sqlalchemy.sql.selectable import LateralFromClause

from turnout_events.contacts import ConversationOutcome
from turnout_kit.auth import Caller
from turnout_kit.problems import Problem

from ..context import ContactsContext
from ..db.tables import TZ, conversations, members, vote_status
from .queries import member_view
from .scope import scope_filter

MAX_PAGE = 500


class ChaseTier(StrEnum):
    WILL_VOTE = "will_vote"
    UNDECIDED = "undecided"
    NOT_CONTACTED = "not_contacted"
    NO_ANSWER = "no_answer"
    WONT_VOTE = "wont_vote"


TIER_RANK = {tier: rank for rank, tier in enumerate(ChaseTier)}
RANK_TIER = dict(enumerate(ChaseTier))
OUTCOME_TIER = {
    ConversationOutcome.WILL_VOTE: ChaseTier.WILL_VOTE,
    ConversationOutcome.REPLACEMENT_NEEDED: ChaseTier.WILL_VOTE,
    ConversationOutcome.UNDECIDED: ChaseTier.UNDECIDED,
    ConversationOutcome.WONT_VOTE: ChaseTier.WONT_VOTE,
}  # any other outcome: no_answer

NEVER = sa.cast(sa.literal("-infinity"), TZ)  # sorts "not yet contacted" before any date


def _latest_conversation(name: str, ballot_id: uuid.UUID | None) -> LateralFromClause:
    """The member's latest conversation, in one ballot or (ballot_id None) in any."""
    query = (sa.select(conversations.c.outcome, conversations.c.contacted_at)
             .where(conversations.c.member_id == members.c.member_id)
             .order_by(conversations.c.contacted_at.desc(), conversations.c.created_at.desc())
             .limit(1))
    if ballot_id is not None:
        query = query.where(conversations.c.ballot_id == ballot_id)
    return query.lateral(name)


def chase_keys(caller: Caller, ballot_id: uuid.UUID, branch: str | None) -> sa.Subquery:
    """Every member on the list with their sort key, and nothing wider: the whole scope is
    ranked for every page (the key depends on conversations), so the rows being ranked are
    kept narrow and only a page's worth is joined back to the member rows. Driven by the
    caller's branches or groups (members' indexes) and the vote_status primary key."""
    in_ballot = _latest_conversation("in_ballot", ballot_id)
    latest = _latest_conversation("latest", None)
    rank = sa.case(
        (in_ballot.c.outcome.is_(None), TIER_RANK[ChaseTier.NOT_CONTACTED]),
        *(((in_ballot.c.outcome == outcome.value), TIER_RANK[tier])
          for outcome, tier in OUTCOME_TIER.items()),
        else_=TIER_RANK[ChaseTier.NO_ANSWER])
    hard_to_reach = sa.and_(members.c.mobile.is_(None), members.c.email.is_(None))
    query = (
        sa.select(hard_to_reach.label("key_hard_to_reach"),
                  rank.label("key_rank"),
                  sa.func.coalesce(in_ballot.c.contacted_at, NEVER).label("key_contacted"),
                  members.c.member_id,
                  in_ballot.c.outcome.label("last_outcome"),
                  in_ballot.c.contacted_at.label("last_contacted_at"))
        .select_from(members
                     .join(vote_status, sa.and_(vote_status.c.member_id == members.c.member_id,
                                                vote_status.c.ballot_id == ballot_id))
                     .outerjoin(in_ballot, sa.true())
                     .outerjoin(latest, sa.true()))
        .where(scope_filter(caller),
               vote_status.c.enrolled.is_(True),
               vote_status.c.voted.is_(False),
               members.c.erased_at.is_(None),
               latest.c.outcome.is_distinct_from(ConversationOutcome.DO_NOT_CONTACT.value))
    )
    if branch is not None:
        query = query.where(members.c.branch_code == branch)
    return query.subquery("chase")


async def chase_list(ctx: ContactsContext, caller: Caller, ballot_id: uuid.UUID, *,
                     branch: str | None = None, cursor: str | None = None,
                     limit: int | None = None) -> dict[str, Any]:
    """One page of the list. A branch outside the caller's scope, like a ballot nobody is
    enrolled in, gives an empty list: the same answer as a branch with nobody to chase."""
    limit = min(limit or ctx.settings.page_size, MAX_PAGE)
    chase = chase_keys(caller, ballot_id, branch)
    key = (chase.c.key_hard_to_reach, chase.c.key_rank, chase.c.key_contacted,
           chase.c.member_id)
    keys = sa.select(chase).order_by(*key).limit(limit + 1)
    if cursor:
        keys = keys.where(sa.tuple_(*key) > sa.tuple_(*_cursor_values(decode_cursor(cursor))))
    page_keys = keys.subquery("page")
    query = (sa.select(members, *(c for c in page_keys.c if c.name != "member_id"))
             .join(page_keys, page_keys.c.member_id == members.c.member_id)
             .order_by(*(page_keys.c[k.name] for k in key)))
    async with ctx.sessions() as session:  # type: ignore[misc]
        rows = (await session.execute(query)).all()
    page = rows[:limit]
    return {
        "items": [chase_item(ctx, row) for row in page],
        "next_cursor": encode_cursor(page[-1]) if len(rows) > limit else None,
    }


def chase_item(ctx: ContactsContext, row: Any) -> dict[str, Any]:
    m = row._mapping
    return {**member_view(ctx, row),
            "tier": RANK_TIER[m["key_rank"]],
            "last_outcome": m["last_outcome"],
            "last_contacted_at": m["last_contacted_at"]}


# -- cursors ----------------------------------------------------------------------------
# The sort key of the last row of a page, as base64url JSON: opaque to callers, checked
# on the way back in (a tampered cursor is a 422, never a 500).

def encode_cursor(row: Any) -> str:
    m = row._mapping
    contacted = m["last_contacted_at"]
    doc = [int(m["key_hard_to_reach"]), m["key_rank"],
           contacted.isoformat() if contacted is not None else None, str(m["member_id"])]
    raw = json.dumps(doc, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[bool, int, datetime | None, uuid.UUID]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        hard, rank, contacted, member_id = json.loads(raw)
        if hard not in (0, 1) or rank not in RANK_TIER:
            raise ValueError
        when = None if contacted is None else datetime.fromisoformat(contacted)
        if when is not None and when.tzinfo is None:
            raise ValueError
        return bool(hard), rank, when, uuid.UUID(member_id)
    except (ValueError, TypeError, AttributeError):
        raise Problem(422, detail="cursor is not one this service handed out",
                      errors=[{"field": "cursor", "message": "not a cursor of this list"}]
                      ) from None


def _cursor_values(key: tuple[bool, int, datetime | None, uuid.UUID]) -> tuple[Any, ...]:
    hard, rank, contacted, member_id = key
    return (sa.literal(hard), sa.literal(rank),
            NEVER if contacted is None else sa.literal(contacted, TZ),
            sa.literal(member_id, members.c.member_id.type))
