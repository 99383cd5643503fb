"""Who may create, read and list which campaigns. A campaign nobody in scope may read
answers 404 exactly like an unknown one, so campaign ids cannot be probed.

- national and admin: every campaign, all its counts;
- organiser: creates campaigns only within their groups (the audience must name groups,
  all of them theirs), and reads and steers those;
- rep: reads the campaigns whose audience reaches one of their branches (the campaign's
  `campaign_branches`), with counts restricted to their branches.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection

import sqlalchemy as sa

from turnout_kit.auth import Caller, Role
from turnout_kit.problems import Problem

from ..db.tables import campaign_branches, campaigns

CREATORS = (Role.national, Role.admin, Role.organiser)


def not_found(campaign_id: uuid.UUID) -> Problem:
    return Problem(404, detail=f"No campaign {campaign_id} in your scope.")


def check_can_create(caller: Caller, group_codes: Collection[str]) -> None:
    if caller.role not in CREATORS:
        raise Problem(403, detail="Campaigns are created by national, admin and organiser "
                                  "roles.")
    if caller.role is Role.organiser:
        if not group_codes:
            raise Problem(422, detail="An organiser's campaign must name its groups.",
                          errors=[{"field": "audience.group_codes",
                                   "message": "required for organisers: your groups"}])
        outside = sorted(set(group_codes) - caller.group_codes)
        if outside:
            raise Problem(403, detail="You can only create campaigns within your groups; "
                                      "not yours: " + ", ".join(outside) + ".")


def visible(caller: Caller) -> sa.ColumnElement[bool]:
    """A WHERE clause on `campaigns`: the campaigns this caller may read."""
    if caller.role in (Role.national, Role.admin):
        return sa.true()
    if caller.role is Role.organiser:
        return sa.and_(sa.func.cardinality(campaigns.c.group_codes) > 0,
                       campaigns.c.group_codes.contained_by(sorted(caller.group_codes)))
    if caller.role is Role.rep:
        return sa.exists().where(
            campaign_branches.c.campaign_id == campaigns.c.campaign_id,
            campaign_branches.c.branch_code.in_(sorted(caller.branch_codes)))
    return sa.false()  # a service reads no campaigns


def counted_branches(caller: Caller) -> list[str] | None:
    """The branches the caller's counts are restricted to; None: the whole campaign (an
    organiser reads only campaigns lying wholly within their groups)."""
    if caller.role is Role.rep:
        return sorted(caller.branch_codes)
    return None
