"""A campaign's schedule: absolute times ("2026-03-20T10:00:00+00:00") and offsets before
the ballot closes (ISO 8601 durations: "P3D", "P1DT6H"), resolved to instants when the
campaign is created, against the ballot's closing time as its ballot-opened event gave it.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from pydantic import AwareDatetime, TypeAdapter, ValidationError

from turnout_kit.moments import NOT_IN_UTC, in_utc

_DURATION = TypeAdapter(timedelta)
_INSTANT = TypeAdapter(AwareDatetime)

MAX_SLOTS = 20


class BadSlot(ValueError):
    """A schedule entry that is neither; the message names the problem, not the value."""


def resolve_slot(spec: str, closes_at: datetime) -> datetime:
    spec = spec.strip()
    if spec[:1] in ("P", "p"):
        try:
            offset = _DURATION.validate_python(spec.upper())
        except ValidationError:
            raise BadSlot("not an ISO 8601 duration such as P3D or PT12H") from None
        if offset <= timedelta(0):
            raise BadSlot("an offset before close must be longer than zero")
        try:
            return closes_at - offset
        except OverflowError:  # before the year 1
            raise BadSlot("an offset before close longer than the calendar") from None
    try:
        instant = _INSTANT.validate_python(spec)
    except ValidationError:
        raise BadSlot("not a time with a UTC offset (e.g. 2026-03-20T10:00:00+00:00) "
                      "or a duration before close (e.g. P3D)") from None
    if not in_utc(instant):
        raise BadSlot(f"a time that {NOT_IN_UTC}")
    return instant
