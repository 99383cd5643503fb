"""Reading turnout: rows per level in the caller's scope, sorted by votes still needed,
as CSV, and a unit's timeline; unknown ballots and out-of-scope units are not found."""

from __future__ import annotations

import asyncio
import csv
import io
import time
import uuid

import pytest
from turnout_reporting.synthetic import generate_ballot

from services.reporting.tests.events import as_envelope, publish

pytestmark = pytest.mark.integration


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
