"""`Idempotency-Key` for mutating endpoints: a retried command answers what the first
attempt answered, and does not run twice.

A rep on a train taps "voted", the connection drops, the app retries: with the same
`Idempotency-Key` the retry gets the stored answer (and `Idempotent-Replayed: true`)
instead of running the command again. Domain commands are idempotent where they can be
(a second voted mark is no second vote); this covers the rest (a conversation logged
twice, a ballot created twice) and gives the client the original answer either way.

How a POST/PUT/PATCH/DELETE carrying the header is handled:

- the key is checked (1-255 printable ASCII characters, one header), else 422;
- the body is read (once; the app is handed the same bytes) and hashed;
- a `pending` row is claimed in `idempotency_keys` with one `INSERT ... ON CONFLICT`;
  whoever inserts it runs the request, everyone else reads the row:
  - done, same request: the stored status, content type and body are replayed;
  - same key for a different method, path or body: 422;
  - still pending: 409 with `Retry-After`;
- the response is buffered and stored before it is sent (so a client that saw an
  answer will see it again); 5xx, 408 and 429 answers and `Cache-Control: no-store`
  responses are not stored: the row is deleted and a retry runs again.

Keys are scoped to the caller (their verified token's role and subject), so one caller
can never replay another's response, and a refreshed token still finds its keys.
Requests without a token we accept are passed through untouched: the app answers 401,
or the endpoint is a signed webhook, which dedupes by the provider's own ids.

What is stored: hashes of the scope, the key (free text a client chose) and the body;
the method and path (pseudonymous ids only); the response's status, content type,
`Location` and body. Responses that carry contact values in clear (a reveal, the
service-to-service contact channels) must be listed in `exclude_paths` so they are never
stored; erasure can call `forget` for paths naming the member.

A pending row whose request died with its process (crash, deploy) is taken over by a
retry of the same request after `pending_timeout`; rows older than `ttl` are ignored
and purged now and then by whichever request comes along.
"""

from __future__ import annotations

import hashlib
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Literal

import sqlalchemy as sa
import structlog
from prometheus_client import Counter
from sqlalchemy.dialects.postgresql import BYTEA, JSONB, UUID, insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .auth import Caller, InvalidToken, TokenVerifier
from .middleware import body_then, header_values, read_body
from .problems import problem_response

__all__ = [
    "IDEMPOTENCY_KEY_HEADER",
    "REPLAYED_HEADER",
    "IdempotencyMiddleware",
    "RequestFingerprint",
    "StoredResponse",
    "caller_scope_hash",
    "forget",
    "header_scope_hash",
    "idempotency_keys",
    "is_valid_key",
    "key_hash",
    "metadata",
    "purge_expired",
    "request_hash",
]

log = structlog.get_logger("turnout_kit.idempotency")

IDEMPOTENCY_KEY_HEADER = "Idempotency-Key"
_KEY_HEADER = IDEMPOTENCY_KEY_HEADER.lower().encode("latin-1")
REPLAYED_HEADER = "Idempotent-Replayed"
MUTATING_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})

DEFAULT_TTL = timedelta(hours=24)
# Longer than any request should take (a 25 MiB roster import takes seconds): a pending
# row older than this belongs to a request that died with its process.
DEFAULT_PENDING_TIMEOUT = timedelta(minutes=2)
# Seconds a caller is told to wait when the first attempt is still running.
RETRY_AFTER_SECONDS = 1
PURGE_INTERVAL_SECONDS = 60.0
PURGE_BATCH = 5_000

# Printable ASCII, space included: what RFC 9110 allows in a field value, less the
# obs-text bytes. Leading and trailing spaces never arrive (servers strip them).
_VALID_KEY = re.compile(r"[\x20-\x7e]{1,255}")
# Answers that say "not now" rather than "this is the outcome": a retry must run again.
_TRANSIENT_STATUSES = frozenset({408, 429})
# Response headers replayed besides the body. Not Set-Cookie, not X-Correlation-ID (the
# replay has its own), nothing else that may describe the first request's connection.
_STORED_HEADERS = ("content-type", "location")
_CLAIM_ATTEMPTS = 5

PENDING = "pending"
DONE = "done"

OUTCOMES = Counter(
    "idempotency_requests_total",
    "Requests carrying an Idempotency-Key, by what became of them.",
    ["outcome"],  # executed, replayed, in_progress, mismatch, invalid_key, not_stored
)


# -- the table --------------------------------------------------------------------------

metadata = sa.MetaData()

# One row per (caller, key). `lease` names the attempt that owns a pending row, so an
# attempt whose row was taken over (it ran past `pending_timeout`) cannot overwrite or
# delete its successor's.
idempotency_keys = sa.Table(
    "idempotency_keys",
    metadata,
    sa.Column("scope_hash", sa.Text, primary_key=True),
    sa.Column("key_hash", sa.Text, primary_key=True),
    sa.Column("lease", UUID(as_uuid=True), nullable=False),
    sa.Column("method", sa.Text, nullable=False),
    sa.Column("path", sa.Text, nullable=False),
    sa.Column("request_hash", sa.Text, nullable=False),
    sa.Column("state", sa.Text, nullable=False),
    sa.Column("status_code", sa.SmallInteger),
    sa.Column("response_headers", JSONB),
    sa.Column("response_body", BYTEA),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False,
              server_default=sa.func.now()),
    sa.Column("completed_at", sa.DateTime(timezone=True)),
    sa.CheckConstraint("state IN ('pending', 'done')", name="idempotency_keys_state"),
    sa.CheckConstraint("state = 'pending' OR status_code IS NOT NULL",
                       name="idempotency_keys_done_has_status"),
    sa.Index("idempotency_keys_created_at", "created_at"),
)


# -- hashing ----------------------------------------------------------------------------

def _sha256(*parts: bytes) -> str:
    digest = hashlib.sha256()
    for part in parts:
        # Length-prefixed, so ("ab", "c") and ("a", "bc") differ.
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return digest.hexdigest()


def caller_scope_hash(caller: Caller) -> str:
    """Whose keys these are: the verified role and subject, not the token itself, so a
    retry after a token refresh still finds its key."""
    return _sha256(b"caller", caller.role.value.encode(), caller.subject.encode())


def header_scope_hash(authorization: str) -> str:
    """The scope when the app verifies no tokens: the Authorization header as sent."""
    return _sha256(b"authorization", authorization.encode("latin-1"))


def key_hash(key: str) -> str:
    # Keys are free text chosen by clients; a careless one may hold a name. Stored hashed.
    return _sha256(b"key", key.encode("ascii"))


def request_hash(query_string: bytes, body: bytes) -> str:
    """What makes two requests with the same method and path the same request. The
    query string counts (it changes what a command does) but is never stored: search
    terms are names."""
    return _sha256(b"request", query_string, body)


def is_valid_key(value: str) -> bool:
    return _VALID_KEY.fullmatch(value) is not None


@dataclass(frozen=True, slots=True)
class RequestFingerprint:
    scope_hash: str
    key_hash: str
    method: str
    path: str
    request_hash: str


@dataclass(frozen=True, slots=True)
class StoredResponse:
    status_code: int
    headers: list[tuple[str, str]]
    body: bytes


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do with a request whose key has been looked up."""

    kind: Literal["run", "replay", "in_progress", "mismatch"]
    lease: uuid.UUID | None = None
    response: StoredResponse | None = None


# -- storage ----------------------------------------------------------------------------

@asynccontextmanager
async def _autocommit(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """A connection on which each statement commits on its own. Every statement here is
    atomic by itself, and leaving out BEGIN and COMMIT saves two round trips on each."""
    async with engine.connect() as conn:
        yield await conn.execution_options(isolation_level="AUTOCOMMIT")


def _pk(request: RequestFingerprint) -> sa.ColumnElement[bool]:
    t = idempotency_keys
    return sa.and_(t.c.scope_hash == request.scope_hash, t.c.key_hash == request.key_hash)


def _older_than(age: timedelta) -> sa.ColumnElement[bool]:
    return idempotency_keys.c.created_at < sa.func.now() - sa.literal(age, sa.Interval)


async def claim(engine: AsyncEngine, request: RequestFingerprint, *, ttl: timedelta,
                pending_timeout: timedelta) -> Decision:
    """Take the key for this request, or say what the row already there means.

    One upsert decides who runs: it inserts a pending row, or takes over one that has
    expired (or was abandoned by the same request), and returns the new lease; if it
    returns nothing, the row belongs to someone else and is read to decide.
    """
    t = idempotency_keys
    lease = uuid.uuid4()
    values = insert(t).values(
        scope_hash=request.scope_hash, key_hash=request.key_hash, lease=lease,
        method=request.method, path=request.path, request_hash=request.request_hash,
        state=PENDING, created_at=sa.func.now(),
    )
    new = values.excluded
    same_request = sa.and_(t.c.method == new.method, t.c.path == new.path,
                           t.c.request_hash == new.request_hash)
    abandoned = sa.and_(t.c.state == PENDING, _older_than(pending_timeout), same_request)
    stmt = values.on_conflict_do_update(
        index_elements=[t.c.scope_hash, t.c.key_hash],
        set_={
            "lease": new.lease, "method": new.method, "path": new.path,
            "request_hash": new.request_hash, "state": PENDING, "status_code": None,
            "response_headers": None, "response_body": None,
            "created_at": sa.func.now(), "completed_at": None,
        },
        where=sa.or_(_older_than(ttl), abandoned),
    ).returning(t.c.lease)
    existing = sa.select(
        t.c.state, t.c.method, t.c.path, t.c.request_hash, t.c.status_code,
        t.c.response_headers, t.c.response_body,
    ).where(_pk(request))

    for _ in range(_CLAIM_ATTEMPTS):
        async with _autocommit(engine) as conn:
            if (await conn.execute(stmt)).first() is not None:
                return Decision("run", lease=lease)
            row = (await conn.execute(existing)).first()
        if row is None:
            continue  # released (its attempt failed) between the two statements: again
        if (row.method, row.path, row.request_hash) != (
            request.method, request.path, request.request_hash
        ):
            return Decision("mismatch")
        if row.state == PENDING:
            return Decision("in_progress")
        return Decision("replay", response=StoredResponse(
            status_code=row.status_code,
            headers=[(name, value) for name, value in row.response_headers or ()],
            body=bytes(row.response_body or b""),
        ))
    # Claimed and released over and over by others: tell this one to come back.
    return Decision("in_progress")


async def store(engine: AsyncEngine, request: RequestFingerprint, lease: uuid.UUID,
                response: StoredResponse) -> bool:
    """Record the outcome; False if the row is no longer this attempt's."""
    t = idempotency_keys
    async with _autocommit(engine) as conn:
        result = await conn.execute(
            sa.update(t)
            .where(_pk(request), t.c.lease == lease, t.c.state == PENDING)
            .values(state=DONE, status_code=response.status_code,
                    response_headers=[list(pair) for pair in response.headers],
                    response_body=response.body, completed_at=sa.func.now())
        )
    return result.rowcount == 1


async def release(engine: AsyncEngine, request: RequestFingerprint, lease: uuid.UUID) -> None:
    """Give the key back, so a retry runs the request again."""
    t = idempotency_keys
    async with _autocommit(engine) as conn:
        await conn.execute(
            sa.delete(t).where(_pk(request), t.c.lease == lease, t.c.state == PENDING)
        )


async def purge_expired(engine: AsyncEngine, *, ttl: timedelta = DEFAULT_TTL,
                        batch: int = PURGE_BATCH) -> int:
    """Delete up to `batch` rows older than `ttl`; returns how many went.

    SKIP LOCKED: rows another request is taking over right now are left to it, and two
    instances purging at once do not queue behind each other.
    """
    async with engine.begin() as conn:
        result = await conn.execute(
            sa.text(
                "DELETE FROM idempotency_keys AS k USING ("
                "  SELECT scope_hash, key_hash FROM idempotency_keys"
                "  WHERE created_at < now() - :ttl"
                "  ORDER BY created_at LIMIT :batch FOR UPDATE SKIP LOCKED"
                ") AS old "
                "WHERE k.scope_hash = old.scope_hash AND k.key_hash = old.key_hash"
                "  AND k.created_at < now() - :ttl"
            ).bindparams(sa.bindparam("ttl", type_=sa.Interval)),
            {"ttl": ttl, "batch": batch},
        )
    return result.rowcount


async def forget(conn: AsyncConnection, *, path_containing: str) -> int:
    """Delete stored responses of requests whose path contains this text, e.g. a
    member id on erasure, in the caller's transaction. Returns how many went."""
    if not path_containing:
        raise ValueError("forget needs a non-empty path fragment")
    t = idempotency_keys
    result = await conn.execute(
        sa.delete(t).where(sa.func.strpos(t.c.path, path_containing) > 0)
    )
    return result.rowcount


# -- the middleware ---------------------------------------------------------------------

PathPattern = str | re.Pattern[str]


def _compile_exclusions(patterns: Sequence[PathPattern]) -> Callable[[str], bool]:
    """A pattern starting with `^` (or a compiled one) is a regex matched at the start
    of the path; any other string is a path prefix."""
    prefixes = tuple(p for p in patterns if isinstance(p, str) and not p.startswith("^"))
    regexes = [p if isinstance(p, re.Pattern) else re.compile(p)
               for p in patterns if not isinstance(p, str) or p.startswith("^")]

    def excluded(path: str) -> bool:
        return path.startswith(prefixes) or any(r.match(path) for r in regexes)

    return excluded


def _storable(status: int, headers: Headers) -> bool:
    if status >= 500 or status in _TRANSIENT_STATUSES:
        return False
    return "no-store" not in headers.get("cache-control", "").lower()


class IdempotencyMiddleware:
    """Plain ASGI (see middleware.py for why). Sits inside the body size limit, which
    bounds what it reads, and inside the access log and correlation id, so replays and
    its own problems are logged and carry the id like any other response."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        engine_getter: Callable[[], AsyncEngine | None],
        exclude_paths: Sequence[PathPattern] = (),
        ttl: timedelta = DEFAULT_TTL,
        pending_timeout: timedelta = DEFAULT_PENDING_TIMEOUT,
        verifier_getter: Callable[[], TokenVerifier | None] | None = None,
        purge_interval: float = PURGE_INTERVAL_SECONDS,
    ) -> None:
        if ttl <= timedelta(0) or pending_timeout <= timedelta(0):
            raise ValueError("ttl and pending_timeout must be positive")
        self.app = app
        self.engine_getter = engine_getter
        self.excluded = _compile_exclusions(exclude_paths)
        self.ttl = ttl
        self.pending_timeout = pending_timeout
        self.verifier_getter = verifier_getter
        self.purge_interval = purge_interval
        self._next_purge = 0.0  # monotonic time; 0 = at the first chance
        self._purging = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in MUTATING_METHODS:
            await self.app(scope, receive, send)
            return
        keys = header_values(scope, _KEY_HEADER)
        engine = self.engine_getter() if keys else None
        if engine is None or self.excluded(scope["path"]):
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        if len(keys) != 1 or not is_valid_key(keys[0]):
            OUTCOMES.labels("invalid_key").inc()
            await problem_response(
                422,
                "The Idempotency-Key header must appear once, with 1 to 255 printable "
                "ASCII characters (a UUID is a good choice).",
                errors=[{"field": "header.Idempotency-Key",
                         "message": "1 to 255 printable ASCII characters"}],
            )(scope, receive, send)
            return
        scope_hash = await self._scope_hash(scope, headers)
        if scope_hash is None:
            # No token we accept: the app answers 401 (or it is an open endpoint).
            await self.app(scope, receive, send)
            return
        body = await read_body(receive)
        if body is None:
            return  # the client went away before sending its body
        request = RequestFingerprint(
            scope_hash=scope_hash, key_hash=key_hash(keys[0]), method=scope["method"],
            path=scope["path"], request_hash=request_hash(scope["query_string"], body),
        )
        decision = await claim(engine, request, ttl=self.ttl,
                               pending_timeout=self.pending_timeout)
        if decision.kind == "run":
            assert decision.lease is not None
            await self._run(engine, request, decision.lease, body, scope, receive, send)
            await self._maybe_purge(engine)
            return
        OUTCOMES.labels(decision.kind).inc()
        if decision.kind == "replay":
            assert decision.response is not None
            await _replay(decision.response, send)
        elif decision.kind == "mismatch":
            await problem_response(
                422,
                "This Idempotency-Key was used for a different request (method, path or "
                "body). Use a new key for a new request.",
            )(scope, receive, send)
        else:
            await problem_response(
                409,
                "A request with this Idempotency-Key is still being processed. Retry "
                "shortly to get its answer.",
                headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
            )(scope, receive, send)

    async def _scope_hash(self, scope: Scope, headers: Headers) -> str | None:
        authorization = headers.get("authorization")
        if not authorization:
            return None
        verifier = self.verifier_getter() if self.verifier_getter is not None else None
        if verifier is None:
            return header_scope_hash(authorization)
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None
        try:
            caller = await verifier.verify_async(token.strip())
        except InvalidToken:
            return None
        # For the access log, which would otherwise not know who got a replay or a 409.
        scope.setdefault("state", {})["caller"] = caller
        return caller_scope_hash(caller)

    async def _run(self, engine: AsyncEngine, request: RequestFingerprint,
                   lease: uuid.UUID, body: bytes, scope: Scope, receive: Receive,
                   send: Send) -> None:
        messages: list[Message] = []

        async def buffer(message: Message) -> None:
            messages.append(message)

        try:
            await self.app(scope, body_then(body, receive), buffer)
        except BaseException:
            await self._release_quietly(engine, request, lease)
            raise
        start = next((m for m in messages if m["type"] == "http.response.start"), None)
        if start is None:
            await self._release_quietly(engine, request, lease)
            return
        response_headers = Headers(raw=start.get("headers", []))
        if _storable(start["status"], response_headers):
            stored = StoredResponse(
                status_code=start["status"],
                headers=[(name, response_headers[name]) for name in _STORED_HEADERS
                         if name in response_headers],
                body=b"".join(m.get("body", b"") for m in messages
                              if m["type"] == "http.response.body"),
            )
            try:
                if await store(engine, request, lease, stored):
                    OUTCOMES.labels("executed").inc()
                else:
                    # Ran past pending_timeout and a retry took over: its answer stands.
                    log.warning("idempotency_lease_lost", method=request.method,
                                path=request.path)
            except Exception:
                # The command has run; the client gets its answer. The row stays pending
                # until pending_timeout, then a retry runs again.
                log.exception("idempotency_store_failed", method=request.method,
                              path=request.path)
        else:
            OUTCOMES.labels("not_stored").inc()
            await self._release_quietly(engine, request, lease)
        for message in messages:
            await send(message)

    async def _release_quietly(self, engine: AsyncEngine, request: RequestFingerprint,
                               lease: uuid.UUID) -> None:
        try:
            await release(engine, request, lease)
        except Exception:
            # Not fatal: the pending row is taken over after pending_timeout.
            log.exception("idempotency_release_failed", method=request.method,
                          path=request.path)

    async def _maybe_purge(self, engine: AsyncEngine) -> None:
        """Now and then, after a response has gone out, delete a batch of expired rows.
        Runs in the request that happens to come along: no task of its own to start and
        stop, and an idle service has nothing to purge."""
        now = time.monotonic()
        if self._purging or now < self._next_purge:
            return
        self._purging = True
        try:
            deleted = await purge_expired(engine, ttl=self.ttl)
            # A full batch means there is more: let the next request continue.
            self._next_purge = now if deleted >= PURGE_BATCH else now + self.purge_interval
            if deleted:
                log.info("idempotency_keys_purged", rows=deleted)
        except Exception:
            self._next_purge = now + self.purge_interval
            log.exception("idempotency_purge_failed")
        finally:
            self._purging = False


async def _replay(response: StoredResponse, send: Send) -> None:
    headers = [(name.encode("latin-1"), value.encode("latin-1"))
               for name, value in response.headers]
    headers.append((REPLAYED_HEADER.lower().encode(), b"true"))
    if response.status_code >= 200 and response.status_code not in (204, 304):
        headers.append((b"content-length", str(len(response.body)).encode()))
    await send({"type": "http.response.start", "status": response.status_code,
                "headers": headers})
    await send({"type": "http.response.body", "body": response.body})
