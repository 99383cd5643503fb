"""The app factory: operational endpoints, errors, limits, correlation ids, lifespan."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import APIRouter, FastAPI, Request
from pydantic import BaseModel, Field

from turnout_kit import startup as startup_module
from turnout_kit.app import create_app
from turnout_kit.auth import CurrentCaller, issue_token
from turnout_kit.problems import Problem
from turnout_kit.readiness import ReadinessCheck
from turnout_kit.settings import ServiceSettings

from .conftest import TEST_SECRET

pytestmark = pytest.mark.unit

PHONE = "07700 900123"


class ContactIn(BaseModel):
    mobile: str = Field(pattern=r"^\+[1-9]\d{7,14}$")
    email_consent: bool


def make_router() -> APIRouter:
    router = APIRouter()

    @router.get("/items/{item_id}")
    async def item(item_id: int) -> dict[str, int]:
        return {"item_id": item_id}

    @router.post("/contacts")
    async def contacts(body: ContactIn) -> dict[str, str]:
        return {"ok": "yes"}

    @router.post("/upload")
    async def upload(request: Request) -> dict[str, int]:
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
        return {"size": size}

    @router.get("/boom")
    async def boom() -> None:
        raise RuntimeError(f"provider said no to {PHONE}")

    @router.get("/conflict")
    async def conflict() -> None:
        raise Problem(409, detail="Ballot B1 is closed.", type="https://turnout.example/closed",
                      errors=[{"field": "ballot_id", "message": "closed"}])

    return router


def settings(**overrides: Any) -> ServiceSettings:
    return ServiceSettings(jwt_secret=TEST_SECRET, max_body_bytes=1024, **overrides)


def client_for(app: FastAPI) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://svc")


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings(), title="test", version="1", routers=[make_router()])
    async with client_for(app) as c:
        yield c


def assert_problem(r: httpx.Response, status: int) -> dict[str, Any]:
    assert r.status_code == status
    assert r.headers["content-type"] == "application/problem+json"
    body = r.json()
    assert body["status"] == status
    assert body["type"]
    assert body["title"]
    assert body["correlation_id"] == r.headers["x-correlation-id"]
    return body


# -- operational endpoints -----------------------------------------------------------

async def test_healthz(client: httpx.AsyncClient) -> None:
    r = await client.get("/healthz")
    assert r.status_code == 200
    assert r.json() == {"status": "ok"}


async def test_readyz_runs_every_check() -> None:
    calls: list[str] = []

    async def ok() -> None:
        calls.append("ok")

    app = create_app(settings(), title="t", version="1",
                     readiness_checks=[ReadinessCheck("database", ok)])
    app.state.readiness_checks.append(ReadinessCheck("kafka", ok))  # added at startup
    async with client_for(app) as c:
        r = await c.get("/readyz")
    assert r.status_code == 200
    assert r.json() == {"status": "ready", "checks": {"database": "ok", "kafka": "ok"}}
    assert calls == ["ok", "ok"]


async def test_readyz_is_503_naming_what_failed() -> None:
    async def ok() -> None:
        return None

    async def broken() -> None:
        raise ConnectionRefusedError("db.internal:5432 user=svc refused")

    async def hangs() -> None:
        await asyncio.sleep(10)

    async def says_no() -> bool:
        return False

    app = create_app(settings(), title="t", version="1", readiness_checks=[
        ReadinessCheck("database", broken), ReadinessCheck("kafka", hangs, timeout=0.05),
        ReadinessCheck("cache", ok), ReadinessCheck("provider", says_no),
    ])
    async with client_for(app) as c:
        r = await c.get("/readyz")
    assert r.status_code == 503
    body = r.json()
    assert body["status"] == "unavailable"
    assert body["failed"] == ["database", "kafka", "provider"]
    assert body["checks"]["database"] == "failed: ConnectionRefusedError"
    assert body["checks"]["kafka"].startswith("timeout")
    assert body["checks"]["cache"] == "ok"
    assert "db.internal" not in r.text  # no hosts or users in the probe's answer


@pytest.mark.no_log_guard  # requests a path holding a phone number on purpose
async def test_metrics_count_requests_by_route_template(client: httpx.AsyncClient) -> None:
    await client.get("/items/41")
    await client.get("/items/42")
    await client.get("/no/such/path/07700900123")
    r = await client.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    text = r.text
    counted = re.search(
        r'http_requests_total\{method="GET",route="/items/\{item_id\}",status="200"\} (\S+)',
        text)
    assert counted is not None and float(counted.group(1)) >= 2
    assert 'route="<unmatched>",status="404"' in text
    assert "http_request_duration_seconds_bucket" in text
    assert "07700900123" not in text  # raw paths never become labels


async def test_operational_routes_are_not_in_openapi(client: httpx.AsyncClient) -> None:
    paths = (await client.get("/openapi.json")).json()["paths"]
    assert "/healthz" not in paths and "/metrics" not in paths
    assert "/items/{item_id}" in paths


# -- problems --------------------------------------------------------------------------

async def test_404_is_a_problem(client: httpx.AsyncClient) -> None:
    body = assert_problem(await client.get("/nowhere"), 404)
    assert body["title"] == "Not Found"
    assert body["type"] == "about:blank"
    assert body["detail"]


async def test_405_is_a_problem(client: httpx.AsyncClient) -> None:
    assert_problem(await client.delete("/items/1"), 405)


async def test_422_lists_fields_without_echoing_values(client: httpx.AsyncClient) -> None:
    r = await client.post("/contacts", json={"mobile": PHONE, "email_consent": "perhaps"})
    body = assert_problem(r, 422)
    assert body["title"] == "Unprocessable Content"
    fields = {e["field"]: e["message"] for e in body["errors"]}
    assert set(fields) == {"body.mobile", "body.email_consent"}
    assert all(isinstance(m, str) and m for m in fields.values())
    assert "900123" not in r.text
    assert "perhaps" not in r.text


async def test_422_for_path_parameters_and_bad_json(client: httpx.AsyncClient) -> None:
    body = assert_problem(await client.get("/items/not-a-number"), 422)
    assert body["errors"][0]["field"] == "path.item_id"
    r = await client.post("/contacts", content=b'{"mobile": "07700 900123",',
                          headers={"content-type": "application/json"})
    assert_problem(r, 422)
    assert "900123" not in r.text


async def test_raised_problem_keeps_its_members(client: httpx.AsyncClient) -> None:
    body = assert_problem(await client.get("/conflict"), 409)
    assert body["type"] == "https://turnout.example/closed"
    assert body["title"] == "Conflict"
    assert body["detail"] == "Ballot B1 is closed."
    assert body["errors"] == [{"field": "ballot_id", "message": "closed"}]


async def test_500_is_generic_and_logged_with_correlation_id(log_lines) -> None:
    app = create_app(settings(), title="t", version="1", routers=[make_router()])
    async with client_for(app) as c:
        r = await c.get("/boom", headers={"X-Correlation-ID": "req-500"})
    body = assert_problem(r, 500)
    assert body["correlation_id"] == "req-500"
    assert "provider" not in body["detail"] and "900123" not in r.text
    [logged] = log_lines.events("unhandled_exception")
    assert logged["correlation_id"] == "req-500"
    assert logged["level"] == "error"
    assert "RuntimeError" in logged["exception"]
    assert "900123" not in log_lines.text
    [access] = log_lines.events("request")
    assert access["status"] == 500 and access["correlation_id"] == "req-500"


# -- body size limit -------------------------------------------------------------------

async def test_413_when_content_length_is_too_large(client: httpx.AsyncClient) -> None:
    r = await client.post("/upload", content=b"x" * 2048)
    body = assert_problem(r, 413)
    assert body["title"] == "Content Too Large"
    assert "1024" in body["detail"]


async def test_413_when_a_streamed_body_grows_too_large(client: httpx.AsyncClient) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(8):
            yield b"y" * 256

    r = await client.post("/upload", content=chunks())  # chunked: no Content-Length
    assert_problem(r, 413)
    r = await client.post("/contacts", content=chunks(),
                          headers={"content-type": "application/json"})
    assert_problem(r, 413)


async def test_bodies_within_the_limit_pass(client: httpx.AsyncClient) -> None:
    r = await client.post("/upload", content=b"z" * 1024)
    assert r.status_code == 200 and r.json() == {"size": 1024}


async def test_a_nul_character_is_refused_before_the_app_sees_it(
        client: httpx.AsyncClient) -> None:
    """The database cannot store U+0000: anywhere in a JSON body, path or query it is a
    422, not a 500 from the database after the request was half handled."""
    good = {"mobile": "+447911123123", "email_consent": True}
    for body in (b'{"mobile": "+447911123123\\u0000", "email_consent": true}',
                 b'{"mobile": "\\\\\\u0000", "email_consent": true}',  # \\ then NUL
                 b'{"email_consent": true, "note\\u0000": 1}'):
        r = await client.post("/contacts", content=body,
                              headers={"content-type": "application/json"})
        problem = assert_problem(r, 422)
        assert "NUL character" in problem["detail"] and "+447911" not in r.text
    for url in ("/items/1?x=a%00b", "/items/1%00"):
        problem = assert_problem(await client.get(url), 422)
        assert "NUL character" in problem["detail"]
    # A backslash and the text "u0000" is not a NUL: it passes (and fails on its own).
    literal = await client.post("/contacts", content=b'{"mobile": "\\\\u0000", '
                                b'"email_consent": true}',
                                headers={"content-type": "application/json"})
    assert [e["field"] for e in assert_problem(literal, 422)["errors"]] == ["body.mobile"]
    assert (await client.post("/contacts", json=good)).json() == {"ok": "yes"}
    # Streamed in pieces, and not JSON: the body reaches the app whole, untouched.
    r = await client.post("/upload", content=b"\x00raw\x00")
    assert r.status_code == 200 and r.json() == {"size": 5}


# -- correlation ids and access log ----------------------------------------------------

async def test_correlation_id_is_echoed(client: httpx.AsyncClient) -> None:
    r = await client.get("/items/1", headers={"X-Correlation-ID": "abc-123"})
    assert r.headers["x-correlation-id"] == "abc-123"


async def test_correlation_id_is_made_when_missing_or_unusable(
    client: httpx.AsyncClient,
) -> None:
    made = (await client.get("/items/1")).headers["x-correlation-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", made)
    for bad in ("has spaces in it", "x" * 101, 'quote"d'):
        got = (await client.get("/items/1", headers={"X-Correlation-ID": bad})
               ).headers["x-correlation-id"]
        assert got != bad and re.fullmatch(r"[0-9a-f]{32}", got)


async def test_access_log_has_no_query_string(client: httpx.AsyncClient, log_lines) -> None:
    await client.get("/items/7?q=Ada+Lovelace&mobile=07700900123",
                     headers={"X-Correlation-ID": "acc-1"})
    [line] = log_lines.events("request")
    assert line["path"] == "/items/7"
    assert line["route"] == "/items/{item_id}"
    assert line["method"] == "GET" and line["status"] == 200
    assert line["correlation_id"] == "acc-1"
    assert isinstance(line["duration_ms"], float)
    assert "Ada" not in log_lines.text and "07700900123" not in log_lines.text


async def test_access_log_names_the_authenticated_caller(log_lines) -> None:
    router = APIRouter()

    @router.get("/whoami")
    async def whoami(caller: CurrentCaller) -> str:
        return caller.subject

    app = create_app(settings(), title="t", version="1", routers=[router])
    token = issue_token(TEST_SECRET, "rep", "rep-42", branches=["B1"])
    async with client_for(app) as c:
        r = await c.get("/whoami", headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 200
        await c.get("/healthz")
    lines = log_lines.events("request")
    assert lines[0]["subject"] == "rep-42" and lines[0]["role"] == "rep"
    assert lines[1]["level"] == "debug"  # probes are not INFO noise


# -- lifespan ----------------------------------------------------------------------------

class FakeBroker:
    """Stands in for KafkaBroker's start/stop in the lifespan (no Kafka in unit tests)."""

    def __init__(self, failures: int = 0) -> None:
        self.failures = failures
        self.calls: list[str] = []

    async def start(self) -> None:
        self.calls.append("start")
        if self.failures:
            self.failures -= 1
            raise ConnectionError("Kafka is not there")

    async def stop(self) -> None:
        self.calls.append("stop")


async def test_lifespan_runs_hooks_and_the_broker_in_order() -> None:
    order: list[str] = []
    broker = FakeBroker()

    async def open_db(app: FastAPI) -> None:
        order.append("open_db")
        app.state.engine = "engine"

    async def close_db(app: FastAPI) -> None:
        order.append("close_db")

    async def failing(app: FastAPI) -> None:
        raise RuntimeError("cannot close")

    app = create_app(settings(), title="t", version="1", broker=broker,
                     on_startup=[open_db], on_shutdown=[failing, close_db])
    assert app.state.broker is broker
    async with app.router.lifespan_context(app):
        order.append(f"serving with {broker.calls}")
        assert app.state.engine == "engine"
    assert order == ["open_db", "serving with ['start']", "close_db"]
    assert broker.calls == ["start", "stop"]


async def test_service_starts_while_kafka_is_away_and_connects_later(
    monkeypatch: pytest.MonkeyPatch, log_lines
) -> None:
    monkeypatch.setattr(startup_module, "BROKER_RETRY_INITIAL_DELAY", 0.01)
    broker = FakeBroker(failures=2)
    app = create_app(settings(), title="t", version="1", broker=broker)
    async with app.router.lifespan_context(app):
        for _ in range(200):
            if broker.calls.count("start") == 3 and not broker.failures:
                break
            await asyncio.sleep(0.01)
        # Each failed start is followed by a stop, so no half-started state lingers.
        assert broker.calls == ["start", "stop", "start", "stop", "start"]
    assert broker.calls[-1] == "stop"
    assert len(log_lines.events("kafka_broker_start_failed")) == 2
    assert log_lines.events("kafka_broker_started")


async def test_retrying_stops_at_shutdown(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(startup_module, "BROKER_RETRY_INITIAL_DELAY", 60)
    broker = FakeBroker(failures=100)
    app = create_app(settings(), title="t", version="1", broker=broker)
    async with asyncio.timeout(2), app.router.lifespan_context(app):
        pass
    assert broker.calls == ["start", "stop", "stop"]


async def test_development_secret_warning_at_startup(log_lines) -> None:
    app = create_app(ServiceSettings(), title="t", version="1")
    async with app.router.lifespan_context(app):
        pass
    assert log_lines.events("development_jwt_secret_in_use")
    quiet = create_app(settings(), title="t", version="1")
    log_lines.stream.truncate(0)
    log_lines.stream.seek(0)
    async with quiet.router.lifespan_context(quiet):
        pass
    assert not log_lines.events("development_jwt_secret_in_use")


def test_token_verifier_is_configured_from_settings() -> None:
    app = create_app(settings(jwt_audience="contacts-api"), title="t", version="1")
    assert app.state.token_verifier.audience == "contacts-api"
    assert not app.state.token_verifier.uses_jwks


async def test_a_real_kafka_broker_with_no_kafka_does_not_stop_the_service(
    monkeypatch: pytest.MonkeyPatch, log_lines
) -> None:
    """FastStream's KafkaBroker, pointed at a port nobody listens on: the app still
    starts, serves, and shuts down cleanly (the API the lifespan relies on is real)."""
    import socket

    from faststream.kafka import KafkaBroker

    from turnout_kit.logging import broker_logger

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setattr(startup_module, "BROKER_RETRY_INITIAL_DELAY", 0.05)
    broker = KafkaBroker(f"127.0.0.1:{port}", logger=broker_logger())
    app = create_app(settings(), title="t", version="1", broker=broker)
    async with asyncio.timeout(20), app.router.lifespan_context(app):
        async with client_for(app) as c:
            assert (await c.get("/healthz")).status_code == 200
        await asyncio.sleep(0.2)  # let a retry or two happen
    assert log_lines.events("kafka_broker_start_failed")
    assert not log_lines.events("kafka_broker_stop_failed")
