"""Who is calling: bearer tokens (JWT), roles and scopes.

Locally, tokens are HS256 JWTs signed with the shared secret (`turnout token ...`
prints one). In production they come from an OIDC provider and are checked against its
JWKS (`jwks_url`); then the shared secret is not accepted at all, so a leaked
development secret cannot mint production tokens. The services' own calls to one
another (`ServiceToken`) are then HS256 tokens signed with the service secret
(`service_secret`), with an issuer of their own, and good only for the `service` role:
that secret cannot mint a token for a person.

Claims: `sub`, `role` (one of `Role`), `branch_codes` and `group_codes` (lists of
codes; named so they cannot be confused with an identity provider's own `groups`),
and the usual `iss`, `aud`, `exp`, `iat`.

Scope is not authorisation by role: a rep asking for a member outside their branches
gets 404, not 403 (see `Caller.can_see`), so member ids cannot be probed. Role checks
(`require_roles`) answer 403, because which endpoints exist is no secret.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, Any, Protocol

import jwt
import sqlalchemy as sa
import structlog
from fastapi import Depends, Request
from fastapi.security import HTTPBearer
from pydantic import SecretStr

from .problems import Problem

if TYPE_CHECKING:
    from .settings import ServiceSettings

log = structlog.get_logger("turnout_kit.auth")

DEFAULT_ISSUER = "turnout-local"
# The issuer of the services' own tokens when people's come from an identity provider.
SERVICE_ISSUER = "turnout-services"
DEFAULT_AUDIENCE = "turnout"
DEFAULT_TTL = timedelta(hours=12)
HS_ALGORITHMS = ("HS256",)
JWKS_ALGORITHMS = ("RS256", "ES256")
# Clock skew tolerated between the issuer and us.
LEEWAY_SECONDS = 30
# Verified tokens remembered, so a rep marking votes all evening is not re-verified on
# every request (signature checking was a tenth of a service's CPU). Bounded: a token is
# a few hundred bytes, so this is a few megabytes at most.
TOKEN_CACHE_SIZE = 10_000


class Role(StrEnum):
    rep = "rep"
    organiser = "organiser"
    national = "national"
    service = "service"
    admin = "admin"


# Roles that see every group and branch.
UNSCOPED_ROLES = frozenset({Role.national, Role.service, Role.admin})


_SAFE_SUBJECT = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,80}")


@dataclass(frozen=True, slots=True)
class Caller:
    subject: str
    role: Role
    branch_codes: frozenset[str] = field(default_factory=frozenset)
    group_codes: frozenset[str] = field(default_factory=frozenset)

    @property
    def unscoped(self) -> bool:
        """True when the caller sees every group and branch."""
        return self.role in UNSCOPED_ROLES

    def can_see(self, group_code: str | None, branch_code: str | None) -> bool:
        """Whether a member (or unit) placed in this group and branch is in scope."""
        if self.role is Role.rep:
            return branch_code is not None and branch_code in self.branch_codes
        if self.role is Role.organiser:
            return group_code is not None and group_code in self.group_codes
        return self.role in UNSCOPED_ROLES

    def scope_clause(self, table: sa.Table) -> sa.ColumnElement[bool]:
        """The SQL twin of `can_see`: a WHERE clause limiting rows of `table` (one with
        `group_code` and `branch_code` columns) to this caller's branches or groups."""
        if self.role is Role.rep:
            return table.c.branch_code.in_(sorted(self.branch_codes))
        if self.role is Role.organiser:
            return table.c.group_code.in_(sorted(self.group_codes))
        return sa.true() if self.role in UNSCOPED_ROLES else sa.false()

    def has_role(self, *roles: Role | str) -> bool:
        return self.role in roles

    @property
    def actor(self) -> str:
        """Who did it, as written into events: `<role>:<subject>`. An OIDC subject may be
        an email address; events must not carry one, so such subjects are hashed."""
        subject = self.subject
        if not _SAFE_SUBJECT.fullmatch(subject):
            subject = "h-" + hashlib.sha256(subject.encode()).hexdigest()[:24]
        return f"{self.role.value}:{subject}"


class InvalidToken(Exception):
    """A token we do not accept. The message is for our logs, never for the caller."""


def _secret(secret: str | SecretStr) -> str:
    return secret.get_secret_value() if isinstance(secret, SecretStr) else secret


def _check_scope(role: Role, branches: Collection[str], groups: Collection[str]) -> None:
    if role is Role.rep and not branches:
        raise ValueError("a rep token needs at least one branch code")
    if role is Role.organiser and not groups:
        raise ValueError("an organiser token needs at least one group code")


def issue_token(
    secret: str | SecretStr,
    role: Role | str,
    subject: str,
    branches: Sequence[str] = (),
    groups: Sequence[str] = (),
    ttl: timedelta = DEFAULT_TTL,
    issuer: str = DEFAULT_ISSUER,
    audience: str = DEFAULT_AUDIENCE,
    *,
    now: datetime | None = None,
) -> str:
    """An HS256 token for local use, tests and service-to-service calls."""
    role = Role(role)
    _check_scope(role, branches, groups)
    issued = now or datetime.now(UTC)
    claims = {
        "sub": subject,
        "role": role.value,
        "branch_codes": sorted(set(branches)),
        "group_codes": sorted(set(groups)),
        "iss": issuer,
        "aud": audience,
        "iat": issued,
        "exp": issued + ttl,
        "jti": uuid.uuid4().hex,
    }
    return jwt.encode(claims, _secret(secret), algorithm="HS256")


class ServiceToken:
    """The bearer token one service sends another (role `service`), minted with the
    deployment's key and minted again once less than a quarter of its life is left."""

    TTL = timedelta(hours=1)

    def __init__(self, settings: ServiceSettings, subject: str) -> None:
        self._settings = settings
        self._subject = subject
        self._token: str | None = None
        self._expires = datetime.min.replace(tzinfo=UTC)

    def headers(self) -> dict[str, str]:
        now = datetime.now(UTC)
        if self._token is None or self._expires - now < self.TTL / 4:
            s = self._settings
            if s.jwks_url is not None:
                if s.service_secret is None:  # the settings refuse this; for type checkers
                    raise ValueError("no service secret to sign service tokens with")
                key, issuer = s.service_secret, SERVICE_ISSUER
            else:
                key, issuer = s.jwt_secret, s.jwt_issuer
            self._token = issue_token(key, Role.service, self._subject, ttl=self.TTL,
                                      issuer=issuer, audience=s.jwt_audience, now=now)
            self._expires = now + self.TTL
        return {"Authorization": f"Bearer {self._token}"}


class SigningKeySource(Protocol):
    """What we need of `jwt.PyJWKClient` (tests may supply their own)."""

    def get_signing_key_from_jwt(self, token: str) -> jwt.PyJWK: ...


class TokenVerifier:
    """Checks bearer tokens and turns them into `Caller`s.

    Tokens that verified are remembered (up to `cache_size`, least recently used out
    first) until their `exp`, so a client's repeated calls skip the signature check. So
    a remembered token stays accepted until it expires even if its signing key leaves
    the JWKS meanwhile: the token's lifetime bounds that, as it bounds a stolen token's.
    """

    def __init__(
        self,
        *,
        secret: str | SecretStr | None = None,
        issuer: str = DEFAULT_ISSUER,
        audience: str = DEFAULT_AUDIENCE,
        jwks_url: str | None = None,
        jwks_client: SigningKeySource | None = None,
        service_secret: str | SecretStr | None = None,
        algorithms: Sequence[str] | None = None,
        leeway: float = LEEWAY_SECONDS,
        cache_size: int = TOKEN_CACHE_SIZE,
    ) -> None:
        if jwks_client is None and jwks_url is not None:
            # Keys are cached (and refetched when a token names an unknown kid), so the
            # provider is asked rarely; a short timeout keeps a slow provider from
            # holding requests.
            jwks_client = jwt.PyJWKClient(jwks_url, cache_keys=True, lifespan=300, timeout=5)
        if jwks_client is None and secret is None:
            raise ValueError("a TokenVerifier needs a secret or a JWKS")
        self._jwks = jwks_client
        self._secret = None if jwks_client is not None or secret is None else _secret(secret)
        # With a JWKS: the services' own HS256 tokens (see the module docstring).
        self._service_secret = (_secret(service_secret) if jwks_client is not None
                                and service_secret is not None else None)
        self.issuer = issuer
        self.audience = audience
        self.algorithms = list(
            algorithms or (JWKS_ALGORITHMS if jwks_client is not None else HS_ALGORITHMS)
        )
        self.leeway = leeway
        self._cache_size = cache_size
        # token -> (caller, exp as a Unix time). Only tokens that verified are put here.
        self._cache: OrderedDict[str, tuple[Caller, float]] = OrderedDict()
        # verify() runs in worker threads when keys come from a JWKS.
        self._cache_lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: ServiceSettings) -> TokenVerifier:
        return cls(
            secret=settings.jwt_secret,
            issuer=settings.jwt_issuer,
            audience=settings.jwt_audience,
            jwks_url=settings.jwks_url,
            service_secret=settings.service_secret,
        )

    @property
    def uses_jwks(self) -> bool:
        return self._jwks is not None

    def verify(self, token: str) -> Caller:
        """The caller a token stands for; raises `InvalidToken`. With a JWKS this may
        block on fetching keys: from async code use `verify_async`."""
        cached = self._cached(token)
        if cached is not None:
            return cached
        if self._from_a_service(token):
            return self._decode_service(token)
        key: Any = self._secret
        if self._jwks is not None:
            try:
                key = self._jwks.get_signing_key_from_jwt(token).key
            except jwt.PyJWTError as exc:
                raise InvalidToken(f"no signing key: {type(exc).__name__}") from exc
        return self._decode(token, key)

    async def verify_async(self, token: str) -> Caller:
        cached = self._cached(token)
        if cached is not None:
            return cached
        if self._jwks is None:
            return self._decode(token, self._secret)  # pure CPU, microseconds
        if self._from_a_service(token):
            return self._decode_service(token)  # pure CPU too
        return await asyncio.to_thread(self.verify, token)

    def _from_a_service(self, token: str) -> bool:
        """With a JWKS, whether the token says it is a service's own (HS256): it is then
        checked against the service secret only, never against the provider's keys,
        and the provider's algorithms are never tried with the secret."""
        if self._service_secret is None:
            return False
        try:
            return jwt.get_unverified_header(token).get("alg") in HS_ALGORITHMS
        except jwt.PyJWTError:
            return False

    def _decode_service(self, token: str) -> Caller:
        return self._decode(token, self._service_secret, algorithms=HS_ALGORITHMS,
                            issuer=SERVICE_ISSUER, only=Role.service)

    def _cached(self, token: str) -> Caller | None:
        """The caller of a token verified before, until the token's `exp` - never
        beyond it, not even by the leeway: after `exp` the token is verified afresh.
        The token string is the key, so a token differing in any byte (another
        signature, other claims) is verified like any new one."""
        with self._cache_lock:
            entry = self._cache.get(token)
            if entry is None:
                return None
            caller, expires_at = entry
            if time.time() >= expires_at:
                del self._cache[token]
                return None
            self._cache.move_to_end(token)
            return caller

    def _remember(self, token: str, caller: Caller, exp: Any) -> None:
        if self._cache_size <= 0 or isinstance(exp, bool) or not isinstance(exp, int | float):
            return
        expires_at = float(exp)
        if time.time() >= expires_at:
            return  # accepted only thanks to the leeway: not worth remembering
        with self._cache_lock:
            self._cache[token] = (caller, expires_at)
            self._cache.move_to_end(token)
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)

    def _decode(self, token: str, key: Any, *, algorithms: Sequence[str] | None = None,
                issuer: str | None = None, only: Role | None = None) -> Caller:
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=list(algorithms or self.algorithms),
                audience=self.audience,
                issuer=issuer or self.issuer,
                leeway=self.leeway,
                options={"require": ["exp", "iat", "iss", "aud", "sub"]},
            )
        except jwt.PyJWTError as exc:
            raise InvalidToken(type(exc).__name__) from exc
        caller = caller_from_claims(claims)
        if only is not None and caller.role is not only:
            raise InvalidToken(f"this key signs {only.value} tokens only")
        self._remember(token, caller, claims.get("exp"))
        return caller


def _codes(claims: dict[str, Any], name: str) -> frozenset[str]:
    value = claims.get(name, [])
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise InvalidToken(f"claim {name} must be a list of codes")
    return frozenset(value)


def caller_from_claims(claims: dict[str, Any]) -> Caller:
    try:
        role = Role(str(claims.get("role")))
    except ValueError:
        raise InvalidToken("unknown or missing role") from None
    subject = claims.get("sub")
    if not isinstance(subject, str) or not subject:
        raise InvalidToken("missing subject")
    branches = _codes(claims, "branch_codes")
    groups = _codes(claims, "group_codes")
    try:
        _check_scope(role, branches, groups)
    except ValueError as exc:
        raise InvalidToken(str(exc)) from None
    return Caller(subject=subject, role=role, branch_codes=branches, group_codes=groups)


# -- FastAPI dependencies --------------------------------------------------------------

def _unauthorized(detail: str, error: str | None = None) -> Problem:
    challenge = "Bearer" if error is None else f'Bearer error="{error}"'
    return Problem(401, detail=detail, headers={"WWW-Authenticate": challenge})


class BearerCaller(HTTPBearer):
    """The bearer scheme, as the OpenAPI document shows it, that also verifies the
    token: one dependency where a scheme and a verifying function would be two, since
    FastAPI resolves each dependency anew on every request."""

    async def __call__(self, request: Request) -> Caller:  # type: ignore[override]
        """The authenticated caller; 401 when the token is missing or not acceptable."""
        credentials = await super().__call__(request)
        if credentials is None:
            raise _unauthorized(
                "This request needs a bearer token (Authorization: Bearer ...).")
        verifier: TokenVerifier | None = getattr(request.app.state, "token_verifier", None)
        if verifier is None:
            raise RuntimeError("app.state.token_verifier is not set (see turnout_kit.app)")
        try:
            caller = await verifier.verify_async(credentials.credentials)
        except InvalidToken as exc:
            # Why it failed goes to our log only: telling the caller helps forgers.
            log.info("token_rejected", reason=str(exc))
            raise _unauthorized("invalid or expired token", "invalid_token") from None
        request.state.caller = caller  # for the access log
        return caller


# The dependency giving the authenticated caller (`Depends(current_caller)`, or
# `CurrentCaller` as a parameter's type). Named HTTPBearer in the OpenAPI document.
current_caller = BearerCaller(
    scheme_name="HTTPBearer",
    auto_error=False,
    description="A JWT. Locally: `turnout token --role rep --branch B123`.",
)


CurrentCaller = Annotated[Caller, Depends(current_caller)]


async def accepted_caller(request: Request) -> Caller | None:
    """The caller `current_caller` would give for this request, or None where it would
    refuse - quietly, without its 401 or its log line. For a route's fast path, which
    serves the requests it fully understands and hands every other to the route's
    ordinary handling (there `current_caller` refuses, and logs, once)."""
    # The header parsed as FastAPI's HTTPBearer parses it.
    scheme, _, token = (request.headers.get("authorization") or "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    verifier: TokenVerifier | None = getattr(request.app.state, "token_verifier", None)
    if verifier is None:
        return None
    try:
        caller = await verifier.verify_async(token)
    except InvalidToken:
        return None
    request.state.caller = caller  # for the access log, as current_caller leaves it
    return caller


def require_roles(*roles: Role | str) -> Callable[..., Awaitable[Caller]]:
    """A dependency that lets only these roles through (403 otherwise)."""
    allowed = frozenset(Role(r) for r in roles)
    if not allowed:
        raise ValueError("require_roles needs at least one role")

    async def dependency(caller: CurrentCaller) -> Caller:
        if caller.role not in allowed:
            raise Problem(
                403,
                detail="Your role cannot do this. Allowed: "
                + ", ".join(sorted(r.value for r in allowed)) + ".",
            )
        return caller

    return dependency
