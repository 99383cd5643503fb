"""Errors as RFC 9457 problem details (`application/problem+json`).

Every error response of every service has the same shape, with a `detail` a person can
act on and the request's `correlation_id`, so a rep can quote it to whoever supports
them. Nothing in an error echoes what was submitted: inputs hold phone numbers and
email addresses, and error bodies end up in browser consoles and support tickets.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from http import HTTPStatus
from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse

from .logging import get_correlation_id
from .redaction import redact_text

PROBLEM_JSON = "application/problem+json"

log = structlog.get_logger("turnout_kit.problems")

# RFC 9110 renamed these; Python 3.11's HTTPStatus still has the old phrases.
_TITLES = {413: "Content Too Large", 422: "Unprocessable Content"}


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def status_title(status: int) -> str:
    return _TITLES.get(status) or _phrase(status)


class Problem(Exception):
    """Raise from anywhere in a request to answer with a problem document.

    `type` is a URI naming the kind of problem ("about:blank" means "just the HTTP
    status"); `extra` members are added to the document (e.g. `errors=[...]`).
    """

    def __init__(
        self,
        status: int,
        title: str | None = None,
        detail: str | None = None,
        *,
        type: str = "about:blank",  # the RFC's member name, shadowing a builtin
        instance: str | None = None,
        headers: Mapping[str, str] | None = None,
        **extra: Any,
    ) -> None:
        self.status = status
        self.title = title or status_title(status)
        self.detail = detail
        self.type = type
        self.instance = instance
        self.headers = dict(headers or {})
        self.extra = extra
        super().__init__(f"{status} {self.title}" + (f": {detail}" if detail else ""))

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"type": self.type, "title": self.title, "status": self.status}
        if self.detail is not None:
            body["detail"] = self.detail
        if self.instance is not None:
            body["instance"] = self.instance
        for key, value in self.extra.items():
            body.setdefault(key, value)  # extensions cannot overwrite the standard members
        cid = get_correlation_id()
        if cid is not None:
            body.setdefault("correlation_id", cid)
        return body

    def response(self) -> JSONResponse:
        return JSONResponse(
            self.to_dict(), status_code=self.status, headers=self.headers,
            media_type=PROBLEM_JSON,
        )


def problem_response(
    status: int, detail: str | None = None, *, headers: Mapping[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    return Problem(status, detail=detail, headers=headers, **extra).response()


# -- handlers ---------------------------------------------------------------------------

async def problem_handler(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, Problem)
    return exc.response()


async def http_exception_handler(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    detail: str | None = exc.detail if isinstance(exc.detail, str) else None
    if detail in (status_title(exc.status_code), _phrase(exc.status_code)):
        detail = None  # "Not Found" twice says nothing
    if detail is None and exc.status_code == 404:
        detail = "There is nothing at this address, or you may not see it."
    if detail is None and exc.status_code == 405:
        detail = "This address does not accept that method."
    if detail is None and exc.status_code == 413:
        detail = "The request body is larger than this service accepts."
    return problem_response(exc.status_code, detail, headers=exc.headers)


def _field_path(loc: Sequence[int | str]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "(request)"


def validation_errors(errors: Sequence[Mapping[str, Any]]) -> list[dict[str, str]]:
    """`[{field, message}]` from pydantic errors, without the submitted values.

    Pydantic's own messages describe the expectation, not the input; messages raised by
    custom validators are written by us and might still quote a value, so they are
    redacted as well. `input` and `ctx` are dropped entirely.
    """
    return [
        {"field": _field_path(e.get("loc", ())), "message": redact_text(str(e.get("msg", "")))}
        for e in errors
    ]


async def validation_exception_handler(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = validation_errors(exc.errors())
    n = len(errors)
    detail = (
        "The request has 1 invalid field; see `errors`." if n == 1
        else f"The request has {n} invalid fields; see `errors`."
    )
    return problem_response(422, detail, errors=errors)


async def unhandled_exception_handler(request: Request, exc: Exception) -> JSONResponse:
    # Logged here (redacted, with the correlation id) rather than left to the server,
    # whose traceback would bypass nothing but would lack the request context.
    log.error("unhandled_exception", method=request.method, path=request.url.path,
              exc_info=exc)
    return internal_error_response()


def internal_error_response() -> JSONResponse:
    return problem_response(
        500,
        "Something went wrong on our side. It has been logged; if it keeps happening, "
        "quote the correlation id to whoever supports you.",
    )


def install_problem_handlers(app: FastAPI) -> None:
    app.add_exception_handler(Problem, problem_handler)
    app.add_exception_handler(StarletteHTTPException, http_exception_handler)
    app.add_exception_handler(RequestValidationError, validation_exception_handler)
    app.add_exception_handler(Exception, unhandled_exception_handler)
