"""Who may create and read which campaigns. A campaign nobody in scope may read answers
404 exactly like an unknown one, so campaign ids cannot be probed.

- national and admin: every campaign;
- organiser: creates campaigns only within their groups (the audience must name groups,
  all of them theirs) and reads those;
- rep: reads the counts of campaigns whose audience lies within their branches.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection

from turnout_kit.auth import Caller, Role
from turnout_kit.problems import Problem

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


def can_read(caller: Caller, group_codes: Collection[str],
             branch_codes: Collection[str]) -> bool:
    if caller.unscoped and caller.role is not Role.service:
        return True
    if caller.role is Role.organiser:
        return bool(group_codes) and set(group_codes) <= caller.group_codes
    if caller.role is Role.rep:
        return bool(branch_codes) and set(branch_codes) <= caller.branch_codes
    return False
