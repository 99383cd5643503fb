"""Structured logging: one JSON object per line, with the service name, a correlation id,
and contact values redacted.

Lines from the standard library's loggers (uvicorn, aiokafka, SQLAlchemy, FastStream)
go through its root logger and get the same processors (timestamps, correlation id,
redaction) as our own structlog calls. Our own calls are rendered by structlog itself and
written straight to the same stream: the detour through a stdlib `LogRecord` and
`ProcessorFormatter` cost a quarter of the CPU of a vote mark, most of it for the access
log line every request writes.

The correlation id lives in structlog's contextvars, so it follows a request or a
consumed event through every await, and `turnout_events` binds the same key when it
handles an event.
"""

from __future__ import annotations

import logging
import sys
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import Token
from typing import IO, Any, TextIO, cast

import structlog
from structlog.types import EventDict, Processor

from .redaction import redact_event, redact_pii

__all__ = [
    "bind_correlation_id",
    "broker_logger",
    "configure_logging",
    "correlation_context",
    "get_correlation_id",
    "new_correlation_id",
    "redact_pii",
    "reset_correlation_id",
]

CORRELATION_KEY = "correlation_id"

# Loggers whose INFO output is personal data or noise we do not want at INFO:
# - sqlalchemy.engine logs every statement *with its parameters* (names, numbers);
# - httpx/httpcore log full URLs, query strings included (an SMS provider's API may take
#   the number as a query parameter);
# - uvicorn.access logs the query string (search terms are names); our access log
#   middleware replaces it.
_QUIET = {"sqlalchemy.engine": logging.WARNING, "sqlalchemy.pool": logging.WARNING,
          "httpx": logging.WARNING, "httpcore": logging.WARNING}
_ROUTED = ("uvicorn", "uvicorn.error", "aiokafka", "faststream", "sqlalchemy", "alembic")


# -- correlation ids -----------------------------------------------------------------

def new_correlation_id() -> str:
    return uuid.uuid4().hex


def bind_correlation_id(correlation_id: str) -> Token[Any]:
    """Make `correlation_id` part of every log line in this context; returns the token
    for `reset_correlation_id`."""
    tokens = structlog.contextvars.bind_contextvars(**{CORRELATION_KEY: correlation_id})
    return tokens[CORRELATION_KEY]


def reset_correlation_id(token: Token[Any]) -> None:
    structlog.contextvars.reset_contextvars(**{CORRELATION_KEY: token})


def get_correlation_id() -> str | None:
    value = structlog.contextvars.get_contextvars().get(CORRELATION_KEY)
    return str(value) if value is not None else None


@contextmanager
def correlation_context(correlation_id: str | None = None) -> Iterator[str]:
    """Bind a correlation id (a new one if None) for the duration of the block."""
    cid = correlation_id or new_correlation_id()
    token = bind_correlation_id(cid)
    try:
        yield cid
    finally:
        reset_correlation_id(token)


# -- configuration ---------------------------------------------------------------------

def _add_service(service: str) -> Processor:
    def add_service(_logger: Any, _method: str, event_dict: EventDict) -> EventDict:
        event_dict.setdefault("service", service)
        return event_dict

    return add_service


def _drop_color_message(_logger: Any, _method: str, event_dict: EventDict) -> EventDict:
    # uvicorn duplicates its message with ANSI colours in `extra`; one copy is enough.
    event_dict.pop("color_message", None)
    return event_dict


# Keys whose values our own processors wrote last, after anything a log call or a
# foreign record's `extra` could put there: not searched for contact values.
_OWN_KEYS = frozenset({"timestamp"})


def _redact(_logger: Any, _method: str, event_dict: EventDict) -> EventDict:
    """`redact_pii`, skipping the timestamp `TimeStamper` just wrote (an ISO time is
    all digits and separators: the costliest string of a line to search, and ours)."""
    return redact_event(event_dict, _OWN_KEYS)


def _shared_processors(service: str, inspect: Sequence[Processor] = (),
                       *, foreign: bool = True) -> list[Processor]:
    # Order matters: exceptions are rendered to text *before* redaction, so a traceback
    # quoting a phone number is redacted like any other string.
    from_records: list[Processor] = [
        structlog.stdlib.PositionalArgumentsFormatter(),
        structlog.stdlib.ExtraAdder(),
        _drop_color_message,
    ] if foreign else []
    return [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        *from_records,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _add_service(service),
        structlog.processors.StackInfoRenderer(),
        structlog.processors.format_exc_info,
        structlog.processors.UnicodeDecoder(),
        *inspect,
        _redact,
    ]


def configure_logging(
    service: str,
    level: int | str = "INFO",
    json: bool = True,
    *,
    stream: IO[str] | None = None,
    levels: Mapping[str, int | str] | None = None,
    inspect: Sequence[Processor] = (),
) -> None:
    """Route structlog and stdlib logging through one handler on the root logger.

    `json=False` gives coloured, human-readable lines for a terminal (still redacted).
    `levels` overrides the level of particular loggers, e.g. {"aiokafka": "WARNING"}.
    Safe to call more than once (tests, CLI commands): it replaces what it installed.
    `inspect` processors see each record just before redaction: the test suite uses one
    to fail the run when code logs a phone number or email, rather than relying on the
    redaction to hide it.
    """
    if isinstance(level, str):
        level = logging.getLevelName(level.upper())
        if not isinstance(level, int):
            raise ValueError("unknown log level")
    shared = _shared_processors(service, inspect)
    renderer: Processor = (
        structlog.processors.JSONRenderer()
        if json
        else structlog.dev.ConsoleRenderer(colors=(stream or sys.stdout).isatty())
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
    )
    handler = logging.StreamHandler(stream or sys.stdout)
    handler.setFormatter(formatter)
    handler.set_name("turnout")

    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level)

    for name in _ROUTED:
        routed = logging.getLogger(name)
        routed.handlers.clear()  # uvicorn installs its own when it starts first
        routed.propagate = True
        routed.setLevel(logging.NOTSET)
    access = logging.getLogger("uvicorn.access")
    access.handlers.clear()
    access.propagate = False
    access.disabled = True
    for name, quiet in _QUIET.items():
        logging.getLogger(name).setLevel(max(quiet, level))
    for name, override in (levels or {}).items():
        logging.getLogger(name).setLevel(override)

    structlog.configure(
        processors=[*_shared_processors(service, inspect, foreign=False), renderer],
        logger_factory=_NamedWriteLoggerFactory(stream or sys.stdout),
        # Level checks are a method lookup: below the level, a call is a no-op.
        wrapper_class=structlog.make_filtering_bound_logger(level),
        # Not cached, so reconfiguring (tests, a CLI that changes level) takes effect on
        # module-level loggers that were already used.
        cache_logger_on_first_use=False,
    )


class _NamedWriteLogger(structlog.WriteLogger):
    """structlog's line writer, with the `name` that `add_logger_name` reads."""

    def __init__(self, file: IO[str], name: str) -> None:
        # Typed as TextIO in structlog, but it only writes and flushes: any IO[str] does.
        super().__init__(cast(TextIO, file))
        self.name = name


class _NamedWriteLoggerFactory:
    def __init__(self, file: IO[str]) -> None:
        self._file = file
        self._loggers: dict[str, _NamedWriteLogger] = {}

    def __call__(self, *args: Any) -> _NamedWriteLogger:
        name = str(args[0]) if args and args[0] is not None else "root"
        found = self._loggers.get(name)
        if found is None:
            found = self._loggers[name] = _NamedWriteLogger(self._file, name)
        return found


def broker_logger() -> logging.Logger:
    """The logger to hand FastStream's `KafkaBroker(logger=...)`.

    FastStream's default logger has its own coloured handler and does not propagate, so
    its lines would bypass redaction and JSON; this one propagates to our root handler.
    """
    return logging.getLogger("faststream")
