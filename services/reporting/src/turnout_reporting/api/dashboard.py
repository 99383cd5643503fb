"""HTTP: the live dashboard - one HTML page, one script, one stylesheet, shipped in the
package (static/), with no build step and nothing fetched from elsewhere.

The page keeps the caller's bearer token in sessionStorage, so anything that could run
script in it could read the token: the Content-Security-Policy allows only our own
script and style files (no inline script, no other origin), and the page builds every
element from data with textContent, never HTML strings.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib.resources import files

from fastapi import APIRouter, Request
from fastapi.responses import Response

from turnout_kit.problems import Problem

router = APIRouter(include_in_schema=False)

SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


@dataclass(frozen=True)
class Asset:
    body: bytes
    media_type: str
    etag: str


def _load(name: str, media_type: str) -> Asset:
    body = (files("turnout_reporting") / "static" / name).read_bytes()
    return Asset(body, media_type, '"' + hashlib.sha256(body).hexdigest()[:20] + '"')


# Read once: a few tens of kilobytes, served from memory.
PAGE = _load("index.html", "text/html; charset=utf-8")
ASSETS = {
    "dashboard.js": _load("dashboard.js", "text/javascript; charset=utf-8"),
    "dashboard.css": _load("dashboard.css", "text/css; charset=utf-8"),
}


def _serve(asset: Asset, request: Request) -> Response:
    # Revalidated on every load (a deploy takes effect at once), answered with 304
    # while unchanged.
    headers = {"ETag": asset.etag, "Cache-Control": "no-cache", **SECURITY_HEADERS}
    if request.headers.get("if-none-match") == asset.etag:
        return Response(status_code=304, headers=headers)
    return Response(asset.body, media_type=asset.media_type, headers=headers)


@router.get("/")
async def dashboard(request: Request) -> Response:
    """The dashboard. It needs no token to load: it asks for one, and every figure it
    shows comes from the API with that token."""
    return _serve(PAGE, request)


@router.get("/static/{name}")
async def static_asset(name: str, request: Request) -> Response:
    asset = ASSETS.get(name)
    if asset is None:
        raise Problem(404, detail="There is nothing at this address.")
    return _serve(asset, request)
