"""Reading the membership system's roster export (CSV) and checking it row by row.

Pure: bytes in, validated rows (or every problem found) out; no database, no I/O. The
importer (`service/roster.py`) refuses the whole file when any row is bad, so this
module's job is to find *every* problem in one pass and describe each one well enough to
fix it in a spreadsheet: the row number as a spreadsheet shows it (the header is row 1),
the column, and what is expected. Messages never contain the bad value: a roster is
personal data, and error reports end up in browsers, tickets and logs.

The file: UTF-8 (a BOM, as Excel writes, is fine), comma-separated, any line endings,
the header naming exactly the columns in `ROSTER_COLUMNS` in any order. Blank lines and
rows of empty cells (spreadsheets leave them) are skipped.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from operator import itemgetter
from typing import NamedTuple

from turnout_events.common import CODE_PATTERN, MEMBERSHIP_NUMBER_PATTERN, Placement
from turnout_events.privacy import contact_kind

from .crypto import BlindIndex
from .member import InvalidValue, normalise_email, normalise_mobile, parse_consent, placement_of

ROSTER_COLUMNS = (
    "membership_number", "first_name", "last_name", "group_code", "branch_code",
    "workplace_code", "grade", "mobile", "personal_email", "sms_consent", "email_consent",
)
CODE_COLUMNS = ("group_code", "branch_code", "workplace_code", "grade")
# A member belongs to a group and a branch; workplace and grade may be unknown (between
# jobs, peripatetic staff), as the event contract allows.
REQUIRED_CODES = ("group_code", "branch_code")

MAX_NAME_LENGTH = 100
MAX_MOBILE_LENGTH = 40
MAX_EMAIL_LENGTH = 320

_MEMBERSHIP_NUMBER = re.compile(MEMBERSHIP_NUMBER_PATTERN)
_CODE = re.compile(CODE_PATTERN)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True, slots=True)
class RowError:
    """One problem: `row` as a spreadsheet numbers it (header = 1), `field` the column
    (None when the row as a whole is wrong), `message` what is expected."""

    row: int
    field: str | None
    message: str

    def as_dict(self) -> dict[str, object]:
        return {"row": self.row, "field": self.field, "message": self.message}


class RosterFileError(ValueError):
    """The file as a whole cannot be read as a roster (not text, empty, wrong header).
    The message says what to do about it and never quotes the file."""

    def __init__(self, message: str, errors: list[RowError] | None = None) -> None:
        super().__init__(message)
        self.errors = errors or []


class RosterRow(NamedTuple):
    """A valid row, normalised: mobile in E.164, email normalised, consents as booleans,
    empty cells as None. (Immutable as a named tuple rather than a frozen dataclass,
    which takes twice as long to make: there is one per row of an import.)"""

    row: int
    membership_number: str
    first_name: str | None
    last_name: str | None
    placement: Placement
    mobile: str | None
    email: str | None
    sms_consent: bool
    email_consent: bool


@dataclass
class RosterFile:
    """A roster read as CSV, its header checked, its rows not yet: `records` holds each
    non-blank data row as `(row number, cells)`, cells in the file's column order;
    `positions[i]` is where column `ROSTER_COLUMNS[i]` sits."""

    positions: tuple[int, ...]
    width: int
    records: list[tuple[int, list[str]]]


@dataclass
class ParsedRoster:
    rows: list[RosterRow] = field(default_factory=list)
    # The first `max_errors` problems, in file order; `error_count` counts them all.
    errors: list[RowError] = field(default_factory=list)
    error_count: int = 0
    bad_rows: int = 0

    @property
    def ok(self) -> bool:
        return self.error_count == 0


def parse_roster(data: bytes, *, max_rows: int = 1_000_000, max_errors: int = 1000
                 ) -> ParsedRoster:
    """Read and check a whole roster file. Raises `RosterFileError` when the file cannot
    be read as a roster at all; otherwise returns the valid rows and every row problem
    (a file with problems must not be imported: see `ParsedRoster.ok`).

    The importer runs the same steps itself, so that it can spread `check_records` over
    processes for big files."""
    roster = read_roster(data, max_rows=max_rows)
    parsed = ParsedRoster()
    problems = duplicate_numbers(roster)
    for checked in check_records(roster, roster.records):
        if isinstance(checked, RosterRow):
            parsed.rows.append(checked)
        else:
            problems += checked
    parsed.errors, parsed.error_count, parsed.bad_rows = summarise(problems, max_errors)
    return parsed


def read_roster(data: bytes, *, max_rows: int = 1_000_000) -> RosterFile:
    """Decode the file, read it as CSV and check its header. Raises `RosterFileError`."""
    reader = RosterReader(data, max_rows=max_rows)
    return RosterFile(positions=reader.positions, width=reader.width,
                      records=reader.read(max_rows + 1))


class RosterReader:
    """A roster file read as CSV a chunk of records at a time (an import hands each
    chunk to a worker process while it reads the next). Creating one decodes the file
    and checks its header; `read` goes on. Both raise `RosterFileError`.

    Rows are numbered as a spreadsheet numbers them: every record counts, blank ones
    too (the csv module yields them as empty lists), and a quoted cell spanning lines is
    still one row. Blank lines and rows of empty cells are skipped."""

    def __init__(self, data: bytes, *, max_rows: int = 1_000_000) -> None:
        text = _decode(data)
        self._lines = enumerate(csv.reader(io.StringIO(text, newline=""), strict=True),
                                start=1)
        self._max_rows = max_rows
        self.records = 0  # member rows read so far
        number = 0
        header: list[str] = []
        try:
            for number, header in self._lines:  # noqa: B007 - `number` is the header's row
                if "".join(header).strip():
                    break
            else:
                raise RosterFileError("The file is empty: it needs a header row and a row "
                                      "per member.")
        except csv.Error:
            raise _not_csv(number + 1) from None
        self._number = number  # the last row read
        self.positions = _header_positions(header, number)
        self.width = len(header)

    def read(self, count: int) -> list[tuple[int, list[str]]]:
        """The next `count` member rows as `(row number, cells)`, cells in the file's
        column order; fewer at the end of the file, none after it."""
        records: list[tuple[int, list[str]]] = []
        number = self._number
        try:
            for number, cells in self._lines:  # noqa: B007 - the last row read, below
                if not cells or (not cells[0].strip() and not "".join(cells).strip()):
                    continue  # blank lines and rows of empty cells
                records.append((number, cells))
                if len(records) == count:
                    break
        except csv.Error:
            raise _not_csv(number + 1) from None
        self._number = number
        self.records += len(records)
        if self.records > self._max_rows:
            raise RosterFileError(f"The file has more than {self._max_rows} member rows; "
                                  "split it, or raise CONTACTS_MAX_IMPORT_ROWS.")
        if not self.records:
            raise RosterFileError("The file has a header but no member rows.")
        return records


def _not_csv(row: int) -> RosterFileError:
    return RosterFileError(f"Row {row} cannot be read as CSV (a stray quote, or this is not "
                           "a CSV file); export the roster as 'CSV UTF-8'.")


def _decode(data: bytes) -> str:
    if not data.strip():
        raise RosterFileError("The file is empty: it needs a header row and a row per member.")
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise RosterFileError("The file is UTF-16 text; export the roster as 'CSV UTF-8'.")
    if b"\x00" in data:
        raise RosterFileError("This is not a CSV file (it has binary content); export the "
                              "roster as 'CSV UTF-8'.")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise RosterFileError(f"The file is not UTF-8 text (line {line} is the first that "
                              "is not); export the roster as 'CSV UTF-8'.") from None


def _header_positions(header: list[str], row: int) -> tuple[int, ...]:
    names = [cell.strip().lower().replace(" ", "_") for cell in header]
    errors: list[RowError] = []
    positions: dict[str, int] = {}
    for i, name in enumerate(names):
        if name not in ROSTER_COLUMNS:
            # By position only: in a file without a header, this is a member's details.
            errors.append(RowError(row, f"column {i + 1}", "not a roster column"))
        elif name in positions:
            errors.append(RowError(row, name, f"column named twice (columns "
                                              f"{positions[name] + 1} and {i + 1})"))
        else:
            positions[name] = i
    errors += [RowError(row, c, "missing column") for c in ROSTER_COLUMNS
               if c not in positions]
    if not errors:
        return tuple(positions[c] for c in ROSTER_COLUMNS)
    expected = ", ".join(ROSTER_COLUMNS)
    if len(header) == 1 and ";" in header[0]:
        message = f"The header is separated by semicolons; use commas. Expected: {expected}."
    elif not positions:
        message = f"The first row must be the header: {expected}."
    else:
        message = f"The header does not name the roster's columns; expected: {expected}."
    raise RosterFileError(message, errors)


def duplicate_numbers(roster: RosterFile) -> list[RowError]:
    """A membership number may appear once: every later row with it is an error."""
    numbers = MembershipNumbers(roster.positions, roster.width)
    numbers.add(roster.records)
    return numbers.duplicates


class MembershipNumbers:
    """The membership numbers of a roster's records, added a chunk at a time. A number
    may appear once: every later row with it is in `duplicates`."""

    def __init__(self, positions: tuple[int, ...], width: int) -> None:
        self._at = positions[0]
        self._width = width
        self.first_row: dict[str, int] = {}
        self.duplicates: list[RowError] = []

    def add(self, records: list[tuple[int, list[str]]]) -> list[str]:
        """Each record's membership number as written, "" where there is none (or the
        row has the wrong number of cells)."""
        at, width = self._at, self._width
        numbers = [cells[at].strip() if len(cells) == width else "" for _, cells in records]
        first_row = self.first_row
        for (row, _), number in zip(records, numbers, strict=True):
            if number:
                first = first_row.setdefault(number, row)
                if first != row:
                    self.duplicates.append(RowError(row, "membership_number",
                                                    f"same membership number as row {first}"))
        return numbers


def summarise(problems: list[RowError], max_errors: int) -> tuple[list[RowError], int, int]:
    """The first `max_errors` problems in file order, how many there are in all, and on
    how many rows."""
    order = {name: i for i, name in enumerate(ROSTER_COLUMNS)}
    problems.sort(key=lambda e: (e.row, order.get(e.field or "", -1)))
    return problems[:max_errors], len(problems), len({e.row for e in problems})


_Codes = tuple[str, str, str, str]  # group, branch, workplace, grade as written


def check_records(roster: RosterFile, records: Iterable[tuple[int, list[str]]]
                  ) -> list[RosterRow | list[RowError]]:
    """Each data row, normalised, or its problems. (A membership number repeated across
    rows is `duplicate_numbers`' business.)"""
    cells_of = itemgetter(*roster.positions)
    return [_check(roster.width, number, cells, cells_of) for number, cells in records]


def _check(width: int, number: int, cells: list[str],
           cells_of: Callable[[list[str]], tuple[str, ...]]) -> RosterRow | list[RowError]:
    if len(cells) != width:
        return [RowError(number, None, f"has {len(cells)} cells; the header has {width}")]
    (membership_number, first_name, last_name, group_code, branch_code, workplace_code,
     grade, mobile, email, sms_consent, email_consent) = [c.strip() for c in cells_of(cells)]
    problems: list[tuple[str | None, str]] = []

    if not membership_number:
        problems.append(("membership_number", "missing membership number"))
    elif not _MEMBERSHIP_NUMBER.fullmatch(membership_number):
        problems.append(("membership_number", "must be 1-40 letters, digits, '/', '_', '.' "
                                              "or '-', starting with a letter or digit"))

    for name, value in (("first_name", first_name), ("last_name", last_name)):
        if len(value) > MAX_NAME_LENGTH:
            problems.append((name, f"longer than {MAX_NAME_LENGTH} characters"))
        elif _CONTROL.search(value):
            problems.append((name, "contains control characters"))

    placement = _placement((group_code, branch_code, workplace_code, grade))
    if not isinstance(placement, Placement):
        problems += placement

    normalised_mobile = normalised_email = None
    if mobile:
        if len(mobile) > MAX_MOBILE_LENGTH:
            problems.append(("mobile", "too long for a phone number"))
        else:
            try:
                normalised_mobile = normalise_mobile(mobile)
            except InvalidValue as exc:
                problems.append(("mobile", str(exc)))
    if email:
        if len(email) > MAX_EMAIL_LENGTH:
            problems.append(("personal_email", "too long for an email address"))
        else:
            try:
                normalised_email = normalise_email(email)
            except InvalidValue as exc:
                problems.append(("personal_email", str(exc)))

    consents = []
    for name, value in (("sms_consent", sms_consent), ("email_consent", email_consent)):
        try:
            consents.append(parse_consent(value))
        except InvalidValue as exc:
            problems.append((name, str(exc)))

    if problems:
        return [RowError(number, f, m) for f, m in problems]
    return RosterRow(
        row=number, membership_number=membership_number,
        first_name=first_name or None, last_name=last_name or None,
        placement=placement,  # type: ignore[arg-type]  # a Placement when no problems
        mobile=normalised_mobile, email=normalised_email,
        sms_consent=consents[0], email_consent=consents[1])


# Placements this process found valid, by their codes as written: a union has hundreds
# of workplaces, not tens of thousands, and checking a placement against the event
# contract costs as much as checking a phone number. Invalid codes are not kept: a cell
# in the wrong column may be personal data, which must not outlive the import.
_VALID_PLACEMENTS: dict[_Codes, Placement] = {}
_MAX_VALID_PLACEMENTS = 20_000


def _placement(codes: _Codes) -> Placement | list[tuple[str | None, str]]:
    """The placement these codes make, or their problems."""
    placement = _VALID_PLACEMENTS.get(codes)
    if placement is None:
        checked = _check_codes(codes)
        if not isinstance(checked, Placement):
            return checked
        if len(_VALID_PLACEMENTS) >= _MAX_VALID_PLACEMENTS:
            _VALID_PLACEMENTS.clear()
        placement = _VALID_PLACEMENTS[codes] = checked
    return placement


def _check_codes(codes: _Codes) -> Placement | list[tuple[str | None, str]]:
    problems: list[tuple[str | None, str]] = []
    for name, value in zip(CODE_COLUMNS, codes, strict=True):
        if not value:
            if name in REQUIRED_CODES:
                problems.append((name, "missing code"))
        elif not _CODE.fullmatch(value):
            problems.append((name, "must be 1-40 letters, digits, '_', '.' or '-', starting "
                                   "with a letter or digit"))
        elif contact_kind(value):
            # Codes travel in events, which refuse anything shaped like a phone number.
            problems.append((name, "must not contain 7 or more digits in a row"))
    if problems:
        return problems
    try:
        return placement_of(*codes)
    except InvalidValue as exc:  # the checks above mirror the contract's; in case not
        return [(None, str(exc))]


# -- what the roster said last time -------------------------------------------------------

FINGERPRINT_VERSION = b"\x01"
# The parts of a row an import may change, each fingerprinted separately (see below).
PARTS = ("names", "mobile", "email", "placement", "sms_consent", "email_consent")
_PART_BYTES = 8
_FINGERPRINT_LENGTH = 1 + 4 * _PART_BYTES + 1


def roster_fingerprint(index: BlindIndex, row: RosterRow) -> bytes:
    """What this row says, as stored in `members.personal_digest`: one keyed 8-byte
    fingerprint each for the names, the mobile, the email and the placement, and a byte
    for the two consents.

    Comparing it with the fingerprint of the previous import tells, without decrypting
    anything, whether the membership system changed a member and which part. An import
    applies only parts the membership system changed: a mobile a rep corrected, or an
    SMS consent withdrawn by a STOP reply, is not overwritten by a roster that merely
    still says what it said before. (Fingerprints are HMACs under the blind-index key:
    a bare hash of a mobile number could be reversed by trying every number.)
    """
    no_mobile, no_email = _absent(index)  # most rows have no mobile, more no email
    return b"".join((
        FINGERPRINT_VERSION,
        index.digest("names", row.first_name, row.last_name)[:_PART_BYTES],
        index.digest("mobile", row.mobile)[:_PART_BYTES] if row.mobile else no_mobile,
        index.digest("email", row.email)[:_PART_BYTES] if row.email else no_email,
        _placement_part(index, row.placement),
        _CONSENTS[row.sms_consent, row.email_consent],
    ))


_CONSENTS = {(sms, email): bytes([sms | email << 1]) for sms in (False, True)
             for email in (False, True)}


@lru_cache(maxsize=8192)
def _placement_part(index: BlindIndex, placement: Placement) -> bytes:
    # Placements repeat (a union has hundreds of workplaces, not tens of thousands).
    return index.digest("placement", placement.group_code, placement.branch_code,
                        placement.workplace_code, placement.grade)[:_PART_BYTES]


@lru_cache(maxsize=8)
def _absent(index: BlindIndex) -> tuple[bytes, bytes]:
    return (index.digest("mobile", None)[:_PART_BYTES],
            index.digest("email", None)[:_PART_BYTES])


def parts_changed(previous: bytes | None, current: bytes) -> frozenset[str]:
    """The parts whose fingerprint differs; all of them when there is no comparable
    previous fingerprint (a member registered otherwise, or erased since)."""
    if (previous is None or len(previous) != _FINGERPRINT_LENGTH
            or previous[:1] != FINGERPRINT_VERSION):
        return frozenset(PARTS)
    changed = {name for i, name in enumerate(PARTS[:4])
               if previous[1 + i * _PART_BYTES:1 + (i + 1) * _PART_BYTES]
               != current[1 + i * _PART_BYTES:1 + (i + 1) * _PART_BYTES]}
    flags = previous[-1] ^ current[-1]
    if flags & 1:
        changed.add("sms_consent")
    if flags & 2:
        changed.add("email_consent")
    return frozenset(changed)
