"""HTTP: the live turnout stream (server-sent events).

Authentication. Browsers' EventSource cannot set an Authorization header, so this
endpoint - and only this one - also takes the bearer token as the `access_token` query
parameter (the name OAuth 2.0 bearer-token usage, RFC 6750 section 2.3, gives it). A
token in a URL can end up in logs, so:
- our access log writes the path and never the query string, uvicorn's own access log
  is off (turnout_kit.middleware, turnout_kit.app.serve), and a test holds that no log
  line of a stream request contains the token;
- the response says `Cache-Control: no-store` and `Referrer-Policy: no-referrer`;
- a proxy in front of the service must not log query strings for this path either;
- the stream ends when the token expires, so a stolen URL is good for no longer than
  the token, and an expired screen asks its user to sign in again.
A header, when sent, wins over the query parameter.

A short-lived "stream ticket" exchanged for the token over an authenticated POST was
the alternative; it was not chosen because EventSource reconnects (after a network
blip, a deploy) re-use the URL it was opened with: a ticket that expired after a minute
would turn every reconnection into a failure the page must notice and repair by hand,
losing EventSource's built-in resumption with Last-Event-ID, and tickets redeemable on
any instance need state shared between instances.
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any

import jwt
import structlog
from fastapi import APIRouter, Header, Query, Request
from sse_starlette import EventSourceResponse

from turnout_kit.auth import Caller, InvalidToken, TokenVerifier
from turnout_kit.problems import Problem

from ..service import queries
from ..service.stream import ChangeHub, turnout_events
from .deps import Ctx

log = structlog.get_logger("turnout_reporting.api.stream")

router = APIRouter(prefix="/v1", tags=["stream"])

# Heartbeat comments: proxies and load balancers drop connections idle for 30-60 s.
PING_S = 15
# A client that has not read for this long is gone (or hopeless): its stream ends.
SEND_TIMEOUT_S = 30


def change_hub(request: Request) -> ChangeHub:
    """The process's hub, created on first use (it opens its connection only while
    someone is watching)."""
    from turnout_events.database_url import asyncpg_dsn

    hub = getattr(request.app.state, "change_hub", None)
    if hub is None:
        hub = ChangeHub(asyncpg_dsn(request.app.state.ctx.settings.database_url))
        request.app.state.change_hub = hub
    return hub


async def close_change_hub(app: Any) -> None:
    """Stop the hub's listener: for the service's shutdown hook."""
    hub = getattr(app.state, "change_hub", None)
    if hub is not None:
        await hub.close()


def _unauthorized(detail: str, error: str | None = None) -> Problem:
    challenge = "Bearer" if error is None else f'Bearer error="{error}"'
    return Problem(401, detail=detail, headers={"WWW-Authenticate": challenge})


async def stream_caller(request: Request, access_token: str | None) -> tuple[Caller, float | None]:
    """The caller, from the Authorization header or the `access_token` parameter, and
    when their token expires (a Unix time)."""
    header = request.headers.get("authorization", "")
    scheme, _, credentials = header.partition(" ")
    token = credentials.strip() if scheme.lower() == "bearer" else ""
    token = token or (access_token or "").strip()
    if not token:
        raise _unauthorized("This stream needs a bearer token: an Authorization header, or "
                            "the access_token query parameter where a header cannot be "
                            "set (EventSource).")
    verifier: TokenVerifier = request.app.state.token_verifier
    try:
        caller = await verifier.verify_async(token)
    except InvalidToken as exc:
        log.info("token_rejected", reason=str(exc))
        raise _unauthorized("invalid or expired token", "invalid_token") from None
    request.state.caller = caller  # for the access log
    # Verified just above; read only for its expiry.
    exp = jwt.decode(token, options={"verify_signature": False}).get("exp")
    expires_at = float(exp) if isinstance(exp, int | float) and not isinstance(exp, bool) \
        else None
    if expires_at is not None and expires_at <= time.time():
        # Accepted elsewhere within the clock-skew leeway, but a stream would end the
        # moment it began, and the browser would reconnect in a loop until the leeway
        # ran out: refused now, so the page asks for a new token at once.
        raise _unauthorized("invalid or expired token", "invalid_token")
    return caller, expires_at


def _event_id(value: str | None) -> int | None:
    """An id we sent, or None: anything else (a tampered header) gets a snapshot."""
    if value is None:
        return None
    value = value.strip()
    return int(value) if value.isdigit() and len(value) <= 18 else None


@router.get(
    "/ballots/{ballot_id}/stream",
    response_class=EventSourceResponse,
    responses={200: {"content": {"text/event-stream": {}}, "description": (
        "Server-sent events. `snapshot` (data: `{ballot, seq, rows}`, every row of every "
        "level in your scope), then `turnout` per committed batch that changed anything "
        "in your scope (data: `{ballot_id, seq, rows, hours}`: rows shaped like "
        "`GET /v1/ballots/{id}/turnout` items, and hourly buckets `{level, unit, parent, "
        "hour, votes}` with the bucket's net votes now). A row with eligible 0 is a unit "
        "whose last member moved away (the turnout API no longer lists it). Each event's "
        "id is its `seq`.")}},
)
async def stream_turnout(
    ballot_id: uuid.UUID,
    request: Request,
    ctx: Ctx,
    access_token: Annotated[str | None, Query(max_length=8192, description=(
        "The bearer token, for clients that cannot send an Authorization header "
        "(EventSource). Never logged.")) ] = None,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID",
                                                include_in_schema=False)] = None,
    resume_from: Annotated[int | None, Query(
        alias="last_event_id", ge=0, le=2**63 - 1, description=(
            "Resume after this event id, for clients that cannot send the Last-Event-ID "
            "header; the header wins when both are given."))] = None,
) -> EventSourceResponse:
    """Live turnout: what each committed batch changed, filtered to your scope.

    Reconnect with `Last-Event-ID` (browsers do it by themselves) to get exactly what
    you missed; if that is older than the server keeps, you get a fresh `snapshot`."""
    caller, expires_at = await stream_caller(request, access_token)
    # Out of scope or unknown: the same 404, before the stream starts (and once: not
    # per event, nor per snapshot). A resumption (Last-Event-ID) is checked the same.
    info = await queries.ballot_info(ctx, caller, ballot_id)
    header_id = _event_id(last_event_id)
    resume = header_id if header_id is not None else resume_from
    events = turnout_events(ctx, change_hub(request), caller, info, last_event_id=resume,
                            expires_at=expires_at)
    return EventSourceResponse(events, ping=PING_S, send_timeout=SEND_TIMEOUT_S,
                               headers={"Cache-Control": "no-store",
                                        "Referrer-Policy": "no-referrer"})
