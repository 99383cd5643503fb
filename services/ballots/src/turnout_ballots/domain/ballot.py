"""A ballot as the ballots service holds it: its life (draft -> open -> closed), its
scope, and the turnout arithmetic."""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any, cast

from pydantic import ValidationError

from turnout_events.ballots import BallotKind, BallotOpened, BallotScope
from turnout_events.privacy import contact_kind
from turnout_kit.problems import validation_errors


class BallotStatus(StrEnum):
    DRAFT = "draft"  # created; nobody is on the roll yet
    OPEN = "open"  # the roll is fixed; votes are being marked
    CLOSED = "closed"  # final: no more marks, retractions or replacement requests


class InvalidBallot(ValueError):
    """A ballot definition that could not be published. `errors` are `{field, message}`
    pairs naming the fields, never their values."""

    def __init__(self, errors: list[dict[str, str]]) -> None:
        self.errors = errors
        super().__init__("; ".join(f"{e['field']}: {e['message']}" for e in errors))


def check_publishable(*, name: str, kind: BallotKind, opens_at: datetime, closes_at: datetime,
                      turnout_threshold: float | None, group_codes: list[str],
                      branch_codes: list[str]) -> BallotScope:
    """Validate a new ballot with the event contract's own model (ballot-opened), so a
    ballot accepted now can be published when it opens: a name that looks like a phone
    number or a code the contract refuses fails here, not at opening."""
    if not group_codes and not branch_codes:
        raise InvalidBallot([{"field": "scope",
                              "message": "name at least one group or branch code"}])
    if closes_at <= opens_at:
        raise InvalidBallot([{"field": "closes_at", "message": "must be later than opens_at"}])
    if kind_of_contact := contact_kind(name):
        raise InvalidBallot([{"field": "name", "message": (
            f"looks like {kind_of_contact}; a ballot's name is published in its events, "
            "which carry no contact details")}])
    try:
        opened = BallotOpened(
            ballot_id=uuid.uuid4(), ballot_name=name, kind=kind, opens_at=opens_at,
            closes_at=closes_at, turnout_threshold=turnout_threshold,
            # A dict on purpose: validated as part of BallotOpened, a bad code's error is
            # located under "scope" (a BallotScope built apart would lose the prefix).
            scope=cast(BallotScope, {"group_codes": group_codes,
                                     "branch_codes": branch_codes}),
            eligible_count=0)
    except ValidationError as exc:
        # The contract's messages describe the rule, not the input (hide_input_in_errors),
        # and validation_errors redacts them once more.
        raise InvalidBallot(validation_errors(exc.errors())) from None
    return opened.scope


@dataclass(frozen=True)
class Ballot:
    ballot_id: uuid.UUID
    name: str
    kind: BallotKind
    status: BallotStatus
    opens_at: datetime
    closes_at: datetime
    turnout_threshold: float | None
    scope: BallotScope
    eligible_count: int | None
    created_at: datetime
    opened_at: datetime | None
    closed_at: datetime | None

    @classmethod
    def from_row(cls, row: Any) -> Ballot:
        m = row._mapping
        return cls(
            ballot_id=m["ballot_id"], name=m["name"], kind=BallotKind(m["kind"]),
            status=BallotStatus(m["status"]), opens_at=m["opens_at"], closes_at=m["closes_at"],
            turnout_threshold=m["turnout_threshold"],
            scope=BallotScope(group_codes=list(m["scope_group_codes"]),
                              branch_codes=list(m["scope_branch_codes"])),
            eligible_count=m["eligible_count"], created_at=m["created_at"],
            opened_at=m["opened_at"], closed_at=m["closed_at"])


def votes_needed(threshold: float | None, eligible: int, voted: int) -> int | None:
    """`ceil(threshold x eligible) - voted`, floored at 0; None when no threshold applies.
    Decimal arithmetic: in floats 0.3 x 10 is 3.0000000000000004, whose ceiling is 4."""
    if threshold is None:
        return None
    return max(0, math.ceil(Decimal(str(threshold)) * eligible) - voted)


def turnout(eligible: int, voted: int) -> float | None:
    return round(voted / eligible, 4) if eligible else None
