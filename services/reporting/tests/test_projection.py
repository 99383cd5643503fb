"""The projection on the real broker and database: a generated ballot's events, shuffled
across topics and members, with duplicates, retractions and moves, fold to exactly the
generator's ground truth; a restart mid-stream neither loses nor double-counts; invalid
events go to the dead-letter topic and the rest still counts."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from datetime import datetime

import pytest
from turnout_reporting.main import create_reporting_app
from turnout_reporting.synthetic import generate_ballot

from services.reporting.tests.events import as_envelope, publish, publish_raw, shuffled
from tests.support.kafka import read_until
from tests.support.services import running

pytestmark = pytest.mark.integration

LEVELS = ("national", "group", "branch", "workplace")


def key_of(ballot_id, row) -> tuple:
    """The unit key of an API row, as the generator keys its truth."""
    level = row["level"]
    if level == "national":
        return (ballot_id, level, "", "", "")
    if level == "group":
        return (ballot_id, level, row["unit"], "", "")
    if level == "branch":
        return (ballot_id, level, row["group_code"], row["unit"], "")
    return (ballot_id, level, row["group_code"], row["parent"], row["unit"])


COLUMNS = ("eligible", "voted", "contactable", "sms_consent", "contacted", "hard_to_reach",
           "reminders_sent", "replacements_requested")


async def numbers(client, headers, ballot_id) -> dict:
    """Every unit's counts as the API reports them (what a national organiser sees)."""
    found = {}
    for level in LEVELS:
        response = await client.get(f"/v1/ballots/{ballot_id}/turnout",
                                    params={"level": level}, headers=headers)
        if response.status_code == 404:
            return {}
        assert response.status_code == 200, response.text
        for row in response.json()["items"]:
            found[key_of(ballot_id, row)] = [row[c] for c in COLUMNS]
    return found


async def until_equal(client, headers, ballot, *, timeout: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        seen = await numbers(client, headers, ballot.ballot_id)
        if seen == ballot.truth:
            return seen
        if time.monotonic() > deadline:
            missing = {k: v for k, v in ballot.truth.items() if seen.get(k) != v}
            raise AssertionError(f"projection differs from the truth in {len(missing)} of "
                                 f"{len(ballot.truth)} units, e.g. "
                                 f"{list(missing.items())[:3]} vs "
                                 f"{[seen.get(k) for k in list(missing)[:3]]}")
        await asyncio.sleep(0.2)  # polling interval while waiting with a deadline


@pytest.fixture(scope="module")
def ballot():
    generated = generate_ballot(members=300, seed=21)
    generated.envelopes = [as_envelope(e) for e in generated.events]
    return generated


async def test_a_shuffled_ballot_folds_to_the_ground_truth(reporting_app, tokens, topics,
                                                           kafka_bootstrap, ballot):
    await publish(kafka_bootstrap, topics, shuffled(ballot.envelopes))
    national = tokens("national")
    await until_equal(reporting_app, national, ballot)

    # The headline a campaign team reads: turnout and votes needed against the threshold.
    response = await reporting_app.get(f"/v1/ballots/{ballot.ballot_id}/turnout",
                                       headers=national)
    (row,) = response.json()["items"]
    eligible, voted = ballot.truth[(ballot.ballot_id, "national", "", "", "")][:2]
    assert row["turnout"] == pytest.approx(voted / eligible)
    assert row["threshold"] == 0.5
    assert row["votes_needed"] == max(0, -(-eligible // 2) - voted)

    # Turnout over time: the hourly buckets add up to the votes standing.
    timeline = (await reporting_app.get(f"/v1/ballots/{ballot.ballot_id}/timeline",
                                        params={"level": "national"},
                                        headers=national)).json()
    truth_hours = {hour: n for (unit, hour), n in ballot.hourly_truth.items()
                   if unit[1] == "national" and n}
    assert {datetime.fromisoformat(b["hour"]): b["votes"]
            for b in timeline["buckets"]} == truth_hours
    assert timeline["buckets"][-1]["cumulative"] == voted
    assert timeline["threshold_votes"] == -(-eligible // 2)

    # Folding again from the start (the same events published twice more) changes nothing.
    await publish(kafka_bootstrap, topics, shuffled(ballot.envelopes, seed=9))
    ctx = reporting_app.app.state.ctx
    total = 2 * len(ballot.envelopes)
    deadline = time.monotonic() + 60
    while ctx.consumer.folded < total:
        assert time.monotonic() < deadline, f"folded {ctx.consumer.folded} of {total}"
        await asyncio.sleep(0.1)  # polling interval while waiting with a deadline
    assert await numbers(reporting_app, national, ballot.ballot_id) == ballot.truth


async def test_a_restart_mid_stream_neither_loses_nor_double_counts(
        reporting_settings, tokens, topics, kafka_bootstrap, ballot):
    await publish(kafka_bootstrap, topics, shuffled(ballot.envelopes, seed=3))
    total = len(ballot.envelopes)
    settings = reporting_settings.model_copy(update={"fold_batch_size": 40})
    first = create_reporting_app(settings)
    async with running(first, "http://reporting"):
        consumer = first.state.ctx.consumer
        deadline = time.monotonic() + 60
        while consumer.folded < total // 3:
            assert time.monotonic() < deadline, "the first instance folded nothing"
            await asyncio.sleep(0.01)  # polling interval while waiting with a deadline
        stopped_at = consumer.folded
    assert stopped_at < total, "the first instance finished before it was stopped"

    second = create_reporting_app(settings)
    async with running(second, "http://reporting") as client:
        await until_equal(client, tokens("national"), ballot)
        # The second instance folded only what the first had not committed.
        assert second.state.ctx.consumer.folded <= total - stopped_at


async def test_invalid_events_are_dead_lettered_and_the_rest_still_counts(
        reporting_app, tokens, topics, kafka_bootstrap, ballot):
    contacts_topic = topics.events("contacts")
    await publish_raw(kafka_bootstrap, contacts_topic, b"{not json", b"k1")
    broken = ballot.events[1] | {"data": {**ballot.events[1]["data"], "member_version": -4}}
    await publish_raw(kafka_bootstrap, contacts_topic, json.dumps(broken).encode(),
                      broken["key"].encode())
    # Valid by the contract, but more than reporting's tables hold: folded, they would
    # fail every batch that held them, and the fold would stand still.
    too_new = ballot.events[1] | {"id": str(uuid.uuid4()),
                                  "data": {**ballot.events[1]["data"], "member_version": 2**31}}
    await publish_raw(kafka_bootstrap, contacts_topic, json.dumps(too_new).encode(),
                      too_new["key"].encode())
    opened = next(e for e in ballot.events if e["type"] == "ballots.ballot-opened")
    other = str(uuid.uuid4())
    nul_name = opened | {"id": str(uuid.uuid4()), "key": other, "data": {
        **opened["data"], "ballot_id": other, "ballot_name": "Pay\x00ballot"}}
    await publish_raw(kafka_bootstrap, topics.events("ballots"), json.dumps(nul_name).encode(),
                      other.encode())
    vote = next(e for e in ballot.events if e["type"] == "ballots.voted")
    year_zero = vote | {"id": str(uuid.uuid4()), "data": {
        **vote["data"], "voted_at": "0001-01-01T00:30:00+01:00"}}  # in UTC, year 0
    await publish_raw(kafka_bootstrap, topics.events("ballots"),
                      json.dumps(year_zero).encode(), vote["key"].encode())
    # A valid vote of a member who never votes, on a record keyed by another member
    # (and on one with no key): the fold looks a member's state up by the record's key,
    # so either one folded would count a vote the ground truth does not have.
    voters = {e["data"]["member_id"] for e in ballot.events if e["type"] == "ballots.voted"}
    abstainer = next(e["data"]["member_id"] for e in ballot.events
                     if e["type"] == "ballots.member-enrolled"
                     and e["data"]["member_id"] not in voters)
    stray = vote | {"id": str(uuid.uuid4()), "key": abstainer,
                    "data": {**vote["data"], "member_id": abstainer}}
    await publish_raw(kafka_bootstrap, topics.events("ballots"), json.dumps(stray).encode(),
                      vote["key"].encode())
    await publish_raw(kafka_bootstrap, topics.events("ballots"),
                      json.dumps(stray | {"id": str(uuid.uuid4())}).encode(), None)
    await publish(kafka_bootstrap, topics, shuffled(ballot.envelopes, seed=4))
    await until_equal(reporting_app, tokens("national"), ballot)
    dead = await read_until(kafka_bootstrap, [topics.dead_letter], count=7, timeout=30)
    assert len(dead) == 7
    reasons = [dict(r.headers) for r in dead]
    assert {h["dead-letter-topic"] for h in reasons} == {contacts_topic.encode(),
                                                        topics.events("ballots").encode()}
    assert all(h["dead-letter-reason"] == b"invalid" for h in reasons)
    errors = [h["dead-letter-error"] for h in reasons]
    assert sum(b"member_version" in e for e in errors) == 2
    assert sum(b"reporting can" in e for e in errors) == 3  # can store / cannot store
    assert any(b"data.ballot_name: holds a NUL" in e for e in errors)
    assert any(b"data.voted_at: cannot be written in UTC" in e for e in errors)
    assert sum(b"the record's key is not the event's key" in e for e in errors) == 2
