"""Helpers for the notifications tests: a clock to move, a real HTTP server playing
contacts' contact-channels endpoint, events onto the test's topics, and waiting for the
service to have applied them."""

from __future__ import annotations

import asyncio
import io
import json
import socket
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
import uvicorn
from fastapi import FastAPI, Header, HTTPException
from turnout_notifications.service.state import CONSUMER

from tests.support.events import event, eventually, produce  # noqa: F401 - re-exported
from turnout_events.ballots import BallotOpened, MemberEnrolled, Voted
from turnout_events.contacts import MemberRegistered
from turnout_events.envelope import Envelope
from turnout_events.notifications import OptOutReceived
from turnout_events.tables import inbox
from turnout_kit.auth import InvalidToken, Role, TokenVerifier
from turnout_kit.settings import DEVELOPMENT_JWT_SECRET

# A Friday noon in March: London is on GMT, three days before the ballot closes.
T0 = datetime(2026, 3, 20, 12, 0, tzinfo=UTC)
CLOSES_AT = T0 + timedelta(days=3)


class FakeClock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def set(self, now: datetime) -> None:
        self.now = now

    def advance(self, delta: timedelta) -> None:
        self.now += delta


# -- contacts, as a real HTTP server --------------------------------------------------------

@dataclass
class FakeContacts:
    url: str = ""
    # member_id -> (mobile, first_name): the members contacts would let us text.
    textable: dict[uuid.UUID, tuple[str, str | None]] = field(default_factory=dict)
    calls: list[list[str]] = field(default_factory=list)
    callers: list[str] = field(default_factory=list)
    # Answer for every id asked with a number made from it (benchmarks: a million
    # members would not fit in `textable`).
    everyone: bool = False
    # Awaited with the ids asked before answering: a test's chance to make something
    # happen between the dispatcher's batch re-check and its sends.
    on_call: Callable[[list[uuid.UUID]], Awaitable[None]] | None = None


def made_up_mobile(member_id: uuid.UUID) -> str:
    return f"+447700{member_id.int % 1_000_000:06d}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@asynccontextmanager
async def fake_contacts_server() -> AsyncIterator[FakeContacts]:
    state = FakeContacts()
    verifier = TokenVerifier(secret=DEVELOPMENT_JWT_SECRET)
    app = FastAPI()

    @app.post("/internal/v1/contact-channels")
    async def contact_channels(body: dict, authorization: str = Header("")) -> Any:
        try:
            caller = verifier.verify(authorization.removeprefix("Bearer "))
        except InvalidToken:
            raise HTTPException(401) from None
        if caller.role is not Role.service:
            raise HTTPException(403)
        asked = body["member_ids"]
        if len(asked) > 1000:
            raise HTTPException(422)
        state.calls.append(asked)
        state.callers.append(caller.actor)
        if state.on_call is not None:
            await state.on_call([uuid.UUID(m) for m in asked])
        items = []
        for raw in asked:
            member_id = uuid.UUID(raw)
            found = (made_up_mobile(member_id), "Sam") if state.everyone \
                else state.textable.get(member_id)
            if found:
                items.append({"member_id": raw, "mobile": found[0], "first_name": found[1]})
        return {"items": items}

    async with serving(app, "the fake contacts server") as url:
        state.url = url
        yield state


@asynccontextmanager
async def serving(app: FastAPI, what: str) -> AsyncIterator[str]:
    """`app` on a real HTTP server on a free local port (its URL), for the length of the
    block: the services under test call their fakes over HTTP, as they would for real."""
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None,
                                          access_log=False, lifespan="off"))
    task = asyncio.create_task(server.serve())
    deadline = time.monotonic() + 10
    while not server.started:
        if task.done() or time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not start")
        await asyncio.sleep(0.01)  # polling interval while waiting with a deadline
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


# -- events ------------------------------------------------------------------------------



async def applied(ctx, envelopes: Iterable[Envelope]) -> None:
    """Wait until the service's state consumer has applied every one of these events."""
    ids = [e.id for e in envelopes]

    async def all_in() -> bool:
        async with ctx.sessions() as session:
            n = await session.scalar(sa.select(sa.func.count()).select_from(inbox).where(
                inbox.c.consumer == CONSUMER, inbox.c.event_id.in_(ids)))
        return n == len(ids)

    await eventually(all_in, what=f"{len(ids)} events applied")


async def deliver(client, bootstrap: str, topics, source: str,
                  envelopes: list[Envelope]) -> None:
    """Produce onto a service's topic and wait until notifications has applied them."""
    await produce(bootstrap, topics.events(source), envelopes)
    await applied(client.app.state.ctx, envelopes)


# -- a ballot with members, as the other services' events describe it ---------------------

@dataclass
class Member:
    first_name: str | None = "Alex"
    group: str = "G1"
    branch: str = "B1"
    workplace: str = "W1"
    has_mobile: bool = True
    sms_consent: bool = True
    voted: bool = False
    opted_out: bool = False
    # Whether contacts would hand over the number now (default: mobile and consent).
    textable: bool | None = None


@dataclass
class SeededBallot:
    ballot_id: uuid.UUID
    ids: dict[str, uuid.UUID]
    mobiles: dict[str, str]

    def name_of(self, member_id: uuid.UUID) -> str:
        return next(name for name, m in self.ids.items() if m == member_id)


async def seed_ballot(client, bootstrap: str, topics, contacts: FakeContacts,
                      members: dict[str, Member], *, ballot_name: str = "Pay 2026 ballot",
                      closes_at: datetime = CLOSES_AT) -> SeededBallot:
    """Open a ballot with these members through ballots, contacts and notifications
    events, tell the fake contacts whose numbers it would give, and wait until the
    service has it all."""
    ballot_id = uuid.uuid4()
    ids = {name: uuid.uuid4() for name in members}
    mobiles = {name: f"+4479111{i:05d}" for i, name in enumerate(members)}
    opened = event(BallotOpened, ballot_id=ballot_id, ballot_name=ballot_name,
                   opens_at=(closes_at - timedelta(days=21)).isoformat(),
                   closes_at=closes_at.isoformat(), eligible_count=len(members))
    ballot_events, contact_events, own_events = [opened], [], []
    for name, m in members.items():
        member_id = ids[name]
        placement = {"group_code": m.group, "branch_code": m.branch,
                     "workplace_code": m.workplace, "grade": None}
        ballot_events.append(event(MemberEnrolled, ballot_id=ballot_id, member_id=member_id,
                                   placement=placement))
        if m.voted:
            ballot_events.append(event(Voted, ballot_id=ballot_id, member_id=member_id,
                                       voted_at=(T0 - timedelta(days=1)).isoformat(),
                                       occurred_at=T0 - timedelta(days=1)))
        contact_events.append(event(MemberRegistered, member_id=member_id, member_version=1,
                                    placement=placement,
                                    contact={"has_mobile": m.has_mobile, "has_email": False,
                                             "sms_consent": m.sms_consent,
                                             "email_consent": False}))
        if m.opted_out:
            own_events.append(event(OptOutReceived, member_id=member_id,
                                    received_at=(T0 - timedelta(hours=3)).isoformat()))
        textable = m.textable if m.textable is not None else (m.has_mobile and m.sms_consent)
        if textable:
            contacts.textable[member_id] = (mobiles[name], m.first_name)
    await produce(bootstrap, topics.events("ballots"), ballot_events)
    await produce(bootstrap, topics.events("contacts"), contact_events)
    await produce(bootstrap, topics.events("notifications"), own_events)
    await applied(client.app.state.ctx, [*ballot_events, *contact_events, *own_events])
    return SeededBallot(ballot_id, ids, mobiles)


# -- logs, as written --------------------------------------------------------------------

@contextmanager
def captured_logs() -> Iterator[list[str]]:
    """Every log record (ours, the libraries') rendered as JSON BEFORE redaction, so a
    test sees what code tried to log, not what the redaction let through. The run's
    log guard is put back by its fixture before the next test."""
    from turnout_kit.logging import configure_logging

    lines: list[str] = []

    def keep(_logger, _method, event_dict):
        lines.append(json.dumps(event_dict, default=str))
        return event_dict

    configure_logging("tests", "INFO", json=True, stream=io.StringIO(),
                      levels={"turnout": "DEBUG"}, inspect=[keep])
    yield lines


# -- a dispatcher in a process of its own, to be killed mid-send ---------------------------

def dispatcher_process_args(settings, *, now: datetime, fault: str) -> list[str]:
    """The command running `_dispatch_until_killed` in a new Python process."""
    config = {"settings": {k: settings.model_dump(mode="json")[k] for k in (
        "database_url", "kafka_bootstrap_servers", "topic_namespace", "topic_partitions",
        "contacts_url", "provider_rate_per_second")},
        "now": now.isoformat(), "fault": fault}
    return [sys.executable, "-c",
            "import sys; from services.notifications.tests.support import "
            "_dispatch_until_killed as run; run(sys.argv[1])", json.dumps(config)]


def _dispatch_until_killed(raw: str) -> None:
    """One dispatcher round against the test's database, with the sandbox stalling
    in the provider call (`fault`): the process stays inside the call until killed."""
    from turnout_notifications.context import NotificationsContext
    from turnout_notifications.providers.sandbox import SandboxFault, SandboxProvider
    from turnout_notifications.service.channels import ContactChannels
    from turnout_notifications.service.dispatcher import Dispatcher
    from turnout_notifications.settings import NotificationsSettings

    from turnout_kit.db import create_engine, session_factory

    config = json.loads(raw)
    settings = NotificationsSettings(**config["settings"], dispatcher_enabled=False)
    now = datetime.fromisoformat(config["now"])

    async def main() -> None:
        ctx = NotificationsContext.from_settings(settings, clock=lambda: now)
        ctx.engine = create_engine(settings.database_url)
        ctx.sessions = session_factory(ctx.engine)
        provider = SandboxProvider(ctx.sessions, ctx.clock)
        provider.fault = SandboxFault(config["fault"])
        await Dispatcher(ctx, provider, ContactChannels(settings)).run_once()
        raise SystemExit("the provider call returned; it was meant to stall")

    asyncio.run(main())
