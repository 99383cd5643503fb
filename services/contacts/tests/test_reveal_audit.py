"""Revealing contact values: the audit row, the hourly limit (also under concurrency), the
anomaly log, the audit API for national/admin and the subject-access export."""

from __future__ import annotations

import asyncio
import csv
import io
import uuid
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from turnout_contacts.db.tables import reveal_anomalies, reveal_audit

from services.contacts.tests.seed import seed_member
from tests.support.outbox import outbox_drained

pytestmark = pytest.mark.integration

MOBILE = "+447911123123"
EMAIL = "alex.jones@example.org.uk"
REASON = "phone banking for the pay ballot"


def ctx_of(client):
    return client.app.state.ctx


async def fetch(client, query):
    async with ctx_of(client).engine.connect() as conn:
        return (await conn.execute(query)).all()


async def reveal(client, member_id, headers, reason=REASON, **extra):
    return await client.post(f"/v1/members/{member_id}/reveal",
                             json={"reason": reason, **extra}, headers=headers)


async def backdate(client, actor: str, minutes: float, *, only_oldest=False) -> None:
    """Move a caller's reveals into the past, as if they had been made `minutes` ago."""
    async with ctx_of(client).engine.begin() as conn:
        ids = sa.select(reveal_audit.c.id).where(reveal_audit.c.revealed_by == actor)
        if only_oldest:
            ids = ids.order_by(reveal_audit.c.id).limit(1)
        await conn.execute(sa.update(reveal_audit).where(reveal_audit.c.id.in_(ids)).values(
            revealed_at=sa.func.now() - timedelta(minutes=minutes)))


async def test_reveal_returns_the_values_and_writes_the_audit_row(contacts_app, tokens):
    member_id = await seed_member(ctx_of(contacts_app), branch="B1")
    rep = tokens("rep", branches=["B1"], subject="rep-ana")

    response = await reveal(contacts_app, member_id, rep, reason=f"  {REASON}  \n")

    assert response.status_code == 200, response.text
    body = response.json()
    assert {k: body[k] for k in ("mobile", "personal_email", "first_name", "last_name")} == {
        "mobile": MOBILE, "personal_email": EMAIL, "first_name": "Alex", "last_name": "Jones"}
    assert body["fields"] == ["first_name", "last_name", "mobile", "personal_email"]
    assert response.headers["cache-control"] == "no-store"
    [entry] = await fetch(contacts_app, sa.select(reveal_audit))
    assert entry.revealed_by == "rep:rep-ana" and entry.role == "rep"
    assert entry.member_id == member_id
    assert entry.reason == REASON  # trimmed
    assert entry.fields == ["first_name", "last_name", "mobile", "personal_email"]
    assert abs(entry.revealed_at - datetime.now(UTC)) < timedelta(minutes=1)
    # A reveal is not an event: nothing goes to Kafka.
    assert await outbox_drained(ctx_of(contacts_app).engine) == 0


async def test_a_reveal_can_ask_for_only_some_values(contacts_app, tokens):
    member_id = await seed_member(ctx_of(contacts_app), email=None)
    response = await reveal(contacts_app, member_id, tokens("national"),
                            fields=["mobile", "personal_email"])
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["mobile"] == MOBILE and body["personal_email"] is None
    assert body["first_name"] is None
    assert body["fields"] == ["mobile"]  # no email to disclose: none recorded
    [entry] = await fetch(contacts_app, sa.select(reveal_audit))
    assert entry.fields == ["mobile"] and entry.role == "national"


async def test_a_reason_is_required_and_bounded(contacts_app, tokens):
    member_id = await seed_member(ctx_of(contacts_app))
    rep = tokens("rep", branches=["B1"])
    for body in ({}, {"reason": "  ab  "}, {"reason": "x" * 501}, {"reason": None},
                 {"reason": REASON, "fields": []}, {"reason": REASON, "extra": 1}):
        response = await contacts_app.post(f"/v1/members/{member_id}/reveal", json=body,
                                           headers=rep)
        assert response.status_code == 422, (body, response.text)
        assert MOBILE not in response.text
    assert (await reveal(contacts_app, member_id, rep, reason="x" * 500)).status_code == 200
    assert len(await fetch(contacts_app, sa.select(reveal_audit))) == 1


async def test_the_stored_reason_holds_no_contact_value_or_the_members_name(
        contacts_app, tokens):
    member_id = await seed_member(ctx_of(contacts_app), first="Priya", last="Patel")
    response = await reveal(contacts_app, member_id, tokens("rep", branches=["B1"]),
                            reason="ring PRIYA patel on 07911 123123 or alex.jones@example.org.uk")
    assert response.status_code == 200, response.text
    [entry] = await fetch(contacts_app, sa.select(reveal_audit))
    assert entry.reason == "ring [name] [name] on [redacted] or [redacted]"


async def test_out_of_scope_callers_get_404_and_nothing_is_audited(contacts_app, tokens):
    member_id = await seed_member(ctx_of(contacts_app), group="G1", branch="B1")
    for headers in (tokens("rep", branches=["B2"]), tokens("organiser", groups=["G2"])):
        response = await reveal(contacts_app, member_id, headers)
        assert response.status_code == 404, response.text
        assert response.headers["content-type"].startswith("application/problem+json")
    assert (await reveal(contacts_app, uuid.uuid4(), tokens("national"))).status_code == 404
    assert (await reveal(contacts_app, member_id, tokens("service"))).status_code == 403
    assert await fetch(contacts_app, sa.select(reveal_audit)) == []
    organiser = await reveal(contacts_app, member_id, tokens("organiser", groups=["G1"]))
    assert organiser.status_code == 200


async def test_the_fourth_reveal_in_an_hour_is_refused_and_logged_once(contacts_app, tokens):
    ctx = ctx_of(contacts_app)
    ids = [await seed_member(ctx) for _ in range(5)]
    rep = tokens("rep", branches=["B1"], subject="rep-busy")
    for member_id in ids[:3]:
        assert (await reveal(contacts_app, member_id, rep)).status_code == 200

    refused = await reveal(contacts_app, ids[3], rep)
    assert refused.status_code == 429, refused.text
    assert refused.headers["content-type"].startswith("application/problem+json")
    assert 3500 < int(refused.headers["retry-after"]) <= 3600
    assert MOBILE not in refused.text and "Alex" not in refused.text
    again = await reveal(contacts_app, ids[4], rep)
    assert again.status_code == 429

    assert len(await fetch(contacts_app, sa.select(reveal_audit))) == 3
    [anomaly] = await fetch(contacts_app, sa.select(reveal_anomalies))
    assert anomaly.subject == "rep:rep-busy" and anomaly.member_id == ids[3]
    assert (anomaly.reveals_in_last_hour, anomaly.hourly_limit) == (5, 3)
    # The limit is per caller: another rep is not held back.
    other = await reveal(contacts_app, ids[3], tokens("rep", branches=["B1"]))
    assert other.status_code == 200


async def test_the_window_rolls_and_a_new_breach_is_a_new_anomaly(contacts_app, tokens):
    member_id = await seed_member(ctx_of(contacts_app))
    rep = tokens("rep", branches=["B1"], subject="rep-roll")
    for _ in range(3):
        assert (await reveal(contacts_app, member_id, rep)).status_code == 200
    await backdate(contacts_app, "rep:rep-roll", 59)
    refused = await reveal(contacts_app, member_id, rep)
    assert refused.status_code == 429
    assert 0 < int(refused.headers["retry-after"]) <= 60

    await backdate(contacts_app, "rep:rep-roll", 61, only_oldest=True)
    assert (await reveal(contacts_app, member_id, rep)).status_code == 200
    assert (await reveal(contacts_app, member_id, rep)).status_code == 429
    anomalies = await fetch(contacts_app, sa.select(reveal_anomalies)
                            .order_by(reveal_anomalies.c.id))
    assert [a.reveals_in_last_hour for a in anomalies] == [4, 4]


async def test_concurrent_reveals_never_exceed_the_limit(contacts_app, tokens):
    ctx = ctx_of(contacts_app)
    ids = [await seed_member(ctx) for _ in range(12)]
    rep = tokens("rep", branches=["B1"], subject="rep-race")

    responses = await asyncio.gather(*(reveal(contacts_app, m, rep) for m in ids))

    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200] * 3 + [429] * 9
    assert len(await fetch(contacts_app, sa.select(reveal_audit))) == 3
    [anomaly] = await fetch(contacts_app, sa.select(reveal_anomalies))
    assert anomaly.reveals_in_last_hour == 12


async def test_an_erased_member_has_nothing_to_reveal(contacts_app, tokens):
    member_id = await seed_member(ctx_of(contacts_app))
    erased = await contacts_app.delete(f"/v1/members/{member_id}/personal-data",
                                       headers=tokens("admin"))
    assert erased.status_code == 204
    response = await reveal(contacts_app, member_id, tokens("rep", branches=["B1"]))
    assert response.status_code == 410, response.text
    assert await fetch(contacts_app, sa.select(reveal_audit)) == []


async def test_the_audit_log_is_for_national_and_admin_only(contacts_app, tokens):
    member_id = await seed_member(ctx_of(contacts_app))
    paths = ["/v1/audit/reveals", f"/v1/audit/reveals/members/{member_id}",
             "/v1/audit/anomalies"]
    for headers in (tokens("rep", branches=["B1"]), tokens("organiser", groups=["G1"]),
                    tokens("service")):
        for path in paths:
            response = await contacts_app.get(path, headers=headers)
            assert response.status_code == 403, (path, response.text)
    for role in ("national", "admin"):
        for path in paths:
            assert (await contacts_app.get(path, headers=tokens(role))).status_code == 200
    assert (await contacts_app.get(paths[0])).status_code == 401


async def test_the_audit_log_filters_by_rep_member_and_date_and_pages(contacts_app, tokens):
    ctx = ctx_of(contacts_app)
    alex, sam = await seed_member(ctx), await seed_member(ctx, first="Sam")
    ana = tokens("rep", branches=["B1"], subject="ana")
    ben = tokens("organiser", groups=["G1"], subject="ben")
    for member_id, headers in ((alex, ana), (sam, ana), (alex, ben)):
        assert (await reveal(contacts_app, member_id, headers)).status_code == 200
    await backdate(contacts_app, "rep:ana", 60 * 24 * 3, only_oldest=True)  # alex, 3 days ago
    national = tokens("national")

    async def listed(**params):
        response = await contacts_app.get("/v1/audit/reveals", params=params,
                                          headers=national)
        assert response.status_code == 200, response.text
        return [(e["revealed_by"], e["member_id"]) for e in response.json()["items"]]

    assert await listed() == [("organiser:ben", str(alex)), ("rep:ana", str(sam)),
                              ("rep:ana", str(alex))]
    assert await listed(rep="rep:ana") == [("rep:ana", str(sam)), ("rep:ana", str(alex))]
    assert await listed(rep="ben") == [("organiser:ben", str(alex))]
    assert await listed(member_id=str(alex)) == [("organiser:ben", str(alex)),
                                                 ("rep:ana", str(alex))]
    two_days_ago = (datetime.now(UTC) - timedelta(days=2)).isoformat()
    assert await listed(since=two_days_ago, rep="ana") == [("rep:ana", str(sam))]
    assert await listed(until=two_days_ago) == [("rep:ana", str(alex))]

    seen, cursor = [], None
    while True:
        page = (await contacts_app.get("/v1/audit/reveals", headers=national, params={
            "limit": 2, **({"cursor": cursor} if cursor else {})})).json()
        seen += [e["id"] for e in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == 3 and seen == sorted(seen, reverse=True)

    for params in ({"cursor": "nonsense!"}, {"since": "2026-01-01T00:00:00"},
                   {"since": two_days_ago, "until": two_days_ago}, {"member_id": "x"},
                   {"until": "0001-01-01T00:30:00+01:00"}):  # year 0 in UTC
        response = await contacts_app.get("/v1/audit/reveals", params=params,
                                          headers=national)
        assert response.status_code == 422, (params, response.text)


async def test_a_members_reveals_export_as_csv_for_a_subject_access_request(
        contacts_app, tokens):
    ctx = ctx_of(contacts_app)
    alex, other = await seed_member(ctx), await seed_member(ctx)
    rep = tokens("rep", branches=["B1"], subject="ana")
    assert (await reveal(contacts_app, alex, rep)).status_code == 200
    assert (await reveal(contacts_app, alex, rep, reason="=HYPERLINK(\"x\") why not")
            ).status_code == 200
    assert (await reveal(contacts_app, other, rep)).status_code == 200
    admin = tokens("admin")

    response = await contacts_app.get(f"/v1/audit/reveals/members/{alex}", headers=admin)

    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/csv")
    assert "attachment" in response.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert [r["member_id"] for r in rows] == [str(alex)] * 2
    assert [r["reason"] for r in rows] == [REASON, "'=HYPERLINK(\"x\") why not"]
    assert {r["revealed_by"] for r in rows} == {"rep:ana"}
    assert rows[0]["fields"] == "first_name;last_name;mobile;personal_email"

    as_json = await contacts_app.get(f"/v1/audit/reveals/members/{alex}",
                                     params={"format": "json"}, headers=admin)
    assert len(as_json.json()["items"]) == 2
    # Erasure keeps the audit: the entries stay exportable afterwards.
    await contacts_app.delete(f"/v1/members/{alex}/personal-data", headers=admin)
    after = await contacts_app.get(f"/v1/audit/reveals/members/{alex}",
                                   params={"format": "json"}, headers=admin)
    assert len(after.json()["items"]) == 2
    unknown = await contacts_app.get(f"/v1/audit/reveals/members/{uuid.uuid4()}",
                                     headers=admin)
    assert unknown.status_code == 404


async def test_anomalies_list_the_callers_who_passed_the_limit(contacts_app, tokens):
    member_id = await seed_member(ctx_of(contacts_app))
    for subject in ("eager", "calm"):
        rep = tokens("rep", branches=["B1"], subject=subject)
        for _ in range(4 if subject == "eager" else 3):
            await reveal(contacts_app, member_id, rep)
    national = tokens("national")
    listed = (await contacts_app.get("/v1/audit/anomalies", headers=national)).json()
    assert [(a["subject"], a["member_id"], a["reveals_in_last_hour"], a["hourly_limit"])
            for a in listed["items"]] == [("rep:eager", str(member_id), 4, 3)]
    filtered = await contacts_app.get("/v1/audit/anomalies", params={"rep": "calm"},
                                      headers=national)
    assert filtered.json()["items"] == []
