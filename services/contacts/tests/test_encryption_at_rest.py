"""Contact values at rest: a dump-like scan of the whole contacts database finds no phone
number, email or name in clear, and key rotation moves every value to the new key."""

from __future__ import annotations

import asyncio
import base64
import os
import sys

import pytest
import sqlalchemy as sa
from turnout_contacts.db.tables import conversations, members
from turnout_contacts.domain.crypto import ContactCipher
from turnout_contacts.service import keys
from turnout_contacts.settings import DEVELOPMENT_ENCRYPTION_KEYS

from services.contacts.tests.seed import seed_member
from tests.support.outbox import outbox_drained

pytestmark = pytest.mark.integration

FIRST, LAST = "Marguerite", "Okonkwo"
MOBILE, NEW_MOBILE = "+447911123123", "+447412345678"
EMAIL, NEW_EMAIL = "marguerite.okonkwo@example.org.uk", "m.okonkwo@example.net"
NOTE = f"{FIRST} asked us to use {NEW_EMAIL} or 07412 345678 instead"
# Every way the values could sit in a dump: as typed, E.164, national, bare digits.
CLEAR = (FIRST, LAST, MOBILE, NEW_MOBILE, "07911123123", "07412345678", "7911123123",
         "7412345678", "07412 345678", EMAIL, NEW_EMAIL, "example.org.uk", "example.net")


def ctx_of(client):
    return client.app.state.ctx


def new_key_ring(key_id: str = "k2026") -> str:
    """A fresh key put first, the old (development) key kept after it for reading."""
    key = base64.b64encode(os.urandom(32)).decode()
    return f"{key_id}:{key},{DEVELOPMENT_ENCRYPTION_KEYS}"


async def dump(engine) -> str:
    """Every column of every table, cast to text the way a dump shows it: bytea both as
    escaped bytes (printable characters appear as themselves) and as hex."""
    parts: list[str] = []
    async with engine.connect() as conn:
        columns = (await conn.execute(sa.text(
            "SELECT table_schema, table_name, column_name, data_type "
            "FROM information_schema.columns JOIN information_schema.tables "
            "USING (table_catalog, table_schema, table_name) "
            "WHERE table_type = 'BASE TABLE' "
            "AND table_schema NOT IN ('pg_catalog', 'information_schema')"))).all()
        assert {c.table_name for c in columns} >= {"members", "conversations", "reveal_audit",
                                                   "reveal_anomalies", "outbox"}
        for schema, table, column, data_type in columns:
            ident = f'"{column}"'
            shown = [f"{ident}::text"]
            if data_type == "bytea":
                shown.append(f"encode({ident}, 'escape')")
            for expression in shown:
                values = (await conn.execute(sa.text(
                    f'SELECT {expression} FROM "{schema}"."{table}"'))).scalars()
                parts.extend(v for v in values if v is not None)
    return "\n".join(parts)


def in_clear(dumped: str) -> list[str]:
    """The values of CLEAR found in a dump, as they are or hex-encoded (bytea::text)."""
    lowered = dumped.lower()
    return [v for v in CLEAR if v.lower() in lowered or v.encode().hex() in lowered]


async def test_a_dump_of_the_database_shows_no_contact_value_in_clear(contacts_app, tokens):
    ctx = ctx_of(contacts_app)
    member_id = await seed_member(ctx, first=FIRST, last=LAST, mobile=MOBILE, email=EMAIL,
                                  number="M777001")
    erased_id = await seed_member(ctx, first=FIRST, last=LAST, mobile=MOBILE, email=EMAIL)
    rep = tokens("rep", branches=["B1"])
    for method, path, body, expected in (
        ("PATCH", f"/v1/members/{member_id}/contact",
         {"mobile": "07412 345678", "personal_email": NEW_EMAIL, "email_consent": True}, 200),
        ("POST", f"/v1/members/{member_id}/conversations",
         {"channel": "phone", "outcome": "will_vote", "note": NOTE}, 201),
        ("POST", f"/v1/members/{member_id}/reveal",
         {"reason": f"calling {FIRST} {LAST} on 07412 345678 / {NEW_EMAIL}"}, 200),
        ("POST", f"/v1/members/{member_id}/reveal", {"reason": "second call"}, 200),
        ("POST", f"/v1/members/{member_id}/reveal", {"reason": "third call"}, 200),
        ("POST", f"/v1/members/{member_id}/reveal", {"reason": "one too many"}, 429),
    ):
        response = await contacts_app.request(method, path, json=body, headers=rep)
        assert response.status_code == expected, response.text
    assert (await contacts_app.delete(f"/v1/members/{erased_id}/personal-data",
                                      headers=tokens("admin"))).status_code == 204
    await outbox_drained(ctx.engine)

    text = await dump(ctx.engine)

    # The scan sees the data (a membership number and the masked forms are in clear)...
    assert "M777001" in text and "07••• ••• 678" in text
    # ...and no contact value or name, in any spelling or encoding.
    assert in_clear(text) == []
    # The values are all there, encrypted: the service still reads them back.
    revealed = await contacts_app.post(f"/v1/members/{member_id}/reveal",
                                       json={"reason": "still readable?"},
                                       headers=tokens("national"))
    assert revealed.json()["mobile"] == NEW_MOBILE


async def test_rotating_keys_moves_every_value_to_the_new_key(contacts_app, tokens):
    ctx = ctx_of(contacts_app)
    ids = [await seed_member(ctx, first=FIRST, last=LAST, email=EMAIL) for _ in range(5)]
    ids.append(await seed_member(ctx, mobile=None, email=None))  # nothing but names
    rep = tokens("rep", branches=["B1"])
    for member_id in ids[:3]:
        logged = await contacts_app.post(f"/v1/members/{member_id}/conversations",
                                         json={"channel": "sms", "outcome": "will_vote",
                                               "note": NOTE}, headers=rep)
        assert logged.status_code == 201
    rotated = ContactCipher.from_setting(new_key_ring("k2026"))
    before = await keys.count_stale(ctx.sessions, rotated)
    assert before == {"members": 5 * 4 + 2, "conversations": 3}
    progress: list[tuple[str, int]] = []

    report = await keys.rotate_keys(ctx.sessions, rotated, batch_size=2,
                                    progress=lambda table, n: progress.append((table, n)))

    assert report.values == 25 and report.rows == {"members": 6, "conversations": 3}
    assert sum(n for _, n in progress) == 25 and len(progress) == 3 + 2
    assert await keys.count_stale(ctx.sessions, rotated) == {"members": 0,
                                                             "conversations": 0}
    # Only the new key is needed now: a ring without the old one reads everything.
    new_only = ContactCipher({"k2026": rotated.keys["k2026"]}, "k2026")
    async with ctx.engine.connect() as conn:
        rows = (await conn.execute(sa.select(members).where(members.c.member_id.in_(ids)))
                ).all()
        notes = (await conn.execute(sa.select(conversations))).all()
    for row in rows:
        for column in ("first_name", "last_name", "mobile", "email"):
            blob = getattr(row, column)
            if blob is not None:
                assert new_only.key_id(blob) == "k2026", column
        assert new_only.decrypt(row.member_id, row.first_name) in (FIRST, "Alex")
        if row.email is not None:
            assert new_only.decrypt(row.member_id, row.email) == EMAIL
    assert [new_only.decrypt(n.member_id, n.note) for n in notes] == [NOTE] * 3

    again = await keys.rotate_keys(ctx.sessions, rotated)
    assert again.values == 0
    # The service, restarted with the new ring, reads the rotated values.
    ctx.cipher = new_only
    revealed = await contacts_app.post(f"/v1/members/{ids[0]}/reveal",
                                       json={"reason": "after rotation"}, headers=rep)
    assert revealed.status_code == 200, revealed.text
    assert revealed.json()["personal_email"] == EMAIL
    assert in_clear(await dump(ctx.engine)) == []


async def test_the_rotate_keys_command(contacts_app, contacts_settings, tokens):
    ctx = ctx_of(contacts_app)
    member_id = await seed_member(ctx, first=FIRST, last=LAST)
    ring = new_key_ring("cli1")
    env = {**os.environ, "CONTACTS_DATABASE_URL": contacts_settings.database_url,
           "CONTACTS_ENCRYPTION_KEYS": ring}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "turnout_local.cli", "contacts", "rotate-keys",
        "--batch-size", "1", env=env, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(process.communicate(), timeout=120)
    assert process.returncode == 0, err.decode()
    assert "Re-encrypted 4 values (1 members, 0 conversations rows)" in err.decode()
    for value in (FIRST, LAST, MOBILE):
        assert value not in (out + err).decode()
    cipher = ContactCipher.from_setting(ring)
    assert await keys.count_stale(ctx.sessions, cipher) == {"members": 0, "conversations": 0}
    async with ctx.engine.connect() as conn:
        row = (await conn.execute(sa.select(members).where(
            members.c.member_id == member_id))).one()
    assert cipher.key_id(row.mobile) == "cli1"
    assert cipher.decrypt(member_id, row.mobile) == MOBILE
