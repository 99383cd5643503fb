"""Reading and checking a roster file (no database): what is accepted, how it is
normalised, and that every problem is reported with its row and column and without the
value that caused it."""

from __future__ import annotations

import pytest
from turnout_contacts.domain.crypto import BlindIndex
from turnout_contacts.domain.roster import (
    PARTS,
    ROSTER_COLUMNS,
    RosterFileError,
    RosterReader,
    parse_roster,
    parts_changed,
    read_roster,
    roster_fingerprint,
)

pytestmark = pytest.mark.unit

HEADER = ",".join(ROSTER_COLUMNS)
GOOD = "M001,Priya,Patel,G1,B1,W1,band5,07911 123456,priya@example.org,yes,no"


def csv_bytes(*rows: str, header: str = HEADER, newline: str = "\n") -> bytes:
    return newline.join((header, *rows)).encode() + newline.encode()


def errors_of(data: bytes) -> list[tuple[int, str | None]]:
    parsed = parse_roster(data)
    return [(e.row, e.field) for e in parsed.errors]


def test_a_good_row_is_normalised():
    [row] = parse_roster(csv_bytes(GOOD)).rows
    assert row.row == 2
    assert row.membership_number == "M001"
    assert (row.first_name, row.last_name) == ("Priya", "Patel")
    assert row.placement.model_dump() == {"group_code": "G1", "branch_code": "B1",
                                          "workplace_code": "W1", "grade": "band5"}
    assert row.mobile == "+447911123456"
    assert row.email == "priya@example.org"
    assert (row.sms_consent, row.email_consent) == (True, False)


@pytest.mark.parametrize("mobile", ["07911 123456", "+44 7911 123456", "(07911) 123-456",
                                    "447911123456", "+447911123456", "0044 7911 123456"])
def test_uk_mobiles_are_accepted_however_written(mobile):
    [row] = parse_roster(csv_bytes(f"M001,A,B,G1,B1,,,{mobile},,no,no")).rows
    assert row.mobile == "+447911123456"


@pytest.mark.parametrize(("raw", "expected"), [
    ("yes", True), ("YES", True), ("true", True), ("1", True), ("Y", True),
    ("no", False), ("False", False), ("0", False), ("", False)])
def test_consent_spellings(raw, expected):
    [row] = parse_roster(csv_bytes(f"M001,A,B,G1,B1,,,,,{raw},{raw}")).rows
    assert row.sms_consent is expected and row.email_consent is expected


def test_empty_optional_cells_become_none():
    [row] = parse_roster(csv_bytes("M001,,,G1,B1,,,,,,")).rows
    assert (row.first_name, row.last_name, row.mobile, row.email) == (None, None, None, None)
    assert row.placement.workplace_code is None and row.placement.grade is None


def test_columns_in_any_order_and_header_spelling():
    header = "Email_Consent, SMS consent,personal_email,mobile,grade,workplace_code," \
             "branch_code,group_code,last_name,first_name,Membership Number"
    data = csv_bytes("no,yes,,07911123456,,,B1,G1,Patel,Priya,M001", header=header)
    [row] = parse_roster(data).rows
    assert (row.membership_number, row.first_name, row.sms_consent) == ("M001", "Priya", True)
    assert row.placement.branch_code == "B1"


def test_bom_windows_line_endings_quotes_and_blank_lines():
    data = ("\ufeff" + HEADER + "\r\n" + GOOD + "\r\n\r\n"
            + '"M002","O\'Brien, Jr","Smith",G1,B1,W1,,"+44 7400 654321",,no,no\r\n'
            + ",,,,,,,,,,\r\n").encode()
    parsed = parse_roster(data)
    assert parsed.ok
    assert [r.row for r in parsed.rows] == [2, 4]  # row 3 is blank, row 5 empty cells
    assert parsed.rows[1].first_name == "O'Brien, Jr"


def test_row_numbers_count_a_quoted_cell_spanning_lines_as_one_row():
    data = csv_bytes('M001,"Mary\nAnne",Jones,G1,B1,,,,,no,no', "M002,A,B,,B1,,,,,no,no")
    # (A line break has no place in a name either.)
    assert errors_of(data) == [(2, "first_name"), (3, "group_code")]


@pytest.mark.parametrize(("row", "field", "value"), [
    (",A,B,G1,B1,,,,,no,no", "membership_number", None),
    ("M 001,A,B,G1,B1,,,,,no,no", "membership_number", "M 001"),
    ("M001,A,B,,B1,,,,,no,no", "group_code", None),
    ("M001,A,B,G1,,,,,,no,no", "branch_code", None),
    ("M001,A,B,G1,Branch 7!,,,,,no,no", "branch_code", "Branch 7!"),
    ("M001,A,B,G1,B1,W 9,,,,no,no", "workplace_code", "W 9"),
    ("M001,A,B,G1,B1,W12345678,,,,no,no", "workplace_code", "W12345678"),
    ("M001,A,B,G1,B1,,grade/5,,,no,no", "grade", "grade/5"),
    ("M001,A,B,G1,B1,,,12345,,no,no", "mobile", "12345"),
    ("M001,A,B,G1,B1,,,0161 496 0000,,no,no", "mobile", "0161 496 0000"),
    ("M001,A,B,G1,B1,,,07700 900123,,no,no", "mobile", "07700 900123"),
    ("M001,A,B,G1,B1,,,call me,,no,no", "mobile", "call me"),
    ("M001,A,B,G1,B1,,,,jo.bloggs@,no,no", "personal_email", "jo.bloggs@"),
    ("M001,A,B,G1,B1,,,,jo bloggs@example.org,no,no", "personal_email", "jo bloggs@example.org"),
    ("M001,A,B,G1,B1,,,,,maybe,no", "sms_consent", "maybe"),
    ("M001,A,B,G1,B1,,,,,no,2", "email_consent", "2"),
    ("M001," + "x" * 101 + ",B,G1,B1,,,,,no,no", "first_name", None),
])
def test_each_kind_of_bad_cell_is_reported_by_row_and_column_without_its_value(
        row, field, value):
    parsed = parse_roster(csv_bytes(GOOD.replace("M001", "M000"), row))
    assert not parsed.ok and parsed.rows[0].membership_number == "M000"
    assert [(e.row, e.field) for e in parsed.errors] == [(3, field)]
    message = parsed.errors[0].message
    assert message
    if value is not None:
        assert value not in message


def test_a_row_with_the_wrong_number_of_cells():
    parsed = parse_roster(csv_bytes("M001,A,B,G1,B1"))
    assert [(e.row, e.field) for e in parsed.errors] == [(2, None)]
    assert "5 cells" in parsed.errors[0].message and "11" in parsed.errors[0].message


def test_duplicate_membership_numbers_point_at_the_first_row():
    data = csv_bytes("M001,A,B,G1,B1,,,,,no,no", "M002,A,B,G1,B1,,,,,no,no",
                     " M001 ,C,D,G1,B1,,,,,no,no", "M001,E,F,G1,B1,,,,,no,no")
    parsed = parse_roster(data)
    assert [(e.row, e.field, e.message) for e in parsed.errors] == [
        (4, "membership_number", "same membership number as row 2"),
        (5, "membership_number", "same membership number as row 2")]


def test_every_bad_row_and_field_is_reported_in_file_order():
    rows = [GOOD.replace("M001", f"M{i:03d}") for i in range(10)]
    rows[2] = "M002,A,B,,B1,,,12,,no,no"  # group_code and mobile
    rows[7] = "M007,A,B,G1,B1,,,,bad@,perhaps,no"  # email and sms_consent
    parsed = parse_roster(csv_bytes(*rows))
    assert [(e.row, e.field) for e in parsed.errors] == [
        (4, "group_code"), (4, "mobile"), (9, "personal_email"), (9, "sms_consent")]
    assert (parsed.error_count, parsed.bad_rows) == (4, 2)
    assert len(parsed.rows) == 8


def test_the_list_of_errors_is_capped_but_the_count_is_not():
    rows = [f"M{i:04d},A,B,,B1,,,,,no,no" for i in range(50)]
    parsed = parse_roster(csv_bytes(*rows), max_errors=10)
    assert len(parsed.errors) == 10 and parsed.error_count == 50 and parsed.bad_rows == 50
    assert [e.row for e in parsed.errors] == list(range(2, 12))


@pytest.mark.parametrize(("data", "says"), [
    (b"", "empty"),
    (b"  \r\n\n", "empty"),
    (HEADER.encode() + b"\n", "no member rows"),
    (HEADER.encode() + b"\n,,,,,,,,,,\n\n", "no member rows"),
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00", "not a CSV file"),
    ("membership_number\n".encode("utf-16"), "UTF-16"),
    (HEADER.encode() + b"\nM001,J\xf6rg,B,G1,B1,,,,,no,no\n", "not UTF-8"),
    (HEADER.replace(",", ";").encode() + b"\n", "semicolons"),
    (b'membership_number,"first_name\n', "cannot be read as CSV"),
])
def test_files_that_are_not_a_roster(data, says):
    with pytest.raises(RosterFileError) as caught:
        parse_roster(data)
    assert says in str(caught.value)


def test_a_header_with_missing_and_unknown_columns_names_them_but_never_echoes_cells():
    header = "membership_number,first_name,surname,group_code,branch_code,mobile," \
             "personal_email,sms_consent,email_consent"
    with pytest.raises(RosterFileError) as caught:
        parse_roster(csv_bytes(GOOD, header=header))
    errors = {(e.row, e.field, e.message) for e in caught.value.errors}
    assert errors == {(1, "column 3", "not a roster column"),
                      (1, "last_name", "missing column"),
                      (1, "workplace_code", "missing column"),
                      (1, "grade", "missing column")}
    # A file whose first row is a member, not a header: nothing of it is repeated.
    with pytest.raises(RosterFileError) as caught:
        parse_roster((GOOD + "\n" + GOOD + "\n").encode())
    text = str(caught.value) + repr([e.as_dict() for e in caught.value.errors])
    assert "header" in str(caught.value)
    for secret in ("Priya", "Patel", "07911", "priya@example.org"):
        assert secret not in text


def test_too_many_rows():
    rows = [f"M{i:03d},A,B,G1,B1,,,,,no,no" for i in range(6)]
    with pytest.raises(RosterFileError, match="more than 5"):
        parse_roster(csv_bytes(*rows), max_rows=5)
    reader = RosterReader(csv_bytes(*rows), max_rows=5)
    assert len(reader.read(4)) == 4
    with pytest.raises(RosterFileError, match="more than 5"):
        reader.read(4)


def test_read_a_chunk_at_a_time_the_rows_are_those_of_the_whole_file():
    rows = [f"M{i:03d},A,B,G1,B1,,,,,no,no" for i in range(7)]
    rows[3:3] = ["", ",,,,,,,,,,"]  # skipped, but counted as rows
    data = csv_bytes(*rows)
    reader = RosterReader(data)
    chunks = [reader.read(3) for _ in range(4)]
    assert [len(c) for c in chunks] == [3, 3, 1, 0]
    assert [r for c in chunks for r in c] == read_roster(data).records
    assert reader.records == 7 and [n for n, _ in chunks[1]] == [7, 8, 9]


def test_a_row_that_is_not_csv_further_down_is_found_when_its_chunk_is_read():
    rows = [f"M{i:03d},A,B,G1,B1,,,,,no,no" for i in range(6)]
    rows[4] = 'M004,"A,B,G1,B1,,,,,no,no'  # a stray quote: row 6 of the file
    reader = RosterReader(csv_bytes(*rows))
    assert len(reader.read(3)) == 3
    with pytest.raises(RosterFileError, match="Row 6 cannot be read as CSV"):
        reader.read(3)
    with pytest.raises(RosterFileError, match="no member rows"):
        RosterReader(csv_bytes("")).read(3)


def test_fingerprints_tell_which_part_of_a_row_changed():
    index = BlindIndex(b"test-index-key")

    def fingerprint(row: str) -> bytes:
        [parsed] = parse_roster(csv_bytes(row)).rows
        return roster_fingerprint(index, parsed)

    before = fingerprint(GOOD)
    assert fingerprint(GOOD) == before
    # The same values written differently are the same values.
    assert fingerprint(GOOD.replace("07911 123456", "+44 7911 123456")) == before
    for changed_row, parts in (
            (GOOD.replace("Priya", "Pri"), {"names"}),
            (GOOD.replace("07911 123456", "07911 123457"), {"mobile"}),
            (GOOD.replace("priya@example.org", ""), {"email"}),
            (GOOD.replace("W1", "W2"), {"placement"}),
            (GOOD.replace(",yes,no", ",no,no"), {"sms_consent"}),
            (GOOD.replace(",yes,no", ",yes,yes"), {"email_consent"}),
            (GOOD.replace("B1,W1", "B2,W2").replace(",yes,no", ",no,yes"),
             {"placement", "sms_consent", "email_consent"})):
        assert parts_changed(before, fingerprint(changed_row)) == parts, changed_row
    assert parts_changed(before, before) == frozenset()
    assert parts_changed(None, before) == frozenset(PARTS)
    # Keyed: another key gives another fingerprint, and no value is in it.
    assert roster_fingerprint(BlindIndex(b"other-key"), parse_roster(
        csv_bytes(GOOD)).rows[0]) != before
    assert b"7911" not in before and b"Priya" not in before
