"""`turnout token`: tokens the services accept."""

from __future__ import annotations

import jwt
import pytest

from turnout_kit.auth import Role, TokenVerifier
from turnout_kit.cli_token import cli_bearer, token_command
from turnout_kit.settings import ServiceSettings

from .conftest import TEST_SECRET

pytestmark = pytest.mark.unit


def test_token_is_accepted_by_a_service_with_the_same_settings() -> None:
    token = token_command("rep", ["B123"])
    caller = TokenVerifier.from_settings(ServiceSettings()).verify(token)
    assert caller.role is Role.rep
    assert caller.branch_codes == {"B123"}
    assert caller.subject == "local-rep"


def test_secret_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TURNOUT_JWT_SECRET", TEST_SECRET)
    token = token_command("organiser", groups=["G1", "G2"], subject="alice", ttl_hours=1)
    claims = jwt.decode(token, TEST_SECRET, algorithms=["HS256"], audience="turnout")
    assert claims["sub"] == "alice"
    assert claims["group_codes"] == ["G1", "G2"]
    assert claims["exp"] - claims["iat"] == 3600


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"role": "rep"}, "branch"),
        ({"role": "organiser"}, "group"),
        ({"role": "boss"}, "unknown role"),
        ({"role": "national", "ttl_hours": 0}, "positive"),
    ],
)
def test_nonsense_is_refused_with_a_message(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        token_command(**kwargs)


def test_refused_when_services_expect_identity_provider_tokens(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TURNOUT_JWKS_URL", "https://idp.example/jwks")
    monkeypatch.setenv("TURNOUT_SERVICE_SECRET", "s" * 40)
    with pytest.raises(ValueError, match="only accept tokens from the identity provider"):
        token_command("national")


def test_cli_commands_send_a_providers_token_when_given_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TURNOUT_JWKS_URL", "https://idp.example/jwks")
    monkeypatch.setenv("TURNOUT_SERVICE_SECRET", "s" * 40)
    monkeypatch.delenv("TURNOUT_TOKEN", raising=False)
    with pytest.raises(ValueError, match="set TURNOUT_TOKEN"):
        cli_bearer("admin", subject="cli-rebuild")
    monkeypatch.setenv("TURNOUT_TOKEN", "eyJ.from-the-provider.sig\n")
    assert cli_bearer("admin", subject="cli-rebuild") == "eyJ.from-the-provider.sig"
