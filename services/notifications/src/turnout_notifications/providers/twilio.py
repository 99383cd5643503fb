"""A real SMS provider: any HTTP API speaking Twilio's Messages API.

    POST {base_url}/2010-04-01/Accounts/{account_sid}/Messages.json
    basic auth account_sid:auth_token; form fields To, From, Body, StatusCallback
    201 {"sid": "SM...", "status": "queued", ...}
    4xx/5xx {"code": 21211, "message": "...", "status": 400}

How answers become the dispatcher's two errors:
- 429, 5xx, timeouts and connection errors are transient: the dispatcher retries with
  backoff (the message stays queued meanwhile);
- 401 is transient too: the credentials are wrong for every message alike, and failing
  the whole queue for a configuration slip would lose a campaign; it is logged as an
  error so someone fixes it before the retries run out;
- any other 4xx is permanent, with the provider's error code (21211 invalid number,
  21610 the member replied STOP to the provider itself, ...).

The provider's error `message` often quotes the number, so it is never read, logged or
raised; only the numeric code and the HTTP status are. The number and the body exist
here only as the form being posted.

Twilio's Messages API has no idempotency key: the message's key is sent as an
`Idempotency-Key` header, which compatible providers that honour one use to drop a
repeat; with Twilio itself a response lost after it accepted the message (a read
timeout, a dropped connection mid-answer) can, on retry, send it twice. A connection
that never opened cannot.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Iterable, Mapping
from urllib.parse import urlsplit, urlunsplit

import httpx
import structlog

from ..settings import NotificationsSettings
from .base import Accepted, PermanentProviderError, TransientProviderError

log = structlog.get_logger("turnout.notifications.twilio")

API_VERSION = "2010-04-01"


class TwilioProvider:
    name = "twilio"

    def __init__(self, *, base_url: str, account_sid: str, auth_token: str, sender_id: str,
                 status_callback_url: str | None = None, timeout_seconds: float = 10.0,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self._path = f"/{API_VERSION}/Accounts/{account_sid}/Messages.json"
        self._sender_id = sender_id
        self._status_callback_url = status_callback_url
        self._client = httpx.AsyncClient(base_url=base_url, auth=(account_sid, auth_token),
                                         timeout=timeout_seconds, transport=transport)

    @classmethod
    def from_settings(cls, settings: NotificationsSettings) -> TwilioProvider:
        assert settings.twilio_account_sid and settings.twilio_auth_token
        assert settings.twilio_sender_id
        return cls(base_url=settings.twilio_base_url, account_sid=settings.twilio_account_sid,
                   auth_token=settings.twilio_auth_token.get_secret_value(),
                   sender_id=settings.twilio_sender_id,
                   status_callback_url=settings.status_callback_url,
                   timeout_seconds=settings.twilio_timeout_seconds)

    async def aclose(self) -> None:
        await self._client.aclose()

    async def send(self, *, idempotency_key: str, to: str, body: str) -> Accepted:
        form = {"To": to, "From": self._sender_id, "Body": body}
        if self._status_callback_url:
            form["StatusCallback"] = self._status_callback_url
        try:
            response = await self._client.post(self._path, data=form,
                                               headers={"Idempotency-Key": idempotency_key})
        except httpx.TimeoutException as exc:
            raise TransientProviderError(f"timeout_{_phase(exc)}") from None
        except httpx.TransportError as exc:
            # The exception's text may hold the URL (the account sid), never the form;
            # its class name is all we keep.
            raise TransientProviderError(f"unreachable_{type(exc).__name__}") from None
        status = response.status_code
        if status in (200, 201):
            sid = _json(response).get("sid")
            if not isinstance(sid, str) or not sid:
                # Accepted but unreadable: retrying could send it twice, so it is not
                # transient; nor can it be tracked.
                raise PermanentProviderError("no_message_sid")
            return Accepted(provider_message_id=sid)
        code = _json(response).get("code")
        code = str(code) if isinstance(code, int | str) and str(code).isalnum() else None
        if status == 401:
            log.error("twilio.credentials_refused", status=status, code=code)
            raise TransientProviderError("auth_refused")
        if status == 429 or status >= 500:
            raise TransientProviderError(code or f"http_{status}")
        raise PermanentProviderError(code or f"http_{status}")


def _phase(exc: httpx.TimeoutException) -> str:
    return {httpx.ConnectTimeout: "connect", httpx.ReadTimeout: "read",
            httpx.WriteTimeout: "write", httpx.PoolTimeout: "pool"}.get(type(exc), "other")


def _json(response: httpx.Response) -> dict:
    try:
        found = response.json()
    except ValueError:
        return {}
    return found if isinstance(found, dict) else {}


# -- webhook signatures ----------------------------------------------------------------------

SIGNATURE_HEADER = "X-Twilio-Signature"


def compute_signature(secret: str, url: str,
                      params: Iterable[tuple[str, str]] | Mapping[str, str]) -> str:
    """Twilio's webhook signature: base64(HMAC-SHA1(secret, url + every POST parameter's
    name and value, in name order; a repeated name's values in value order))."""
    pairs = list(params.items() if isinstance(params, Mapping) else params)
    signed = url + "".join(name + value for name, value in sorted(pairs))
    digest = hmac.new(secret.encode(), signed.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


def url_variants(url: str) -> list[str]:
    """The URL as given, and with the default port removed or added: a proxy may add or
    drop `:443`, and Twilio's own libraries accept either."""
    parts = urlsplit(url)
    default = {"https": 443, "http": 80}.get(parts.scheme)
    host = parts.hostname or ""
    if ":" in host:  # an IPv6 literal keeps its brackets
        host = f"[{host}]"
    variants = [url]
    if default is not None:
        bare = urlunsplit(parts._replace(netloc=_netloc(parts, host)))
        with_port = urlunsplit(parts._replace(netloc=_netloc(parts, f"{host}:{default}")))
        if parts.port is None:
            variants.append(with_port)
        elif parts.port == default or parts.scheme == "https":
            variants.append(bare)
    return variants


def _netloc(parts, hostport: str) -> str:
    userinfo = parts.netloc.rpartition("@")[0]
    return f"{userinfo}@{hostport}" if userinfo else hostport


def signature_valid(secret: str, url: str, params: Iterable[tuple[str, str]],
                    signature: str | None) -> bool:
    if not signature:
        return False
    pairs = list(params)
    return any(hmac.compare_digest(compute_signature(secret, candidate, pairs).encode(),
                                   signature.strip().encode())
               for candidate in url_variants(url))
