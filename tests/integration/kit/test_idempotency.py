"""Idempotency-Key against a real PostgreSQL, through an app built by `create_app`.

The app's command bumps a counter row in the database, so "ran once" is what the
database says, not what the middleware claims. Each response carries a fresh
`request_id`, so a replay is told apart from a second run by its body too.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from fastapi import APIRouter, FastAPI, Request, Response
from pydantic import BaseModel
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.support.services import running
from turnout_kit.app import create_app
from turnout_kit.auth import CurrentCaller
from turnout_kit.db import create_engine
from turnout_kit.idempotency import REPLAYED_HEADER, forget, idempotency_keys
from turnout_kit.idempotency import metadata as idempotency_metadata
from turnout_kit.problems import Problem
from turnout_kit.settings import DEVELOPMENT_JWT_SECRET, ServiceSettings

pytestmark = pytest.mark.integration

MAX_BODY = 4096
MOBILE = "+447700900123"

app_metadata = sa.MetaData()
counters = sa.Table(
    "counters", app_metadata,
    sa.Column("name", sa.Text, primary_key=True),
    sa.Column("value", sa.Integer, nullable=False),
)


class Bump(BaseModel):
    by: int = 1


async def bump_counter(engine: AsyncEngine, name: str, by: int) -> int:
    stmt = insert(counters).values(name=name, value=by)
    stmt = stmt.on_conflict_do_update(
        index_elements=[counters.c.name], set_={"value": counters.c.value + by}
    ).returning(counters.c.value)
    async with engine.begin() as conn:
        return int(await conn.scalar(stmt))


def make_router() -> APIRouter:
    router = APIRouter()

    @router.post("/counters/{name}", status_code=201)
    async def bump(name: str, body: Bump, request: Request, response: Response,
                   caller: CurrentCaller) -> dict[str, Any]:
        state = request.app.state
        if state.gate is not None:
            await state.gate.wait()
        if state.fail_next is not None:
            failure, state.fail_next = state.fail_next, None
            if failure == "exception":
                raise RuntimeError("the database fell over")
            raise Problem(503, detail="Try again in a moment.")
        value = await bump_counter(state.engine, name, body.by)
        response.headers["Location"] = f"/counters/{name}"
        return {"name": name, "value": value, "actor": caller.actor,
                "request_id": uuid.uuid4().hex}

    @router.get("/counters/{name}")
    async def read(name: str, request: Request) -> dict[str, Any]:
        async with request.app.state.engine.connect() as conn:
            value = await conn.scalar(sa.select(counters.c.value).where(counters.c.name == name))
        return {"name": name, "value": value or 0}

    @router.post("/members/{name}/reveal")
    async def reveal(name: str, request: Request, _caller: CurrentCaller) -> dict[str, Any]:
        await bump_counter(request.app.state.engine, name, 1)
        return {"mobile": MOBILE}

    @router.post("/private/{name}")
    async def private(name: str, request: Request, response: Response,
                      _caller: CurrentCaller) -> dict[str, Any]:
        await bump_counter(request.app.state.engine, name, 1)
        response.headers["Cache-Control"] = "no-store"
        return {"mobile": MOBILE}

    return router


def build_app(database_url: str) -> FastAPI:
    async def open_db(app: FastAPI) -> None:
        engine = create_engine(database_url, application_name="idempotency-test")
        async with engine.begin() as conn:
            await conn.run_sync(app_metadata.create_all)
            await conn.run_sync(idempotency_metadata.create_all)
        app.state.engine = engine

    async def close_db(app: FastAPI) -> None:
        await app.state.engine.dispose()

    settings = ServiceSettings(jwt_secret=DEVELOPMENT_JWT_SECRET, max_body_bytes=MAX_BODY)
    app = create_app(settings, title="idempotency-test", version="1", routers=[make_router()],
                     on_startup=[open_db], on_shutdown=[close_db],
                     idempotency_exclude=[r"^/members/[^/]+/reveal$"])
    app.state.gate = None
    app.state.fail_next = None
    return app


class Service:
    def __init__(self, app: FastAPI, client: httpx.AsyncClient, tokens: Any) -> None:
        self.app = app
        self.client = client
        self.auth = tokens("rep", branches=["B1"], subject="rep-1")
        self.tokens = tokens

    async def post(self, path: str, key: str | None, json: Any = None,
                   auth: dict[str, str] | None = None, **kwargs: Any) -> httpx.Response:
        headers = dict(auth or self.auth)
        if key is not None:
            headers["Idempotency-Key"] = key
        return await self.client.post(path, json={} if json is None else json,
                                      headers=headers, **kwargs)

    async def counter(self, name: str) -> int:
        async with self.app.state.engine.connect() as conn:
            value = await conn.scalar(sa.select(counters.c.value).where(counters.c.name == name))
        return int(value or 0)

    async def rows(self) -> list[Any]:
        async with self.app.state.engine.connect() as conn:
            return list(await conn.execute(sa.select(idempotency_keys)))


@pytest.fixture
async def service(database_url: str, tokens: Any) -> AsyncIterator[Service]:
    app = build_app(database_url)
    async with running(app) as client:
        yield Service(app, client, tokens)


def new_key() -> str:
    return str(uuid.uuid4())


def assert_problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["status"] == status
    return body


# -- replay -----------------------------------------------------------------------------

async def test_same_key_twice_runs_once_and_replays_the_same_answer(service: Service) -> None:
    key = new_key()
    first = await service.post("/counters/a", key, {"by": 1})
    second = await service.post("/counters/a", key, {"by": 1})

    assert first.status_code == 201
    assert REPLAYED_HEADER not in first.headers
    assert second.status_code == 201
    assert second.headers[REPLAYED_HEADER] == "true"
    assert second.content == first.content  # same request_id: not run again
    assert second.headers["content-type"] == first.headers["content-type"]
    assert second.headers["location"] == "/counters/a"
    # The replay is a response of its own: its own correlation id.
    assert second.headers["x-correlation-id"] != first.headers["x-correlation-id"]
    assert await service.counter("a") == 1
    [row] = await service.rows()
    assert (row.state, row.status_code, row.method, row.path) == ("done", 201, "POST",
                                                                  "/counters/a")


async def test_a_refreshed_token_of_the_same_caller_still_replays(service: Service) -> None:
    key = new_key()
    first = await service.post("/counters/a", key)
    refreshed = service.tokens("rep", branches=["B1"], subject="rep-1")
    assert refreshed != service.auth
    again = await service.post("/counters/a", key, auth=refreshed)

    assert again.headers[REPLAYED_HEADER] == "true"
    assert again.content == first.content
    assert await service.counter("a") == 1


async def test_another_caller_with_the_same_key_gets_their_own_run(service: Service) -> None:
    key = new_key()
    mine = await service.post("/counters/a", key)
    theirs = await service.post("/counters/a", key,
                                auth=service.tokens("rep", branches=["B1"], subject="rep-2"))

    assert theirs.status_code == 201
    assert REPLAYED_HEADER not in theirs.headers
    assert theirs.json()["request_id"] != mine.json()["request_id"]
    assert await service.counter("a") == 2


async def test_a_request_without_a_key_behaves_as_usual(service: Service) -> None:
    first = await service.post("/counters/a", None)
    second = await service.post("/counters/a", None)

    assert [first.status_code, second.status_code] == [201, 201]
    assert REPLAYED_HEADER not in second.headers
    assert await service.counter("a") == 2
    assert await service.rows() == []


async def test_a_key_on_a_get_is_ignored(service: Service) -> None:
    response = await service.client.get("/counters/a", headers={"Idempotency-Key": "\x01"})
    assert response.status_code == 200
    assert await service.rows() == []


# -- misuse -----------------------------------------------------------------------------

async def test_the_same_key_for_a_different_request_is_refused(service: Service) -> None:
    key = new_key()
    await service.post("/counters/a", key, {"by": 1})

    other_body = await service.post("/counters/a", key, {"by": 5})
    other_path = await service.post("/counters/b", key, {"by": 1})
    other_query = await service.post("/counters/a", key, {"by": 1}, params={"dry": "1"})
    other_method = await service.client.put(
        "/counters/a", json={"by": 1}, headers={**service.auth, "Idempotency-Key": key}
    )

    for response in (other_body, other_path, other_query, other_method):
        problem = assert_problem(response, 422)
        assert "different request" in problem["detail"]
        assert "correlation_id" in problem
    assert await service.counter("a") == 1
    assert await service.counter("b") == 0


@pytest.mark.parametrize("value", [
    b"",
    b"k" * 256,
    "caf\u00e9".encode(),
    b"tab\there",
    b"bell\x07",
])
async def test_an_invalid_key_is_refused_and_changes_nothing(service: Service,
                                                            value: bytes) -> None:
    response = await service.client.post(
        "/counters/a", json={}, headers=[*service.auth.items(), ("Idempotency-Key", value)]
    )
    problem = assert_problem(response, 422)
    assert problem["errors"][0]["field"] == "header.Idempotency-Key"
    assert await service.counter("a") == 0
    assert await service.rows() == []


async def test_two_key_headers_are_refused(service: Service) -> None:
    response = await service.client.post(
        "/counters/a", json={},
        headers=[*service.auth.items(), ("Idempotency-Key", "one"), ("Idempotency-Key", "two")],
    )
    assert_problem(response, 422)
    assert await service.counter("a") == 0


async def test_the_longest_valid_key_is_accepted(service: Service) -> None:
    key = "k" * 255
    await service.post("/counters/a", key)
    again = await service.post("/counters/a", key)
    assert again.headers[REPLAYED_HEADER] == "true"
    assert await service.counter("a") == 1


async def test_without_a_valid_token_nothing_is_stored(service: Service) -> None:
    response = await service.post("/counters/a", new_key(),
                                  auth={"Authorization": "Bearer not-a-token"})
    assert_problem(response, 401)
    assert await service.rows() == []


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "chunked"])
async def test_a_body_over_the_limit_is_refused_before_any_claim(service: Service,
                                                                 declared: bool) -> None:
    body = b"{" + b" " * MAX_BODY + b"}"

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(0, len(body), 1000):
            yield body[i:i + 1000]

    response = await service.client.post(
        "/counters/a", content=body if declared else chunks(),
        headers={**service.auth, "Idempotency-Key": new_key(),
                 "Content-Type": "application/json"},
    )
    assert_problem(response, 413)
    assert await service.rows() == []
    assert await service.counter("a") == 0


# -- concurrency ------------------------------------------------------------------------

async def test_concurrent_retries_run_once(service: Service) -> None:
    key = new_key()
    responses = await asyncio.gather(
        *(service.post("/counters/a", key, {"by": 1}) for _ in range(10))
    )

    assert await service.counter("a") == 1
    ran = [r for r in responses if r.status_code == 201 and REPLAYED_HEADER not in r.headers]
    assert len(ran) == 1
    for r in responses:
        if r is ran[0]:
            continue
        if r.status_code == 409:
            assert r.headers["retry-after"] == "1"
        else:
            assert r.headers[REPLAYED_HEADER] == "true"
            assert r.content == ran[0].content


async def test_retries_while_the_first_is_running_get_409_then_the_answer(
    service: Service,
) -> None:
    key = new_key()
    service.app.state.gate = asyncio.Event()
    tasks = [asyncio.create_task(service.post("/counters/a", key)) for _ in range(10)]
    try:
        # The one that claimed the key waits at the gate; the other nine are answered.
        done: set[asyncio.Task[httpx.Response]] = set()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while len(done) < 9 and loop.time() < deadline:
            finished, _ = await asyncio.wait(
                [t for t in tasks if t not in done], timeout=deadline - loop.time(),
                return_when=asyncio.FIRST_COMPLETED,
            )
            done |= finished
        assert len(done) == 9, "the retries were not answered while the first was running"
        for task in done:
            problem = assert_problem(task.result(), 409)
            assert task.result().headers["retry-after"] == "1"
            assert "still being processed" in problem["detail"]
        assert await service.counter("a") == 0
    finally:
        service.app.state.gate.set()
    [first] = [t for t in tasks if t not in done]
    original = await first
    assert original.status_code == 201

    retry = await service.post("/counters/a", key)
    assert retry.headers[REPLAYED_HEADER] == "true"
    assert retry.content == original.content
    assert await service.counter("a") == 1


async def test_a_different_request_while_the_first_is_running_is_refused(
    service: Service,
) -> None:
    key = new_key()
    service.app.state.gate = asyncio.Event()
    first = asyncio.create_task(service.post("/counters/a", key, {"by": 1}))
    try:
        await wait_for_row(service, state="pending")
        assert_problem(await service.post("/counters/a", key, {"by": 2}), 422)
    finally:
        service.app.state.gate.set()
    assert (await first).status_code == 201
    assert await service.counter("a") == 1


async def wait_for_row(service: Service, *, state: str, timeout: float = 10) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not any(r.state == state for r in await service.rows()):
        if loop.time() > deadline:
            raise AssertionError(f"no {state} row after {timeout}s")
        await asyncio.sleep(0.01)


async def test_a_request_abandoned_past_the_pending_timeout_is_taken_over(
    service: Service,
) -> None:
    key = new_key()
    service.app.state.gate = asyncio.Event()
    stuck = asyncio.create_task(service.post("/counters/a", key))
    try:
        await wait_for_row(service, state="pending")
        # As if its process had died three minutes ago.
        async with service.app.state.engine.begin() as conn:
            await conn.execute(sa.update(idempotency_keys).values(
                created_at=sa.func.now() - sa.text("interval '3 minutes'")))
        assert_problem(await service.post("/counters/a", key, {"by": 7}), 422)
        service.app.state.gate.set()  # the takeover must not wait at the gate
        service.app.state.gate = None
        takeover = await service.post("/counters/a", key)
        assert takeover.status_code == 201
        assert REPLAYED_HEADER not in takeover.headers
    finally:
        if service.app.state.gate is not None:
            service.app.state.gate.set()
    late = await stuck
    assert late.status_code == 201  # it ran (the domain command must be idempotent) ...

    # ... but the answer kept is the takeover's, which the next retry gets.
    retry = await service.post("/counters/a", key)
    assert retry.headers[REPLAYED_HEADER] == "true"
    assert retry.content == takeover.content


# -- what is not stored -----------------------------------------------------------------

@pytest.mark.parametrize("failure", ["exception", "503"])
async def test_a_server_error_is_not_stored_and_the_retry_runs(service: Service,
                                                               failure: str) -> None:
    key = new_key()
    service.app.state.fail_next = failure
    failed = await service.post("/counters/a", key)
    assert_problem(failed, 500 if failure == "exception" else 503)
    assert await service.rows() == []  # the pending row went with the failure

    retried = await service.post("/counters/a", key)
    assert retried.status_code == 201
    assert REPLAYED_HEADER not in retried.headers
    assert await service.counter("a") == 1

    replayed = await service.post("/counters/a", key)
    assert replayed.headers[REPLAYED_HEADER] == "true"
    assert await service.counter("a") == 1


async def test_an_excluded_path_is_never_stored(service: Service) -> None:
    key = new_key()
    first = await service.post("/members/m1/reveal", key)
    second = await service.post("/members/m1/reveal", key)

    assert [first.status_code, second.status_code] == [200, 200]
    assert REPLAYED_HEADER not in second.headers
    assert await service.counter("m1") == 2
    assert await service.rows() == []


async def test_a_no_store_response_is_not_stored(service: Service) -> None:
    key = new_key()
    await service.post("/private/p1", key)
    again = await service.post("/private/p1", key)

    assert again.status_code == 200
    assert REPLAYED_HEADER not in again.headers
    assert await service.counter("p1") == 2
    assert await service.rows() == []


# -- expiry -----------------------------------------------------------------------------

async def test_an_expired_key_runs_again(service: Service) -> None:
    key = new_key()
    first = await service.post("/counters/a", key)
    async with service.app.state.engine.begin() as conn:
        await conn.execute(sa.update(idempotency_keys).values(
            created_at=sa.func.now() - sa.text("interval '25 hours'")))

    again = await service.post("/counters/a", key)
    assert again.status_code == 201
    assert REPLAYED_HEADER not in again.headers
    assert again.json()["request_id"] != first.json()["request_id"]
    assert await service.counter("a") == 2


async def test_expired_rows_are_purged_by_a_later_request(database_url: str,
                                                          tokens: Any) -> None:
    app = build_app(database_url)
    async with running(app) as client:
        old = [{"scope_hash": "s", "key_hash": f"k{i}", "lease": uuid.uuid4(),
                "method": "POST", "path": "/counters/x", "request_hash": "h",
                "state": "done", "status_code": 201, "response_body": b"{}"}
               for i in range(3)]
        async with app.state.engine.begin() as conn:
            await conn.execute(sa.insert(idempotency_keys), old)
            await conn.execute(sa.update(idempotency_keys).values(
                created_at=sa.func.now() - sa.text("interval '25 hours'")))
        service = Service(app, client, tokens)

        response = await service.post("/counters/a", new_key())
        assert response.status_code == 201
        rows = await service.rows()
        assert [r.path for r in rows] == ["/counters/a"]


async def test_forget_deletes_the_responses_about_one_member(service: Service) -> None:
    await service.post("/counters/member-123", new_key())
    await service.post("/counters/member-456", new_key())

    async with service.app.state.engine.begin() as conn:
        assert await forget(conn, path_containing="member-123") == 1
    assert [r.path for r in await service.rows()] == ["/counters/member-456"]
