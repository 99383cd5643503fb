"""Fixtures for the kit's unit tests: a clean environment and captured log lines."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
import structlog

from turnout_kit import settings as settings_module
from turnout_kit.logging import configure_logging
from turnout_kit.settings import SHARED_ENV

# A 32+ character secret for tests (HS256 needs 256 bits).
TEST_SECRET = "unit-test-secret-0123456789abcdef-xyz"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings must come from the test, not from whatever the shell exported."""
    for name in SHARED_ENV.values():
        monkeypatch.delenv(name, raising=False)
    import os

    for name in list(os.environ):
        if name.startswith(("TURNOUT_", "CONTACTS_", "TESTSVC_")):
            monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(settings_module, "_warned_dev_secret", False)


class LogLines:
    def __init__(self, stream: io.StringIO) -> None:
        self.stream = stream

    @property
    def text(self) -> str:
        return self.stream.getvalue()

    def records(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.text.splitlines() if line.strip()]

    def events(self, name: str) -> list[dict[str, Any]]:
        return [r for r in self.records() if r.get("event") == name]


@pytest.fixture
def log_lines() -> Iterator[LogLines]:
    """JSON logging into a buffer; the previous logging setup is restored afterwards."""
    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level
    stream = io.StringIO()
    configure_logging("testsvc", "DEBUG", json=True, stream=stream)
    try:
        yield LogLines(stream)
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in saved_handlers:
            root.addHandler(handler)
        root.setLevel(saved_level)
        logging.getLogger("uvicorn.access").disabled = False
        structlog.reset_defaults()
