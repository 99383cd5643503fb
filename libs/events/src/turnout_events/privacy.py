"""Spotting raw contact values (email addresses, phone numbers) in event payloads.

Kafka logs are kept forever and cannot be erased, so an event must never carry a
member's contact details; the contacts database (which can be erased) is the only home
for them. Every payload runs `find_contact_values` on validation (see
`envelope.EventData`), so a mistake in a producer fails loudly at the producer instead of
leaking into the log.

The checks are deliberately blunt: any run of seven or more digits, with the usual phone
separators, counts as a phone number. UUIDs, ISO dates and timestamps and year ranges
("2025-2026") are taken out first because they are legitimate and digit-heavy. A code
that really needs seven digits in a row should not be a code in an event.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from enum import Enum

from pydantic import BaseModel

EMAIL = "an email address"
PHONE = "a phone number"

_EMAIL_RE = re.compile(r"[\w.+'-]+@[\w-]+(?:\.[\w-]+)+")
# 7+ digits, optionally led by "+" or "(", with up to two separators between digits.
_PHONE_RE = re.compile(r"\+?\(?\d(?:[\s().-]{0,2}\d){6,}")
_HARMLESS_RE = re.compile(
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"  # UUID
    r"|(?<!\d)\d{4}-\d{2}-\d{2}(?:[T ]\d{2}:\d{2}(?::\d{2}(?:[.,]\d+)?)?"  # ISO date[time]
    r"(?:Z|[+-]\d{2}(?::?\d{2})?)?)?(?!\d)"
    r"|(?<!\d)(?:19|20)\d{2}\s?[-/\u2013]\s?(?:19|20)\d{2}(?!\d)"  # year range
)
_MIN_PHONE_DIGITS = 7
# Types that cannot hold free text.
_OPAQUE = frozenset({uuid.UUID, datetime, date, time, timedelta, int, float, bool, Decimal,
                     type(None)})


def contact_kind(text: str) -> str | None:
    """What kind of contact value `text` appears to contain, or None."""
    if len(text) < _MIN_PHONE_DIGITS and "@" not in text:
        return None  # most strings in events are short codes
    if "@" in text and _EMAIL_RE.search(text):
        return EMAIL
    # The harmless forms are only cut out when something looked like a number; they are
    # replaced by "|", which is not a separator, so cutting cannot join two digit runs.
    if _PHONE_RE.search(text) and _PHONE_RE.search(_HARMLESS_RE.sub("|", text)):
        return PHONE
    return None


def find_contact_values(value: object, path: str = "") -> list[tuple[str, str]]:
    """`(field path, kind)` for every string inside `value` that looks like a contact
    value. Paths look like `placement.group_code` or `scope.branch_codes[2]`."""
    found: list[tuple[str, str]] = []
    if _suspect(value):  # cheap pass first; paths are built only when there is a hit
        _scan(value, path, found)
    return found


def _suspect(value: object) -> bool:
    # Runs on every payload a consumer validates: ids, timestamps, numbers and enum
    # members are dismissed with one type check.
    kind = type(value)
    if kind is str:
        return contact_kind(value) is not None  # type: ignore[arg-type]
    if kind in _OPAQUE or isinstance(value, Enum):
        return False
    if isinstance(value, str):
        return contact_kind(value) is not None
    if isinstance(value, BaseModel):
        items: Iterable[object] = value.__dict__.values()
    elif isinstance(value, dict):
        items = [*value.keys(), *value.values()]
    elif isinstance(value, list | tuple | set | frozenset):
        items = value
    else:
        return False
    return any(map(_suspect, items))


def _scan(value: object, path: str, found: list[tuple[str, str]]) -> None:
    if type(value) in _OPAQUE or isinstance(value, Enum):
        return  # enums are closed vocabularies defined in code
    if isinstance(value, str):
        kind = contact_kind(value)
        if kind:
            found.append((path or "(value)", kind))
    elif isinstance(value, BaseModel):
        for name, item in value.__dict__.items():
            _scan(item, f"{path}.{name}" if path else name, found)
    elif isinstance(value, list | tuple | set | frozenset):
        for i, item in enumerate(value):
            _scan(item, f"{path}[{i}]", found)
    elif isinstance(value, dict):
        # Keys are numbered, not named: a key could itself be the personal value.
        for i, (key, item) in enumerate(value.items()):
            _scan(key, f"{path}<key #{i}>", found)
            _scan(item, f"{path}<value #{i}>", found)
