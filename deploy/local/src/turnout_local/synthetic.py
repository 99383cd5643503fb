"""Synthetic unions: members spread over groups, branches and workplaces the way a real
union's are, as the membership system would export them.

    records = generate_union(members=50_000, seed=7)
    write_roster_csv(records, "roster.csv")   # what `POST /v1/members:import` takes

Used by tests, benchmarks and the demo, so it is deterministic: the same arguments and
seed give the same union, byte for byte, whatever the machine. (Nothing here asks the
phone-number library which prefixes exist: a library upgrade must not change the data.)

Realistic where it matters to turnout work:
- branch sizes are skewed (a few big branches, a long tail of small ones), and so are
  workplaces within a branch;
- contact coverage varies by branch around `contact_coverage` (well-organised branches
  know their members' numbers, others hardly any), so "hard to reach" is uneven;
- consent is mostly held by members who have a mobile or an email to be messaged on;
- mobile numbers are written the various ways people type them.

The phone numbers are valid UK mobile numbers (Ofcom's drama range 07700 900xxx is not
valid for `phonenumbers`, so it cannot be used), so some may belong to real people:
never send anything to a synthetic union outside the sandbox provider. Email addresses
use the reserved example domains (RFC 2606) and cannot reach anyone.
"""

from __future__ import annotations

import csv
import io
import itertools
import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TextIO

ROSTER_COLUMNS = (
    "membership_number", "first_name", "last_name", "group_code", "branch_code",
    "workplace_code", "grade", "mobile", "personal_email", "sms_consent", "email_consent",
)


@dataclass(frozen=True, slots=True)
class SyntheticMember:
    """One row of the membership system's export. `mobile` is written as a person typed
    it (normalising it is the importer's job); the consents are booleans, written
    yes/no."""

    membership_number: str
    first_name: str
    last_name: str
    group_code: str
    branch_code: str
    workplace_code: str
    grade: str
    mobile: str | None
    personal_email: str | None
    sms_consent: bool
    email_consent: bool

    @property
    def contactable(self) -> bool:
        return self.mobile is not None or self.personal_email is not None


assert tuple(f.name for f in fields(SyntheticMember)) == ROSTER_COLUMNS

# Five-digit UK mobile prefixes whose every number `phonenumbers` (9.x) accepts as a GB
# MOBILE; tests/unit/synthetic checks that this stays true.
MOBILE_PREFIXES = (
    "07400", "07412", "07429", "07440", "07463", "07481", "07502", "07515", "07533",
    "07552", "07570", "07588", "07711", "07723", "07745", "07766", "07790", "07801",
    "07817", "07850", "07872", "07894", "07903", "07920", "07956", "07971", "07984",
)
EMAIL_DOMAINS = ("example.com", "example.org", "example.net")
# Pay bands, most members in the middle ones.
GRADES = ("band2", "band3", "band4", "band5", "band6", "band7", "band8")
GRADE_WEIGHTS = (8, 14, 22, 24, 17, 10, 5)
GRADE_CUMULATIVE = tuple(itertools.accumulate(GRADE_WEIGHTS))

FIRST_NAMES = (
    "Oliver", "Amelia", "George", "Olivia", "Harry", "Isla", "Jack", "Ava", "Noah", "Mia",
    "Leo", "Ivy", "Arthur", "Lily", "Muhammad", "Freya", "Oscar", "Grace", "Charlie",
    "Sophia", "Jacob", "Emily", "Thomas", "Ella", "Alfie", "Poppy", "Ethan", "Evie",
    "Priya", "Aisha", "Kwame", "Chidi", "Siobhan", "Ciaran", "Rhys", "Cerys", "Eilidh",
    "Callum", "Fatima", "Hamza", "Zainab", "Bartosz", "Agnieszka", "Tomasz", "Ioana",
    "Andrei", "Sunita", "Rajesh", "Mei", "Wei", "Nia", "Dylan", "Margaret", "David",
    "Susan", "John", "Patricia", "Michael", "Linda", "Peter", "Karen", "Paul", "Janet",
)
LAST_NAMES = (
    "Smith", "Jones", "Williams", "Taylor", "Brown", "Davies", "Evans", "Wilson",
    "Thomas", "Johnson", "Roberts", "Robinson", "Thompson", "Wright", "Walker", "White",
    "Edwards", "Hughes", "Green", "Hall", "Lewis", "Harris", "Clarke", "Patel", "Jackson",
    "Wood", "Turner", "Martin", "Cooper", "Hill", "Ward", "Morris", "Moore", "Clark",
    "Lee", "King", "Baker", "Harrison", "Morgan", "Allen", "James", "Scott", "Phillips",
    "Watson", "Khan", "Ahmed", "Ali", "Hussain", "Begum", "Singh", "Kaur", "Nowak",
    "Kowalski", "Popescu", "O'Brien", "Murphy", "Kelly", "MacDonald", "Campbell",
    "Stewart", "Okafor", "Mensah", "Chen", "Wong", "Nguyen", "Da Silva", "Ferreira",
)


def generate_union(
    members: int = 50_000,
    groups: int = 6,
    branches: int = 120,
    workplaces: int = 600,
    contact_coverage: float = 0.4,
    seed: int = 2026,
) -> Iterator[SyntheticMember]:
    """Yield `members` members, membership numbers M000001, M000002, ... in order.

    `contact_coverage` is the share of members with a mobile or a personal email, on
    average over branches. Groups, branches and workplaces are numbered codes (G01,
    B001, W0001) that satisfy the event contract; every branch belongs to one group and
    every workplace to one branch.
    """
    if members < 0:
        raise ValueError("members must not be negative")
    if not 1 <= groups <= branches <= workplaces:
        raise ValueError("need 1 <= groups <= branches <= workplaces")
    if not 0.0 <= contact_coverage <= 1.0:
        raise ValueError("contact_coverage is a share between 0 and 1")
    rng = random.Random(seed)

    group_codes = union_group_codes(groups)
    branch_codes = [f"B{b + 1:03d}" for b in range(branches)]
    # Every group has at least one branch; the rest are spread unevenly.
    branch_group = [group_codes[b] if b < groups else rng.choice(group_codes)
                    for b in range(branches)]
    # Branch sizes: log-normal weights, a few large branches and a long tail.
    branch_weights = [rng.lognormvariate(0.0, 1.0) for _ in range(branches)]
    # Coverage per branch: a beta distribution whose mean is `contact_coverage`.
    # Scaled so that the average over members, not over branches, is the one asked for.
    branch_coverage = [_beta(rng, contact_coverage, 6.0) for _ in range(branches)]
    weighted = sum(c * w for c, w in zip(branch_coverage, branch_weights, strict=True))
    if weighted > 0:
        scale = contact_coverage * sum(branch_weights) / weighted
        branch_coverage = [min(1.0, c * scale) for c in branch_coverage]

    # Every branch has at least one workplace; the rest go to branches by size.
    workplace_branch = list(range(branches)) + rng.choices(
        range(branches), weights=branch_weights, k=workplaces - branches)
    by_branch: list[list[str]] = [[] for _ in range(branches)]
    by_branch_weights: list[list[float]] = [[] for _ in range(branches)]
    for w, b in enumerate(workplace_branch):
        by_branch[b].append(f"W{w + 1:04d}")
        by_branch_weights[b].append(rng.paretovariate(1.5))
    by_branch_cumulative = [list(itertools.accumulate(w)) for w in by_branch_weights]

    member_branches = rng.choices(range(branches), weights=branch_weights, k=members)
    for n, b in enumerate(member_branches, start=1):
        first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
        contactable = rng.random() < branch_coverage[b]
        # Of contactable members most have a mobile, about half an email, some both.
        has_mobile = has_email = False
        if contactable:
            roll = rng.random()
            has_mobile = roll < 0.88
            has_email = roll >= 0.55
        mobile = random_mobile(rng) if has_mobile else None
        email = _email(rng, first, last, n) if has_email else None
        yield SyntheticMember(
            membership_number=f"M{n:06d}",
            first_name=first,
            last_name=last,
            group_code=branch_group[b],
            branch_code=branch_codes[b],
            workplace_code=rng.choices(by_branch[b], cum_weights=by_branch_cumulative[b])[0],
            grade=rng.choices(GRADES, cum_weights=GRADE_CUMULATIVE)[0],
            mobile=mobile,
            personal_email=email,
            # Consent goes with a channel to be messaged on, bar a few stale records.
            sms_consent=rng.random() < (0.8 if has_mobile else 0.02),
            email_consent=rng.random() < (0.7 if has_email else 0.01),
        )


def _beta(rng: random.Random, mean: float, spread: float) -> float:
    if mean in (0.0, 1.0):
        return mean
    return rng.betavariate(mean * spread, (1.0 - mean) * spread)


def union_group_codes(groups: int = 6) -> list[str]:
    """The group codes of a union generated with `groups` groups: G01, G02, ..."""
    return [f"G{g + 1:02d}" for g in range(groups)]


def random_mobile(rng: random.Random) -> str:
    """A UK mobile number written one of the ways people type them (see the module's
    warning: it may be a real person's; use it only with the sandbox provider)."""
    prefix = rng.choice(MOBILE_PREFIXES)
    rest = f"{rng.randrange(1_000_000):06d}"
    style = rng.random()
    if style < 0.6:
        return f"{prefix} {rest}"
    if style < 0.8:
        return f"+44 {prefix[1:]} {rest}"
    if style < 0.95:
        return prefix + rest
    return f"+44{prefix[1:]}{rest}"


def _email(rng: random.Random, first: str, last: str, n: int) -> str:
    local = f"{first}.{last}".lower().replace(" ", "").replace("'", "")
    return f"{local}{n}@{rng.choice(EMAIL_DOMAINS)}"


def _cells(member: SyntheticMember) -> list[str]:
    cells = []
    for name in ROSTER_COLUMNS:
        value = getattr(member, name)
        if isinstance(value, bool):
            value = "yes" if value else "no"
        cells.append("" if value is None else value)
    return cells


def write_roster_csv(records: Iterable[SyntheticMember], path_or_file: str | Path | TextIO
                     ) -> int:
    """Write the import CSV (header, then one row per member; `\\n` line endings, UTF-8)
    to a path or an open text file. Returns the number of member rows written."""
    if isinstance(path_or_file, str | Path):
        with open(path_or_file, "w", encoding="utf-8", newline="") as out:
            return write_roster_csv(records, out)
    writer = csv.writer(path_or_file, lineterminator="\n")
    writer.writerow(ROSTER_COLUMNS)
    count = 0
    for member in records:
        writer.writerow(_cells(member))
        count += 1
    return count


def roster_csv_bytes(records: Iterable[SyntheticMember]) -> bytes:
    """The import CSV in memory, as an upload would carry it."""
    buffer = io.StringIO()
    write_roster_csv(records, buffer)
    return buffer.getvalue().encode()
