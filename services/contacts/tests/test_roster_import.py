"""Importing the roster over HTTP, against real Kafka and PostgreSQL: members created or
updated, exactly the events for what changed (and none with a contact value in it),
re-imports that change nothing, bad files refused whole, and who may import."""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from concurrent.futures import Executor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import replace

import phonenumbers
import pytest
import sqlalchemy as sa
from turnout_contacts.db.tables import members, roster_imports
from turnout_contacts.main import create_contacts_app
from turnout_contacts.service import roster as roster_service

from tests.support.kafka import read_to_end
from tests.support.outbox import outbox_drained
from tests.support.services import running
from turnout_events.serde import decode
from turnout_events.tables import outbox
from turnout_local.synthetic import (
    SyntheticMember,
    generate_union,
    roster_csv_bytes,
    write_roster_csv,
)

pytestmark = pytest.mark.integration

IMPORT = "/v1/members:import"


def ctx_of(client):
    return client.app.state.ctx


def small_union(n: int = 40, seed: int = 1) -> list[SyntheticMember]:
    return list(generate_union(members=n, groups=2, branches=4, workplaces=8,
                               contact_coverage=0.6, seed=seed))


async def post_csv(client, headers, data: bytes, *, multipart: bool = False):
    if multipart:
        return await client.post(IMPORT, files={"file": ("roster.csv", data, "text/csv")},
                                 headers=headers)
    return await client.post(IMPORT, content=data,
                             headers={**headers, "Content-Type": "text/csv"})


async def published(client, kafka_bootstrap, topics):
    """Every event the service has published so far (its outbox drained first)."""
    await outbox_drained(ctx_of(client).engine)
    return await read_to_end(kafka_bootstrap, [topics.events("contacts")])


async def member_rows(client) -> dict[str, sa.Row]:
    async with ctx_of(client).sessions() as session:
        rows = (await session.execute(sa.select(members))).all()
    return {r.membership_number: r for r in rows}


async def count(client, table: sa.Table) -> int:
    async with ctx_of(client).sessions() as session:
        return (await session.execute(sa.select(sa.func.count()).select_from(table))).scalar()


async def get_member(client, tokens, member_id) -> dict:
    response = await client.get(f"/v1/members/{member_id}", headers=tokens("national"))
    assert response.status_code == 200, response.text
    return response.json()


def secrets_of(member: SyntheticMember) -> list[bytes]:
    """What must never be on the topic: the number (as digits), the email, the names."""
    found = [member.first_name.encode(), member.last_name.encode()]
    if member.mobile:
        number = phonenumbers.parse(member.mobile, "GB")
        found.append(str(number.national_number).encode())
    if member.personal_email:
        found.append(member.personal_email.encode())
    return found


def events_by_member(records) -> dict[str, list]:
    out: dict[str, list] = {}
    for record in records:
        envelope = decode(record.value)
        out.setdefault(envelope.key, []).append(envelope)
    return out


# -- good files ---------------------------------------------------------------------------

async def test_a_good_file_registers_every_member_with_one_event_and_no_contact_value(
        contacts_app, tokens, topics, kafka_bootstrap):
    union = small_union(40)
    response = await post_csv(contacts_app, tokens("national"), roster_csv_bytes(union))
    assert response.status_code == 200, response.text
    body = response.json()
    assert {k: body[k] for k in ("rows", "created", "updated", "unchanged", "missing")} == {
        "rows": 40, "created": 40, "updated": 0, "unchanged": 0, "missing": 0}

    stored = await member_rows(contacts_app)
    assert sorted(stored) == sorted(m.membership_number for m in union)
    records = await published(contacts_app, kafka_bootstrap, topics)
    assert len(records) == 40
    by_member = events_by_member(records)
    assert set(by_member) == {str(r.member_id) for r in stored.values()}
    secrets = [s for m in union for s in secrets_of(m)]
    for record in records:
        for secret in secrets:
            assert secret not in record.value
    for member in union:
        row = stored[member.membership_number]
        [event] = by_member[str(row.member_id)]
        assert event.type == "contacts.member-registered"
        assert event.actor.startswith("national:")
        assert event.data["member_version"] == 1
        assert event.data["placement"] == {
            "group_code": member.group_code, "branch_code": member.branch_code,
            "workplace_code": member.workplace_code, "grade": member.grade}
        assert event.data["contact"] == {
            "has_mobile": member.mobile is not None,
            "has_email": member.personal_email is not None,
            "sms_consent": member.sms_consent, "email_consent": member.email_consent}

    # What a rep sees: names, masked contact values; searchable by name.
    someone = next(m for m in union if m.mobile and m.personal_email)
    row = stored[someone.membership_number]
    seen = await get_member(contacts_app, tokens, row.member_id)
    assert (seen["first_name"], seen["last_name"]) == (someone.first_name, someone.last_name)
    assert seen["mobile"] == "07••• ••• " + someone.mobile.replace(" ", "")[-3:]
    assert seen["personal_email"].startswith(someone.personal_email[0] + "•••@")
    assert seen["missing_from_last_import"] is False
    found = await contacts_app.get("/v1/members", params={
        "q": f"{someone.first_name} {someone.last_name}"}, headers=tokens("national"))
    assert str(row.member_id) in {m["member_id"] for m in found.json()["items"]}

    async with ctx_of(contacts_app).sessions() as session:
        [logged] = (await session.execute(sa.select(roster_imports))).all()
    assert (logged.import_id, logged.rows, logged.created) == (
        uuid.UUID(body["import_id"]), 40, 40)
    assert logged.imported_by.startswith("national:")


async def test_reimporting_the_same_file_changes_nothing_and_publishes_nothing(
        contacts_app, tokens, topics, kafka_bootstrap):
    data = roster_csv_bytes(small_union(40))
    first = await post_csv(contacts_app, tokens("national"), data)
    assert first.status_code == 200, first.text
    before = await member_rows(contacts_app)
    assert len(await published(contacts_app, kafka_bootstrap, topics)) == 40

    again = await post_csv(contacts_app, tokens("admin"), data, multipart=True)
    assert again.status_code == 200, again.text
    assert {k: again.json()[k] for k in ("rows", "created", "updated", "unchanged",
                                         "missing")} == {
        "rows": 40, "created": 0, "updated": 0, "unchanged": 40, "missing": 0}
    assert len(await published(contacts_app, kafka_bootstrap, topics)) == 40
    after = await member_rows(contacts_app)
    # Not even rewritten: same ciphertexts, versions and timestamps.
    assert {n: (r.version, r.mobile, r.updated_at) for n, r in after.items()} == {
        n: (r.version, r.mobile, r.updated_at) for n, r in before.items()}
    assert await count(contacts_app, roster_imports) == 2


async def test_changed_rows_publish_exactly_what_changed(contacts_app, tokens, topics,
                                                         kafka_bootstrap):
    base = small_union(9)
    m = [replace(member, mobile=None, personal_email=None, sms_consent=False,
                 email_consent=False, group_code="G01", branch_code="B001",
                 workplace_code="W0001") for member in base]
    m[1] = replace(m[1], mobile="07400 111111", sms_consent=True)
    m[3] = replace(m[3], mobile="07400 333333", sms_consent=True)
    m[5] = replace(m[5], mobile="07400 555555")
    first = await post_csv(contacts_app, tokens("national"), roster_csv_bytes(m[:8]))
    assert first.status_code == 200, first.text
    assert len(await published(contacts_app, kafka_bootstrap, topics)) == 8
    ids = {n: r.member_id for n, r in (await member_rows(contacts_app)).items()}

    changed = list(m)
    changed[0] = replace(m[0], branch_code="B002")                        # moved
    changed[1] = replace(m[1], mobile="+44 7400 222222")                  # new mobile
    changed[2] = replace(m[2], personal_email="new.address@example.org")  # email added
    changed[3] = replace(m[3], sms_consent=False)                         # consent withdrawn
    changed[4] = replace(m[4], first_name="Renamed")                      # names: no event
    changed[5] = replace(m[5], workplace_code="W0009", mobile=None,       # three things
                         email_consent=True)
    # m[6] is left out of the file; m[7] is unchanged; m[8] is new.
    second = await post_csv(contacts_app, tokens("national"), roster_csv_bytes(
        [*changed[:6], changed[7], changed[8]]))
    assert second.status_code == 200, second.text
    assert {k: second.json()[k] for k in ("rows", "created", "updated", "unchanged",
                                          "missing")} == {
        "rows": 8, "created": 1, "updated": 6, "unchanged": 1, "missing": 1}

    records = (await published(contacts_app, kafka_bootstrap, topics))
    new_events = events_by_member(records)
    seen = {n: [(e.type, e.data["member_version"]) for e in new_events.get(str(i), [])][1:]
            for n, i in ids.items()}
    number = [x.membership_number for x in m]
    assert seen == {
        number[0]: [("contacts.member-moved", 2)],
        number[1]: [("contacts.contact-updated", 2)],
        number[2]: [("contacts.contact-updated", 2)],
        number[3]: [("contacts.consent-changed", 2)],
        number[4]: [],
        number[5]: [("contacts.member-moved", 2), ("contacts.contact-updated", 3),
                    ("contacts.consent-changed", 4)],
        number[6]: [],
        number[7]: [],
    }
    assert len(records) == 8 + 7 + 1  # first import, the changes, the new member
    moved = new_events[str(ids[number[0]])][1]
    assert moved.data["previous"]["branch_code"] == "B001"
    assert moved.data["placement"]["branch_code"] == "B002"
    mobile = new_events[str(ids[number[1]])][1]
    assert mobile.data["changed"] == ["mobile"] and mobile.data["reason"] == "roster_import"
    assert mobile.data["contact"]["has_mobile"] is True
    email = new_events[str(ids[number[2]])][1]
    assert email.data["changed"] == ["email"] and email.data["contact"]["has_email"] is True
    consent = new_events[str(ids[number[3]])][1]
    assert (consent.data["channel"], consent.data["granted"], consent.data["via"]) == (
        "sms", False, "roster_import")
    _, moved5, contact5, consent5 = new_events[str(ids[number[5]])]
    assert moved5.data["placement"]["workplace_code"] == "W0009"
    assert contact5.data["changed"] == ["mobile"]
    assert contact5.data["contact"]["has_mobile"] is False
    assert (consent5.data["channel"], consent5.data["granted"]) == ("email", True)
    assert consent5.data["contact"]["email_consent"] is True
    for record in records:
        for secret in (b"7400111111", b"7400222222", b"7400333333", b"7400555555",
                       b"new.address", b"Renamed"):
            assert secret not in record.value

    renamed = await get_member(contacts_app, tokens, ids[number[4]])
    assert renamed["first_name"] == "Renamed" and renamed["version"] == 1
    gone = await get_member(contacts_app, tokens, ids[number[6]])
    assert gone["missing_from_last_import"] is True
    assert (await get_member(contacts_app, tokens, ids[number[1]]))["mobile"] == "07••• ••• 222"

    # The missing member is listed again: the flag clears, nothing is published.
    third = await post_csv(contacts_app, tokens("national"), roster_csv_bytes(
        [*changed[:6], m[6], changed[7], changed[8]]))
    assert third.status_code == 200, third.text
    assert {k: third.json()[k] for k in ("created", "updated", "unchanged", "missing")} == {
        "created": 0, "updated": 0, "unchanged": 9, "missing": 0}
    assert (await get_member(contacts_app, tokens, ids[number[6]]))[
        "missing_from_last_import"] is False
    assert len(await published(contacts_app, kafka_bootstrap, topics)) == 16


async def test_a_reps_correction_and_a_withdrawn_consent_survive_an_unchanged_roster(
        contacts_app, tokens, topics, kafka_bootstrap):
    union = [replace(m, mobile="07400 100200", sms_consent=True, branch_code="B001",
                     group_code="G01") for m in small_union(3)]
    assert (await post_csv(contacts_app, tokens("national"), roster_csv_bytes(union))
            ).status_code == 200
    member_id = (await member_rows(contacts_app))[union[0].membership_number].member_id
    rep = tokens("rep", branches=["B001"])
    patched = await contacts_app.patch(f"/v1/members/{member_id}/contact", json={
        "mobile": "07400 999888", "sms_consent": False}, headers=rep)
    assert patched.status_code == 200, patched.text
    events = len(await published(contacts_app, kafka_bootstrap, topics))

    again = await post_csv(contacts_app, tokens("national"), roster_csv_bytes(union))
    assert again.json()["unchanged"] == 3
    member = await get_member(contacts_app, tokens, member_id)
    assert member["mobile"] == "07••• ••• 888" and member["sms_consent"] is False
    assert len(await published(contacts_app, kafka_bootstrap, topics)) == events

    # When the membership system itself changes the number, its change is applied.
    union[0] = replace(union[0], mobile="07400 123777")
    changed = await post_csv(contacts_app, tokens("national"), roster_csv_bytes(union))
    assert changed.json()["updated"] == 1
    member = await get_member(contacts_app, tokens, member_id)
    assert member["mobile"] == "07••• ••• 777" and member["sms_consent"] is False
    mine = events_by_member(await published(contacts_app, kafka_bootstrap, topics))[
        str(member_id)]
    assert len(mine) == 4  # registered, the rep's two changes, the roster's change
    assert (mine[-1].type, mine[-1].data["changed"], mine[-1].data["reason"]) == (
        "contacts.contact-updated", ["mobile"], "roster_import")


async def test_an_erased_member_is_not_brought_back_by_the_roster(
        contacts_app, tokens, topics, kafka_bootstrap):
    union = [replace(m, mobile="07400 100200", personal_email="someone@example.org",
                     sms_consent=True) for m in small_union(2)]
    assert (await post_csv(contacts_app, tokens("national"), roster_csv_bytes(union))
            ).status_code == 200
    member_id = (await member_rows(contacts_app))[union[0].membership_number].member_id
    erased = await contacts_app.delete(f"/v1/members/{member_id}/personal-data",
                                       headers=tokens("national"))
    assert erased.status_code == 204, erased.text
    events = len(await published(contacts_app, kafka_bootstrap, topics))

    again = await post_csv(contacts_app, tokens("national"), roster_csv_bytes(union))
    assert again.status_code == 200 and again.json()["updated"] == 0
    member = await get_member(contacts_app, tokens, member_id)
    assert member["first_name"] is None and member["has_mobile"] is False
    assert member["sms_consent"] is False and member["erased"] is True
    assert len(await published(contacts_app, kafka_bootstrap, topics)) == events

    # The placement still follows the roster (turnout counts need it); nothing else.
    union[0] = replace(union[0], branch_code="B999", mobile="07400 300400")
    moved = await post_csv(contacts_app, tokens("national"), roster_csv_bytes(union))
    assert moved.json()["updated"] == 1
    member = await get_member(contacts_app, tokens, member_id)
    assert member["placement"]["branch_code"] == "B999" and member["has_mobile"] is False
    records = await published(contacts_app, kafka_bootstrap, topics)
    assert len(records) == events + 1
    assert events_by_member(records)[str(member_id)][-1].type == "contacts.member-moved"
    assert (await member_rows(contacts_app))[union[0].membership_number].personal_digest is None


async def test_a_bom_and_windows_line_endings(contacts_app, tokens):
    union = small_union(5)
    data = b"\xef\xbb\xbf" + roster_csv_bytes(union).replace(b"\n", b"\r\n")
    response = await post_csv(contacts_app, tokens("national"), data, multipart=True)
    assert response.status_code == 200, response.text
    assert response.json()["created"] == 5
    stored = await member_rows(contacts_app)
    assert sorted(stored) == sorted(m.membership_number for m in union)
    last = union[-1]
    seen = await get_member(contacts_app, tokens, stored[last.membership_number].member_id)
    assert seen["placement"]["grade"] == last.grade  # the last cell, no stray "\r"
    assert seen["email_consent"] is last.email_consent


async def test_a_big_file_goes_through_the_worker_processes(contacts_app, tokens):
    # More rows than WORKERS_FROM, so the chunks are prepared in worker processes.
    union = list(generate_union(members=roster_service.WORKERS_FROM + 2_000, seed=5))
    response = await post_csv(contacts_app, tokens("national"), roster_csv_bytes(union))
    assert response.status_code == 200, response.text
    assert response.json()["created"] == len(union)
    assert await count(contacts_app, members) == len(union)
    assert await count(contacts_app, outbox) == len(union)
    sample = union[len(union) // 2]
    stored = (await member_rows(contacts_app))[sample.membership_number]
    seen = await get_member(contacts_app, tokens, stored.member_id)
    assert seen["last_name"] == sample.last_name
    assert seen["placement"]["workplace_code"] == sample.workplace_code


async def test_a_20_mb_file(contacts_app, tokens):
    rows = 340_000  # about 60 bytes a row
    data = roster_csv_bytes(generate_union(members=rows, seed=20))
    assert len(data) >= 20_000_000
    started = time.perf_counter()
    response = await post_csv(contacts_app, tokens("national"), data, multipart=True)
    elapsed = time.perf_counter() - started
    assert response.status_code == 200, response.text
    assert response.json()["created"] == rows
    assert await count(contacts_app, members) == rows
    assert await count(contacts_app, outbox) == rows
    print(f"\n20 MB roster ({rows} rows) imported in {elapsed:.1f}s "
          f"({rows / elapsed:,.0f} rows/s)")


# -- bad files: nothing imported, nothing published ---------------------------------------

GOOD_ROWS = [
    "M001,Priya,Patel,G1,B1,W1,band5,07400 123456,priya@example.org,yes,no",
    "M002,Sam,Smith,G1,B1,W1,band4,,,no,no",
    "M003,Ann,Lee,G1,B2,,,07400 654321,,yes,no",
]
HEADER = ("membership_number,first_name,last_name,group_code,branch_code,workplace_code,"
          "grade,mobile,personal_email,sms_consent,email_consent")


def with_row(bad: str) -> bytes:
    return "\n".join([HEADER, *GOOD_ROWS[:2], bad, GOOD_ROWS[2]]).encode() + b"\n"


async def assert_nothing_imported(client, kafka_bootstrap, topics):
    assert await count(client, members) == 0
    assert await count(client, roster_imports) == 0
    assert await count(client, outbox) == 0
    assert await read_to_end(kafka_bootstrap, [topics.events("contacts")]) == []


@pytest.mark.parametrize(("bad_row", "field", "value"), [
    (",Jo,Bloggs,G1,B1,,,,,no,no", "membership_number", None),
    ("M001,Jo,Bloggs,G1,B1,,,,,no,no", "membership_number", None),  # duplicate
    ("M009,Jo,Bloggs,,,W1,,,,no,no", "group_code", None),
    ("M009,Jo,Bloggs,G1,B1,W 1!,,,,no,no", "workplace_code", "W 1!"),
    ("M009,Jo,Bloggs,G1,B1,,,07400 12,,no,no", "mobile", "07400 12"),
    ("M009,Jo,Bloggs,G1,B1,,,020 7946 0018,,no,no", "mobile", "020 7946 0018"),
    ("M009,Jo,Bloggs,G1,B1,,,,jo.bloggs@@example.org,no,no", "personal_email",
     "jo.bloggs@@example.org"),
    ("M009,Jo,Bloggs,G1,B1,,,,,perhaps,no", "sms_consent", "perhaps"),
], ids=["missing-number", "duplicate-number", "empty-codes", "bad-code", "bad-mobile",
        "landline", "bad-email", "bad-consent"])
async def test_a_bad_row_refuses_the_whole_file(contacts_app, tokens, topics, kafka_bootstrap,
                                                bad_row, field, value):
    response = await post_csv(contacts_app, tokens("national"), with_row(bad_row))
    assert response.status_code == 422, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert "nothing was imported" in body["detail"]
    assert {(e["row"], e["field"]) for e in body["errors"]} >= {(4, field)}
    assert {e["row"] for e in body["errors"]} == {4}
    if value is not None:
        assert value not in response.text
    assert "Bloggs" not in response.text
    await assert_nothing_imported(contacts_app, kafka_bootstrap, topics)


async def test_every_bad_row_and_field_is_listed(contacts_app, tokens, topics,
                                                 kafka_bootstrap):
    rows = [f"M{i:03d},A,B,G1,B1,,,,,no,no" for i in range(10, 30)]
    rows[3] = "M013,A,B,,B1,,,0161 496 0000,,no,no"
    rows[9] = "M019,A,B,G1,B1,,,,x@,maybe,no"
    rows[15] = "M010,A,B,G1,B1,,,,,no,no"
    response = await post_csv(contacts_app, tokens("national"),
                              "\n".join([HEADER, *rows]).encode())
    assert response.status_code == 422, response.text
    body = response.json()
    assert [(e["row"], e["field"]) for e in body["errors"]] == [
        (5, "group_code"), (5, "mobile"), (11, "personal_email"), (11, "sms_consent"),
        (17, "membership_number")]
    assert body["error_count"] == 5 and body["bad_rows"] == 3
    assert all(e["message"] for e in body["errors"])
    await assert_nothing_imported(contacts_app, kafka_bootstrap, topics)


async def test_the_error_list_is_capped_with_the_total_count(contacts_app, tokens):
    rows = [f"M{i:05d},A,B,,,,,,,no,no" for i in range(800)]  # two errors a row
    response = await post_csv(contacts_app, tokens("national"),
                              "\n".join([HEADER, *rows]).encode())
    assert response.status_code == 422
    body = response.json()
    assert len(body["errors"]) == roster_service.MAX_ERRORS
    assert body["error_count"] == 1600 and body["bad_rows"] == 800


@pytest.mark.parametrize("duplicate", [False, True], ids=["bad-mobile", "and-a-duplicate"])
async def test_a_bad_row_deep_in_a_big_file_refuses_it_all(contacts_app, tokens, topics,
                                                           kafka_bootstrap, duplicate):
    # Big enough for worker processes; the bad row is in the last chunk, after the
    # earlier chunks have been written (and must be rolled back).
    union = list(generate_union(members=roster_service.WORKERS_FROM + 2_000, seed=6))
    union[-5] = replace(union[-5], mobile="07400 1")
    expected = [(len(union) - 3, "mobile")]
    if duplicate:
        union[-1] = replace(union[-1], membership_number=union[0].membership_number)
        expected.append((len(union) + 1, "membership_number"))
    response = await post_csv(contacts_app, tokens("national"), roster_csv_bytes(union))
    assert response.status_code == 422, response.text
    assert [(e["row"], e["field"]) for e in response.json()["errors"]] == expected
    await assert_nothing_imported(contacts_app, kafka_bootstrap, topics)


@pytest.fixture
async def row_limit_app(contacts_settings):
    settings = contacts_settings.model_copy(update={
        "max_import_rows": roster_service.WORKERS_FROM + 1_000})
    app = create_contacts_app(settings)
    async with running(app, "http://contacts") as client:
        client.app = app  # type: ignore[attr-defined]
        yield client


# The file is read a chunk at a time while the first chunks are already being prepared
# and written: what is found further down the file still refuses it all.

def big_union(seed: int) -> list[SyntheticMember]:
    return list(generate_union(members=roster_service.WORKERS_FROM + 2_000, seed=seed))


async def test_a_big_file_that_stops_being_csv_near_its_end_imports_nothing(
        contacts_app, tokens, topics, kafka_bootstrap):
    union = big_union(8)
    data = roster_csv_bytes(union)
    last = data.rindex(b"\n", 0, len(data) - 1)
    data = data[:last] + b'\n"M999999,' + data[last + 1:]  # an unclosed quote
    response = await post_csv(contacts_app, tokens("national"), data)
    assert response.status_code == 422, response.text
    assert f"Row {len(union) + 1} cannot be read as CSV" in response.json()["detail"]
    await assert_nothing_imported(contacts_app, kafka_bootstrap, topics)


async def test_a_big_file_over_the_row_limit_imports_nothing(row_limit_app, tokens, topics,
                                                            kafka_bootstrap):
    response = await post_csv(row_limit_app, tokens("national"), roster_csv_bytes(big_union(9)))
    assert response.status_code == 422, response.text
    assert f"more than {roster_service.WORKERS_FROM + 1_000}" in response.json()["detail"]
    await assert_nothing_imported(row_limit_app, kafka_bootstrap, topics)


async def test_the_import_carries_on_in_process_when_the_workers_are_broken(
        contacts_app, tokens, monkeypatch):
    class Broken(Executor):
        def submit(self, fn, /, *args, **kwargs):
            raise BrokenProcessPool("a worker died")

    monkeypatch.setattr(roster_service, "workers", Broken)
    union = list(generate_union(members=roster_service.WORKERS_FROM + 10, seed=7))
    response = await post_csv(contacts_app, tokens("national"), roster_csv_bytes(union))
    assert response.status_code == 200, response.text
    assert response.json()["created"] == len(union)
    assert await count(contacts_app, members) == len(union)


@pytest.mark.parametrize(("data", "says"), [
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x01\x00", "not a CSV file"),
    (b"", "empty"),
    (HEADER.encode() + b"\n", "no member rows"),
    (b"membership_number,first_name,last_name,branch_code\nM001,A,B,B1\n", "header"),
], ids=["binary", "empty", "header-only", "missing-columns"])
async def test_a_file_that_is_not_a_roster(contacts_app, tokens, topics, kafka_bootstrap,
                                           data, says):
    for multipart in (False, True):
        response = await post_csv(contacts_app, tokens("national"), data, multipart=multipart)
        assert response.status_code == 422, response.text
        assert says in response.json()["detail"]
    await assert_nothing_imported(contacts_app, kafka_bootstrap, topics)


async def test_missing_header_columns_are_each_named(contacts_app, tokens):
    response = await post_csv(contacts_app, tokens("national"),
                              b"membership_number,first_name,last_name,branch_code\nM1,A,B,B1\n")
    missing = {e["field"] for e in response.json()["errors"] if e["message"] == "missing column"}
    assert missing == {"group_code", "workplace_code", "grade", "mobile", "personal_email",
                       "sms_consent", "email_consent"}


async def test_the_upload_must_be_csv_in_the_file_field(contacts_app, tokens):
    national = tokens("national")
    wrong_field = await contacts_app.post(
        IMPORT, files={"roster": ("r.csv", with_row(GOOD_ROWS[2]), "text/csv")},
        headers=national)
    assert wrong_field.status_code == 422
    assert "`file`" in wrong_field.json()["detail"]
    as_json = await contacts_app.post(IMPORT, json={"rows": []}, headers=national)
    assert as_json.status_code == 415


# -- limits and who may import ------------------------------------------------------------

@pytest.fixture
async def small_limit_app(contacts_settings):
    settings = contacts_settings.model_copy(update={"max_body_bytes": 4_000})
    app = create_contacts_app(settings)
    async with running(app, "http://contacts") as client:
        client.app = app  # type: ignore[attr-defined]
        yield client


async def test_a_file_over_the_size_limit_is_refused(small_limit_app, tokens):
    data = roster_csv_bytes(small_union(100))
    assert len(data) > 4_000
    national = tokens("national")
    for response in (
            await post_csv(small_limit_app, national, data),
            await post_csv(small_limit_app, national, data, multipart=True),
            # Streamed without a Content-Length: counted as it arrives.
            await small_limit_app.post(IMPORT, content=_chunks(data),
                                       headers={**national, "Content-Type": "text/csv"})):
        assert response.status_code == 413, response.text
        assert response.headers["content-type"].startswith("application/problem+json")
    assert await count(small_limit_app, members) == 0
    fits = await post_csv(small_limit_app, national, roster_csv_bytes(small_union(10)))
    assert fits.status_code == 200, fits.text


async def _chunks(data: bytes):
    for start in range(0, len(data), 1_000):
        yield data[start:start + 1_000]


async def test_only_national_and_admin_may_import(contacts_app, tokens):
    data = roster_csv_bytes(small_union(3))
    for headers in (tokens("rep", branches=["B001"]), tokens("organiser", groups=["G01"]),
                    tokens("service")):
        response = await post_csv(contacts_app, headers, data)
        assert response.status_code == 403, response.text
    assert (await contacts_app.post(IMPORT, content=data)).status_code == 401
    assert await count(contacts_app, members) == 0
    assert (await post_csv(contacts_app, tokens("admin"), data)).status_code == 200


# -- the command line ---------------------------------------------------------------------

async def test_the_cli_uploads_the_file_and_shows_the_counts_or_every_bad_row(
        contacts_settings, tmp_path):
    import uvicorn
    from turnout_contacts.cli import app as cli
    from typer.testing import CliRunner

    app = create_contacts_app(contacts_settings)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_config=None,
                                           access_log=False))
    serving = asyncio.create_task(server.serve())
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            assert time.monotonic() < deadline and not serving.done(), "server did not start"
            await asyncio.sleep(0.05)
        port = server.servers[0].sockets[0].getsockname()[1]
        url = f"http://127.0.0.1:{port}"

        good = tmp_path / "roster.csv"
        write_roster_csv(small_union(7), good)
        result = await asyncio.to_thread(CliRunner().invoke, cli,
                                         ["import", str(good), "--url", url])
        assert result.exit_code == 0, result.output
        assert re.search(r"│ created +│ 7 +│", result.output), result.output
        assert await count_in(app, members) == 7

        bad = tmp_path / "bad.csv"
        bad.write_bytes(with_row("M009,Jo,Bloggs,G1,B1,,,020 7946 0018,,no,no"))
        result = await asyncio.to_thread(CliRunner().invoke, cli,
                                         ["import", str(bad), "--url", url])
        assert result.exit_code == 1, result.output
        assert "422" in result.output and "nothing was imported" in result.output
        assert re.search(r"│ 4 +│ mobile +│", result.output), result.output
        assert "7946" not in result.output and "Bloggs" not in result.output
        assert await count_in(app, members) == 7
    finally:
        server.should_exit = True
        await serving

    unreachable = await asyncio.to_thread(CliRunner().invoke, cli,
                                          ["import", str(good), "--url", url])
    assert unreachable.exit_code == 1 and "Could not reach" in unreachable.output


async def count_in(app, table: sa.Table) -> int:
    async with app.state.ctx.sessions() as session:
        return (await session.execute(sa.select(sa.func.count()).select_from(table))).scalar()
