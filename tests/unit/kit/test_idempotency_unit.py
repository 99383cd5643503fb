"""Idempotency-Key without a database: what is hashed, which keys and paths count, and
that the middleware stays out of the way until a service has an engine."""

from __future__ import annotations

import re
from datetime import timedelta

import httpx
import pytest
from fastapi import APIRouter
from starlette.datastructures import Headers

from turnout_kit.app import create_app
from turnout_kit.auth import Caller, Role
from turnout_kit.idempotency import (
    IdempotencyMiddleware,
    _compile_exclusions,
    _storable,
    caller_scope_hash,
    header_scope_hash,
    is_valid_key,
    key_hash,
    request_hash,
)
from turnout_kit.settings import ServiceSettings

from .conftest import TEST_SECRET

pytestmark = pytest.mark.unit


def test_keys_are_1_to_255_printable_ascii_characters() -> None:
    assert is_valid_key("a")
    assert is_valid_key("k" * 255)
    assert is_valid_key("8e03978e-40d5-43e8-bc93-6894a57f9324")
    assert is_valid_key('"quoted as the draft standard writes it"')
    assert not is_valid_key("")
    assert not is_valid_key("k" * 256)
    assert not is_valid_key("caf\u00e9")
    assert not is_valid_key("line\nbreak")
    assert not is_valid_key("tab\there")
    assert not is_valid_key("del\x7f")


def test_the_caller_scope_is_role_and_subject_not_the_token() -> None:
    rep = Caller(subject="rep-1", role=Role.rep, branch_codes=frozenset({"B1"}))
    same_rep_moved = Caller(subject="rep-1", role=Role.rep, branch_codes=frozenset({"B2"}))
    other_rep = Caller(subject="rep-2", role=Role.rep, branch_codes=frozenset({"B1"}))
    same_subject_as_organiser = Caller(subject="rep-1", role=Role.organiser,
                                       group_codes=frozenset({"G1"}))

    assert caller_scope_hash(rep) == caller_scope_hash(same_rep_moved)
    assert caller_scope_hash(rep) != caller_scope_hash(other_rep)
    assert caller_scope_hash(rep) != caller_scope_hash(same_subject_as_organiser)
    assert re.fullmatch(r"[0-9a-f]{64}", caller_scope_hash(rep))


def test_a_header_scope_never_equals_a_caller_scope() -> None:
    assert header_scope_hash("Bearer a") != header_scope_hash("Bearer b")
    # The parts are length-prefixed and labelled: no text can forge another's scope.
    assert header_scope_hash("rep") != caller_scope_hash(Caller("", Role.rep))


def test_the_key_is_stored_hashed() -> None:
    hashed = key_hash("member Jane Smith retry 1")
    assert "Jane" not in hashed
    assert hashed == key_hash("member Jane Smith retry 1")
    assert hashed != key_hash("member Jane Smith retry 2")


def test_the_request_hash_covers_query_and_body_without_ambiguity() -> None:
    assert request_hash(b"", b"{}") == request_hash(b"", b"{}")
    assert request_hash(b"", b'{"by":1}') != request_hash(b"", b'{"by":2}')
    assert request_hash(b"dry=1", b"{}") != request_hash(b"", b"{}")
    # Moving bytes between query and body is a different request.
    assert request_hash(b"a", b"bc") != request_hash(b"ab", b"c")


def test_exclusions_are_prefixes_or_regexes() -> None:
    excluded = _compile_exclusions([
        "/internal/",
        r"^/v1/members/[^/]+/reveal$",
        re.compile(r"/v1/secrets/\d+"),
    ])
    assert excluded("/internal/v1/contact-channels")
    assert excluded("/v1/members/0b7e/reveal")
    assert excluded("/v1/secrets/42")
    assert not excluded("/v1/members/0b7e/reveal/extra")
    assert not excluded("/v1/members/0b7e/contact")
    assert not excluded("/v1/internal/x")  # a prefix is a prefix, not a substring


@pytest.mark.parametrize(("status", "cache_control", "stored"), [
    (200, None, True),
    (201, None, True),
    (204, None, True),
    (404, None, True),
    (409, None, True),
    (422, None, True),
    (408, None, False),
    (429, None, False),
    (500, None, False),
    (503, None, False),
    (200, "no-store", False),
    (200, "private, No-Store", False),
    (200, "no-cache", True),
])
def test_what_is_stored(status: int, cache_control: str | None, stored: bool) -> None:
    raw = [(b"cache-control", cache_control.encode())] if cache_control else []
    assert _storable(status, Headers(raw=raw)) is stored


def test_ttl_and_pending_timeout_must_be_positive() -> None:
    with pytest.raises(ValueError):
        IdempotencyMiddleware(lambda *_: None, engine_getter=lambda: None,  # type: ignore[arg-type]
                              ttl=timedelta(0))
    with pytest.raises(ValueError):
        IdempotencyMiddleware(lambda *_: None, engine_getter=lambda: None,  # type: ignore[arg-type]
                              pending_timeout=timedelta(seconds=-1))


async def test_without_an_engine_requests_pass_through_untouched() -> None:
    runs: list[int] = []
    router = APIRouter()

    @router.post("/things")
    async def things() -> dict[str, int]:
        runs.append(1)
        return {"n": len(runs)}

    app = create_app(ServiceSettings(jwt_secret=TEST_SECRET), title="t", version="1",
                     routers=[router])
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://svc") as client:
        first = await client.post("/things", headers={"Idempotency-Key": "k1"})
        second = await client.post("/things", headers={"Idempotency-Key": "k1"})
        # No engine, so no idempotency: not even the key's syntax is checked.
        odd = await client.post("/things", headers={"Idempotency-Key": "k" * 300})
    assert [r.status_code for r in (first, second, odd)] == [200, 200, 200]
    assert [first.json(), second.json()] == [{"n": 1}, {"n": 2}]
    assert "idempotent-replayed" not in second.headers
