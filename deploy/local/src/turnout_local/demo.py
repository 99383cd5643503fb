"""The demo `make up` runs: a synthetic union loaded through the services' public APIs, a
statutory ballot opened over it, an SMS reminder campaign on the sandbox provider, and reps
at work in a background process, so the dashboard shows turnout climbing live.

    turnout up --demo                  what `make up` runs (`make up DEMO=0` leaves it out)
    turnout demo start|stop|status

Everything goes through HTTP with the tokens a real client would hold: the loader acts as
the national campaign team (imports the roster, opens the ballot, starts the reminders);
the simulator is one rep per branch, each with a token scoped to that branch, working
their chase list. Nothing here reads a service's tables.

Loading is idempotent. What the loader has done is kept in `.local/demo/state.json`, and
each command it sends is written there, with its Idempotency-Key, *before* it is sent: a
second run finds the ballot and campaign it made instead of making others, and a run
interrupted between sending a command and recording the answer sends the same command
with the same key again and gets the first answer back.

Privacy: the simulator logs counts, never a member's name, number or email (it never
reads them: the chase list is masked, and the numbers it adds are generated and sent,
not kept).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import sys
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import structlog
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_delay,
    stop_never,
    wait_exponential,
    wait_random,
)

from turnout_events.topics import TopicRegistry
from turnout_kit.cli_token import token_command

from . import services
from .paths import local_dir
from .synthetic import generate_union, random_mobile, roster_csv_bytes, union_group_codes

log = structlog.get_logger("turnout.demo")

SIMULATOR = "demo"  # its pid and log: .local/services/demo.pid, demo.log
DEFAULT_MEMBERS = 50_000
DEFAULT_RATE = 15.0
# The share of members with a mobile or personal email. 0.55 gives about 48% with a
# mobile and 39% with a mobile and SMS consent: the reminders reach about two in five.
DEFAULT_CONTACT_COVERAGE = 0.55
BALLOT_NAME = "Pay 2026 industrial action ballot (demo)"
REMINDER = ("Hi {first_name}, {days_left} days left to vote in the {ballot_name}. Have you "
            "posted your ballot paper? Reply YES if you have. {link}")
REMINDER_LINK = "https://example.org/ballot"


class DemoError(RuntimeError):
    """The demo could not be set up; the message says what to look at."""


@dataclass(frozen=True)
class DemoConfig:
    kafka_bootstrap_servers: str
    topics: TopicRegistry
    members: int = DEFAULT_MEMBERS
    groups: int = 6
    branches: int = 120
    workplaces: int = 600
    contact_coverage: float = DEFAULT_CONTACT_COVERAGE
    seed: int = 2026
    rate: float = DEFAULT_RATE
    # The first reminder goes this long after the campaign is made: enough for the
    # notification service to have taken in the roll (it learns it from events).
    first_reminder_after: timedelta = timedelta(seconds=30)

    @property
    def wait_seconds(self) -> float:
        """How long any one step may take before the loader gives up: event-driven
        steps grow with the union."""
        return 90.0 + self.members / 500


def service_url(name: str) -> str:
    return next(s for s in services.SERVICES if s.name == name).url


def dashboard_link(ballot_id: str | None, *, hours: float = 24.0) -> str:
    """The dashboard's address, signed in: the page reads a token (and the ballot to show)
    from the URL's fragment, which the browser never sends to a server, and takes it out
    of the address bar at once."""
    base = f"{service_url('reporting')}/"
    token = token_command("national", subject="demo-dashboard", ttl_hours=hours)
    fragment = urlencode({**({"ballot": ballot_id} if ballot_id else {}), "token": token})
    return f"{base}#{fragment}"


def national_headers() -> dict[str, str]:
    # One fixed subject: Idempotency-Keys are scoped to the caller.
    return _bearer(token_command("national", subject="demo-national", ttl_hours=2))


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# -- What the loader has done ------------------------------------------------------------

@dataclass
class DemoState:
    namespace: str
    members: int
    ballot_key: str = field(default_factory=lambda: f"demo-ballot-{uuid.uuid4()}")
    ballot_request: dict[str, Any] | None = None
    ballot_id: str | None = None
    eligible: int | None = None
    campaign_key: str = field(default_factory=lambda: f"demo-campaign-{uuid.uuid4()}")
    campaign_attempt: int = 0
    campaign_request: dict[str, Any] | None = None
    campaign_id: str | None = None

    @staticmethod
    def path() -> Path:
        folder = local_dir() / "demo"
        folder.mkdir(parents=True, exist_ok=True)
        return folder / "state.json"

    @classmethod
    def read(cls) -> DemoState | None:
        try:
            return cls(**json.loads(cls.path().read_text()))
        except (FileNotFoundError, ValueError, TypeError):
            return None

    def write(self) -> None:
        path = self.path()
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2))
        os.replace(tmp, path)  # a crash leaves the old state or the new, never half


# -- HTTP as a careful client does it ------------------------------------------------------

class Unavailable(Exception):
    """An answer worth retrying: the service is restarting, overloaded, or busy with the
    same request."""

    def __init__(self, response: httpx.Response) -> None:
        super().__init__(f"HTTP {response.status_code}")
        self.response = response


RETRYABLE = (httpx.TransportError, Unavailable)


def _retryable(response: httpx.Response) -> bool:
    # Not 500: that is a bug, not a restart, and the command may have taken effect.
    if response.status_code in (429, 502, 503, 504):
        return True
    # 409 with Retry-After: the same Idempotency-Key is still being processed.
    return response.status_code == 409 and "retry-after" in response.headers


async def request(http: httpx.AsyncClient, method: str, url: str, *,
                  budget: float | None = 120.0, **kwargs: Any) -> httpx.Response:
    """Send, retrying transport errors, 502-504 and 429 with backoff for up to `budget` seconds
    (None: forever). Mutating calls carry an Idempotency-Key, so a retry after a lost
    answer does not do the thing twice."""
    async for attempt in AsyncRetrying(
            retry=retry_if_exception_type(RETRYABLE), reraise=True,
            wait=wait_exponential(multiplier=0.2, max=10) + wait_random(0, 0.3),
            stop=stop_never if budget is None else stop_after_delay(budget)):
        with attempt:
            response = await http.request(method, url, **kwargs)
            if _retryable(response):
                raise Unavailable(response)
    return response


def _problem(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return f"HTTP {response.status_code}"
    detail = body.get("detail") or body.get("title") or ""
    errors = "; ".join(f"{e.get('field', '?')}: {e.get('message', '')}"
                       for e in body.get("errors") or [])
    return f"HTTP {response.status_code} {detail} {errors}".strip()


async def _wait_for(what: str, check: Callable[[], Awaitable[Any]], *, timeout: float,
                    interval: float = 0.5) -> Any:
    """Poll `check` (async, returning a truthy result when done) until the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        if result := await check():
            return result
        if time.monotonic() > deadline:
            raise DemoError(f"timed out after {timeout:.0f}s waiting for {what}")
        await asyncio.sleep(interval)  # polling another process, bounded by the deadline


# -- Loading: union, ballot, campaign --------------------------------------------------------

async def load(cfg: DemoConfig, say: Callable[[str], None] = lambda _: None) -> DemoState:
    """Make sure the demo's union, open ballot and reminder campaign exist; idempotent."""
    async with httpx.AsyncClient(timeout=httpx.Timeout(30.0, read=300.0)) as http:
        state = await _current_state(http, cfg)
        if state.ballot_id is not None:
            say(f"The demo is loaded (ballot {state.ballot_id}); checking it...")
        else:
            say(f"Importing a synthetic union of {cfg.members:,} members...")
            await _import_union(http, cfg, say)
            say("Creating the ballot...")
            state.ballot_request = state.ballot_request or _ballot_request(cfg)
            state.write()
            state.ballot_id = await _create_ballot(http, state)
            state.write()
            say("Opening the ballot (snapshotting the roll)...")
        state.eligible = await _open_ballot(http, cfg, state.ballot_id)
        state.write()
        await _wait_for_reporting(http, cfg, state.ballot_id, state.eligible)
        if _has("notifications"):
            state.campaign_id = await _ensure_campaign(http, cfg, state)
            state.write()
    return state


def _has(name: str) -> bool:
    return any(s.name == name for s in services.installed_services())


async def _current_state(http: httpx.AsyncClient, cfg: DemoConfig) -> DemoState:
    """The saved state if it describes this deployment's demo and its ballot is still
    there and not closed; otherwise a fresh one."""
    state = DemoState.read()
    if state is None or state.namespace != cfg.topics.namespace:
        return DemoState(namespace=cfg.topics.namespace, members=cfg.members)
    if state.ballot_id is not None:
        response = await request(http, "GET",
                                 f"{service_url('ballots')}/v1/ballots/{state.ballot_id}",
                                 headers=national_headers())
        if response.status_code == 404 or (response.status_code == 200
                                           and response.json()["status"] == "closed"):
            # Another database, or someone closed the demo's ballot: start a new one.
            return DemoState(namespace=cfg.topics.namespace, members=cfg.members)
        if response.status_code != 200:
            raise DemoError(f"reading the demo's ballot: {_problem(response)}")
    return state


async def _import_union(http: httpx.AsyncClient, cfg: DemoConfig,
                        say: Callable[[str], None]) -> None:
    roster = roster_csv_bytes(generate_union(
        members=cfg.members, groups=cfg.groups, branches=cfg.branches,
        workplaces=cfg.workplaces, contact_coverage=cfg.contact_coverage, seed=cfg.seed))
    topic = cfg.topics.events("contacts")
    async with _Offsets(cfg.kafka_bootstrap_servers, topic, cfg.topics.partitions) as offsets:
        before = await offsets.end()
        # A re-import of the same file changes nothing: no key needed to make it safe.
        response = await request(http, "POST", f"{service_url('contacts')}/v1/members:import",
                                 content=roster, headers={**national_headers(),
                                                          "content-type": "text/csv"})
        if response.status_code != 200:
            raise DemoError(f"importing the roster: {_problem(response)}")
        created = response.json()["created"]
        log.info("demo.imported", **response.json())
        await _wait_for_replica(offsets, cfg, before, created, say)


async def _wait_for_replica(offsets: _Offsets, cfg: DemoConfig, before: dict[int, int],
                            created: int, say: Callable[[str], None]) -> None:
    """Wait until the ballots service holds every imported member, so the roll it
    snapshots on opening is the whole union.

    Ballots offers no count of the members it knows, so this reads the one public signal
    there is: (1) contacts has published a member-registered event for each new member
    (the topic grew by `created`), then (2) ballots' consumer group has committed past
    all of them — it commits only after the replica rows are in its database.
    """
    async def published() -> dict[int, int] | None:
        end = await offsets.end()
        grown = sum(end.values()) - sum(before.values())
        say(f"Contacts has published {min(grown, created):,} of {created:,} new members...")
        return end if grown >= created else None

    end = await _wait_for("contacts to publish the imported members", published,
                          timeout=cfg.wait_seconds)
    group = f"{cfg.topics.namespace}.ballots"  # ballots' consumer group (its subscribers)

    async def caught_up() -> bool:
        committed = await offsets.committed(group)
        behind = sum(max(0, o - committed.get(p, 0)) for p, o in end.items())
        say(f"The ballots service has {behind:,} events still to take in...")
        return behind == 0

    await _wait_for("the ballots service to take in the members", caught_up,
                    timeout=cfg.wait_seconds)


class _Offsets:
    """End offsets of a topic and a consumer group's committed offsets on it."""

    def __init__(self, bootstrap_servers: str, topic: str, partitions: int) -> None:
        self.topic = topic
        self.partitions = [TopicPartition(topic, p) for p in range(partitions)]
        self.consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap_servers, group_id=None,
                                         enable_auto_commit=False)
        self.admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers)

    async def __aenter__(self) -> _Offsets:
        await self.consumer.start()
        await self.admin.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.admin.close()
        await self.consumer.stop()

    async def end(self) -> dict[int, int]:
        return {tp.partition: o for tp, o in (await self.consumer.end_offsets(
            self.partitions)).items()}

    async def committed(self, group: str) -> dict[int, int]:
        offsets = await self.admin.list_consumer_group_offsets(group)
        return {tp.partition: meta.offset for tp, meta in offsets.items()
                if tp.topic == self.topic and meta.offset >= 0}


def _ballot_request(cfg: DemoConfig) -> dict[str, Any]:
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    closes = (now + timedelta(days=14)).replace(hour=17, minute=0)
    return {"name": BALLOT_NAME, "kind": "statutory", "opens_at": now.isoformat(),
            "closes_at": closes.isoformat(), "turnout_threshold": 0.5,
            "scope": {"group_codes": union_group_codes(cfg.groups)}}


async def _create_ballot(http: httpx.AsyncClient, state: DemoState) -> str:
    response = await request(http, "POST", f"{service_url('ballots')}/v1/ballots",
                             json=state.ballot_request,
                             headers={**national_headers(), "Idempotency-Key": state.ballot_key})
    if response.status_code != 201:
        raise DemoError(f"creating the ballot: {_problem(response)}")
    return response.json()["ballot_id"]


async def _open_ballot(http: httpx.AsyncClient, cfg: DemoConfig, ballot_id: str) -> int:
    """Open the ballot if it is not, and wait until its whole roll is published; returns
    the number of members on the roll."""
    url = f"{service_url('ballots')}/v1/ballots/{ballot_id}"
    response = await request(http, "GET", url, headers=national_headers())
    if response.status_code != 200:
        raise DemoError(f"reading the demo's ballot: {_problem(response)}")
    if response.json()["status"] == "draft":
        response = await request(http, "POST", f"{url}/open", headers=national_headers())
        # 409: opened meanwhile (another `turnout up`), which is what we want.
        if response.status_code not in (200, 202, 409):
            raise DemoError(f"opening the ballot: {_problem(response)}")

    async def enrolled() -> int | None:
        body = (await request(http, "GET", url, headers=national_headers())).json()
        enrolment = body.get("enrolment") or {}
        return enrolment.get("total") if enrolment.get("complete") else None

    return await _wait_for("the roll to be published", enrolled, timeout=cfg.wait_seconds)


async def _wait_for_reporting(http: httpx.AsyncClient, cfg: DemoConfig, ballot_id: str,
                              eligible: int) -> None:
    url = f"{service_url('reporting')}/v1/ballots/{ballot_id}/turnout?level=national"

    async def counted() -> bool:
        response = await request(http, "GET", url, headers=national_headers())
        items = response.json().get("items", []) if response.status_code == 200 else []
        return bool(items) and items[0]["eligible"] >= eligible

    await _wait_for("the reporting service to count the roll", counted,
                    timeout=cfg.wait_seconds)


def _campaign_request(cfg: DemoConfig, ballot_id: str) -> dict[str, Any]:
    first = datetime.now(UTC) + cfg.first_reminder_after
    return {
        "ballot_id": ballot_id, "channel": "sms", "template": REMINDER, "link": REMINDER_LINK,
        # Now (so the sandbox page fills during the demo), then 3 days and 1 day before
        # the close, as a campaign team would.
        "schedule": [first.isoformat(timespec="seconds"), "P3D", "P1D"],
        # start == end: no quiet hours, so the demo sends whatever the local time. A real
        # campaign keeps the default 21:00-09:00 Europe/London.
        "quiet_hours": {"start": "00:00", "end": "00:00", "timezone": "Europe/London"},
    }


async def _ensure_campaign(http: httpx.AsyncClient, cfg: DemoConfig, state: DemoState) -> str:
    base = f"{service_url('notifications')}/v1/campaigns"
    if state.campaign_id is not None:
        response = await request(http, "GET", f"{base}/{state.campaign_id}",
                                 headers=national_headers())
        if response.status_code == 200:
            return state.campaign_id
    assert state.ballot_id is not None
    if state.campaign_request is None or state.campaign_request["ballot_id"] != state.ballot_id:
        state.campaign_request = _campaign_request(cfg, state.ballot_id)

    async def created() -> str | None:
        # Each attempt has its own key: the notification service answers 422 until it has
        # seen the ballot open (it learns that from ballots' events), and a 422 answer is
        # stored under its key. The attempt is saved before it is sent.
        key = f"{state.campaign_key}-{state.campaign_attempt}"
        state.write()
        response = await request(http, "POST", base, json=state.campaign_request,
                                 headers={**national_headers(), "Idempotency-Key": key})
        if response.status_code == 201:
            return response.json()["campaign_id"]
        errors = (response.json().get("errors") or []) if response.status_code == 422 else []
        if errors and all(e.get("field") == "ballot_id" for e in errors):
            state.campaign_attempt += 1
            return None
        raise DemoError(f"creating the reminder campaign: {_problem(response)}")

    return await _wait_for("the notification service to learn of the ballot", created,
                           timeout=cfg.wait_seconds, interval=1.0)


# -- The simulator process ---------------------------------------------------------------------

def start_simulator(state: DemoState, rate: float, *, seed: int = 2026) -> bool:
    """Start the reps' simulator unless it runs; True if it was started now."""
    assert state.ballot_id is not None
    return services.spawn(SIMULATOR, [
        sys.executable, "-m", "turnout_local.demo", "--ballot-id", state.ballot_id,
        "--rate", str(rate), "--seed", str(seed)], env={})


def stop_simulator() -> None:
    services.stop_process(SIMULATOR, timeout=15)


def simulator_status() -> dict[str, Any]:
    state = DemoState.read()
    info: dict[str, Any] = {"mode": "process", "running": services.running(SIMULATOR),
                            "url": f"{service_url('reporting')}/",  # where it shows
                            "log": str(services.log_file(SIMULATOR))}
    if state is not None and state.ballot_id:
        info["ballot_id"] = state.ballot_id
    if (progress := last_progress()) is not None:
        info["last_progress"] = progress
    return info


def last_progress() -> dict[str, Any] | None:
    """The simulator's latest progress line, if its log has one."""
    path = services.log_file(SIMULATOR)
    if not path.exists():
        return None
    with open(path, "rb") as f:
        f.seek(max(0, path.stat().st_size - 64_000))
        lines = f.read().decode(errors="replace").splitlines()
    for line in reversed(lines):
        if '"demo.progress"' in line:
            with contextlib.suppress(ValueError):
                return json.loads(line)
    return None


# What reps do, and how often (weights). A conversation's outcome "voted" is a vote too
# (ballots takes it from contacts' member-contacted event), so about 45% of actions add a
# vote; the rest fill in the contact, conversation and replacement columns.
ACTIONS = {"conversation": 55, "vote": 28, "contact": 10, "move": 4, "replacement": 3}
OUTCOMES = {"voted": 30, "will_vote": 22, "undecided": 12, "no_answer": 20, "wont_vote": 6,
            "wrong_number": 4, "replacement_needed": 4, "do_not_contact": 2}
CHANNELS = {"face_to_face": 35, "phone": 30, "whatsapp": 15, "sms": 10, "email": 5,
            "teams": 5}
REPLACEMENT_REASONS = ("never_arrived", "lost", "spoiled", "other")
CHASE_PAGE = 50
CHASE_STALE_SECONDS = 60.0
IDLE_SECONDS = 20.0
TOKEN_HOURS = 12.0


class Badge:
    """A person's bearer token, minted afresh when it is half way to expiring."""

    def __init__(self, role: str, subject: str, *, branches: Sequence[str] = (),
                 groups: Sequence[str] = ()) -> None:
        self.role, self.subject = role, subject
        self.branches, self.groups = list(branches), list(groups)
        self.minted_at: float | None = None
        self.token = ""

    def headers(self) -> dict[str, str]:
        if self.minted_at is None or time.monotonic() - self.minted_at > TOKEN_HOURS * 1800:
            self.token = token_command(self.role, branches=self.branches, groups=self.groups,
                                       subject=self.subject, ttl_hours=TOKEN_HOURS)
            self.minted_at = time.monotonic()
        return _bearer(self.token)


@dataclass
class Rep:
    """A branch rep: a token for their branch, and the page of their chase list they are
    working through."""

    branch: str
    group: str
    weight: float
    workplaces: list[str]
    badge: Badge
    queue: list[dict[str, Any]] = field(default_factory=list)
    fetched_at: float = 0.0
    idle_until: float = 0.0
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def headers(self) -> dict[str, str]:
        return self.badge.headers()


class Simulator:
    """Reps at work at a steady rate: each action takes the next member off a rep's chase
    list and logs a conversation, marks them voted, updates their contact details, moves
    them, or asks for a replacement paper."""

    def __init__(self, ballot_id: str, rate: float, *, seed: int = 2026,
                 concurrency: int = 16, report_every: float = 10.0) -> None:
        self.ballot_id = ballot_id
        self.rate = rate
        self.rng = random.Random(seed)
        self.slots = asyncio.Semaphore(concurrency)
        self.report_every = report_every
        self.reps: list[Rep] = []
        self.branch_workplaces: dict[str, list[str]] = {}
        self.organisers: dict[str, Badge] = {}
        self.done: Counter[str] = Counter()
        self.failed: Counter[str] = Counter()
        self.tasks: set[asyncio.Task[None]] = set()
        self.reported = 0
        self.contacts = service_url("contacts")
        self.ballots = service_url("ballots")
        self.reporting = service_url("reporting")

    async def run(self, stop: asyncio.Event) -> None:
        async with httpx.AsyncClient(timeout=10.0) as http:
            await self._meet_the_reps(http)
            log.info("demo.simulator_started", ballot_id=self.ballot_id, rate=self.rate,
                     reps=len(self.reps))
            reporter = asyncio.create_task(self._report(stop))
            winder = asyncio.create_task(self._wind_down(stop))
            interval = 1.0 / self.rate
            next_at = time.monotonic()
            while not stop.is_set():
                await self.slots.acquire()
                rep = self._pick_rep()
                if rep is None:  # every rep's list is empty just now
                    self.slots.release()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), timeout=1.0)
                    continue
                task = asyncio.create_task(self._act(http, rep))
                self.tasks.add(task)
                task.add_done_callback(self._finished)
                next_at += interval
                now = time.monotonic()
                if next_at < now - 1.0:
                    next_at = now  # fell behind (services slow): carry on, do not burst
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=max(0.0, next_at - now))
            await winder
            reporter.cancel()
            self._log_progress(0.0)

    async def _wind_down(self, stop: asyncio.Event) -> None:
        """On stop, let the actions in flight finish for a few seconds, then cancel them
        (which also frees the pacer if it waits for a free slot)."""
        await stop.wait()
        if self.tasks:
            await asyncio.wait(set(self.tasks), timeout=5)
        for task in list(self.tasks):
            task.cancel()

    def _finished(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        self.slots.release()
        if not task.cancelled() and (exc := task.exception()) is not None:
            self.failed[f"error:{type(exc).__name__}"] += 1

    async def _meet_the_reps(self, http: httpx.AsyncClient) -> None:
        """One rep per branch, weighted by its size, as the campaign team sees the union
        on the reporting service; waits (with backoff) until reporting has the roll."""
        url = f"{self.reporting}/v1/ballots/{self.ballot_id}/turnout"
        async for attempt in AsyncRetrying(
                retry=retry_if_exception_type((*RETRYABLE, LookupError)),
                wait=wait_exponential(multiplier=0.5, max=10) + wait_random(0, 0.5),
                stop=stop_never):
            with attempt:
                response = await request(http, "GET", url, params={"level": "workplace"},
                                         headers=national_headers(), budget=None)
                rows = response.json().get("items") if response.status_code == 200 else None
                if not rows:
                    raise LookupError("the reporting service has no rows for the ballot yet")
        assert rows  # the retries end only once reporting has answered rows
        branches: dict[str, tuple[str, int]] = {}
        for row in rows:
            branch = row["parent"]
            self.branch_workplaces.setdefault(branch, []).append(row["unit"])
            group, size = branches.get(branch, (row["group_code"], 0))
            branches[branch] = (group, size + row["eligible"])
        self.reps = [Rep(branch=b, group=g, weight=max(n, 1),
                         workplaces=self.branch_workplaces[b],
                         badge=Badge("rep", f"demo-rep-{b}", branches=[b]))
                     for b, (g, n) in sorted(branches.items())]
        self.organisers = {g: Badge("organiser", f"demo-organiser-{g}", groups=[g])
                           for g, _ in branches.values()}

    def _pick_rep(self) -> Rep | None:
        now = time.monotonic()
        ready = [r for r in self.reps if r.idle_until <= now]
        if not ready:
            return None
        return self.rng.choices(ready, weights=[r.weight for r in ready])[0]

    async def _next_member(self, http: httpx.AsyncClient, rep: Rep) -> dict[str, Any] | None:
        async with rep.lock:
            stale = time.monotonic() - rep.fetched_at > CHASE_STALE_SECONDS
            if not rep.queue or stale:
                response = await request(
                    http, "GET", f"{self.contacts}/v1/ballots/{self.ballot_id}/chase-list",
                    params={"branch": rep.branch, "limit": CHASE_PAGE}, headers=rep.headers())
                if response.status_code != 200:
                    self.failed[f"chase-list:{response.status_code}"] += 1
                    rep.idle_until = time.monotonic() + IDLE_SECONDS
                    return None
                rep.queue = response.json()["items"]
                rep.fetched_at = time.monotonic()
                self.done["chase-list"] += 1
            if not rep.queue:
                # Everyone voted, or contacts has not heard of the roll yet: come back later.
                rep.idle_until = time.monotonic() + IDLE_SECONDS
                return None
            return rep.queue.pop(0)

    async def _act(self, http: httpx.AsyncClient, rep: Rep) -> None:
        member = await self._next_member(http, rep)
        if member is None:
            return
        kind = self._choose(ACTIONS)
        if kind == "contact" and member["has_mobile"] and member["sms_consent"]:
            kind = "conversation"  # nothing to add: talk to them instead
        headers = {**rep.headers(), "Idempotency-Key": str(uuid.uuid4())}
        member_id = member["member_id"]
        match kind:
            case "conversation":
                outcome = self._choose(OUTCOMES)
                channel = self._choose(CHANNELS) if member["has_mobile"] else "face_to_face"
                await self._send(http, f"conversation:{outcome}", "POST",
                                 f"{self.contacts}/v1/members/{member_id}/conversations",
                                 headers, {"ballot_id": self.ballot_id, "channel": channel,
                                           "outcome": outcome})
                if outcome == "replacement_needed":
                    await self._replacement(http, rep, member_id)
            case "vote":
                source = "rep" if self.rng.random() < 0.8 else "member_self_report"
                status = await self._send(
                    http, "vote", "PUT",
                    f"{self.ballots}/v1/ballots/{self.ballot_id}/votes/{member_id}",
                    headers, {"source": source})
                if status == 404:
                    # Ballots scopes a rep by the branch a member had when the ballot
                    # opened; a member transferred in since is the old branch's to mark.
                    # The rep logs the conversation instead, which counts all the same.
                    await self._send(http, "conversation:voted", "POST",
                                     f"{self.contacts}/v1/members/{member_id}/conversations",
                                     {**rep.headers(), "Idempotency-Key": str(uuid.uuid4())},
                                     {"ballot_id": self.ballot_id, "channel": "face_to_face",
                                      "outcome": "voted"})
            case "contact":
                change: dict[str, Any] = {"sms_consent": True}
                if not member["has_mobile"]:
                    change["mobile"] = random_mobile(self.rng)
                await self._send(http, "contact", "PATCH",
                                 f"{self.contacts}/v1/members/{member_id}/contact",
                                 headers, change)
            case "move":
                await self._move(http, rep, member)
            case "replacement":
                await self._replacement(http, rep, member_id)

    async def _replacement(self, http: httpx.AsyncClient, rep: Rep, member_id: str) -> None:
        await self._send(http, "replacement", "POST",
                         f"{self.ballots}/v1/ballots/{self.ballot_id}/replacement-requests",
                         {**rep.headers(), "Idempotency-Key": str(uuid.uuid4())},
                         {"member_id": member_id,
                          "reason": self.rng.choice(REPLACEMENT_REASONS)})

    async def _move(self, http: httpx.AsyncClient, rep: Rep, member: dict[str, Any]) -> None:
        """Mostly the rep records a move to another workplace of the branch; now and then
        the group's organiser transfers the member to another branch of the group (a rep
        cannot see a member once they leave the rep's branches)."""
        url = f"{self.contacts}/v1/members/{member['member_id']}/placement"
        others = [r for r in self.reps if r.group == rep.group and r.branch != rep.branch]
        if others and self.rng.random() < 0.15:
            to = self.rng.choice(others)
            await self._send(http, "transfer", "PATCH", url,
                             {**self.organisers[rep.group].headers(),
                              "Idempotency-Key": str(uuid.uuid4())},
                             {"branch_code": to.branch,
                              "workplace_code": self.rng.choice(to.workplaces)})
            return
        current = (member.get("placement") or {}).get("workplace_code")
        choices = [w for w in rep.workplaces if w != current] or rep.workplaces
        await self._send(http, "move", "PATCH", url,
                         {**rep.headers(), "Idempotency-Key": str(uuid.uuid4())},
                         {"workplace_code": self.rng.choice(choices)})

    async def _send(self, http: httpx.AsyncClient, kind: str, method: str, url: str,
                    headers: dict[str, str], body: dict[str, Any]) -> int | None:
        """Send one action and count how it went; returns the status (None: no answer)."""
        try:
            response = await request(http, method, url, json=body, headers=headers)
        except Unavailable as exc:
            self.failed[f"{kind}:{exc.response.status_code}"] += 1
            return exc.response.status_code
        except httpx.TransportError as exc:
            self.failed[f"{kind}:{type(exc).__name__}"] += 1
            return None
        if response.is_success:
            self.done[kind] += 1
        else:
            # e.g. 404: the member moved out of this rep's branch since the list was read.
            self.failed[f"{kind}:{response.status_code}"] += 1
        return response.status_code

    def _choose(self, weights: dict[str, int]) -> str:
        return self.rng.choices(list(weights), weights=list(weights.values()))[0]

    async def _report(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            started = time.monotonic()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self.report_every)
            self._log_progress(time.monotonic() - started)

    def _log_progress(self, seconds: float) -> None:
        actions = sum(n for k, n in self.done.items() if k != "chase-list")
        rate = (actions - self.reported) / seconds if seconds else 0.0
        self.reported = actions
        log.info("demo.progress", actions=actions, per_second=round(rate, 1),
                 done=dict(self.done), failed=dict(self.failed), in_flight=len(self.tasks))


def main(argv: list[str] | None = None) -> None:
    """The simulator process: `python -m turnout_local.demo --ballot-id ID --rate 15`."""
    parser = argparse.ArgumentParser(prog="turnout_local.demo", description=Simulator.__doc__)
    parser.add_argument("--ballot-id", required=True)
    parser.add_argument("--rate", type=float, default=DEFAULT_RATE, help="actions per second")
    parser.add_argument("--seed", type=int, default=2026)
    args = parser.parse_args(argv)
    if args.rate <= 0:
        parser.error("--rate must be positive")
    from turnout_kit.logging import configure_logging

    configure_logging("demo", os.environ.get("TURNOUT_LOG_LEVEL", "INFO"), json=True,
                      levels={"httpx": "WARNING", "aiokafka": "WARNING"})

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await Simulator(args.ballot_id, args.rate, seed=args.seed).run(stop)
        log.info("demo.simulator_stopped")

    asyncio.run(run())


if __name__ == "__main__":
    main()
