"""`turnout token --role rep --branch B123`: a bearer token for local use.

The CLI (typer, elsewhere) parses the options and prints what `token_command` returns.
Tokens are signed with the shared secret from the environment (`TURNOUT_JWT_SECRET`,
or the development secret), with the issuer and audience the services expect. The
CLI's commands that call a service (`cli_bearer`) send `$TURNOUT_TOKEN` instead when it
is set: in production, a token from the identity provider.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from datetime import timedelta

from .auth import Role, issue_token
from .settings import ServiceSettings

# A bearer token the CLI's commands send as they are (one from the identity provider,
# in production) instead of signing one of their own.
TOKEN_ENV = "TURNOUT_TOKEN"


def cli_bearer(role: Role | str, subject: str) -> str:
    """The token a CLI command (an import, a rebuild) calls a service with: $TURNOUT_TOKEN
    if set, else one signed here for `role` (see `token_command`, which raises)."""
    given = os.environ.get(TOKEN_ENV, "").strip()
    return given or token_command(role, subject=subject)


def token_command(
    role: Role | str,
    branches: Sequence[str] = (),
    groups: Sequence[str] = (),
    subject: str | None = None,
    ttl_hours: float = 12.0,
    *,
    settings: ServiceSettings | None = None,
) -> str:
    """A signed JWT. Raises ValueError with a message fit for the terminal when the
    options make no sense (a rep without a branch, an unknown role, ...)."""
    try:
        role = Role(role)
    except ValueError:
        raise ValueError(
            f"unknown role {role!r}; choose one of {', '.join(r.value for r in Role)}"
        ) from None
    if ttl_hours <= 0:
        raise ValueError("the token's lifetime (--ttl-hours) must be positive")
    settings = settings or ServiceSettings()
    if settings.jwks_url:
        raise ValueError(
            "TURNOUT_JWKS_URL is set, so services only accept tokens from the identity "
            f"provider; a locally signed token would be rejected (set {TOKEN_ENV} to a "
            "token from the provider)"
        )
    return issue_token(
        settings.jwt_secret,
        role,
        subject or f"local-{role.value}",
        branches=list(branches),
        groups=list(groups),
        ttl=timedelta(hours=ttl_hours),
        issuer=settings.jwt_issuer,
        audience=settings.jwt_audience,
    )
