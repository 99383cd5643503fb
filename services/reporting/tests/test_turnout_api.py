"""Reading turnout: rows per level in the caller's scope, sorted by votes still needed,
as CSV, and a unit's timeline by hour or by London day; the ballots a caller can watch;
unknown ballots and out-of-scope units are not found."""

from __future__ import annotations

import asyncio
import csv
import io
import time
import uuid
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from turnout_reporting.synthetic import generate_ballot

from services.reporting.tests.events import as_envelope, publish
from services.reporting.tests.test_stream import OPENS_AT, roll, vote
from tests.support.events import eventually
from turnout_events.ballots import BallotOpened
from turnout_events.samples import sample_envelope

pytestmark = pytest.mark.integration

LONDON = ZoneInfo("Europe/London")


@pytest.fixture
async def folded_ballot(reporting_app, tokens, topics, kafka_bootstrap):
    ballot = generate_ballot(members=200, groups=2, branches=4, workplaces=8, seed=5)
    await publish(kafka_bootstrap, topics, [as_envelope(e) for e in ballot.events])
    national = tokens("national")
    eligible = ballot.truth[(ballot.ballot_id, "national", "", "", "")][0]
    deadline = time.monotonic() + 60
    while True:
        response = await reporting_app.get(f"/v1/ballots/{ballot.ballot_id}/turnout",
                                           headers=national)
        if response.status_code == 200 and response.json()["items"] and (
                response.json()["items"][0]["eligible"] == eligible):
            break
        assert time.monotonic() < deadline, response.text
        await asyncio.sleep(0.2)  # polling interval while waiting with a deadline
    # Wait until everything is folded, not just the enrolments.
    ctx = reporting_app.app.state.ctx
    while ctx.consumer.folded < len(ballot.events):
        assert time.monotonic() < deadline
        await asyncio.sleep(0.1)  # polling interval while waiting with a deadline
    return ballot


def truth_rows(ballot, level):
    return {k: v for k, v in ballot.truth.items() if k[1] == level}


async def test_branches_are_sorted_by_votes_still_needed(reporting_app, tokens, folded_ballot):
    b = folded_ballot.ballot_id
    response = await reporting_app.get(f"/v1/ballots/{b}/turnout", params={"level": "branch"},
                                       headers=tokens("admin"))
    assert response.status_code == 200, response.text
    rows = response.json()["items"]
    assert len(rows) == len(truth_rows(folded_ballot, "branch"))
    needed = [r["votes_needed"] for r in rows]
    assert needed == sorted(needed, reverse=True)
    for r in rows:
        assert r["votes_needed"] == max(0, -(-r["eligible"] // 2) - r["voted"])
        assert r["parent"] == r["group_code"]
        assert r["hard_to_reach"] == r["eligible"] - r["contactable"]


async def test_within_narrows_to_one_group(reporting_app, tokens, folded_ballot):
    b = folded_ballot.ballot_id
    group = "G01"
    response = await reporting_app.get(f"/v1/ballots/{b}/turnout",
                                       params={"level": "branch", "within": group},
                                       headers=tokens("national"))
    units = {r["unit"] for r in response.json()["items"]}
    assert units == {k[3] for k in truth_rows(folded_ballot, "branch") if k[2] == group}
    assert units


async def test_a_rep_sees_their_branches_and_the_workplaces_in_them(reporting_app, tokens,
                                                                    folded_ballot):
    b = folded_ballot.ballot_id
    branch = sorted(k[3] for k in truth_rows(folded_ballot, "branch"))[0]
    rep = tokens("rep", branches=[branch])
    branches = (await reporting_app.get(f"/v1/ballots/{b}/turnout", headers=rep)).json()
    assert branches["level"] == "branch"
    assert [r["unit"] for r in branches["items"]] == [branch]
    workplaces = (await reporting_app.get(f"/v1/ballots/{b}/turnout",
                                          params={"level": "workplace"}, headers=rep)).json()
    assert {r["unit"] for r in workplaces["items"]} == {
        k[4] for k in truth_rows(folded_ballot, "workplace") if k[3] == branch}
    # Figures that include other branches are not theirs to see.
    for level in ("national", "group"):
        response = await reporting_app.get(f"/v1/ballots/{b}/turnout",
                                           params={"level": level}, headers=rep)
        assert response.status_code == 200 and response.json()["items"] == []
    other = sorted(k[3] for k in truth_rows(folded_ballot, "branch"))[-1]
    response = await reporting_app.get(f"/v1/ballots/{b}/timeline",
                                       params={"level": "branch", "unit": other}, headers=rep)
    assert response.status_code == 404
    own = await reporting_app.get(f"/v1/ballots/{b}/timeline",
                                  params={"level": "branch", "unit": branch}, headers=rep)
    assert own.status_code == 200, own.text


async def test_an_organiser_sees_their_groups_only(reporting_app, tokens, folded_ballot):
    b = folded_ballot.ballot_id
    organiser = tokens("organiser", groups=["G00"])
    groups = (await reporting_app.get(f"/v1/ballots/{b}/turnout", headers=organiser)).json()
    assert [r["unit"] for r in groups["items"]] == ["G00"]
    branches = (await reporting_app.get(f"/v1/ballots/{b}/turnout",
                                        params={"level": "branch"}, headers=organiser)).json()
    assert {r["group_code"] for r in branches["items"]} == {"G00"}


async def test_csv_export_has_the_same_rows(reporting_app, tokens, folded_ballot):
    b = folded_ballot.ballot_id
    national = tokens("national")
    rows = (await reporting_app.get(f"/v1/ballots/{b}/turnout", params={"level": "workplace"},
                                    headers=national)).json()["items"]
    response = await reporting_app.get(f"/v1/ballots/{b}/turnout.csv",
                                       params={"level": "workplace"}, headers=national)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/csv")
    assert (f'filename="turnout-{b}-workplace.csv"'
            in response.headers["content-disposition"])
    parsed = list(csv.DictReader(io.StringIO(response.text)))
    assert [r["unit"] for r in parsed] == [r["unit"] for r in rows]
    assert [int(r["voted"]) for r in parsed] == [r["voted"] for r in rows]


async def test_unknown_ballots_and_bad_levels(reporting_app, tokens, folded_ballot):
    national = tokens("national")
    unknown = await reporting_app.get(f"/v1/ballots/{uuid.uuid4()}/turnout", headers=national)
    assert unknown.status_code == 404
    assert unknown.headers["content-type"].startswith("application/problem+json")
    bad = await reporting_app.get(f"/v1/ballots/{folded_ballot.ballot_id}/turnout",
                                  params={"level": "region"}, headers=national)
    assert bad.status_code == 422 and "level" in bad.json()["detail"]
    anonymous = await reporting_app.get(f"/v1/ballots/{folded_ballot.ballot_id}/turnout")
    assert anonymous.status_code == 401


async def test_daily_buckets_are_london_days(reporting_app, tokens, topics, kafka_bootstrap):
    ballot_id = uuid.uuid4()
    events, members = roll(ballot_id)
    # Around the clocks going forward (01:00 GMT on 29 March 2026) and in summer time.
    times = [datetime(2026, 3, 28, 23, 30, tzinfo=UTC),  # 23:30 GMT, the 28th
             datetime(2026, 3, 29, 0, 30, tzinfo=UTC),   # 00:30 GMT, the 29th
             datetime(2026, 3, 29, 22, 59, tzinfo=UTC),  # 23:59 BST, the 29th
             datetime(2026, 3, 29, 23, 30, tzinfo=UTC),  # 00:30 BST, the 30th
             datetime(2026, 6, 10, 23, 30, tzinfo=UTC)]  # 00:30 BST, 11 June
    voters = [m for m, place in members.items() if place[1] == "B1"][:len(times)]
    await publish(kafka_bootstrap, topics,
                  events + [vote(ballot_id, m, at) for m, at in zip(voters, times, strict=True)])
    national = tokens("national")
    path = f"/v1/ballots/{ballot_id}/timeline"

    async def folded() -> bool:
        response = await reporting_app.get(path, headers=national)
        return response.status_code == 200 and (
            [b["cumulative"] for b in response.json()["buckets"]][-1:] == [len(times)])

    await eventually(folded, what="the votes to be folded", timeout=60)

    for params in ({}, {"level": "branch", "unit": "B1"}):
        days = await reporting_app.get(path, params={**params, "bucket": "day"},
                                       headers=national)
        assert days.status_code == 200, days.text
        body = days.json()
        assert (body["bucket"], body["time_zone"]) == ("day", "Europe/London")
        assert [(b["day"], b["votes"], b["cumulative"]) for b in body["buckets"]] == [
            ("2026-03-28", 1, 1), ("2026-03-29", 2, 3), ("2026-03-30", 1, 4),
            ("2026-06-11", 1, 5)]
        starts = [datetime.fromisoformat(b["start"]) for b in body["buckets"]]
        assert starts == [datetime(2026, 3, 28, tzinfo=LONDON),
                          datetime(2026, 3, 29, tzinfo=LONDON),
                          datetime(2026, 3, 30, tzinfo=LONDON),
                          datetime(2026, 6, 11, tzinfo=LONDON)]
        assert [s.utcoffset().total_seconds() for s in starts] == [0, 0, 3600, 3600]
        hours = (await reporting_app.get(path, params=params, headers=national)).json()
        assert hours["bucket"] == "hour"
        assert [datetime.fromisoformat(b["hour"]) for b in hours["buckets"]] == [
            at.replace(minute=0) for at in times]
    bad = await reporting_app.get(path, params={"bucket": "week"}, headers=national)
    assert bad.status_code == 422 and "bucket" in bad.text


async def test_ballots_are_listed_in_the_callers_scope(reporting_app, tokens, topics,
                                                      kafka_bootstrap):
    ballot_id = uuid.uuid4()
    events, members = roll(ballot_id)
    voters = [m for m, place in members.items() if place[1] == "B1"][:2]
    # A second ballot that has opened but has no enrolment folded yet.
    announced = uuid.uuid4()
    events += [vote(ballot_id, m) for m in voters] + [sample_envelope(
        BallotOpened, ballot_id=str(announced), ballot_name="Survey 2026",
        opens_at=(OPENS_AT + timedelta(days=1)).isoformat(),
        closes_at=(OPENS_AT + timedelta(days=30)).isoformat(), turnout_threshold=None,
        eligible_count=0)]
    await publish(kafka_bootstrap, topics, events)
    national = tokens("national")

    async def listed() -> list[dict]:
        items = (await reporting_app.get("/v1/ballots", headers=national)).json()["items"]
        ours = [b for b in items if b["ballot_id"] in (str(ballot_id), str(announced))]
        return ours if len(ours) == 2 and ours[1]["voted"] == 2 else []

    ours = await eventually(listed, what="both ballots to be listed", timeout=60)
    # The newest first; the national totals.
    assert [(b["ballot_id"], b["name"], b["threshold"], b["level"], b["eligible"],
             b["voted"]) for b in ours] == [
        (str(announced), "Survey 2026", None, "national", 0, 0),
        (str(ballot_id), "Stream test ballot", 0.5, "national", 12, 2)]

    def scoped(**claims):
        return reporting_app.get("/v1/ballots", headers=tokens(**claims))

    rep = (await scoped(role="rep", branches=["B1"])).json()["items"]
    assert [(b["ballot_id"], b["level"], b["eligible"], b["voted"]) for b in rep] == [
        (str(ballot_id), "branch", 6, 2)]
    organiser = (await scoped(role="organiser", groups=["G2"])).json()["items"]
    assert [(b["level"], b["eligible"], b["voted"]) for b in organiser] == [("group", 3, 0)]
    assert (await scoped(role="rep", branches=["B9"])).json()["items"] == []
    assert (await reporting_app.get("/v1/ballots")).status_code == 401
