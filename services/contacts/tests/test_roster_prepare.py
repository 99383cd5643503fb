"""What an import's worker processes make of a chunk of rows, without a database: the
COPY data for new members (binary format, decoded here independently of PostgreSQL),
and their member-registered events, which must be exactly what the event contract
would publish, and never anything its privacy check refuses."""

from __future__ import annotations

import base64
import hashlib
import hmac
import pickle
import struct
import uuid
from datetime import UTC, datetime
from types import SimpleNamespace

import pytest
from cryptography.exceptions import InvalidTag
from pydantic import ValidationError
from turnout_contacts.domain.crypto import BlindIndex, ContactCipher
from turnout_contacts.domain.masking import mask_email, mask_mobile
from turnout_contacts.domain.roster import ROSTER_COLUMNS, RosterFile, check_records
from turnout_contacts.service import roster as roster_service
from turnout_contacts.service.queries import name_tokens

from turnout_events.common import ContactFlags, Placement
from turnout_events.contacts import MemberRegistered
from turnout_events.envelope import Envelope
from turnout_events.serde import decode, encode
from turnout_events.topics import TopicRegistry

pytestmark = pytest.mark.unit

KEYS = ("k1:" + base64.b64encode(b"\x01" * 32).decode(), b"index-key")
ROWS = [  # membership_number .. email_consent, as in ROSTER_COLUMNS
    ["M001", "Priya", "Patel", "G1", "B1", "W1", "band5", "07911 123456", "priya@example.org",
     "yes", "no"],
    ["M002", "Sam", "Smith", "G1", "B2", "", "", "", "", "no", "no"],
    ["M003", "", "", "G2", "B3", "W3", "", "+44 7400 654321", "", "yes", "yes"],
    ["M004", "Ann", "Lee", "G1", "B1", "W1", "band5", "", "ann@example.net", "no", "1"],
]


def job_of(rows: list[list[str]], known: dict[str, tuple] | None = None) -> roster_service.Job:
    known = known or {}
    return roster_service.Job(
        keys=KEYS, topics=TopicRegistry(namespace="tprepare"), import_id=uuid.uuid4(),
        actor="national:n-1", correlation_id="corr-1",
        occurred_at=datetime(2026, 3, 1, 9, 30, tzinfo=UTC),
        positions=tuple(range(len(ROSTER_COLUMNS))), width=len(ROSTER_COLUMNS),
        check_only=False,
        records=[(n, cells, known.get(cells[0])) for n, cells in enumerate(rows, start=2)])


def copy_rows(data: bytes) -> list[list[bytes | None]]:
    """PostgreSQL's binary COPY format, read back: each row as its fields' bytes."""
    assert data.startswith(b"PGCOPY\n\xff\r\n\x00" + bytes(8)) and data.endswith(b"\xff\xff")
    rows, at, end = [], 19, len(data) - 2
    while at < end:
        (count,), at = struct.unpack_from("!h", data, at), at + 2
        fields: list[bytes | None] = []
        for _ in range(count):
            (length,), at = struct.unpack_from("!i", data, at), at + 4
            fields.append(None if length < 0 else data[at:at + length])
            at += max(length, 0)
        rows.append(fields)
    assert at == end
    return rows


def text_array(field: bytes) -> list[str]:
    dimensions, _, element_type = struct.unpack_from("!iii", field)
    assert element_type == 25  # text
    if not dimensions:
        return []
    count, _ = struct.unpack_from("!ii", field, 12)
    items, at = [], 20
    for _ in range(count):
        (length,) = struct.unpack_from("!i", field, at)
        items.append(field[at + 4:at + 4 + length].decode())
        at += 4 + length
    return items


def test_new_members_are_copied_encrypted_masked_and_searchable():
    job = job_of(ROWS)
    prepared = roster_service.prepare(job)
    assert (prepared.errors, prepared.created, prepared.changed) == ([], 4, [])
    cipher = ContactCipher.from_setting(KEYS[0])
    index = BlindIndex(KEYS[1])
    members = copy_rows(prepared.members)
    assert len(members) == 4
    for fields, cells in zip(members, ROWS, strict=True):
        columns = dict(zip(roster_service.NEW_MEMBER_COLUMNS, fields, strict=True))
        member_id = uuid.UUID(bytes=columns["member_id"])
        assert member_id.version == 4
        assert columns["membership_number"].decode() == cells[0]
        codes = [columns[c] for c in ("group_code", "branch_code", "workplace_code", "grade")]
        assert codes == [c.encode() or None for c in cells[3:7]]
        for column, value in (("first_name", cells[1]), ("last_name", cells[2])):
            assert cipher.decrypt(member_id, columns[column]) == (value or None)
        mobile = cipher.decrypt(member_id, columns["mobile"])
        email = cipher.decrypt(member_id, columns["email"])
        assert (mobile is None, email is None) == (not cells[7], not cells[8])
        assert columns["mobile_masked"] == (mask_mobile(mobile).encode() if mobile else None)
        assert columns["email_masked"] == (mask_email(email).encode() if email else None)
        assert text_array(columns["name_tokens"]) == name_tokens(
            SimpleNamespace(index=index), cells[1] or None, cells[2] or None)  # type: ignore[arg-type]
        assert (columns["sms_consent"], columns["email_consent"]) == (
            bytes([cells[9] in ("yes", "1")]), bytes([cells[10] in ("yes", "1")]))
        assert len(columns["personal_digest"]) == 34
        assert struct.unpack("!i", columns["version"]) == (1,)
        assert columns["last_import_id"] == job.import_id.bytes
    # Nothing in clear: no name, number or address in the COPY data.
    for secret in (b"Priya", b"Patel", b"7911123456", b"priya@", b"ann@"):
        assert secret not in prepared.members and secret not in prepared.outbox


def test_each_event_is_the_bytes_the_contract_would_publish():
    job = job_of(ROWS)
    prepared = roster_service.prepare(job)
    member_ids = [uuid.UUID(bytes=f[0]) for f in copy_rows(prepared.members)]
    rows = check_records(RosterFile(job.positions, job.width, []),
                         [(n, cells) for n, cells, _ in job.records])
    events = copy_rows(prepared.outbox)
    assert len(events) == len(rows)
    for fields, member_id, row in zip(events, member_ids, rows, strict=True):
        columns = dict(zip(roster_service.OUTBOX_COLUMNS, fields, strict=True))
        envelope = decode(columns["payload"])  # a valid envelope...
        expected = Envelope.wrap(  # ...and byte for byte the one the contract makes
            MemberRegistered(member_id=member_id, member_version=1, placement=row.placement,
                             contact=ContactFlags(has_mobile=row.mobile is not None,
                                                  has_email=row.email is not None,
                                                  sms_consent=row.sms_consent,
                                                  email_consent=row.email_consent)),
            actor=job.actor, occurred_at=job.occurred_at, correlation_id=job.correlation_id,
            event_id=uuid.UUID(bytes=columns["event_id"]),
        ).model_copy(update={"recorded_at": envelope.recorded_at})
        assert columns["payload"] == encode(expected)
        assert (columns["topic"], columns["key"], columns["event_type"],
                columns["event_version"], columns["correlation_id"]) == (
            job.topics.events("contacts").encode(), str(member_id).encode(),
            b"contacts.member-registered", struct.pack("!i", 1), b"corr-1")
        assert uuid.UUID(bytes=columns["event_id"]).version == 4


def test_an_event_the_privacy_check_refuses_cannot_be_assembled():
    # The roster's own checks refuse a code shaped like a phone number; this is the
    # contract's check behind them, which every distinct placement still goes through.
    job = job_of(ROWS[:1])
    [row] = check_records(RosterFile(job.positions, job.width, []), [(2, ROWS[0])])
    leaky = row._replace(placement=Placement.model_construct(
        group_code="G1", branch_code="07911 123456", workplace_code=None, grade=None))
    registrations = roster_service._Registrations(job)
    with pytest.raises(ValidationError) as caught:
        registrations.payload(str(uuid.uuid4()), str(uuid.uuid4()), leaky)
    assert "personal_data" in str(caught.value) and "123456" not in str(caught.value)
    # A good placement after it is assembled as usual.
    assert decode(registrations.payload(str(uuid.uuid4()), str(uuid.uuid4()), row))


def test_known_members_are_sorted_into_changed_unchanged_and_reappeared():
    first = roster_service.prepare(job_of(ROWS))
    digests = [f[15] for f in copy_rows(first.members)]
    changed = [list(r) for r in ROWS]
    changed[1][4] = "B9"  # moved
    known = {"M001": (digests[0], False, False), "M002": (digests[1], False, False),
             "M003": (digests[2], True, False),  # missing from an earlier import
             "M004": (digests[3], False, True)}  # erased since
    prepared = roster_service.prepare(job_of(changed, known))
    assert prepared.created == 0 and prepared.members == b"" and prepared.outbox == b""
    assert [row.membership_number for row, _ in prepared.changed] == ["M002", "M004"]
    assert prepared.unchanged == 2 and prepared.reappeared == ["M003"]


def test_a_bad_row_prepares_nothing():
    bad = [list(r) for r in ROWS]
    bad[2][7] = "0161 496 0000"  # a landline
    prepared = roster_service.prepare(job_of(bad))
    assert [(e.row, e.field) for e in prepared.errors] == [(4, "mobile")]
    assert prepared.created == 0 and prepared.members == b""


def test_random_ids_are_version_4_uuids():
    ids = roster_service.random_ids(1000)
    assert len({raw for raw, _ in ids}) == 1000
    for raw, text in ids:
        parsed = uuid.UUID(text)
        assert parsed.bytes == raw and parsed.version == 4 and str(parsed) == text


@pytest.mark.parametrize("key", [b"k", b"x" * 64, b"y" * 100], ids=["short", "block", "long"])
def test_the_blind_index_is_plain_hmac_sha256(key):
    index = BlindIndex(key)
    assert index.token("  Mary  ANNE ") == hmac.new(key, b"mary anne",
                                                     hashlib.sha256).hexdigest()[:32]
    assert index.digest("names", "Mary", None) == hmac.new(key, b"names\x1fMary\x1f",
                                                            hashlib.sha256).digest()
    copied = pickle.loads(pickle.dumps(index))  # as it would cross to a worker
    assert copied == index and copied.token("x") == index.token("x")


def test_encrypt_all_is_encrypt_for_many_values():
    cipher = ContactCipher.from_setting(KEYS[0])
    members = [uuid.uuid4() for _ in range(50)]
    values = [None if n % 3 == 0 else f"value {n}" for n in range(50)]
    sealed = cipher.encrypt_all((m.bytes, v) for m, v in zip(members, values, strict=True))
    assert [cipher.decrypt(m, s) for m, s in zip(members, sealed, strict=True)] == values
    nonces = [s[4:16] for s in sealed if s is not None]
    assert len(set(nonces)) == len(nonces)
    assert all(cipher.key_id(s) == "k1" for s in sealed if s is not None)
    with pytest.raises(InvalidTag):  # bound to its member: not another's
        cipher.decrypt(members[1], sealed[2])
