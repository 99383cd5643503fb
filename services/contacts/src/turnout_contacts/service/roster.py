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
preparing a new member (AES-GCM per value, search tokens, the event) is CPU work, so big
files are split into chunks prepared in worker processes while this process streams the
results into PostgreSQL with COPY, in the import's transaction. Existing members whose
roster row changed, usually few, are handled here under a row lock.
"""

from __future__ import annotations

import asyncio
import io
import multiprocessing
import os
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from types import SimpleNamespace
from typing import Any

import sqlalchemy as sa
import structlog
from sqlalchemy.dialects.postgresql import ARRAY, UUID
from sqlalchemy.ext.asyncio import AsyncSession

from turnout_events.common import ContactFlags, MessageChannel
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
from turnout_events.outbox import outbox_rows
from turnout_events.tables import OUTBOX_CHANNEL
from turnout_events.topics import TopicRegistry
from turnout_kit.auth import Caller
from turnout_kit.logging import get_correlation_id
from turnout_kit.problems import Problem

from ..context import ContactsContext
from ..db.tables import members, roster_imports
from ..domain.crypto import BlindIndex, ContactCipher
from ..domain.masking import mask_email, mask_mobile
from ..domain.member import Member
from ..domain.roster import (
    RosterFile,
    RosterFileError,
    RosterRow,
    RowError,
    check_record,
    duplicate_numbers,
    parts_changed,
    read_roster,
    roster_fingerprint,
    summarise,
)
from .queries import name_tokens

log = structlog.get_logger("turnout.contacts.roster")

# pg_advisory_xact_lock key: one import at a time (two would both register a new member).
IMPORT_LOCK = 0x726F7374  # "rost"
# Rows prepared per job; files of fewer rows than WORKERS_FROM are prepared in-process.
CHUNK_ROWS = 4_000
WORKERS_FROM = 8_000
# One per CPU: preparing is CPU work. Beyond a few, PostgreSQL is the bottleneck.
WORKER_PROCESSES = min(os.cpu_count() or 1, 8)
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
    started = time.perf_counter()
    try:
        roster = await asyncio.to_thread(read_roster, data,
                                         max_rows=ctx.settings.max_import_rows)
    except RosterFileError as exc:
        raise Problem(422, detail=str(exc), errors=[e.as_dict() for e in exc.errors]
                      ) from None
    import_id = uuid.uuid4()
    problems = duplicate_numbers(roster)
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
        numbers = roster.membership_numbers()
        absent = [member_ids[n] for n in member_ids.keys() - set(numbers)]
        # With duplicates found already nothing will be imported: the jobs only check.
        jobs = list(_jobs(ctx, caller, roster, numbers, known, import_id,
                          check_only=bool(problems)))

        created = unchanged = 0
        changed: list[tuple[RosterRow, bytes]] = []
        reappeared: list[str] = []
        notify = False
        async for prepared in _prepare_all(jobs):
            problems += prepared.errors
            if problems:
                continue  # nothing will be imported; keep going to report every bad row
            if prepared.created:
                await driver.copy_to_table("members", source=io.BytesIO(prepared.members),
                                           columns=NEW_MEMBER_COLUMNS)
                await driver.copy_to_table("outbox", source=io.BytesIO(prepared.outbox),
                                           columns=OUTBOX_COLUMNS)
                notify = True
            created += prepared.created
            unchanged += prepared.unchanged
            changed += prepared.changed
            reappeared += prepared.reappeared
        if problems:
            raise _rejection(problems)  # leaving the unit of work rolls back the COPYs

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
        result = ImportResult(import_id=import_id, rows=len(roster.records), created=created,
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
    # New members, as COPY data (text format) for `members`, and their member-registered
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


def _jobs(ctx: ContactsContext, caller: Caller, roster: RosterFile, numbers: list[str],
          known: dict[str, Known], import_id: uuid.UUID, check_only: bool) -> Iterator[Job]:
    settings = ctx.settings
    keys = (settings.encryption_keys.get_secret_value(), ctx.index.key)
    occurred_at = datetime.now(UTC)
    correlation_id = get_correlation_id()
    records = roster.records
    for start in range(0, len(records), CHUNK_ROWS):
        yield Job(keys=keys, topics=ctx.topics, import_id=import_id, actor=caller.actor,
                  correlation_id=correlation_id, occurred_at=occurred_at,
                  positions=roster.positions, width=roster.width, check_only=check_only,
                  records=[(n, cells, known.get(number)) for (n, cells), number in zip(
                      records[start:start + CHUNK_ROWS], numbers[start:start + CHUNK_ROWS],
                      strict=True)])


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
    checked = [check_record(roster, number, cells) for number, cells, _ in job.records]
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
    if not new:
        return out

    ids = [uuid.uuid4() for _ in new]
    encrypt = cipher.encrypt
    first_names = [encrypt(i, row.first_name) for i, (row, _) in zip(ids, new, strict=True)]
    last_names = [encrypt(i, row.last_name) for i, (row, _) in zip(ids, new, strict=True)]
    mobiles = [encrypt(i, row.mobile) for i, (row, _) in zip(ids, new, strict=True)]
    emails = [encrypt(i, row.email) for i, (row, _) in zip(ids, new, strict=True)]
    # Per job, so that no name outlives the job in a long-lived worker.
    names = SimpleNamespace(index=_RememberingIndex(index))  # what name_tokens needs
    tokens = [name_tokens(names, row.first_name, row.last_name)  # type: ignore[arg-type]
              for row, _ in new]
    mobile_masks = [mask_mobile(row.mobile) if row.mobile else None for row, _ in new]
    email_masks = [mask_email(row.email) if row.email else None for row, _ in new]
    registrations = _Registrations(job)
    events = [registrations.event(i, row) for i, (row, _) in zip(ids, new, strict=True)]

    import_id = str(job.import_id)
    out.created = len(new)
    out.members = "".join(
        _member_line(str(i), row, first, last, tokens_, mobile, mobile_mask, email,
                     email_mask, fingerprint, import_id)
        for i, (row, fingerprint), first, last, tokens_, mobile, mobile_mask, email, email_mask
        in zip(ids, new, first_names, last_names, tokens, mobiles, mobile_masks, emails,
               email_masks, strict=True)).encode()
    out.outbox = "".join(_outbox_line(r) for r in outbox_rows(events, job.topics)).encode()
    return out


class _RememberingIndex:
    """A blind index that computes each search token once: first and last names repeat
    a lot in a roster, and an HMAC costs more than a lookup."""

    def __init__(self, index: BlindIndex) -> None:
        self._index = index
        self._tokens: dict[str, str] = {}

    def token(self, text: str) -> str:
        token = self._tokens.get(text)
        if token is None:
            token = self._tokens[text] = self._index.token(text)
        return token


class _Registrations:
    """member-registered events for one job's new members.

    Each payload is validated (the contract's own checks, privacy included). The
    envelope around it is validated once per job: the envelopes of an import differ
    only in their event id, key (the member id) and payload, so each is a copy of the
    first with those replaced (validating each envelope again costs as much as the rest
    of the event)."""

    def __init__(self, job: Job) -> None:
        self.job = job
        self.template: Envelope | None = None

    def event(self, member_id: uuid.UUID, row: RosterRow) -> Envelope:
        payload = MemberRegistered(
            member_id=member_id, member_version=1, placement=row.placement,
            contact=ContactFlags(has_mobile=row.mobile is not None,
                                 has_email=row.email is not None,
                                 sms_consent=row.sms_consent, email_consent=row.email_consent))
        if self.template is None:
            self.template = Envelope.wrap(payload, actor=self.job.actor,
                                          occurred_at=self.job.occurred_at,
                                          correlation_id=self.job.correlation_id)
            return self.template
        return self.template.model_copy(update={
            "id": uuid.uuid4(), "key": payload.partition_key(),
            "data": payload.model_dump(mode="json")})


_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})
_NULL = "\\N"


def _text(value: str | None) -> str:
    return _NULL if value is None else value.translate(_COPY_ESCAPES)


def _bytea(value: bytes | None) -> str:
    return _NULL if value is None else "\\\\x" + value.hex()


def _member_line(member_id: str, row: RosterRow, first: bytes | None, last: bytes | None,
                 tokens: list[str], mobile: bytes | None, mobile_mask: str | None,
                 email: bytes | None, email_mask: str | None, fingerprint: bytes,
                 import_id: str) -> str:
    """A new member as a line of COPY text, columns as in NEW_MEMBER_COLUMNS. (Codes and
    membership numbers passed the roster's checks, which allow no character COPY would
    need escaped; the masks are escaped all the same.)"""
    p = row.placement
    return (f"{member_id}\t{row.membership_number}\t{p.group_code}\t{p.branch_code}\t"
            f"{p.workplace_code or _NULL}\t{p.grade or _NULL}\t{_bytea(first)}\t"
            f"{_bytea(last)}\t{{{','.join(tokens)}}}\t{_bytea(mobile)}\t{_text(mobile_mask)}\t"
            f"{_bytea(email)}\t{_text(email_mask)}\t{'t' if row.sms_consent else 'f'}\t"
            f"{'t' if row.email_consent else 'f'}\t{_bytea(fingerprint)}\t1\t{import_id}\n")


def _outbox_line(row: dict[str, Any]) -> str:
    """An outbox row as a line of COPY text, columns as in OUTBOX_COLUMNS. (Ids, topic
    and type have no character COPY would need escaped.)"""
    return (f"{row['event_id']}\t{row['topic']}\t{row['key']}\t{row['event_type']}\t"
            f"{row['event_version']}\t{_text(row['correlation_id'])}\t"
            f"{_bytea(row['payload'])}\n")


async def _prepare_all(jobs: Sequence[Job]) -> AsyncIterator[Prepared]:
    """Prepared chunks, in file order: in worker processes when the file is big enough
    to be worth it, else in a thread (checking is CPU work; the event loop stays free)."""
    if sum(len(j.records) for j in jobs) < WORKERS_FROM:
        for job in jobs:
            yield await asyncio.to_thread(prepare, job)
        return
    loop = asyncio.get_running_loop()
    done = 0
    futures: list[asyncio.Future[Prepared]] = []
    try:
        futures = [loop.run_in_executor(workers(), prepare, job) for job in jobs]
        for future in futures:
            yield await future
            done += 1
        return
    except BrokenProcessPool:
        # A worker died (killed, out of memory) or could not start: carry on here.
        log.warning("import_workers_broken", fallback="in-process")
        _discard_workers()
    finally:
        for future in futures:
            future.cancel()
    for job in jobs[done:]:
        yield await asyncio.to_thread(prepare, job)


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
