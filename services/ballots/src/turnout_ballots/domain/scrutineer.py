"""A scrutineer's list of members who have voted: a CSV with a `member_id` column.

Members are known here by member id only. The contacts service's events carry no
membership number (only pseudonymous ids and codes travel), so this service cannot
match one: a scrutineer's list keyed by membership number has to be turned into member
ids first (the contacts service holds both).
"""

from __future__ import annotations

import csv
import io
import uuid
from dataclasses import dataclass, field

MEMBER_ID = "member_id"
MEMBERSHIP_NUMBER = "membership_number"


class InvalidList(ValueError):
    """The file as a whole cannot be read (no member_id column, not UTF-8, too long)."""


@dataclass
class ScrutineerList:
    # (line number in the file, member id), in file order, each member once.
    entries: list[tuple[int, uuid.UUID]] = field(default_factory=list)
    # Lines naming a member already listed earlier in the file.
    duplicates: int = 0
    # [{row, field, message}] for lines that do not hold a member id.
    errors: list[dict[str, object]] = field(default_factory=list)


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
    if MEMBER_ID not in columns:
        if MEMBERSHIP_NUMBER in columns:
            raise InvalidList(
                "this service knows members by member_id only: contacts' events carry no "
                "membership number, so a list of membership numbers cannot be matched here. "
                "Send a CSV with a member_id column (the contacts service has both).")
        raise InvalidList("the first line must be a header with a member_id column")
    position = columns.index(MEMBER_ID)
    result = ScrutineerList()
    seen: set[uuid.UUID] = set()
    for row in rows:
        line = rows.line_num
        if not any(cell.strip() for cell in row):
            continue
        if len(result.entries) + result.duplicates + len(result.errors) >= max_rows:
            raise InvalidList(f"the list has more than {max_rows} members; split it")
        cell = row[position].strip() if position < len(row) else ""
        try:
            member_id = uuid.UUID(cell)
        except ValueError:
            result.errors.append({"row": line, "field": MEMBER_ID,
                                  "message": "not a member id (a UUID)" if cell else "missing"})
            continue
        if member_id in seen:
            result.duplicates += 1
            continue
        seen.add(member_id)
        result.entries.append((line, member_id))
    return result
