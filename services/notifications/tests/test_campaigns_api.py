"""Campaigns over HTTP: creating (validation, scope), steering (pause/resume/cancel),
listing, and who reads which counts."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest

from services.notifications.tests.support import (
    CLOSES_AT,
    T0,
    Member,
    deliver,
    event,
    seed_ballot,
)
from turnout_events.ballots import Voted

pytestmark = pytest.mark.integration

TEMPLATE = "Hi {first_name}, {days_left} days left to vote in the {ballot_name}: {link}"


def campaign(ballot_id, /, **overrides):
    return {**{"ballot_id": str(ballot_id), "channel": "sms", "template": TEMPLATE,
               "link": "https://vote.example.org/pay", "schedule": ["P3D", "P1D"]},
            **overrides}


@pytest.fixture
async def ballot(notifications_app, kafka_bootstrap, topics, fake_contacts):
    return await seed_ballot(notifications_app, kafka_bootstrap, topics, fake_contacts,
                             {"ann": Member(group="G1", branch="B1")})


async def test_national_creates_a_campaign_with_defaults(notifications_app, ballot, tokens):
    created = await notifications_app.post("/v1/campaigns", json=campaign(ballot.ballot_id),
                                           headers=tokens("national"))
    assert created.status_code == 201, created.text
    body = created.json()
    assert created.headers["location"] == f"/v1/campaigns/{body['campaign_id']}"
    assert body["status"] == "active"
    assert body["quiet_hours"] == {"start": "21:00:00", "end": "09:00:00",
                                   "timezone": "Europe/London"}
    assert body["max_per_day"] == 1
    # Offsets are resolved against the ballot's close, earliest first.
    assert [(s["spec"], s["due_at"]) for s in body["slots"]] == [
        ("P3D", (CLOSES_AT - timedelta(days=3)).isoformat().replace("+00:00", "Z")),
        ("P1D", (CLOSES_AT - timedelta(days=1)).isoformat().replace("+00:00", "Z"))]
    assert body["counts"]["queued"] == 0 and body["counts"]["sent"] == 0

    fetched = await notifications_app.get(f"/v1/campaigns/{body['campaign_id']}",
                                          headers=tokens("admin"))
    assert fetched.status_code == 200 and fetched.json() == body


@pytest.mark.parametrize(("overrides", "field"), [
    ({"template": "Hi {name}"}, "template"),
    ({"template": "Hi {first_name!r}"}, "template"),
    ({"template": "Hi {first_name.__class__}"}, "template"),
    ({"template": "Hi {first_name"}, "template"),
    ({"template": "Go: {link}", "link": None}, "link"),
    ({"schedule": ["tomorrow"]}, "schedule[0]"),
    ({"schedule": ["P1D", (CLOSES_AT + timedelta(hours=1)).isoformat()]}, "schedule[1]"),
    ({"schedule": ["P1D", "P1D"]}, "schedule[1]"),
    ({"schedule": ["2026-03-21T10:00:00"]}, "schedule[0]"),  # no offset: which zone?
    ({"schedule": ["P999999999D"]}, "schedule[0]"),  # before the year 1
    ({"schedule": ["0001-01-01T00:30:00+01:00"]}, "schedule[0]"),  # year 0 in UTC
    ({"schedule": []}, "schedule"),
    ({"channel": "email"}, "channel"),
    ({"max_per_day": 0}, "max_per_day"),
    ({"max_per_day": 2}, "max_per_day"),  # never twice in a day, as deployed by default
    ({"quiet_hours": {"start": "21:00", "end": "09:00", "timezone": "Mars/Olympus"}},
     "quiet_hours.timezone"),
    ({"audience": {"branch_codes": ["not a code"]}}, "audience.branch_codes[0]"),
    ({"ballot_id": str(uuid.uuid4())}, "ballot_id"),
    ({"mobile": "+447911123123"}, "mobile"),
])
async def test_bad_campaigns_are_refused_precisely(notifications_app, ballot, tokens,
                                                   overrides, field):
    response = await notifications_app.post("/v1/campaigns",
                                             json=campaign(ballot.ballot_id, **overrides),
                                             headers=tokens("national"))
    assert response.status_code == 422, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    fields = [e["field"] for e in response.json()["errors"]]
    assert any(f == field or f.endswith("." + field) for f in fields), fields
    assert "+447911123123" not in response.text


async def test_a_slot_already_past_is_due_at_once(notifications_app, ballot, tokens):
    # Three days before close is now; four days before has passed.
    created = await notifications_app.post("/v1/campaigns",
                                           json=campaign(ballot.ballot_id, schedule=["P4D"]),
                                           headers=tokens("national"))
    assert created.status_code == 201, created.text
    dispatcher = notifications_app.app.state.ctx.dispatcher
    assert await dispatcher.run_once() == {"slots_selected": 1, "messages_sent": 1}


async def test_who_may_create_and_read(notifications_app, ballot, tokens):
    body = campaign(ballot.ballot_id)
    for headers in (tokens("rep", branches=["B1"]), tokens("service")):
        assert (await notifications_app.post("/v1/campaigns", json=body,
                                             headers=headers)).status_code == 403
    organiser = tokens("organiser", groups=["G1"])
    # An organiser names their groups, and only theirs.
    missing = await notifications_app.post("/v1/campaigns", json=body, headers=organiser)
    assert missing.status_code == 422
    outside = await notifications_app.post(
        "/v1/campaigns", json={**body, "audience": {"group_codes": ["G1", "G2"]}},
        headers=organiser)
    assert outside.status_code == 403
    created = await notifications_app.post(
        "/v1/campaigns", json={**body, "audience": {"group_codes": ["G1"],
                                                    "branch_codes": ["B1"]}},
        headers=organiser)
    assert created.status_code == 201, created.text
    path = f"/v1/campaigns/{created.json()['campaign_id']}"

    for headers in (tokens("organiser", groups=["G1"]), tokens("rep", branches=["B1", "B2"]),
                    tokens("national")):
        assert (await notifications_app.get(path, headers=headers)).status_code == 200
    for headers in (tokens("organiser", groups=["G2"]), tokens("rep", branches=["B2"])):
        hidden = await notifications_app.get(path, headers=headers)
        unknown = await notifications_app.get(f"/v1/campaigns/{uuid.uuid4()}",
                                              headers=headers)
        assert hidden.status_code == unknown.status_code == 404
    assert (await notifications_app.get(path)).status_code == 401


async def test_pause_resume_cancel(notifications_app, ballot, tokens, clock):
    national = tokens("national")
    created = await notifications_app.post("/v1/campaigns", json=campaign(ballot.ballot_id),
                                           headers=national)
    path = f"/v1/campaigns/{created.json()['campaign_id']}"
    dispatcher = notifications_app.app.state.ctx.dispatcher
    clock.set(T0 + timedelta(minutes=1))

    paused = await notifications_app.post(f"{path}:pause", headers=national)
    assert paused.status_code == 200 and paused.json()["status"] == "paused"
    assert await dispatcher.run_once() == {"slots_selected": 0, "messages_sent": 0}
    assert (await notifications_app.get(path, headers=national)).json()["counts"]["sent"] == 0

    resumed = await notifications_app.post(f"{path}:resume", headers=national)
    assert resumed.json()["status"] == "active"
    assert await dispatcher.run_once() == {"slots_selected": 1, "messages_sent": 1}

    cancelled = await notifications_app.post(f"{path}:cancel", headers=national)
    assert cancelled.json()["status"] == "cancelled"
    assert (await notifications_app.post(f"{path}:resume", headers=national)).status_code == 409
    clock.set(CLOSES_AT - timedelta(hours=23))  # the P1D slot's time has come
    assert await dispatcher.run_once() == {"slots_selected": 0, "messages_sent": 0}
    assert (await notifications_app.post(f"{path}:pause",
                                         headers=tokens("organiser", groups=["G1"]))
            ).status_code == 404  # an organiser may only steer campaigns of their groups


# -- listing ---------------------------------------------------------------------------------

async def test_listing_shows_each_caller_the_campaigns_in_their_scope(
        notifications_app, kafka_bootstrap, topics, fake_contacts, tokens, clock):
    seeded = await seed_ballot(notifications_app, kafka_bootstrap, topics, fake_contacts, {
        "ann": Member(group="G1", branch="B1"), "bob": Member(group="G1", branch="B2"),
        "cat": Member(group="G2", branch="B3")})
    other = await seed_ballot(notifications_app, kafka_bootstrap, topics, fake_contacts,
                              {"dan": Member(group="G1", branch="B1")})

    async def create(ballot, headers, **audience) -> str:
        response = await notifications_app.post(
            "/v1/campaigns", json=campaign(ballot.ballot_id, audience=audience),
            headers=headers)
        assert response.status_code == 201, response.text
        return response.json()["campaign_id"]

    national, organiser = tokens("national"), tokens("organiser", groups=["G1"])
    everyone = await create(seeded, national)
    g1 = await create(seeded, organiser, group_codes=["G1"])
    b3 = await create(seeded, national, branch_codes=["B3"])
    g2_workplace = await create(seeded, national, group_codes=["G2"], workplace_codes=["W1"])
    elsewhere = await create(other, national)
    paused = await notifications_app.post(f"/v1/campaigns/{b3}:pause", headers=national)
    assert paused.status_code == 200

    async def listed(headers, **params) -> list[str]:
        response = await notifications_app.get("/v1/campaigns", params=params,
                                               headers=headers)
        assert response.status_code == 200, response.text
        return [c["campaign_id"] for c in response.json()["items"]]

    # Newest first.
    assert await listed(national) == [elsewhere, g2_workplace, b3, g1, everyone]
    assert await listed(national, ballot_id=str(seeded.ballot_id)) == [
        g2_workplace, b3, g1, everyone]
    assert await listed(national, ballot_id=str(seeded.ballot_id), status="paused") == [b3]
    # An organiser: the campaigns of their groups, not the national one.
    assert await listed(organiser) == [g1]
    assert await listed(tokens("organiser", groups=["G3"])) == []
    # A rep: every campaign whose audience reaches one of their branches, by filter or
    # by who is on the roll (B3 is G2's: the G2 campaign reaches it, not B1).
    assert await listed(tokens("rep", branches=["B1"])) == [elsewhere, g1, everyone]
    assert await listed(tokens("rep", branches=["B3"])) == [g2_workplace, b3, everyone]
    assert await listed(tokens("rep", branches=["B9"])) == []
    assert await listed(tokens("service")) == []

    # A page at a time.
    page = await notifications_app.get("/v1/campaigns", params={"limit": 2}, headers=national)
    first = page.json()
    assert [c["campaign_id"] for c in first["items"]] == [elsewhere, g2_workplace]
    assert first["items"][0]["slots"][0]["spec"] == "P3D"
    rest = await notifications_app.get("/v1/campaigns", headers=national, params={
        "limit": 2, "cursor": first["next_cursor"]})
    second = rest.json()
    assert [c["campaign_id"] for c in second["items"]] == [b3, g1]
    last = await notifications_app.get("/v1/campaigns", headers=national, params={
        "limit": 2, "cursor": second["next_cursor"]})
    assert ([c["campaign_id"] for c in last.json()["items"]], last.json()["next_cursor"]) == (
        [everyone], None)

    for params, field in [({"status": "finished"}, "status"), ({"cursor": "bm9wZQ"}, "cursor"),
                          ({"ballot_id": "not-a-uuid"}, "ballot_id"), ({"limit": 0}, "limit")]:
        bad = await notifications_app.get("/v1/campaigns", params=params, headers=national)
        assert bad.status_code == 422, (params, bad.text)
        assert any(e["field"].endswith(field) for e in bad.json()["errors"]), bad.json()
    assert (await notifications_app.get("/v1/campaigns")).status_code == 401


# -- a rep's counts -----------------------------------------------------------------------------

async def test_a_rep_reads_the_counts_of_their_branches_only(
        notifications_app, kafka_bootstrap, topics, fake_contacts, tokens, clock):
    seeded = await seed_ballot(notifications_app, kafka_bootstrap, topics, fake_contacts, {
        "ann": Member(branch="B1"), "abe": Member(branch="B1"),
        "amy": Member(branch="B1", voted=True), "bob": Member(branch="B2"),
        "bea": Member(branch="B2", sms_consent=False), "ben": Member(branch="B2"),
        "cat": Member(group="G2", branch="B3", has_mobile=False)})
    created = await notifications_app.post(
        "/v1/campaigns", json=campaign(seeded.ballot_id, schedule=["P3D", "P1D"]),
        headers=tokens("national"))
    path = f"/v1/campaigns/{created.json()['campaign_id']}"
    dispatcher = notifications_app.app.state.ctx.dispatcher

    async def counts(headers) -> tuple[dict, list[str] | None]:
        response = await notifications_app.get(path, headers=headers)
        assert response.status_code == 200, response.text
        return response.json()["counts"], response.json()["counts_branch_codes"]

    def skipped(**n) -> dict:
        return {"voted": 0, "no_consent": 0, "no_mobile": 0, "capped": 0, "opted_out": 0,
                "quiet_hours_deferred": 0, **n}

    # Selected, nothing sent yet: B1 has two waiting and one who voted.
    assert await dispatcher.select_due() == 1
    rep_b1 = tokens("rep", branches=["B1"])
    assert await counts(rep_b1) == ({"queued": 2, "sent": 0, "delivered": 0, "failed": 0,
                                     "cancelled": 0, "skipped": skipped(voted=1)}, ["B1"])
    # Bob votes before his text: counted for B2, not for B1.
    await deliver(notifications_app, kafka_bootstrap, topics, "ballots", [
        event(Voted, ballot_id=seeded.ballot_id, member_id=seeded.ids["bob"],
              voted_at=T0.isoformat(), occurred_at=T0)])
    assert await dispatcher.send_queued() == 3

    assert await counts(rep_b1) == ({"queued": 0, "sent": 2, "delivered": 0, "failed": 0,
                                     "cancelled": 0, "skipped": skipped(voted=1)}, ["B1"])
    assert await counts(tokens("rep", branches=["B2", "B3"])) == (
        {"queued": 0, "sent": 1, "delivered": 0, "failed": 0, "cancelled": 0,
         "skipped": skipped(voted=1, no_consent=1, no_mobile=1)}, ["B2", "B3"])
    assert await counts(tokens("national")) == (
        {"queued": 0, "sent": 3, "delivered": 0, "failed": 0, "cancelled": 0,
         "skipped": skipped(voted=2, no_consent=1, no_mobile=1)}, None)
    # A rep of a branch the campaign does not reach: no such campaign.
    hidden = await notifications_app.get(path, headers=tokens("rep", branches=["B9"]))
    assert hidden.status_code == 404
    # Reading is not steering.
    assert (await notifications_app.post(f"{path}:pause", headers=rep_b1)).status_code == 403
