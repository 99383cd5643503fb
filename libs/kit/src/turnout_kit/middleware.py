"""The ASGI middlewares every service runs, outermost first:

1. `CorrelationIdMiddleware` - binds the request's correlation id for logs and events,
   and returns it in `X-Correlation-ID`.
2. `AccessMiddleware` - one access log line and the HTTP metrics per request.
3. `UnhandledErrorMiddleware` - turns an unexpected exception into a 500 problem,
   inside the two above so that response still has its header, log line and metric.
4. `BodySizeLimitMiddleware` - 413 for bodies larger than the service accepts.
5. `NulCharacterMiddleware` - 422 for a NUL character in the query or a JSON body.

They are plain ASGI rather than `BaseHTTPMiddleware`, which runs the app in another
task (contextvars set inside do not come back out) and buffers streaming responses
(the reporting service streams server-sent events).
"""

from __future__ import annotations

import re
import time
from typing import Any

import structlog
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .logging import bind_correlation_id, new_correlation_id, reset_correlation_id
from .metrics import HTTP_LATENCY, HTTP_REQUESTS, UNMATCHED_ROUTE, method_label
from .problems import internal_error_response, problem_response

CORRELATION_HEADER = "X-Correlation-ID"
_CORRELATION_KEY = CORRELATION_HEADER.lower().encode("latin-1")
# An id we accept from a caller: short, and made of characters that cannot forge log
# structure or carry a sentence. Anything else is replaced by a fresh id. (The event
# envelope allows 100 characters.)
_VALID_CORRELATION_ID = re.compile(r"[A-Za-z0-9._:-]{1,100}")

# Paths polled by orchestrators and scrapers: logged at debug, or they drown the rest.
PROBE_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})

access_log = structlog.get_logger("turnout.access")
error_log = structlog.get_logger("turnout_kit.errors")


# Every request passes through each middleware here, so they read and write the ASGI
# header lists directly rather than through starlette's Headers and MutableHeaders,
# which copy the list and decode names on each use: about 4% of the kit's own cost of
# a request. ASGI header names are lower case, as Headers also assumes.

def header_value(scope: Scope, name: bytes) -> str | None:
    """The first value of header `name` (lower case), as `Headers(scope=scope).get`."""
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1")
    return None


def header_values(scope: Scope, name: bytes) -> list[str]:
    """Every value of header `name` (lower case), as `Headers(scope=scope).getlist`."""
    return [value.decode("latin-1") for key, value in scope["headers"] if key == name]


def set_header(message: Message, name: bytes, value: str) -> None:
    """`MutableHeaders(scope=message)[name] = value`: any earlier values replaced."""
    headers = [item for item in message.get("headers", ()) if item[0] != name]
    headers.append((name, value.encode("latin-1")))
    message["headers"] = headers


class CorrelationIdMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = header_value(scope, _CORRELATION_KEY)
        cid = incoming if incoming and _VALID_CORRELATION_ID.fullmatch(incoming) else None
        cid = cid or new_correlation_id()

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                set_header(message, _CORRELATION_KEY, cid)
            await send(message)

        token = bind_correlation_id(cid)
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            reset_correlation_id(token)


def route_template(scope: Scope) -> str:
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else UNMATCHED_ROUTE


# (method, route, status) -> that series of each HTTP metric. `labels()` validates and
# locks on every call; the label values are bounded (methods, route templates, statuses),
# so each series is looked up once and kept.
_SERIES: dict[tuple[str, str, int], tuple[Any, Any]] = {}


def _series(method: str, route: str, status: int) -> tuple[Any, Any]:
    key = (method, route, status)
    series = _SERIES.get(key)
    if series is None:
        label = str(status)
        series = (HTTP_REQUESTS.labels(method, route, label),
                  HTTP_LATENCY.labels(method, route, label))
        _SERIES[key] = series
    return series


class AccessMiddleware:
    """Access log and metrics. The log line has the path but never the query string:
    query strings carry search terms, which are names."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # Shared with request.state, so `current_caller` can leave the caller for us.
        state: dict[str, Any] = scope.setdefault("state", {})
        status = 500
        started = time.perf_counter()

        async def send_and_note(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            elapsed = time.perf_counter() - started
            method = method_label(scope["method"])
            route = route_template(scope)
            requests, latency = _series(method, route, status)
            requests.inc()
            latency.observe(elapsed)
            fields: dict[str, Any] = {
                "method": method, "path": scope["path"], "route": route,
                "status": status, "duration_ms": round(elapsed * 1000, 2),
            }
            caller = state.get("caller")
            if caller is not None:
                fields["subject"] = caller.subject
                fields["role"] = caller.role.value
            if scope["path"] in PROBE_PATHS:
                access_log.debug("request", **fields)
            else:
                access_log.info("request", **fields)


class UnhandledErrorMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        response_started = False

        async def send_and_note(message: Message) -> None:
            nonlocal response_started
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        except Exception as exc:
            # The correlation id is still bound here, so the line can be found from the
            # id the caller was given. The traceback is redacted like everything else.
            error_log.error("unhandled_exception", method=scope["method"],
                            path=scope["path"], exc_info=exc)
            if response_started:
                raise  # too late for a problem document; let the server drop the connection
            await internal_error_response()(scope, receive, send)


class RequestBodyTooLarge(StarletteHTTPException):
    """Raised from `receive` when the streamed body passes the limit. An HTTPException so
    that FastAPI's body parsing re-raises it as-is (it turns anything else into a 400)
    and the problem handlers answer 413."""

    def __init__(self) -> None:
        super().__init__(413, "The request body is larger than this service accepts.")


class BodySizeLimitMiddleware:
    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    def _too_large(self) -> Any:
        return problem_response(
            413,
            f"The request body is larger than this service accepts "
            f"({self.max_body_bytes} bytes).",
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = header_value(scope, b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            # Refused before reading a byte, and before the app does any work.
            await self._too_large()(scope, receive, send)
            return

        # Chunked bodies (no Content-Length), or a Content-Length that lies.
        limit = self.max_body_bytes
        received = 0
        response_started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise RequestBodyTooLarge()
            return message

        async def send_and_note(message: Message) -> None:
            nonlocal response_started
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, send_and_note)
        except RequestBodyTooLarge:
            # Only when the app read the body outside FastAPI's exception handling.
            if response_started:
                raise
            await self._too_large()(scope, receive, send)


NUL_REFUSED = ("The request holds a NUL character (\\u0000), which no field accepts: "
               "the database cannot store one.")
# A JSON escape of U+0000 that is one: after an even number of backslashes (`\\u0000`
# is a backslash, then the text "u0000").
_JSON_NUL = re.compile(rb"(?<!\\)(?:\\\\)*\\u0000")


def _is_json(content_type: str | None) -> bool:
    media = (content_type or "").split(";", 1)[0].strip().lower()
    return media == "application/json" or media.endswith("+json")


class NulCharacterMiddleware:
    """422 for a request with the NUL character (U+0000) in its path, query or JSON
    body. PostgreSQL text cannot store one, so no field of any service can take it; let
    through, it fails in the database after validation passed, as a 500. (Raw, it is
    not valid JSON at all: the JSON parser refuses that already.) A JSON body is read
    whole before the app sees it, as the app would read it anyway; the size limit
    outside this middleware bounds it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if "\x00" in scope.get("path", "") or b"%00" in scope.get("query_string", b""):
            await problem_response(422, NUL_REFUSED)(scope, receive, send)
            return
        if not _is_json(header_value(scope, b"content-type")):
            await self.app(scope, receive, send)
            return
        body = await read_body(receive)
        if body is None:
            return  # the client went away before sending its body
        if b"\\u0000" in body and _JSON_NUL.search(body):
            await problem_response(422, NUL_REFUSED)(scope, receive, send)
            return
        await self.app(scope, body_then(body, receive), send)


async def read_body(receive: Receive) -> bytes | None:
    """The whole request body, or None if the client went away before sending it."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


def body_then(body: bytes, receive: Receive) -> Receive:
    """A `receive` for the app behind a middleware that read the body: the body, once;
    then the real channel (for disconnects)."""
    body_sent = False

    async def receive_body() -> Message:
        nonlocal body_sent
        if not body_sent:
            body_sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return receive_body
