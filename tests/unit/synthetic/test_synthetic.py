"""The synthetic union generator: deterministic, shaped like a real union, and every row
one the roster import accepts (codes the event contract allows, mobiles `phonenumbers`
takes as UK mobiles)."""

from __future__ import annotations

import csv
import io
import random
import re
from collections import Counter

import phonenumbers
import pytest

from turnout_events.common import CODE_PATTERN
from turnout_events.privacy import contact_kind
from turnout_local.synthetic import (
    MOBILE_PREFIXES,
    ROSTER_COLUMNS,
    generate_union,
    roster_csv_bytes,
    write_roster_csv,
)

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def union():
    return list(generate_union(members=20_000, seed=11))


def test_the_same_seed_gives_the_same_union_and_another_seed_another():
    assert list(generate_union(members=500, seed=3)) == list(generate_union(members=500, seed=3))
    assert list(generate_union(members=500, seed=3)) != list(generate_union(members=500, seed=4))


def test_the_size_and_the_units_are_the_ones_asked_for(union):
    assert len(union) == 20_000
    assert len({m.membership_number for m in union}) == 20_000
    assert union[0].membership_number == "M000001"
    assert {m.group_code for m in union} == {f"G{g:02d}" for g in range(1, 7)}
    assert len({m.branch_code for m in union}) == 120
    # Every workplace sits in exactly one branch, every branch in one group.
    for unit, parent in (("workplace_code", "branch_code"), ("branch_code", "group_code")):
        parents: dict[str, set[str]] = {}
        for m in union:
            parents.setdefault(getattr(m, unit), set()).add(getattr(m, parent))
        assert all(len(p) == 1 for p in parents.values()), unit


def test_branch_sizes_are_skewed(union):
    sizes = sorted(Counter(m.branch_code for m in union).values())
    assert sizes[-1] > 8 * sizes[0]
    # The biggest tenth of branches hold far more than a tenth of the members.
    assert sum(sizes[-12:]) > 0.3 * len(union)


def test_about_the_asked_share_is_contactable_and_it_varies_by_branch(union):
    coverage = sum(m.contactable for m in union) / len(union)
    assert 0.36 <= coverage <= 0.44
    per_branch: dict[str, list[bool]] = {}
    for m in union:
        per_branch.setdefault(m.branch_code, []).append(m.contactable)
    shares = [sum(v) / len(v) for v in per_branch.values() if len(v) >= 50]
    assert max(shares) - min(shares) > 0.3
    hardly = list(generate_union(members=2_000, contact_coverage=0.0, seed=1))
    assert not any(m.contactable for m in hardly)


def test_consent_mostly_goes_with_a_channel(union):
    sms = [m for m in union if m.sms_consent]
    emails = [m for m in union if m.email_consent]
    assert sum(m.mobile is not None for m in sms) / len(sms) > 0.9
    assert sum(m.personal_email is not None for m in emails) / len(emails) > 0.9
    with_mobile = [m for m in union if m.mobile]
    assert 0.7 < sum(m.sms_consent for m in with_mobile) / len(with_mobile) < 0.9


def test_codes_satisfy_the_event_contract(union):
    codes = {getattr(m, f) for m in union
             for f in ("group_code", "branch_code", "workplace_code", "grade")}
    for code in codes:
        assert re.fullmatch(CODE_PATTERN, code), code
        assert contact_kind(code) is None, code


def test_mobiles_are_uk_mobiles_for_phonenumbers(union):
    mobiles = [m.mobile for m in union if m.mobile]
    assert len(mobiles) > 5_000
    assert len({m[:2] for m in mobiles}) > 1  # written more than one way
    for raw in mobiles[:3_000]:
        number = phonenumbers.parse(raw, "GB")
        assert phonenumbers.is_valid_number(number), raw
        assert phonenumbers.number_type(number) is phonenumbers.PhoneNumberType.MOBILE, raw
        assert phonenumbers.region_code_for_number(number) == "GB", raw


def test_every_prefix_gives_valid_mobiles_whatever_the_rest():
    rng = random.Random(0)
    for prefix in MOBILE_PREFIXES:
        for rest in ("000000", "999999", *(f"{rng.randrange(10**6):06d}" for _ in range(20))):
            number = phonenumbers.parse(prefix + rest, "GB")
            assert phonenumbers.number_type(number) is phonenumbers.PhoneNumberType.MOBILE, (
                prefix, rest)


def test_emails_are_unique_and_on_reserved_domains(union):
    emails = [m.personal_email for m in union if m.personal_email]
    assert len(set(emails)) == len(emails)
    assert all(e.rsplit("@", 1)[1] in ("example.com", "example.org", "example.net")
               for e in emails)


def test_the_csv_has_exactly_the_import_columns_and_one_row_per_member(tmp_path):
    members = list(generate_union(members=300, seed=5))
    path = tmp_path / "roster.csv"
    assert write_roster_csv(members, path) == 300
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    assert tuple(rows[0]) == ROSTER_COLUMNS == (
        "membership_number", "first_name", "last_name", "group_code", "branch_code",
        "workplace_code", "grade", "mobile", "personal_email", "sms_consent",
        "email_consent")
    assert len(rows) == 301
    by_number = {r[0]: dict(zip(ROSTER_COLUMNS, r, strict=True)) for r in rows[1:]}
    for m in members:
        row = by_number[m.membership_number]
        assert row["mobile"] == (m.mobile or "")
        assert row["personal_email"] == (m.personal_email or "")
        assert row["sms_consent"] == ("yes" if m.sms_consent else "no")
        assert row["last_name"] == m.last_name
    # The same rows written to an open file or into bytes.
    buffer = io.StringIO()
    write_roster_csv(members, buffer)
    assert buffer.getvalue().encode() == roster_csv_bytes(members) == path.read_bytes()


def test_nonsense_sizes_are_refused():
    for kwargs in ({"members": -1}, {"groups": 0}, {"branches": 3, "groups": 4},
                   {"workplaces": 10, "branches": 20}, {"contact_coverage": 1.5}):
        with pytest.raises(ValueError):
            next(generate_union(**kwargs))
