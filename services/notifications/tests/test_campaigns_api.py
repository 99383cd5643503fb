"""Creating and steering campaigns over HTTP: validation, scope, pause/resume/cancel."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest

from services.notifications.tests.support import CLOSES_AT, T0, Member, seed_ballot

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
    ({"schedule": []}, "schedule"),
    ({"channel": "email"}, "channel"),
    ({"max_per_day": 0}, "max_per_day"),
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
