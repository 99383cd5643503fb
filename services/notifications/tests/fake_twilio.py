"""A Twilio-speaking SMS provider for the tests: a real HTTP server on 127.0.0.1 (an
ephemeral port) answering the Messages API the way Twilio does, and signing webhook
calls the way Twilio does, so the adapter and the webhooks are tested against the wire
protocol rather than against our own code.

    async with fake_twilio_server() as twilio:
        twilio.outage()           # every send answers 503 from now on ...
        twilio.outage_after(2)    # ... or after two more messages
        twilio.recover()
        twilio.accepted           # the messages it took, in order
        twilio.signed(url, params)  # (params, headers) of a call Twilio would make

Like Twilio, it has no idempotency key: a message posted twice is two messages, so a
test counting `accepted` sees any double send. Its signature code is written here again,
from Twilio's description, rather than imported: the webhooks are checked against an
independent implementation.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import re
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from services.notifications.tests.support import serving

ACCOUNT_SID = "AC" + "0123456789abcdef" * 2
AUTH_TOKEN = "fake-twilio-auth-token-0123456789"
SENDER_ID = "Turnout"
E164 = re.compile(r"\+[1-9]\d{7,14}")


@dataclass(frozen=True, repr=False)
class SentSms:
    sid: str
    to: str
    sender: str
    body: str
    status_callback: str | None
    idempotency_key: str | None


@dataclass
class FakeTwilio:
    url: str = ""
    account_sid: str = ACCOUNT_SID
    auth_token: str = AUTH_TOKEN
    accepted: list[SentSms] = field(default_factory=list)
    # Every call to the Messages API, answered how: 201, 503, 401, ...
    calls: list[int] = field(default_factory=list)
    # While set, a send once `accepted` holds this many messages answers 503.
    accept_limit: int | None = None
    # Answer every send with this (status, code) instead, e.g. (400, 21211).
    refuse_with: tuple[int, int] | None = None
    # Hold each answer this long (seconds), to make the client time out.
    delay: float = 0.0
    _sid_number: int = 1

    def next_sid(self) -> str:
        """The sid the next message accepted will get."""
        return f"SM{self._sid_number:032x}"

    def outage(self) -> None:
        self.accept_limit = len(self.accepted)

    def outage_after(self, n: int) -> None:
        self.accept_limit = len(self.accepted) + n

    def recover(self) -> None:
        self.accept_limit = None

    def sign(self, url: str, params: list[tuple[str, str]] | dict[str, str],
             token: str | None = None) -> str:
        pairs = sorted(params.items() if isinstance(params, dict) else params)
        data = url + "".join(k + v for k, v in pairs)
        mac = hmac.new((token or self.auth_token).encode(), data.encode(), hashlib.sha1)
        return base64.b64encode(mac.digest()).decode()

    def signed(self, url: str, params: dict[str, str], token: str | None = None
               ) -> tuple[dict[str, str], dict[str, str]]:
        """A webhook call as Twilio would make it to `url`: (form, headers)."""
        return params, {"X-Twilio-Signature": self.sign(url, params, token),
                        "Content-Type": "application/x-www-form-urlencoded"}


def _error(status: int, code: int, message: str) -> JSONResponse:
    return JSONResponse({"code": code, "message": message, "status": status,
                         "more_info": f"https://www.twilio.com/docs/errors/{code}"},
                        status_code=status)


def _authorised(request: Request, fake: FakeTwilio) -> bool:
    scheme, _, encoded = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "basic":
        return False
    try:
        user, _, password = base64.b64decode(encoded).decode().partition(":")
    except ValueError:
        return False
    return (secrets.compare_digest(user, fake.account_sid)
            and secrets.compare_digest(password, fake.auth_token))


def _app(fake: FakeTwilio) -> FastAPI:
    app = FastAPI()

    @app.post("/2010-04-01/Accounts/{account_sid}/Messages.json")
    async def create_message(account_sid: str, request: Request) -> JSONResponse:
        if fake.delay:
            await asyncio.sleep(fake.delay)
        if not _authorised(request, fake) or account_sid != fake.account_sid:
            fake.calls.append(401)
            return _error(401, 20003, "Authenticate")
        if fake.accept_limit is not None and len(fake.accepted) >= fake.accept_limit:
            fake.calls.append(503)
            return _error(503, 20500, "Service unavailable")
        form = await request.form()
        to, sender, body = (str(form.get(k, "")) for k in ("To", "From", "Body"))
        if fake.refuse_with is not None:
            status, code = fake.refuse_with
            fake.calls.append(status)
            # Twilio's messages quote the number: the adapter must not pass this on.
            return _error(status, code, f"The 'To' number {to} is not a valid phone number.")
        if not E164.fullmatch(to):
            fake.calls.append(400)
            return _error(400, 21211, f"The 'To' number {to} is not a valid phone number.")
        if not body or not sender:
            fake.calls.append(400)
            return _error(400, 21602, "Message body is required.")
        sid = fake.next_sid()
        fake._sid_number += 1
        fake.accepted.append(SentSms(sid, to, sender, body,
                                     str(form["StatusCallback"]) if "StatusCallback" in form
                                     else None, request.headers.get("idempotency-key")))
        fake.calls.append(201)
        return JSONResponse({"sid": sid, "status": "queued", "to": to, "from": sender,
                             "body": body, "account_sid": fake.account_sid,
                             "num_segments": "1", "error_code": None},
                            status_code=201)

    return app


@asynccontextmanager
async def fake_twilio_server() -> AsyncIterator[FakeTwilio]:
    fake = FakeTwilio()
    async with serving(_app(fake), "the fake Twilio server") as url:
        fake.url = url
        yield fake


# -- fixtures: import them into a test module to use them (`fake_twilio_fixture` provides
# the fixture `fake_twilio`, and so on; the names differ so a test's argument does not
# shadow the import) ------------------------------------------------------------------------

@pytest.fixture(name="fake_twilio")
async def fake_twilio_fixture() -> AsyncIterator[FakeTwilio]:
    async with fake_twilio_server() as fake:
        yield fake


@pytest.fixture(name="twilio_settings")
def twilio_settings_fixture(notifications_settings, fake_twilio):
    return notifications_settings.model_copy(update={
        "provider": "twilio", "twilio_base_url": fake_twilio.url,
        "twilio_account_sid": fake_twilio.account_sid,
        "twilio_auth_token": _secret(fake_twilio.auth_token), "twilio_sender_id": SENDER_ID,
        "public_base_url": "https://turnout.example.org"})


def _secret(value: str):
    from pydantic import SecretStr

    return SecretStr(value)


@pytest.fixture(name="twilio_app")
async def twilio_app_fixture(twilio_settings, clock):
    """The notifications service with the Twilio provider pointed at the fake."""
    from turnout_notifications.main import create_notifications_app

    from tests.support.services import running

    app = create_notifications_app(twilio_settings, clock=clock)
    async with running(app, "http://notifications") as client:
        client.app = app  # type: ignore[attr-defined]
        yield client
