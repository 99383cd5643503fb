"""Moments from outside (an API field, a query parameter, a schedule entry, an event that
reporting stores), checked before they reach the database.

pydantic's `AwareDatetime` takes any moment Python can hold, but PostgreSQL stores a
`timestamptz` in UTC, and one within hours of the calendar's ends (0001-01-01T00:30+01:00
is still year 0 in UTC) cannot be converted: asyncpg fails while sending it and the
request ends in a 500. `StoredMoment` refuses it with a 422 that names the field.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from pydantic import AfterValidator, AwareDatetime

NOT_IN_UTC = "must be a moment that can be written in UTC (between the years 1 and 9999)"


def in_utc(moment: datetime) -> bool:
    try:
        moment.astimezone(UTC)
    except OverflowError:
        return False
    return True


def _writable(moment: datetime) -> datetime:
    if not in_utc(moment):
        raise ValueError(NOT_IN_UTC)
    return moment


StoredMoment = Annotated[AwareDatetime, AfterValidator(_writable)]
