"""The roster import: the membership system's export in, the member directory brought
up to date, and an event for each thing that actually changed.

All or nothing: every row is checked first (`domain/roster.py`), and a file with any bad
row imports nothing. A good file is applied in ONE unit of work, so the members and the
events they cause commit together. Imports are serialised by an advisory lock.

What an import does to each row of the file:
- a membership number the directory does not know: a new member (`member-registered`);
- a known member: only what the *membership system* changed since the previous import
  is applied (`member-moved`, `contact-updated` with reason `roster_import`,
  `consent-changed` via `roster_import`; `member_version` goes up by one per event).
  `members.personal_digest` holds a keyed fingerprint of what the roster said last time
  (`domain.roster.roster_fingerprint`), so an unchanged row is recognised without
  decrypting anything and costs no write at all; re-importing the same file changes
  nothing and publishes nothing. And a rep's correction of a mobile, or an SMS consent
  withdrawn by a STOP reply, is not undone by a roster that still says what it said;
- a member whose personal data was erased: only their placement is kept up to date;
  names, contact details and consents are not brought back (erasure keeps the
  membership number precisely so that the import can recognise them).

Members in the directory but absent from the file are NOT deleted. They are flagged
(`missing_since_import_id`, the first import that did not list them; cleared when a
later import lists them again) and counted in the result. A partial export (one region,
a filter left on in the membership system) must not wipe a branch's members, their
conversation history and the turnout counts that rest on them; and removing a member's
personal data is an erasure, which a data-protection officer decides on, not a side
effect of a file upload. The flag lets national staff review who has gone missing.

Speed (the budget is 20,000 rows/s): checking a row (phone numbers, email syntax) and
preparing a new member (AES-GCM per value, search tokens, the event) is CPU work, so a
big file is read a chunk at a time, each chunk handed to a worker process as soon as it
is read, while this process streams the prepared chunks into PostgreSQL with COPY (in
the binary format, which the workers write), in the import's transaction. Existing
members whose roster row changed, usually few, are handled here under a row lock.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import struct
import time
import uuid
from collections.abc import AsyncGenerator, Iterable
from concurrent.futures import Executor, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import aclosing
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from types import SimpleNamespace
from typing import Any

import sqlalchemy as sa
import structlog
from sqlalchemy.dialects.postgresql import ARRAY, UUID
from sqlalchemy.ext.asyncio import AsyncSession

from turnout_events.common import ContactFlags, MessageChannel, Placement
from turnout_events.contacts import (
    ConsentChanged,
    ConsentSource,
    ContactAttribute,
    ContactChangeReason,
    ContactUpdated,
    MemberMoved,
    MemberRegistered,
)
from turnout_events.envelope import Envelope, EventData
from turnout_events.serde import encode
from turnout_events.tables import OUTBOX_CHANNEL
from turnout_events.topics import TopicRegistry
from turnout_kit.auth import Caller
from turnout_kit.collector import collector_paused
from turnout_kit.logging import get_correlation_id
from turnout_kit.problems import Problem

from ..context import ContactsContext
from ..db.tables import members, roster_imports
from ..domain.crypto import BlindIndex, ContactCipher
from ..domain.masking import mask_email, mask_mobile
from ..domain.member import Member
from ..domain.roster import (
    MembershipNumbers,
    RosterFile,
    RosterFileError,
    RosterReader,
    RosterRow,
    RowError,
    check_records,
    parts_changed,
    roster_fingerprint,
    summarise,
)
from .queries import name_tokens

log = structlog.get_logger("turnout.contacts.roster")

# pg_advisory_xact_lock key: one import at a time (two would both register a new member).
IMPORT_LOCK = 0x726F7374  # "rost"
# Rows prepared per job; files of fewer rows than WORKERS_FROM are prepared in-process.
CHUNK_ROWS = 2_000
WORKERS_FROM = 8_000
# One per CPU this process may run on (its affinity, not the machine's count, in a
# container): preparing is CPU work. Beyond a few, PostgreSQL is the bottleneck.
WORKER_PROCESSES = min(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                       else os.cpu_count() or 1, 8)
MAX_ERRORS = 1_000

NEW_MEMBER_COLUMNS = (
    "member_id", "membership_number", "group_code", "branch_code", "workplace_code",
    "grade", "first_name", "last_name", "name_tokens", "mobile", "mobile_masked", "email",
    "email_masked", "sms_consent", "email_consent", "personal_digest", "version",
    "last_import_id",
)
OUTBOX_COLUMNS = ("event_id", "topic", "key", "event_type", "event_version",
                  "correlation_id", "payload")


@dataclass(frozen=True)
class ImportResult:
    import_id: uuid.UUID
    rows: int
    created: int
    updated: int
    unchanged: int
    missing: int


async def import_roster(ctx: ContactsContext, caller: Caller, data: bytes) -> ImportResult:
    """Import a roster file (the CSV's bytes). Raises a 422 `Problem` listing every bad
    row (and imports nothing) when the file or any row is not acceptable."""
    # No garbage collection until the import is over and its rows are freed: it holds
    # a few hundred thousand objects (cells, rows, jobs, the directory's fingerprints),
    # none of them in a reference cycle, which each collection, started by allocations
    # alone, would walk again together with the service's whole heap. (That was half of
    # this process's CPU time in a re-import of 50,000 rows.)
    with collector_paused():
        return await _import_roster(ctx, caller, data)


async def _import_roster(ctx: ContactsContext, caller: Caller, data: bytes) -> ImportResult:
    started = time.perf_counter()
    try:  # in a thread, like all the reading: decoding a big file takes a while
        reader = await asyncio.to_thread(RosterReader, data,
                                         max_rows=ctx.settings.max_import_rows)
    except RosterFileError as exc:
        raise _file_problem(exc) from None
    import_id = uuid.uuid4()
    async with ctx.uow(caller.actor) as uow:
        # Through the session first: that is what opens the transaction on the
        # connection, which the COPYs below then write in.
        await uow.session.execute(sa.select(sa.func.pg_advisory_xact_lock(IMPORT_LOCK)))
        driver = await _driver(uow.session)
        current = await driver.fetch(
            "SELECT membership_number, member_id, personal_digest, "
            "missing_since_import_id IS NOT NULL, erased_at IS NOT NULL FROM members")
        member_ids: dict[str, uuid.UUID] = {r[0]: r[1] for r in current}
        known: dict[str, Known] = {r[0]: (r[2], r[3], r[4]) for r in current}
        del current
        numbers = MembershipNumbers(reader.positions, reader.width)
        # In worker processes if the file is big enough to be worth it (about that many
        # lines: a quoted cell may span lines, and blank lines are skipped).
        in_workers = data.count(b"\n") >= WORKERS_FROM

        problems: list[RowError] = []
        created = unchanged = 0
        changed: list[tuple[RosterRow, bytes]] = []
        reappeared: list[str] = []
        notify = False
        jobs = _jobs(ctx, caller, reader, numbers, known, import_id, problems)
        try:
            async with aclosing(_prepare_all(jobs, in_workers)) as prepared_chunks:
                async for prepared in prepared_chunks:
                    problems += prepared.errors
                    if problems or numbers.duplicates:
                        continue  # nothing will be imported; go on to report every bad row
                    if prepared.created:
                        # A memoryview: asyncpg sends a buffer as it is (bytes it would
                        # take for a file name).
                        await driver.copy_to_table(
                            "members", source=memoryview(prepared.members),
                            columns=NEW_MEMBER_COLUMNS, format="binary")
                        await driver.copy_to_table(
                            "outbox", source=memoryview(prepared.outbox),
                            columns=OUTBOX_COLUMNS, format="binary")
                        notify = True
                    created += prepared.created
                    unchanged += prepared.unchanged
                    changed += prepared.changed
                    reappeared += prepared.reappeared
        except RosterFileError as exc:  # found further down the file
            raise _file_problem(exc) from None
        problems += numbers.duplicates
        if problems:
            raise _rejection(problems)  # leaving the unit of work rolls back the COPYs

        absent = [member_ids[n] for n in member_ids.keys() - numbers.first_row.keys()]
        updated, rewritten = await _apply_changes(ctx, uow, changed, import_id)
        unchanged += len(changed) - updated
        session = uow.session
        if reappeared:
            await session.execute(
                sa.update(members)
                .where(members.c.member_id == _any([member_ids[n] for n in reappeared]))
                .values(missing_since_import_id=None))
        if absent:
            # Flagged, not deleted: see the module's docstring.
            await session.execute(
                sa.update(members).where(members.c.member_id == _any(absent),
                                         members.c.missing_since_import_id.is_(None))
                .values(missing_since_import_id=import_id))
        result = ImportResult(import_id=import_id, rows=reader.records, created=created,
                              updated=updated, unchanged=unchanged, missing=len(absent))
        await session.execute(sa.insert(roster_imports).values(
            import_id=import_id, imported_by=caller.actor, rows=result.rows,
            created=created, updated=updated, unchanged=unchanged, missing=result.missing))
        if notify:
            # The relay is woken on commit (NOTIFY is transactional); uow.commit only
            # notifies for the events it stages itself.
            await session.execute(sa.select(sa.func.pg_notify(OUTBOX_CHANNEL, "")))
        await uow.commit()
    log.info("roster_imported", import_id=str(import_id), rows=result.rows, created=created,
             updated=updated, unchanged=unchanged, missing=result.missing,
             rewritten=rewritten, seconds=round(time.perf_counter() - started, 3))
    return result


def _file_problem(exc: RosterFileError) -> Problem:
    return Problem(422, detail=str(exc), errors=[e.as_dict() for e in exc.errors])


def _rejection(problems: list[RowError]) -> Problem:
    errors, count, bad_rows = summarise(problems, MAX_ERRORS)
    what = "a problem" if count == 1 else f"{count} problems"
    rows = "1 row has" if bad_rows == 1 else f"{bad_rows} rows have"
    return Problem(422, detail=(f"{rows} {what}; nothing was imported. Fix the rows listed "
                                "in `errors` and import the whole file again."),
                   errors=[e.as_dict() for e in errors], error_count=count, bad_rows=bad_rows)


async def _driver(session: AsyncSession) -> Any:
    """The asyncpg connection under the session, in the session's transaction: for COPY
    and for reading every member's fingerprint without building rows."""
    connection = await session.connection()
    driver: Any = (await connection.get_raw_connection()).driver_connection
    if driver is None or not driver.is_in_transaction():
        # Whatever runs on it would commit on its own: not all or nothing any more.
        raise RuntimeError("the import's connection is not in a transaction")
    return driver


def _any(ids: list[uuid.UUID]) -> Any:
    # One array parameter, not one parameter per id (asyncpg allows 32,767).
    return sa.any_(sa.bindparam(None, ids, type_=ARRAY(UUID(as_uuid=True))))


# -- preparing rows (in worker processes for big files) -----------------------------------

# What a job needs to know of an existing member to classify their row: the roster
# fingerprint stored last time, whether an import found them missing, whether they were
# erased. A plain tuple: tens of thousands cross to the workers.
Known = tuple[bytes | None, bool, bool]


@dataclass(frozen=True)
class Job:
    """A chunk of rows and everything needed to prepare them, picklable."""

    keys: tuple[str, bytes]  # the encryption key ring setting and the blind-index key
    topics: TopicRegistry
    import_id: uuid.UUID
    actor: str
    correlation_id: str | None
    occurred_at: datetime
    positions: tuple[int, ...]
    width: int
    check_only: bool
    records: list[tuple[int, list[str], Known | None]]


@dataclass
class Prepared:
    errors: list[RowError] = field(default_factory=list)
    # New members, as COPY data (binary format) for `members`, and their member-registered
    # events as COPY data for `outbox`: one bytes object each is what crosses from the
    # worker process cheaply (tuples of UUIDs and lists cost more to unpickle here than
    # to build there).
    created: int = 0
    members: bytes = b""
    outbox: bytes = b""
    # Known members whose roster row differs from last time, with the new fingerprint.
    changed: list[tuple[RosterRow, bytes]] = field(default_factory=list)
    # Membership numbers of known members, unchanged, who had been missing from an
    # earlier import.
    reappeared: list[str] = field(default_factory=list)
    unchanged: int = 0


async def _jobs(ctx: ContactsContext, caller: Caller, reader: RosterReader,
               numbers: MembershipNumbers, known: dict[str, Known], import_id: uuid.UUID,
               problems: list[RowError]) -> AsyncGenerator[Job, None]:
    """The file, read a chunk at a time (in a thread: reading is CPU work too), as jobs.
    Once a problem is found (a duplicate membership number, or in `problems` a bad row
    of a chunk prepared already) nothing will be imported: the jobs that follow only
    check their rows."""
    settings = ctx.settings
    keys = (settings.encryption_keys.get_secret_value(), ctx.index.key)
    occurred_at = datetime.now(UTC)
    correlation_id = get_correlation_id()

    def next_records() -> list[tuple[int, list[str], Known | None]]:
        records = reader.read(CHUNK_ROWS)
        return [(n, cells, known.get(number))
                for (n, cells), number in zip(records, numbers.add(records), strict=True)]

    while records := await asyncio.to_thread(next_records):
        yield Job(keys=keys, topics=ctx.topics, import_id=import_id, actor=caller.actor,
                  correlation_id=correlation_id, occurred_at=occurred_at,
                  positions=reader.positions, width=reader.width,
                  check_only=bool(numbers.duplicates or problems), records=records)


@lru_cache(maxsize=4)
def _tools(keys: tuple[str, bytes]) -> tuple[ContactCipher, BlindIndex]:
    return ContactCipher.from_setting(keys[0]), BlindIndex(keys[1])


def prepare(job: Job) -> Prepared:
    """Check a chunk of rows and prepare what can be prepared without the database.
    Runs in a worker process; pure apart from randomness (member ids, nonces).

    Step by step over the whole chunk rather than row by row: each step's code stays
    in the processor's caches, which makes the chunk about a quarter faster."""
    cipher, index = _tools(job.keys)
    roster = RosterFile(positions=job.positions, width=job.width, records=[])
    checked = check_records(roster, [(number, cells) for number, cells, _ in job.records])
    errors = [e for row in checked if not isinstance(row, RosterRow) for e in row]
    if errors or job.check_only:
        return Prepared(errors=errors)  # the file will not be imported
    rows: list[RosterRow] = checked  # type: ignore[assignment]
    fingerprints = [roster_fingerprint(index, row) for row in rows]

    out = Prepared()
    new: list[tuple[RosterRow, bytes]] = []
    for row, fingerprint, (_, _, known) in zip(rows, fingerprints, job.records, strict=True):
        if known is None:
            new.append((row, fingerprint))
            continue
        digest, missing, erased = known
        if digest != fingerprint or erased:
            out.changed.append((row, fingerprint))
        else:
            out.unchanged += 1
            if missing:
                out.reappeared.append(row.membership_number)
    if new:
        out.created = len(new)
        out.members, out.outbox = _new_members(job, cipher, index, new)
    return out


def _new_members(job: Job, cipher: ContactCipher, index: BlindIndex,
                 new: list[tuple[RosterRow, bytes]]) -> tuple[bytes, bytes]:
    """New members as COPY data for `members`, and their member-registered events as COPY
    data for `outbox` (PostgreSQL's binary format: about a third less work for the
    database than text, which spells every ciphertext and event in hex)."""
    member_ids = random_ids(len(new))
    event_ids = random_ids(len(new))
    sealed = cipher.encrypt_all(
        (member_id, value) for (member_id, _), (row, _) in zip(member_ids, new, strict=True)
        for value in (row.first_name, row.last_name, row.mobile, row.email))
    first_names, last_names, mobiles, emails = (sealed[at::4] for at in range(4))
    search_tokens = _SearchTokens(index)
    tokens = [search_tokens.field(row.first_name, row.last_name) for row, _ in new]
    mobile_masks = [mask_mobile(row.mobile) if row.mobile else None for row, _ in new]
    email_masks = [mask_email(row.email) if row.email else None for row, _ in new]
    registrations = _Registrations(job)
    events = [registrations.payload(event_id, member_id, row) for (_, event_id), (_, member_id),
              (row, _) in zip(event_ids, member_ids, new, strict=True)]

    member_row = _MemberRows(job.import_id).row
    members = _copy_data(
        member_row(member_id, row, first, last, tokens_, mobile, mobile_mask, email,
                   email_mask, fingerprint)
        for (member_id, _), (row, fingerprint), first, last, tokens_, mobile, mobile_mask,
        email, email_mask in zip(member_ids, new, first_names, last_names, tokens, mobiles,
                                 mobile_masks, emails, email_masks, strict=True))
    outbox_row = registrations.outbox_row
    outbox = _copy_data(outbox_row(event_id, member_id, payload) for (event_id, _),
                        (_, member_id), payload in zip(event_ids, member_ids, events,
                                                       strict=True))
    return members, outbox


def random_ids(count: int) -> list[tuple[bytes, str]]:
    """`count` random (version 4) UUIDs, each as its 16 bytes and its usual string: what
    `uuid.uuid4()` and `str()` give, in a third of the time (an import makes two per new
    member: the member id and the event id)."""
    ids = []
    random = bytearray(os.urandom(16 * count))
    for at in range(0, 16 * count, 16):
        random[at + 6] = random[at + 6] & 0x0F | 0x40  # version 4
        random[at + 8] = random[at + 8] & 0x3F | 0x80  # RFC 4122 variant
        raw = bytes(random[at:at + 16])
        h = raw.hex()
        ids.append((raw, f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"))
    return ids


class _SearchTokens:
    """Each new member's search tokens (`queries.name_tokens`) as a COPY field. Names
    repeat a lot in a roster, and an HMAC costs more than a lookup: each token, and the
    field of each pair of names, is computed once per job (per job, not per process, so
    that no name outlives the job in a long-lived worker)."""

    def __init__(self, index: BlindIndex) -> None:
        self._index = index
        self._tokens: dict[str, str] = {}
        self._fields: dict[tuple[str | None, str | None], bytes] = {}
        self._names: Any = SimpleNamespace(index=self)  # what name_tokens needs

    def field(self, first: str | None, last: str | None) -> bytes:
        field = self._fields.get((first, last))
        if field is None:
            field = self._fields[first, last] = _text_array(
                name_tokens(self._names, first, last))
        return field

    def token(self, text: str) -> str:  # what name_tokens asks of the index
        token = self._tokens.get(text)
        if token is None:
            token = self._tokens[text] = self._index.token(text)
        return token


# -- member-registered events, built from validated fragments -----------------------------

class _Registrations:
    """member-registered events for one job's new members, as outbox rows.

    Every event goes through the contract's validation, privacy check included, but
    not every event pays for it in full. Events of one import differ only in their
    event id, their member id (the key and `member_id`), the placement and the contact
    flags. So each is assembled from fragments of events that were validated:
    - the envelope (actor, times, type...): from one event per job, validated whole
      (`Envelope.wrap`);
    - the payload: from one `MemberRegistered` per distinct placement, validated whole
      (contract and privacy check; `_payload_fragments`), a union having hundreds of
      placements, not tens of thousands;
    - the contact flags: the JSON of a validated `ContactFlags`, one of 16;
    - and between the fragments, fresh UUIDs.
    A UUID is opaque to the privacy check (hex digits and dashes, no contact value can
    hide in one) and so are booleans, so an assembled event passes the check exactly
    when the event its fragments were cut from did. `tests/test_roster_prepare.py`
    checks that the bytes are those `Envelope.wrap` + `serde.encode` give for the same
    values, and that a placement the check refuses yields no event.
    """

    def __init__(self, job: Job) -> None:
        self.job = job
        first = _registration(_SENTINEL_MEMBER, _ANY_PLACEMENT, _NO_CONTACT)
        envelope = encode(Envelope.wrap(first, actor=job.actor, occurred_at=job.occurred_at,
                                        correlation_id=job.correlation_id,
                                        event_id=_SENTINEL_EVENT)).decode()
        payload = first.model_dump_json()
        if not envelope.endswith(f'"data":{payload}}}'):  # the payload is the last field
            raise RuntimeError("unexpected envelope layout; cannot assemble events")
        head = envelope[:-len(payload) - 1]
        before_id, after_id = _cut(head, str(_SENTINEL_EVENT))
        self._head = (before_id, *_cut(after_id, str(_SENTINEL_MEMBER)))
        # The outbox columns all these events share: before the key, and after it.
        self._topic = _text(job.topics.events(MemberRegistered.source))
        self._after_key = b"".join((_text(MemberRegistered.event_type),
                                    _int4(MemberRegistered.version),
                                    _text(job.correlation_id)))

    def payload(self, event_id: str, member_id: str, row: RosterRow) -> bytes:
        """The event's JSON, as `serde.encode` writes it."""
        before_id, between, before_data = self._head
        before_member, before_contact, after_contact = _payload_fragments(row.placement)
        contact = _CONTACT_JSON[row.mobile is not None, row.email is not None,
                                row.sms_consent, row.email_consent]
        return "".join((before_id, event_id, between, member_id, before_data, before_member,
                        member_id, before_contact, contact, after_contact, "}")).encode()

    def outbox_row(self, event_id: bytes, member_id: str, payload: bytes) -> bytes:
        """The event as a row of COPY data, columns as in OUTBOX_COLUMNS."""
        return b"".join((_OUTBOX_FIELDS, _UUID_LENGTH, event_id, self._topic,
                         _text(member_id), self._after_key, _bytes(payload)))


def _registration(member_id: uuid.UUID, placement: Placement, contact: ContactFlags
                  ) -> MemberRegistered:
    return MemberRegistered(member_id=member_id, member_version=1, placement=placement,
                            contact=contact)


# Stand-ins cut out of validated events, where each event's own ids go. Random: no
# code in a roster can be one of them by accident or on purpose.
_SENTINEL_EVENT = uuid.uuid4()
_SENTINEL_MEMBER = uuid.uuid4()
_ANY_PLACEMENT = Placement(group_code="G", branch_code="B")
_NO_CONTACT = ContactFlags(has_mobile=False, has_email=False, sms_consent=False,
                           email_consent=False)
# The 16 possible contact flags, as JSON, each from a validated ContactFlags.
_CONTACT_JSON = {
    (m, e, s, c): ContactFlags(has_mobile=m, has_email=e, sms_consent=s,
                               email_consent=c).model_dump_json()
    for m in (False, True) for e in (False, True) for s in (False, True) for c in (False, True)
}


@lru_cache(maxsize=16_384)
def _payload_fragments(placement: Placement) -> tuple[str, str, str]:
    """A member-registered payload for this placement, validated whole (contract and
    privacy check: raises `ValidationError` if it is not publishable), as JSON cut
    where the member id and the contact flags go. Cached per process: placements are
    codes, not personal data."""
    payload = _registration(_SENTINEL_MEMBER, placement, _NO_CONTACT).model_dump_json()
    before_member, after_member = _cut(payload, str(_SENTINEL_MEMBER))
    before_contact, after_contact = _cut(after_member, _CONTACT_JSON[False, False, False,
                                                                     False])
    return before_member, before_contact, after_contact


def _cut(text: str, at: str) -> tuple[str, str]:
    before, found, after = text.partition(at)
    if not found or at in after:
        raise RuntimeError("unexpected event layout; cannot assemble events")
    return before, after


# -- COPY data in PostgreSQL's binary format ----------------------------------------------
# A header, then per row the number of fields and each field as its length and its
# bytes (length -1: NULL), then a trailer. Integers are big-endian.

_COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + bytes(8)  # signature, flags, no extension
_COPY_TRAILER = b"\xff\xff"
_NULL = b"\xff\xff\xff\xff"
_UUID_LENGTH = b"\x00\x00\x00\x10"
_TEXT_OID = 25
_pack_int4 = struct.Struct("!i").pack
_pack_int2 = struct.Struct("!h").pack
_OUTBOX_FIELDS = _pack_int2(len(OUTBOX_COLUMNS))


def _copy_data(rows: Iterable[bytes]) -> bytes:
    return b"".join((_COPY_HEADER, *rows, _COPY_TRAILER))


def _bytes(value: bytes | None) -> bytes:
    return _NULL if value is None else _pack_int4(len(value)) + value


def _text(value: str | None) -> bytes:
    return _NULL if value is None else _bytes(value.encode())


def _int4(value: int) -> bytes:
    return b"\x00\x00\x00\x04" + _pack_int4(value)


def _bool(value: bool) -> bytes:
    return b"\x00\x00\x00\x01\x01" if value else b"\x00\x00\x00\x01\x00"


def _text_array(items: list[str]) -> bytes:
    if not items:  # no dimensions
        return _bytes(struct.pack("!iii", 0, 0, _TEXT_OID))
    return _bytes(struct.pack("!iiiii", 1, 0, _TEXT_OID, len(items), 1)
                  + b"".join([_text(item) for item in items]))


_CONSENT_FIELDS = {(sms, email): _bool(sms) + _bool(email) for sms in (False, True)
                   for email in (False, True)}


class _MemberRows:
    """New members as rows of COPY data, columns as in NEW_MEMBER_COLUMNS."""

    def __init__(self, import_id: uuid.UUID) -> None:
        self._fields = _pack_int2(len(NEW_MEMBER_COLUMNS)) + _UUID_LENGTH  # and member_id
        self._last = _int4(1) + _UUID_LENGTH + import_id.bytes  # version, last_import_id

    def row(self, member_id: bytes, row: RosterRow, first: bytes | None, last: bytes | None,
            tokens: bytes, mobile: bytes | None, mobile_mask: str | None,
            email: bytes | None, email_mask: str | None, fingerprint: bytes) -> bytes:
        return b"".join((
            self._fields, member_id, _text(row.membership_number),
            _placement_fields(row.placement), _bytes(first), _bytes(last), tokens,
            _bytes(mobile), _text(mobile_mask), _bytes(email), _text(email_mask),
            _CONSENT_FIELDS[row.sms_consent, row.email_consent], _bytes(fingerprint),
            self._last))


@lru_cache(maxsize=16_384)
def _placement_fields(placement: Placement) -> bytes:
    """group_code, branch_code, workplace_code, grade. (Placements repeat, and are codes,
    not personal data: cached per process.)"""
    return b"".join(_text(code) for code in (placement.group_code, placement.branch_code,
                                             placement.workplace_code, placement.grade))


# A job and its result to come from a worker (None: to be prepared here), in file order;
# then None at the end, or what stopped the reading.
_Submitted = tuple[Job, "asyncio.Future[Prepared] | None"] | Exception | None


async def _prepare_all(jobs: AsyncGenerator[Job, None], in_workers: bool
                       ) -> AsyncGenerator[Prepared, None]:
    """Prepared chunks, in file order. Each job goes to a worker process as soon as it
    is read, so the workers start while the rest of the file is still being read and
    this process writes the chunks prepared so far. Without workers (a small file, or
    one that died), jobs are prepared in a thread: the event loop stays free."""
    loop = asyncio.get_running_loop()
    submitted: asyncio.Queue[_Submitted] = asyncio.Queue()
    futures: list[asyncio.Future[Prepared]] = []
    broken = not in_workers

    async def submit() -> None:
        nonlocal broken
        try:
            async with aclosing(jobs):
                async for job in jobs:
                    future = None
                    if not broken:
                        try:
                            future = loop.run_in_executor(workers(), prepare, job)
                            futures.append(future)
                        except BrokenProcessPool:
                            broken = _workers_broken()
                    submitted.put_nowait((job, future))
            submitted.put_nowait(None)
        except Exception as exc:  # a RosterFileError further down the file: raised below
            submitted.put_nowait(exc)

    submitting = asyncio.create_task(submit())
    try:
        while (item := await submitted.get()) is not None:
            if isinstance(item, Exception):
                raise item
            job, future = item
            prepared = None
            if future is not None:
                try:
                    prepared = await future
                except BrokenProcessPool:  # a worker died (killed, out of memory)
                    broken = broken or _workers_broken()
            if prepared is None:
                prepared = await asyncio.to_thread(prepare, job)
            yield prepared
    finally:  # the import failed, or was cancelled: what is left to prepare is not needed
        submitting.cancel()
        for future in futures:
            future.cancel()


def _workers_broken() -> bool:
    # A worker died or could not start: the import carries on here.
    log.warning("import_workers_broken", fallback="in-process")
    _discard_workers()
    return True


_pool: ProcessPoolExecutor | None = None


def workers() -> Executor:
    """The worker processes that prepare big imports, started on first use and kept.
    `forkserver` rather than `fork`: forking a process that runs threads (the event
    loop's executor, the Kafka client) can copy a held lock into the child."""
    global _pool
    if _pool is None:
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload([__name__])
        _pool = ProcessPoolExecutor(max_workers=WORKER_PROCESSES, mp_context=context)
    return _pool


async def start_workers() -> None:
    """Start the worker processes now rather than on the first big import (which would
    otherwise wait a second or two for them)."""
    pool = workers()
    loop = asyncio.get_running_loop()
    await asyncio.gather(*(loop.run_in_executor(pool, os.getpid)
                           for _ in range(WORKER_PROCESSES)))


def _discard_workers() -> None:
    global _pool
    if _pool is not None:
        _pool.shutdown(wait=False, cancel_futures=True)
        _pool = None


# -- known members whose roster row changed ----------------------------------------------

_CHANGE_COLUMNS = (
    "group_code", "branch_code", "workplace_code", "grade", "first_name", "last_name",
    "name_tokens", "mobile", "mobile_masked", "email", "email_masked", "sms_consent",
    "email_consent", "personal_digest", "version",
)
_REWRITE = (
    sa.update(members).where(members.c.member_id == sa.bindparam("b_member_id"))
    .values({**{c: sa.bindparam(f"b_{c}") for c in _CHANGE_COLUMNS},
             "missing_since_import_id": None,
             "last_import_id": sa.bindparam("b_last_import_id"),
             "updated_at": sa.case((sa.bindparam("b_changed", type_=sa.Boolean), sa.func.now()),
                                   else_=members.c.updated_at)})
)
_LOCK_BATCH = 5_000


async def _apply_changes(ctx: ContactsContext, uow: Any, changed: list[tuple[RosterRow, bytes]],
                         import_id: uuid.UUID) -> tuple[int, int]:
    """Apply what the membership system changed for known members, under a row lock (a
    rep may be editing one of them right now). Returns (members updated, rows written)."""
    updated = 0
    writes: list[dict[str, Any]] = []
    by_number = {row.membership_number: (row, fingerprint) for row, fingerprint in changed}
    numbers = list(by_number)
    for start in range(0, len(numbers), _LOCK_BATCH):
        batch = numbers[start:start + _LOCK_BATCH]
        current = (await uow.session.execute(
            sa.select(members).where(members.c.membership_number == sa.any_(
                sa.bindparam(None, batch, type_=ARRAY(sa.Text))))
            .order_by(members.c.member_id).with_for_update())).all()
        for db_row in current:
            row, fingerprint = by_number[db_row.membership_number]
            write, events = _member_changes(ctx, db_row, row, fingerprint, import_id)
            for event in events:
                uow.emit(event)
            updated += bool(write["b_changed"])
            writes.append(write)
    if writes:
        await uow.session.execute(_REWRITE, writes)
    return updated, len(writes)


def _member_changes(ctx: ContactsContext, db_row: Any, row: RosterRow, fingerprint: bytes,
                    import_id: uuid.UUID) -> tuple[dict[str, Any], list[EventData]]:
    """The new column values of one member and the events the change causes."""
    cipher = ctx.cipher
    m = db_row._mapping
    member_id = m["member_id"]
    member = Member.from_row(db_row)
    erased = m["erased_at"] is not None
    # Erased members keep only their placement up to date, and no fingerprint of
    # personal data.
    parts = {"placement"} if erased else parts_changed(m["personal_digest"], fingerprint)
    values = {c: m[c] for c in _CHANGE_COLUMNS}
    values["personal_digest"] = None if erased else fingerprint
    events: list[EventData] = []
    after = member
    names_changed = False

    if "placement" in parts and row.placement != member.placement:
        after = after.bumped(placement=row.placement)
        values.update(row.placement.model_dump())
        events.append(MemberMoved(member_id=member_id, member_version=after.version,
                                  previous=member.placement, placement=row.placement))

    if "names" in parts and (cipher.decrypt(member_id, m["first_name"]),
                             cipher.decrypt(member_id, m["last_name"])) != (row.first_name,
                                                                            row.last_name):
        names_changed = True
        values["first_name"] = cipher.encrypt(member_id, row.first_name)
        values["last_name"] = cipher.encrypt(member_id, row.last_name)
        values["name_tokens"] = name_tokens(ctx, row.first_name, row.last_name)

    contact_changed: list[ContactAttribute] = []
    for attr, column, value, masker in (
            (ContactAttribute.MOBILE, "mobile", row.mobile, mask_mobile),
            (ContactAttribute.EMAIL, "email", row.email, mask_email)):
        if attr.value in parts and cipher.decrypt(member_id, m[column]) != value:
            values[column] = cipher.encrypt(member_id, value)
            values[f"{column}_masked"] = masker(value) if value else None
            contact_changed.append(attr)
    if contact_changed:
        after = after.bumped(has_mobile=values["mobile"] is not None,
                             has_email=values["email"] is not None)
        events.append(ContactUpdated(member_id=member_id, member_version=after.version,
                                     contact=after.contact, changed=contact_changed,
                                     reason=ContactChangeReason.ROSTER_IMPORT))

    for channel, name in ((MessageChannel.SMS, "sms_consent"),
                          (MessageChannel.EMAIL, "email_consent")):
        wanted = getattr(row, name)
        if name in parts and wanted != getattr(after, name):
            after = after.bumped(**{name: wanted})
            values[name] = wanted
            events.append(ConsentChanged(member_id=member_id, member_version=after.version,
                                         channel=channel, granted=wanted,
                                         via=ConsentSource.ROSTER_IMPORT,
                                         contact=after.contact))

    values["version"] = after.version
    write = {f"b_{c}": v for c, v in values.items()}
    write.update(b_member_id=member_id, b_last_import_id=import_id,
                 b_changed=bool(events) or names_changed)
    return write, events
