"""The live stream, over real HTTP from a running server: a vote folded from Kafka reaches
every connected client once, in the shape of the turnout API's rows; a client that
reconnects with Last-Event-ID gets exactly what it missed; scope is applied to every
row; an id older than the feed keeps gets a snapshot; one LISTEN connection serves every
client and survives losing it; the token may come as a query parameter and is never
logged."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import uvicorn
from turnout_reporting.main import create_reporting_app

from services.reporting.tests.events import publish
from tests.support.events import eventually
from turnout_events.ballots import BallotOpened, MemberEnrolled, Voted
from turnout_events.database_url import asyncpg_dsn
from turnout_events.envelope import Envelope
from turnout_events.samples import sample_envelope
from turnout_kit.auth import issue_token
from turnout_kit.settings import DEVELOPMENT_JWT_SECRET

pytestmark = pytest.mark.integration

LEVELS = ("national", "group", "branch", "workplace")
OPENS_AT = datetime(2026, 6, 1, 8, 0, tzinfo=UTC)
WAIT_S = 30.0


# -- a real server -----------------------------------------------------------------------
# httpx's ASGI transport hands back a response only once the app has finished it, which
# a stream never does: the stream is tested through uvicorn on a port of its own.

@contextlib.asynccontextmanager
async def served(app) -> AsyncIterator[str]:
    """Run `app` (lifespan included) under uvicorn on a free loopback port; its URL."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None,
                            access_log=False, lifespan="on", timeout_graceful_shutdown=5)
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        await eventually(lambda: server.started or task.done(), what="uvicorn to start",
                         timeout=60)
        if task.done():
            task.result()  # raises why it did not start
            raise AssertionError("uvicorn stopped before it started serving")
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, timeout=30)


@pytest.fixture
async def service(reporting_settings) -> AsyncIterator[tuple[str, Any]]:
    app = create_reporting_app(reporting_settings)
    async with served(app) as url:
        yield url, app


# -- reading server-sent events ---------------------------------------------------------

class EventStream:
    """The events of one open stream, parsed as EventSource parses them."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self._lines = response.aiter_lines()
        self.comments = 0

    async def next(self, timeout: float = WAIT_S) -> dict[str, Any]:
        fields: dict[str, Any] = {}
        data: list[str] = []
        async with asyncio.timeout(timeout):
            async for line in self._lines:
                if line == "":
                    if data or fields:
                        fields["data"] = json.loads("\n".join(data)) if data else None
                        return fields
                    continue
                if line.startswith(":"):
                    self.comments += 1
                    continue
                name, _, value = line.partition(":")
                value = value[1:] if value.startswith(" ") else value
                if name == "data":
                    data.append(value)
                else:
                    fields[name] = value
        raise EOFError("the stream ended")

    async def until(self, predicate, *, timeout: float = WAIT_S) -> list[dict[str, Any]]:
        """Events up to and including the first one `predicate` accepts."""
        seen = []
        async with asyncio.timeout(timeout):
            while True:
                event = await self.next(timeout)
                seen.append(event)
                if predicate(event):
                    return seen


@contextlib.asynccontextmanager
async def open_stream(url: str, ballot_id, *, headers: dict | None = None,
                      params: dict | None = None) -> AsyncIterator[EventStream]:
    async with httpx.AsyncClient(base_url=url, timeout=httpx.Timeout(10, read=None)) as client, \
            client.stream("GET", f"/v1/ballots/{ballot_id}/stream", headers=headers or {},
                          params=params or {}) as response:
        assert response.status_code == 200, await response.aread()
        assert response.headers["content-type"].startswith("text/event-stream")
        yield EventStream(response)


# -- a small roll, and votes ---------------------------------------------------------------

PLACES = {"G1": {"B1": ["W1", "W2"], "B2": ["W3"]}, "G2": {"B3": ["W4"]}}


def roll(ballot_id: uuid.UUID, per_workplace: int = 3) -> tuple[list[Envelope], dict]:
    """A ballot's opening and its enrolments: `per_workplace` members in each workplace
    of PLACES. Returns the events and {member_id: (group, branch, workplace)}."""
    members = {}
    events = [sample_envelope(BallotOpened, ballot_id=str(ballot_id),
                              ballot_name="Stream test ballot", opens_at=OPENS_AT.isoformat(),
                              closes_at=(OPENS_AT + timedelta(days=21)).isoformat(),
                              turnout_threshold=0.5, eligible_count=0)]
    for group, branches in PLACES.items():
        for branch, workplaces in branches.items():
            for workplace in workplaces:
                for _ in range(per_workplace):
                    member_id = uuid.uuid4()
                    members[member_id] = (group, branch, workplace)
                    events.append(sample_envelope(
                        MemberEnrolled, ballot_id=str(ballot_id), member_id=str(member_id),
                        placement={"group_code": group, "branch_code": branch,
                                   "workplace_code": workplace, "grade": None}))
    return events, members


def vote(ballot_id, member_id, at: datetime = OPENS_AT + timedelta(hours=5)) -> Envelope:
    return sample_envelope(Voted, ballot_id=str(ballot_id), member_id=str(member_id),
                           vote_source="rep", voted_at=at.isoformat(), conversation_id=None)


def in_branch(members: dict, branch: str) -> list[uuid.UUID]:
    return [m for m, (_, b, _) in members.items() if b == branch]


async def api_rows(url, headers, ballot_id) -> dict[tuple[str, str], dict]:
    """Every row the turnout API shows this caller, by (level, unit)."""
    rows = {}
    async with httpx.AsyncClient(base_url=url) as client:
        for level in LEVELS:
            response = await client.get(f"/v1/ballots/{ballot_id}/turnout",
                                        params={"level": level}, headers=headers)
            assert response.status_code == 200, response.text
            rows.update({(r["level"], r["unit"]): r for r in response.json()["items"]})
    return rows


async def national_row(url, headers, ballot_id) -> dict | None:
    async with httpx.AsyncClient(base_url=url) as client:
        response = await client.get(f"/v1/ballots/{ballot_id}/turnout",
                                    params={"level": "national"}, headers=headers)
    if response.status_code != 200 or not response.json()["items"]:
        return None
    return response.json()["items"][0]


async def seeded(url, tokens, kafka_bootstrap, topics) -> tuple[uuid.UUID, dict]:
    """A ballot with its roll folded (eligible 12, nobody voted)."""
    ballot_id = uuid.uuid4()
    events, members = roll(ballot_id)
    await publish(kafka_bootstrap, topics, events)
    national = tokens("national")

    async def folded() -> bool:
        row = await national_row(url, national, ballot_id)
        return bool(row and row["eligible"] == len(members) and row["threshold"] == 0.5)

    await eventually(folded, what="the roll to be folded", timeout=WAIT_S)
    return ballot_id, members


async def voted_to(url, tokens, ballot_id, count: int) -> None:
    national = tokens("national")

    async def done() -> bool:
        row = await national_row(url, national, ballot_id)
        return bool(row and row["voted"] == count)

    await eventually(done, what=f"{count} votes to be folded", timeout=WAIT_S)


def by_unit(rows) -> dict[tuple[str, str], dict]:
    return {(r["level"], r["unit"]): r for r in rows}


async def feed_seqs(database_url, ballot_id, after: int) -> list[int]:
    conn = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        return [r["seq"] for r in await conn.fetch(
            "SELECT seq FROM turnout_changes WHERE ballot_id = $1 AND seq > $2 ORDER BY seq",
            ballot_id, after)]
    finally:
        await conn.close()


async def listeners(database_url) -> list[int]:
    """Backends of the stream's LISTEN connection(s) on the test's database."""
    conn = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        return [r["pid"] for r in await conn.fetch(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
            "AND application_name = 'reporting-stream'")]
    finally:
        await conn.close()


# -- the tests -------------------------------------------------------------------------------

async def test_a_vote_reaches_every_client_once_as_turnout_rows(service, tokens, topics,
                                                                kafka_bootstrap, database_url):
    url, _ = service
    ballot_id, members = await seeded(url, tokens, kafka_bootstrap, topics)
    national = tokens("national")
    token = national["Authorization"].removeprefix("Bearer ")
    async with open_stream(url, ballot_id, headers=national) as first, \
            open_stream(url, ballot_id, params={"access_token": token}) as second:
        snapshots = [await first.next(), await second.next()]
        expected = await api_rows(url, national, ballot_id)
        for snap in snapshots:
            assert snap["event"] == "snapshot"
            assert snap["data"]["ballot"]["threshold"] == 0.5
            assert by_unit(snap["data"]["rows"]) == expected
            assert snap["id"] == str(snap["data"]["seq"])
        # Two clients, one LISTEN connection.
        assert len(await listeners(database_url)) == 1

        voter = in_branch(members, "B2")[0]
        await publish(kafka_bootstrap, topics, [vote(ballot_id, voter)])
        for stream in (first, second):
            events = await stream.until(lambda e: e["event"] == "turnout" and any(
                r["level"] == "national" and r["voted"] == 1 for r in e["data"]["rows"]))
            assert all(e["event"] == "turnout" for e in events)
            assert int(events[-1]["id"]) > int(snapshots[0]["id"])
            changed = by_unit(events[-1]["data"]["rows"])
            # The member's units, and only those, each as the turnout API shows it.
            assert set(changed) == {("national", "national"), ("group", "G1"),
                                    ("branch", "B2"), ("workplace", "W3")}
            now = await api_rows(url, national, ballot_id)
            assert changed == {unit: now[unit] for unit in changed}
            assert changed[("branch", "B2")]["voted"] == 1
            assert changed[("branch", "B2")]["eligible"] == 3
            assert changed[("branch", "B2")]["votes_needed"] == 1  # ceil(0.5 x 3) - 1
            assert changed[("national", "national")]["turnout"] == pytest.approx(1 / 12)
            hours = {(h["level"], h["unit"]): h for h in events[-1]["data"]["hours"]}
            assert hours[("national", "national")]["votes"] == 1
            assert datetime.fromisoformat(hours[("branch", "B2")]["hour"]) == (
                OPENS_AT + timedelta(hours=5))
    # The last client gone, the listener is closed too.

    async def closed() -> bool:
        return not await listeners(database_url)

    await eventually(closed, what="the listener to close", timeout=10)


async def test_resuming_with_last_event_id_delivers_exactly_what_was_missed(
        service, tokens, topics, kafka_bootstrap, database_url):
    url, _ = service
    ballot_id, members = await seeded(url, tokens, kafka_bootstrap, topics)
    national = tokens("national")
    async with open_stream(url, ballot_id, headers=national) as stream:
        seen = int((await stream.next())["id"])

    # While nobody is connected, three votes, each folded in a batch of its own.
    voters = in_branch(members, "B1")[:3]
    for n, voter in enumerate(voters, start=1):
        await publish(kafka_bootstrap, topics, [vote(ballot_id, voter)])
        await voted_to(url, tokens, ballot_id, n)
    assert len(await feed_seqs(database_url, ballot_id, seen)) == 3

    # Resuming with the header (EventSource's way), then with the query parameter.
    ways = ({"headers": {**national, "Last-Event-ID": str(seen)}},
            {"headers": national, "params": {"last_event_id": seen}})
    for round_, how in enumerate(ways):
        missed = await feed_seqs(database_url, ballot_id, seen)
        async with open_stream(url, ballot_id, **how) as stream:
            events = [await stream.next() for _ in missed]
            assert [e["event"] for e in events] == ["turnout"] * len(missed)
            assert [int(e["id"]) for e in events] == missed
            # Replayed in order: national voted climbs one by one through the replay.
            national_counts = [r["voted"] for e in events for r in e["data"]["rows"]
                               if r["level"] == "national"]
            assert national_counts == list(range(1, len(missed) + 1))
            # And then live: the next vote comes straight after, nothing in between.
            await publish(kafka_bootstrap, topics,
                          [vote(ballot_id, in_branch(members, "B3")[round_])])
            live = await stream.next()
            assert live["event"] == "turnout" and int(live["id"]) > missed[-1]
            assert [r["voted"] for r in live["data"]["rows"] if r["level"] == "national"] == [
                len(missed) + 1]
        await voted_to(url, tokens, ballot_id, len(missed) + 1)


async def test_a_rep_receives_only_rows_of_their_branches(service, tokens, topics,
                                                         kafka_bootstrap):
    url, _ = service
    ballot_id, members = await seeded(url, tokens, kafka_bootstrap, topics)
    rep = tokens("rep", branches=["B1"])
    organiser = tokens("organiser", groups=["G2"])
    async with open_stream(url, ballot_id, headers=rep) as reps, \
            open_stream(url, ballot_id, headers=organiser) as organisers, \
            open_stream(url, ballot_id, headers=tokens("national")) as nationals:
        snapshot = (await reps.next())["data"]
        assert set(by_unit(snapshot["rows"])) == {("branch", "B1"), ("workplace", "W1"),
                                                  ("workplace", "W2")}
        assert set(by_unit((await organisers.next())["data"]["rows"])) == {
            ("group", "G2"), ("branch", "B3"), ("workplace", "W4")}
        await nationals.next()

        # A vote in B3 (G2) first, then one in B1.
        await publish(kafka_bootstrap, topics, [vote(ballot_id, in_branch(members, "B3")[0])])
        await voted_to(url, tokens, ballot_id, 1)
        await publish(kafka_bootstrap, topics, [vote(ballot_id, in_branch(members, "B1")[0])])

        # The rep's first event after the snapshot is their own branch's vote: B3's
        # batch had nothing of theirs, so it was not sent to them at all.
        event = (await reps.next())["data"]
        assert set(by_unit(event["rows"])) == {("branch", "B1"), ("workplace", "W1")}
        assert {(h["level"], h["unit"]) for h in event["hours"]} == {
            ("branch", "B1"), ("workplace", "W1")}
        assert by_unit(event["rows"])[("branch", "B1")]["voted"] == 1

        event = (await organisers.next())["data"]
        assert set(by_unit(event["rows"])) == {("group", "G2"), ("branch", "B3"),
                                               ("workplace", "W4")}
        # The national screen saw both.
        seen = await nationals.until(lambda e: any(
            r["level"] == "national" and r["voted"] == 2 for r in e["data"]["rows"]))
        branches = {r["unit"] for e in seen for r in e["data"]["rows"] if r["level"] == "branch"}
        assert branches == {"B1", "B3"}


async def test_an_id_older_than_the_feed_keeps_gets_a_snapshot(service, tokens, topics,
                                                              kafka_bootstrap, database_url):
    url, _ = service
    ballot_id, members = await seeded(url, tokens, kafka_bootstrap, topics)
    national = tokens("national")
    async with open_stream(url, ballot_id, headers=national) as stream:
        old = int((await stream.next())["id"])
    for n, voter in enumerate(in_branch(members, "B1")[:2], start=1):
        await publish(kafka_bootstrap, topics, [vote(ballot_id, voter)])
        await voted_to(url, tokens, ballot_id, n)
    newest = (await feed_seqs(database_url, ballot_id, old))[-1]
    # What the fold's pruning leaves once the feed has moved on: only the latest rows.
    conn = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        await conn.execute("DELETE FROM turnout_changes WHERE seq < $1", newest)
    finally:
        await conn.close()

    for last_event_id in (str(old), "not-a-number"):
        async with open_stream(url, ballot_id,
                               headers={**national, "Last-Event-ID": last_event_id}) as stream:
            first = await stream.next()
            assert first["event"] == "snapshot"
            assert int(first["id"]) == newest
            assert by_unit(first["data"]["rows"]) == await api_rows(url, national, ballot_id)
            assert by_unit(first["data"]["rows"])[("national", "national")]["voted"] == 2


async def test_one_listener_reconnects_after_losing_its_connection(service, tokens, topics,
                                                                  kafka_bootstrap,
                                                                  database_url):
    url, app = service
    ballot_id, members = await seeded(url, tokens, kafka_bootstrap, topics)
    async with open_stream(url, ballot_id, headers=tokens("national")) as stream:
        await stream.next()
        [pid] = await listeners(database_url)
        conn = await asyncpg.connect(asyncpg_dsn(database_url))
        try:
            assert await conn.fetchval("SELECT pg_terminate_backend($1)", pid)
        finally:
            await conn.close()
        # A vote while the listener may be away: delivered once it is back.
        await publish(kafka_bootstrap, topics, [vote(ballot_id, in_branch(members, "B2")[0])])
        events = await stream.until(lambda e: any(
            r["level"] == "national" and r["voted"] == 1 for r in e["data"]["rows"]))
        assert events[-1]["event"] == "turnout"
        [again] = await listeners(database_url)
        assert again != pid


async def test_the_stream_needs_a_token_and_never_logs_it(service, tokens, topics,
                                                         kafka_bootstrap, _log_file):
    url, _ = service
    ballot_id, _members = await seeded(url, tokens, kafka_bootstrap, topics)
    token = issue_token(DEVELOPMENT_JWT_SECRET, "national", "screen-1")
    path = f"/v1/ballots/{ballot_id}/stream"
    async with httpx.AsyncClient(base_url=url) as client:
        missing = await client.get(path)
        assert missing.status_code == 401
        assert "access_token" in missing.json()["detail"]
        forged = await client.get(path, params={"access_token": token[:-4] + "AAAA"})
        assert forged.status_code == 401
        unknown = await client.get(f"/v1/ballots/{uuid.uuid4()}/stream",
                                   params={"access_token": token})
        assert unknown.status_code == 404
        past_bigint = await client.get(path, params={"access_token": token,
                                                     "last_event_id": str(2**63)})
        assert past_bigint.status_code == 422, past_bigint.text  # not a 500 from the database
    async with open_stream(url, ballot_id, params={"access_token": token}) as stream:
        assert (await stream.next())["event"] == "snapshot"
        assert stream.response.headers["cache-control"] == "no-store"
    _log_file.flush()
    lines = await asyncio.to_thread(Path(_log_file.name).read_text)
    assert path in lines  # the requests were logged...
    assert token not in lines and token[:-4] not in lines  # ...without the token


async def test_the_stream_ends_when_its_token_expires(service, tokens, topics,
                                                     kafka_bootstrap):
    url, _ = service
    ballot_id, _members = await seeded(url, tokens, kafka_bootstrap, topics)
    token = issue_token(DEVELOPMENT_JWT_SECRET, "national", "screen-2",
                        ttl=timedelta(seconds=3))
    async with open_stream(url, ballot_id, params={"access_token": token}) as stream:
        assert (await stream.next())["event"] == "snapshot"
        with pytest.raises(EOFError):
            await stream.next(timeout=15)
    async with httpx.AsyncClient(base_url=url) as client:
        again = await client.get(f"/v1/ballots/{ballot_id}/stream",
                                 params={"access_token": token})
    assert again.status_code == 401


@pytest.mark.unit
async def test_a_client_too_far_behind_is_sent_a_snapshot_instead():
    from turnout_reporting.service.stream import RESYNC, FeedEntry, Subscription

    subscription = Subscription(uuid.uuid4(), limit=3)
    entries = [FeedEntry(seq, subscription.ballot_id, {"rows": [], "hours": []})
               for seq in range(1, 6)]
    subscription.offer(entries[0])
    assert await subscription.get() is entries[0]
    for entry in entries[1:4]:  # three waiting: as many as it may
        subscription.offer(entry)
    subscription.offer(entries[4])  # a fourth: it has fallen too far behind
    assert await subscription.get() is RESYNC
    assert subscription._queue.empty()  # what it had not read was dropped
    subscription.offer(entries[4])
    assert await subscription.get() is entries[4]
