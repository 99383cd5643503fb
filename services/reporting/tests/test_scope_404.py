"""A ballot out of the caller's scope is not found, exactly like an unknown ballot id, on
every per-ballot read (turnout, CSV, timeline, stream, a stream resumed with
Last-Event-ID): same status, same problem document apart from the id, and not its name,
so ballot ids cannot be probed. Callers in scope still read it; and a ballot can be read
exactly when `GET /v1/ballots` lists it."""

from __future__ import annotations

import csv
import io
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
from turnout_reporting.main import create_reporting_app

from services.reporting.tests.events import publish
from services.reporting.tests.test_stream import (
    OPENS_AT,
    WAIT_S,
    api_rows,
    by_unit,
    open_stream,
    served,
    vote,
)
from tests.support.events import eventually
from turnout_events.ballots import BallotOpened, MemberEnrolled
from turnout_events.envelope import Envelope
from turnout_events.samples import sample_envelope
from turnout_kit.auth import issue_token
from turnout_kit.settings import DEVELOPMENT_JWT_SECRET

pytestmark = pytest.mark.integration

# Only in the problem documents' comparison: the request's id, echoed in the body.
CORRELATION = {"X-Correlation-ID": "scope-404-test"}
B1_ONLY_NAME = "Scope test: B1 only"


def opened(ballot_id: uuid.UUID, name: str) -> Envelope:
    return sample_envelope(BallotOpened, ballot_id=str(ballot_id), ballot_name=name,
                           opens_at=OPENS_AT.isoformat(),
                           closes_at=(OPENS_AT + timedelta(days=21)).isoformat(),
                           turnout_threshold=0.5, eligible_count=0)


def enrolled(ballot_id: uuid.UUID, group: str, branch: str, workplace: str,
             count: int) -> list[Envelope]:
    return [sample_envelope(MemberEnrolled, ballot_id=str(ballot_id),
                            member_id=str(uuid.uuid4()),
                            placement={"group_code": group, "branch_code": branch,
                                       "workplace_code": workplace, "grade": None})
            for _ in range(count)]


def member_ids(enrolments: list[Envelope]) -> list[str]:
    return [e.data["member_id"] for e in enrolments]


@pytest.fixture
async def url(reporting_settings) -> AsyncIterator[str]:
    # A real server: a stream that is found never finishes, which httpx's ASGI
    # transport cannot hand back.
    async with served(create_reporting_app(reporting_settings)) as base:
        yield base


@pytest.fixture
async def ballots(url, tokens, topics, kafka_bootstrap) -> dict[str, Any]:
    """Three ballots, folded:
    - `b1_only`: 6 members, all in G1/B1 (W1 and W2), 2 of them (in W1) voted;
    - `elsewhere`: 2 members in G1/B2 and 2 in G2/B3, so that the rep of B2 and the
      organiser of G2 have a ballot of their own;
    - `announced`: ballot-opened with no enrolment yet."""
    b1_only, elsewhere, announced = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    w1 = enrolled(b1_only, "G1", "B1", "W1", 3)
    events = [opened(b1_only, B1_ONLY_NAME), *w1, *enrolled(b1_only, "G1", "B1", "W2", 3),
              opened(elsewhere, "Scope test: elsewhere"),
              *enrolled(elsewhere, "G1", "B2", "W3", 2),
              *enrolled(elsewhere, "G2", "B3", "W4", 2),
              opened(announced, "Scope test: announced"),
              *(vote(b1_only, m) for m in member_ids(w1)[:2])]
    await publish(kafka_bootstrap, topics, events)
    national = tokens("national")

    async def folded() -> bool:
        async with httpx.AsyncClient(base_url=url) as client:
            items = (await client.get("/v1/ballots", headers=national)).json()["items"]
        seen = {b["ballot_id"]: (b["name"], b["eligible"], b["voted"]) for b in items}
        return seen == {str(b1_only): (B1_ONLY_NAME, 6, 2),
                        str(elsewhere): ("Scope test: elsewhere", 4, 0),
                        str(announced): ("Scope test: announced", 0, 0)}

    await eventually(folded, what="the three ballots to be folded", timeout=WAIT_S)
    return {"b1_only": b1_only, "elsewhere": elsewhere, "announced": announced,
            "w1_members": member_ids(w1)}


# (path after /v1/ballots/{id}/, query parameters, extra headers): every per-ballot read.
READS = [
    ("turnout", {}, {}),
    ("turnout", {"level": "workplace"}, {}),
    ("turnout", {"level": "branch", "within": "G1"}, {}),
    ("turnout.csv", {}, {}),
    ("turnout.csv", {"level": "workplace"}, {}),
    # No unit: the ballot is looked up before the parameters that depend on it.
    ("timeline", {}, {}),
    ("timeline", {"level": "branch", "unit": "B1"}, {}),
    ("timeline", {"level": "workplace", "unit": "W1", "bucket": "day"}, {}),
    ("stream", {}, {}),
    ("stream", {}, {"Last-Event-ID": "1"}),
    ("stream", {"last_event_id": "1"}, {}),
]


async def read(url: str, ballot_id: uuid.UUID, path: str, params: dict, headers: dict
               ) -> httpx.Response:
    # A found stream would not end: the body is read only when it is not one.
    async with httpx.AsyncClient(base_url=url, timeout=httpx.Timeout(10)) as client, \
            client.stream("GET", f"/v1/ballots/{ballot_id}/{path}", params=params,
                          headers={**CORRELATION, **headers}) as response:
        if response.status_code != 200:
            await response.aread()
        return response


async def assert_not_found_like_an_unknown_ballot(url: str, ballot_id: uuid.UUID,
                                                  headers: dict) -> None:
    for path, params, extra in READS:
        unknown_id = uuid.uuid4()
        hidden = await read(url, ballot_id, path, params, {**headers, **extra})
        unknown = await read(url, unknown_id, path, params, {**headers, **extra})
        what = f"{path} {params} {extra}"
        assert unknown.status_code == 404, what
        assert hidden.status_code == 404, what
        assert hidden.headers["content-type"] == unknown.headers["content-type"], what
        assert hidden.headers["content-type"].startswith("application/problem+json"), what
        assert (hidden.text.replace(str(ballot_id), "{id}")
                == unknown.text.replace(str(unknown_id), "{id}")), what
        assert str(ballot_id) in hidden.json()["detail"], what
        assert "Scope test" not in hidden.text, what


async def test_an_out_of_scope_ballot_is_not_found_exactly_like_an_unknown_one(
        url, tokens, ballots):
    b1_only = ballots["b1_only"]
    # The rep of B2 (in the same group as B1) and the organiser of G2 each have a ballot
    # of their own, but no member in this one.
    for caller in (tokens("rep", branches=["B2"]), tokens("rep", branches=["B2", "B3"]),
                   tokens("organiser", groups=["G2"])):
        await assert_not_found_like_an_unknown_ballot(url, b1_only, caller)
    # The token as the query parameter EventSource uses, on a resumed stream.
    token = issue_token(DEVELOPMENT_JWT_SECRET, "rep", "screen-b2", branches=["B2"])
    unknown_id = uuid.uuid4()
    hidden = await read(url, b1_only, "stream", {"access_token": token}, {"Last-Event-ID": "1"})
    unknown = await read(url, unknown_id, "stream", {"access_token": token},
                         {"Last-Event-ID": "1"})
    assert hidden.status_code == unknown.status_code == 404
    assert (hidden.text.replace(str(b1_only), "{id}")
            == unknown.text.replace(str(unknown_id), "{id}"))
    # A ballot announced with nobody enrolled yet concerns no rep or organiser so far.
    await assert_not_found_like_an_unknown_ballot(url, ballots["announced"],
                                                  tokens("rep", branches=["B1"]))


async def test_callers_in_scope_still_read_the_ballot(url, tokens, ballots, topics,
                                                     kafka_bootstrap):
    b1_only = ballots["b1_only"]
    callers = {
        "rep": (tokens("rep", branches=["B1"]), ("branch", "B1"), {"level": "branch",
                                                                   "unit": "B1"}),
        "organiser": (tokens("organiser", groups=["G1"]), ("group", "G1"),
                      {"level": "group", "unit": "G1"}),
        "national": (tokens("national"), ("national", "national"), {}),
    }
    async with httpx.AsyncClient(base_url=url) as client:
        for role, (headers, (level, unit), timeline_params) in callers.items():
            page = await client.get(f"/v1/ballots/{b1_only}/turnout", headers=headers)
            assert page.status_code == 200, (role, page.text)
            body = page.json()
            assert body["ballot_name"] == B1_ONLY_NAME
            assert [(r["level"], r["unit"], r["eligible"], r["voted"], r["votes_needed"])
                    for r in body["items"]] == [(level, unit, 6, 2, 1)], role

            exported = await client.get(f"/v1/ballots/{b1_only}/turnout.csv",
                                        params={"level": "workplace"}, headers=headers)
            assert exported.status_code == 200, (role, exported.text)
            rows = {r["unit"]: (int(r["eligible"]), int(r["voted"]))
                    for r in csv.DictReader(io.StringIO(exported.text))}
            assert rows == {"W1": (3, 2), "W2": (3, 0)}, role

            timeline = await client.get(f"/v1/ballots/{b1_only}/timeline",
                                        params=timeline_params, headers=headers)
            assert timeline.status_code == 200, (role, timeline.text)
            shown = timeline.json()
            assert (shown["eligible"], shown["threshold_votes"]) == (6, 3), role
            assert [b["cumulative"] for b in shown["buckets"]] == [2], role

    # The stream, with a snapshot of exactly the rows the turnout API shows the caller.
    for role, (headers, _, _) in callers.items():
        async with open_stream(url, b1_only, headers=headers) as stream:
            snapshot = await stream.next()
        assert snapshot["event"] == "snapshot", role
        assert snapshot["data"]["ballot"]["name"] == B1_ONLY_NAME
        assert by_unit(snapshot["data"]["rows"]) == await api_rows(url, headers, b1_only), role

    # A rep's stream resumed with Last-Event-ID gets the next vote in their branch.
    rep = callers["rep"][0]
    third = ballots["w1_members"][2]
    async with open_stream(url, b1_only, headers={**rep, "Last-Event-ID": snapshot["id"]}
                           ) as stream:
        await publish(kafka_bootstrap, topics, [vote(b1_only, third)])
        events = await stream.until(lambda e: e["event"] == "turnout" and any(
            r["unit"] == "B1" and r["voted"] == 3 for r in e["data"]["rows"]))
    assert all(e["event"] == "turnout" for e in events)  # resumed: no snapshot first
    assert {r["group_code"] for e in events for r in e["data"]["rows"]} == {"G1"}
    assert {r["unit"] for e in events for r in e["data"]["rows"]} <= {"B1", "W1", "W2"}


async def test_a_ballot_can_be_read_exactly_when_it_is_listed(url, tokens, ballots):
    ours = {ballots[name]: name for name in ("b1_only", "elsewhere", "announced")}
    expected = {
        ("national",): {"b1_only", "elsewhere", "announced"},
        ("admin",): {"b1_only", "elsewhere", "announced"},
        ("service",): {"b1_only", "elsewhere", "announced"},
        ("rep", "B1"): {"b1_only"},
        ("rep", "B2"): {"elsewhere"},
        ("rep", "B1", "B3"): {"b1_only", "elsewhere"},
        ("rep", "B9"): set(),
        ("organiser", "G1"): {"b1_only", "elsewhere"},
        ("organiser", "G2"): {"elsewhere"},
        ("organiser", "G9"): set(),
    }
    async with httpx.AsyncClient(base_url=url) as client:
        for (role, *codes), visible in expected.items():
            headers = tokens(role, branches=codes if role == "rep" else (),
                             groups=codes if role == "organiser" else ())
            items = (await client.get("/v1/ballots", headers=headers)).json()["items"]
            listed = {ours[uuid.UUID(b["ballot_id"])] for b in items
                      if uuid.UUID(b["ballot_id"]) in ours}
            readable = set()
            for ballot_id, name in ours.items():
                response = await client.get(f"/v1/ballots/{ballot_id}/turnout",
                                            headers=headers)
                assert response.status_code in (200, 404), response.text
                if response.status_code == 200:
                    readable.add(name)
            assert listed == readable == visible, (role, codes, listed, readable)
