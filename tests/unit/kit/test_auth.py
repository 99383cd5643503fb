"""Tokens, roles and scopes."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from fastapi import APIRouter, Depends

from tests.support.identity import idp_token
from turnout_kit.app import create_app
from turnout_kit.auth import (
    SERVICE_ISSUER,
    Caller,
    CurrentCaller,
    InvalidToken,
    Role,
    ServiceToken,
    TokenVerifier,
    issue_token,
    require_roles,
)
from turnout_kit.settings import ServiceSettings

from .conftest import TEST_SECRET

pytestmark = pytest.mark.unit

ISS, AUD = "turnout-local", "turnout"


def verifier() -> TokenVerifier:
    return TokenVerifier(secret=TEST_SECRET, issuer=ISS, audience=AUD)


def raw_token(claims: dict[str, Any], secret: str = TEST_SECRET) -> str:
    now = datetime.now(UTC)
    base = {"sub": "u1", "iss": ISS, "aud": AUD, "iat": now, "exp": now + timedelta(hours=1)}
    return jwt.encode({**base, **claims}, secret, algorithm="HS256")


# -- Caller ----------------------------------------------------------------------------

REP = Caller("rep-1", Role.rep, branch_codes=frozenset({"B1", "B2"}))
ORGANISER = Caller("org-1", Role.organiser, group_codes=frozenset({"G1"}))


@pytest.mark.parametrize(
    ("caller", "group", "branch", "visible"),
    [
        (REP, "G1", "B1", True),
        (REP, "G9", "B2", True),  # a rep's scope is branches, whatever the group
        (REP, "G1", "B3", False),
        (REP, "G1", None, False),
        (ORGANISER, "G1", "B7", True),
        (ORGANISER, "G2", "B1", False),
        (ORGANISER, None, "B1", False),
        (Caller("n", Role.national), "G5", "B5", True),
        (Caller("n", Role.national), None, None, True),
        (Caller("a", Role.admin), "G5", "B5", True),
        (Caller("s", Role.service), "G5", "B5", True),
    ],
)
def test_can_see(caller: Caller, group: str | None, branch: str | None, visible: bool) -> None:
    assert caller.can_see(group, branch) is visible


def test_unscoped_roles() -> None:
    assert not REP.unscoped and not ORGANISER.unscoped
    assert all(Caller("x", r).unscoped for r in (Role.national, Role.service, Role.admin))


# -- issuing and verifying -------------------------------------------------------------

def test_issued_token_round_trips() -> None:
    token = issue_token(TEST_SECRET, "rep", "rep-7", branches=["B2", "B1", "B1"])
    caller = verifier().verify(token)
    assert caller == Caller("rep-7", Role.rep, frozenset({"B1", "B2"}), frozenset())
    claims = jwt.decode(token, TEST_SECRET, algorithms=["HS256"], audience=AUD)
    assert claims["branch_codes"] == ["B1", "B2"]
    assert claims["exp"] - claims["iat"] == 12 * 3600
    assert jwt.get_unverified_header(token)["alg"] == "HS256"


def test_issue_refuses_unscoped_reps_and_organisers() -> None:
    with pytest.raises(ValueError, match="branch"):
        issue_token(TEST_SECRET, Role.rep, "r")
    with pytest.raises(ValueError, match="group"):
        issue_token(TEST_SECRET, Role.organiser, "o", branches=["B1"])
    with pytest.raises(ValueError):
        issue_token(TEST_SECRET, "superuser", "x")


@pytest.mark.parametrize(
    "token",
    [
        pytest.param(issue_token(TEST_SECRET, "national", "n", ttl=timedelta(seconds=-120)),
                     id="expired"),
        pytest.param(issue_token("another-secret-of-at-least-32-chars!!", "national", "n"),
                     id="wrong-secret"),
        pytest.param(issue_token(TEST_SECRET, "national", "n", audience="someone-else"),
                     id="wrong-audience"),
        pytest.param(issue_token(TEST_SECRET, "national", "n", issuer="evil"),
                     id="wrong-issuer"),
        pytest.param(raw_token({"role": "rep", "branch_codes": []}), id="rep-without-branch"),
        pytest.param(raw_token({"role": "organiser"}), id="organiser-without-group"),
        pytest.param(raw_token({"role": "root"}), id="unknown-role"),
        pytest.param(raw_token({}), id="no-role"),
        pytest.param(raw_token({"role": "rep", "branch_codes": "B1"}), id="codes-not-a-list"),
        pytest.param(raw_token({"role": "national", "exp": None}), id="no-expiry"),
        pytest.param(jwt.encode({"sub": "n", "role": "national", "iss": ISS, "aud": AUD,
                                 "exp": 9999999999, "iat": 0}, None, algorithm="none"),
                     id="alg-none"),
        pytest.param("not-a-jwt", id="garbage"),
    ],
)
def test_unacceptable_tokens(token: str) -> None:
    with pytest.raises(InvalidToken):
        verifier().verify(token)


def test_small_clock_skew_is_tolerated() -> None:
    token = issue_token(TEST_SECRET, "national", "n", ttl=timedelta(seconds=-5))
    assert verifier().verify(token).role is Role.national


# -- remembered tokens ------------------------------------------------------------------

def _tampered_signature(token: str) -> str:
    head, payload, signature = token.split(".")
    # A character in the middle: the last one may only carry padding bits.
    middle = len(signature) // 2
    swapped = "A" if signature[middle] != "A" else "B"
    return ".".join((head, payload, signature[:middle] + swapped + signature[middle + 1:]))


async def test_a_cache_hit_returns_an_equal_caller() -> None:
    v = verifier()
    token = issue_token(TEST_SECRET, "rep", "rep-3", branches=["B4"])
    expected = Caller("rep-3", Role.rep, frozenset({"B4"}), frozenset())
    assert v.verify(token) == expected
    assert v.verify(token) == expected
    assert await v.verify_async(token) == expected


def test_a_remembered_token_still_expires_on_time() -> None:
    v = TokenVerifier(secret=TEST_SECRET, issuer=ISS, audience=AUD, leeway=0)
    exp = int(time.time()) + 1
    token = raw_token({"role": "national", "exp": exp})
    assert v.verify(token).role is Role.national
    assert v.verify(token).role is Role.national  # remembered now
    deadline = time.monotonic() + 5
    while time.time() <= exp:  # wait for the token's expiry, not for a race
        assert time.monotonic() < deadline
        time.sleep(0.05)
    with pytest.raises(InvalidToken, match="ExpiredSignature"):
        v.verify(token)


async def test_a_token_differing_from_a_remembered_one_is_verified() -> None:
    v = verifier()
    token = issue_token(TEST_SECRET, "rep", "rep-3", branches=["B4"])
    assert v.verify(token).subject == "rep-3"

    with pytest.raises(InvalidToken):
        v.verify(_tampered_signature(token))
    # The remembered token's signature on other claims.
    head, _, signature = token.split(".")
    _, national_claims, _ = issue_token(TEST_SECRET, "national", "rep-3").split(".")
    with pytest.raises(InvalidToken):
        await v.verify_async(f"{head}.{national_claims}.{signature}")
    # The same claims signed with another secret.
    claims = jwt.decode(token, TEST_SECRET, algorithms=["HS256"], audience=AUD)
    with pytest.raises(InvalidToken):
        v.verify(jwt.encode(claims, "another-secret-of-at-least-32-chars!!", algorithm="HS256"))

    other = issue_token(TEST_SECRET, "organiser", "org-2", groups=["G1"])
    assert v.verify(other) == Caller("org-2", Role.organiser, frozenset(), frozenset({"G1"}))
    assert v.verify(token).subject == "rep-3"


def test_rejected_tokens_stay_rejected() -> None:
    v = verifier()
    forged = _tampered_signature(issue_token(TEST_SECRET, "admin", "a"))
    for _ in range(2):
        with pytest.raises(InvalidToken):
            v.verify(forged)


def test_a_full_cache_still_verifies_every_token() -> None:
    v = TokenVerifier(secret=TEST_SECRET, issuer=ISS, audience=AUD, cache_size=2)
    tokens = [issue_token(TEST_SECRET, "rep", f"rep-{i}", branches=["B1"]) for i in range(4)]
    for _ in range(2):
        assert [v.verify(t).subject for t in tokens] == [f"rep-{i}" for i in range(4)]
    with pytest.raises(InvalidToken):
        v.verify(_tampered_signature(tokens[0]))


# -- JWKS (OIDC) -------------------------------------------------------------------------

SERVICE_SECRET = "a-service-secret-of-forty-or-so-characters-0123"


async def test_jwks_tokens_are_verified_against_the_providers_keys(
    jwks_url: str, rsa_key: rsa.RSAPrivateKey
) -> None:
    v = TokenVerifier.from_settings(ServiceSettings(jwks_url=jwks_url,
                                                    service_secret=SERVICE_SECRET))
    assert v.uses_jwks
    caller = await v.verify_async(idp_token(rsa_key))
    assert caller == Caller("org-9", Role.organiser, frozenset(), frozenset({"G3"}))


async def test_jwks_mode_refuses_shared_secret_and_foreign_keys(jwks_url: str) -> None:
    from turnout_kit.settings import DEVELOPMENT_JWT_SECRET

    v = TokenVerifier(secret=DEVELOPMENT_JWT_SECRET, jwks_url=jwks_url)
    with pytest.raises(InvalidToken):
        await v.verify_async(issue_token(DEVELOPMENT_JWT_SECRET, "admin", "a"))
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with pytest.raises(InvalidToken):
        await v.verify_async(idp_token(stranger))  # right kid, wrong key
    with pytest.raises(InvalidToken):
        await v.verify_async(idp_token(stranger, kid="key-2"))  # unknown kid


async def test_with_jwks_the_services_call_each_other_with_the_service_secret(
    jwks_url: str, rsa_key: rsa.RSAPrivateKey
) -> None:
    """People's tokens come from the identity provider; the services' own calls (a
    reminder fetching a number from contacts) carry tokens the service secret signs."""
    settings = ServiceSettings(jwks_url=jwks_url, service_secret=SERVICE_SECRET)
    v = TokenVerifier.from_settings(settings)
    token = ServiceToken(settings, "notifications").headers()["Authorization"].removeprefix(
        "Bearer ")
    assert jwt.get_unverified_header(token)["alg"] == "HS256"
    caller = await v.verify_async(token)
    assert caller.role is Role.service and caller.subject == "notifications"
    assert v.verify(token) == caller
    # The provider's tokens are still checked against its keys by the same verifier.
    assert (await v.verify_async(idp_token(rsa_key))).role is Role.organiser


async def test_the_service_secret_cannot_mint_a_token_for_a_person(jwks_url: str) -> None:
    v = TokenVerifier(jwks_url=jwks_url, service_secret=SERVICE_SECRET, issuer=ISS,
                      audience=AUD)
    for token in (
        # Another role, signed with the service secret.
        issue_token(SERVICE_SECRET, "admin", "someone", issuer=SERVICE_ISSUER, audience=AUD),
        issue_token(SERVICE_SECRET, "national", "someone", issuer=SERVICE_ISSUER,
                    audience=AUD),
        # A service token under the people's issuer, or signed with another secret.
        issue_token(SERVICE_SECRET, "service", "svc", issuer=ISS, audience=AUD),
        issue_token(TEST_SECRET, "service", "svc", issuer=SERVICE_ISSUER, audience=AUD),
    ):
        with pytest.raises(InvalidToken):
            await v.verify_async(token)
    # Without a JWKS there is no service secret: the shared secret signs everything.
    plain = TokenVerifier(secret=TEST_SECRET, service_secret=SERVICE_SECRET, issuer=ISS,
                          audience=AUD)
    with pytest.raises(InvalidToken):
        plain.verify(issue_token(SERVICE_SECRET, "service", "svc", issuer=SERVICE_ISSUER,
                                 audience=AUD))


def test_es256_with_an_injected_key_source() -> None:
    key = ec.generate_private_key(ec.SECP256R1())

    class Keys:
        def get_signing_key_from_jwt(self, token: str) -> jwt.PyJWK:
            jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
            return jwt.PyJWK({**jwk, "kid": "ec-1"}, algorithm="ES256")

    v = TokenVerifier(jwks_client=Keys())
    caller = v.verify(idp_token(key, kid="ec-1", alg="ES256", role="national"))
    assert caller.role is Role.national


# -- FastAPI dependencies ----------------------------------------------------------------

@pytest.fixture
def client() -> httpx.AsyncClient:
    router = APIRouter()

    @router.get("/me")
    async def me(caller: CurrentCaller) -> dict[str, Any]:
        return {"subject": caller.subject, "role": caller.role,
                "branches": sorted(caller.branch_codes)}

    @router.get("/audit")
    async def audit(
        caller: Caller = Depends(require_roles(Role.national, Role.admin)),  # noqa: B008
    ) -> dict[str, str]:
        return {"subject": caller.subject}

    app = create_app(ServiceSettings(jwt_secret=TEST_SECRET), title="t", version="0",
                     routers=[router])
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_valid_token_gives_the_caller(client: httpx.AsyncClient) -> None:
    r = await client.get("/me", headers=bearer(issue_token(TEST_SECRET, "rep", "r1",
                                                           branches=["B1"])))
    assert r.status_code == 200
    assert r.json() == {"subject": "r1", "role": "rep", "branches": ["B1"]}


async def test_missing_token_is_401_with_challenge(client: httpx.AsyncClient) -> None:
    for headers in ({}, {"Authorization": "Basic dXNlcjpwYXNz"}):
        r = await client.get("/me", headers=headers)
        assert r.status_code == 401
        assert r.headers["content-type"] == "application/problem+json"
        assert r.headers["www-authenticate"] == "Bearer"
        assert r.json()["status"] == 401


@pytest.mark.parametrize(
    "token",
    [
        pytest.param(issue_token(TEST_SECRET, "national", "n", ttl=timedelta(hours=-1)),
                     id="expired"),
        pytest.param(issue_token("x" * 40, "national", "n"), id="wrong-secret"),
        pytest.param(issue_token(TEST_SECRET, "national", "n", audience="other"),
                     id="wrong-audience"),
        pytest.param(raw_token({"role": "rep"}), id="rep-without-branch"),
    ],
)
async def test_bad_token_is_401_without_saying_why(
    client: httpx.AsyncClient, token: str
) -> None:
    r = await client.get("/me", headers=bearer(token))
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == 'Bearer error="invalid_token"'
    body = r.json()
    assert body["detail"] == "invalid or expired token"
    assert body["title"] == "Unauthorized"


async def test_role_check_is_403(client: httpx.AsyncClient) -> None:
    rep = issue_token(TEST_SECRET, "rep", "r1", branches=["B1"])
    r = await client.get("/audit", headers=bearer(rep))
    assert r.status_code == 403
    assert r.headers["content-type"] == "application/problem+json"
    assert "national" in r.json()["detail"]
    ok = await client.get("/audit", headers=bearer(issue_token(TEST_SECRET, "admin", "a1")))
    assert ok.status_code == 200 and ok.json() == {"subject": "a1"}
    unauth = await client.get("/audit")
    assert unauth.status_code == 401


def test_require_roles_needs_roles() -> None:
    with pytest.raises(ValueError):
        require_roles()
    with pytest.raises(ValueError):
        require_roles("superuser")


def test_the_scope_clause_selects_what_can_see_allows() -> None:
    import sqlalchemy as sa

    placed = sa.table("placed", sa.column("group_code"), sa.column("branch_code"))
    rows = [("G1", "B1"), ("G1", "B2"), ("G2", "B3")]
    engine = sa.create_engine("sqlite://")
    with engine.connect() as conn:
        conn.execute(sa.text("CREATE TABLE placed (group_code TEXT, branch_code TEXT)"))
        conn.execute(sa.text("INSERT INTO placed VALUES (:g, :b)"),
                     [{"g": g, "b": b} for g, b in rows])
        for caller in (Caller("r", Role.rep, branch_codes=frozenset({"B2"})),
                       Caller("o", Role.organiser, group_codes=frozenset({"G1"})),
                       Caller("n", Role.national), Caller("s", Role.service)):
            selected = set(conn.execute(sa.select(placed.c.group_code, placed.c.branch_code)
                                        .where(caller.scope_clause(placed))).all())
            assert selected == {r for r in rows if caller.can_see(*r)}, caller.role
