"""A scrutineer's list of members who have voted: a CSV with a `member_id` column, or a
`membership_number` column.

Members are known here by member id only: contacts' events carry no membership number.
A list of membership numbers is matched to member ids by asking the contacts service
(service/directory.py), which holds both, before anything is marked.
"""

from __future__ import annotations

import csv
import io
import re
import uuid
from dataclasses import dataclass, field

from turnout_events.common import MEMBERSHIP_NUMBER_PATTERN

MEMBER_ID = "member_id"
MEMBERSHIP_NUMBER = "membership_number"
_MEMBERSHIP_NUMBER = re.compile(MEMBERSHIP_NUMBER_PATTERN)


class InvalidList(ValueError):
    """The file as a whole cannot be read (no member column, not UTF-8, too long)."""


@dataclass
class ScrutineerList:
    # The column members are named by: MEMBER_ID or MEMBERSHIP_NUMBER.
    key: str = MEMBER_ID
    # (line number in the file, member id), in file order, each member once.
    entries: list[tuple[int, uuid.UUID]] = field(default_factory=list)
    # (line number, membership number), in file order, each number once: for a list
    # keyed by membership number, until they are matched to member ids (`matched`).
    numbers: list[tuple[int, str]] = field(default_factory=list)
    # Lines naming a member already listed earlier in the file.
    duplicates: int = 0
    # [{row, field, message}] for lines that do not name a member.
    errors: list[dict[str, object]] = field(default_factory=list)

    def matched(self, member_ids: dict[str, uuid.UUID]) -> None:
        """Turn the membership numbers into entries, given what they name; a number that
        names nobody is an error of its line, and two numbers naming one member (the
        directory would never say so, but this list must not mark anyone twice) count
        as a duplicate line."""
        seen = {member_id for _, member_id in self.entries}
        for line, number in self.numbers:
            member_id = member_ids.get(number)
            if member_id is None:
                self.errors.append({"row": line, "field": MEMBERSHIP_NUMBER,
                                    "message": "no member has this membership number"})
            elif member_id in seen:
                self.duplicates += 1
            else:
                seen.add(member_id)
                self.entries.append((line, member_id))
        self.numbers = []


def parse_list(raw: bytes, *, max_rows: int) -> ScrutineerList:
    """Every line checked; errors collected, never raised one at a time, and never
    quoting a value (a mistyped column might hold a phone number)."""
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise InvalidList("the file is not UTF-8 text") from None
    rows = csv.reader(io.StringIO(text, newline=""))
    header = next(rows, None)
    columns = [c.strip().lower() for c in header or ()]
    if MEMBER_ID in columns:
        key = MEMBER_ID
    elif MEMBERSHIP_NUMBER in columns:
        key = MEMBERSHIP_NUMBER
    else:
        raise InvalidList("the first line must be a header with a member_id or a "
                          "membership_number column")
    position = columns.index(key)
    result = ScrutineerList(key=key)
    seen: set[object] = set()
    for row in rows:
        line = rows.line_num
        if not any(cell.strip() for cell in row):
            continue
        if (len(result.entries) + len(result.numbers) + result.duplicates
                + len(result.errors)) >= max_rows:
            raise InvalidList(f"the list has more than {max_rows} members; split it")
        cell = row[position].strip() if position < len(row) else ""
        if key == MEMBER_ID:
            try:
                value: object = uuid.UUID(cell)
            except ValueError:
                result.errors.append({"row": line, "field": MEMBER_ID, "message":
                                      "not a member id (a UUID)" if cell else "missing"})
                continue
        elif _MEMBERSHIP_NUMBER.fullmatch(cell):
            value = cell
        else:
            result.errors.append({"row": line, "field": MEMBERSHIP_NUMBER, "message": (
                "not a membership number (1-40 letters, digits, '/', '_', '.' or '-')"
                if cell else "missing")})
            continue
        if value in seen:
            result.duplicates += 1
            continue
        seen.add(value)
        if key == MEMBER_ID:
            result.entries.append((line, value))  # type: ignore[arg-type]
        else:
            result.numbers.append((line, value))  # type: ignore[arg-type]
    return result
