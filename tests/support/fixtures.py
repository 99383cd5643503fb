"""Shared fixtures, loaded by the root conftest.py: one Kafka broker and one PostgreSQL
server for the whole run (see tests/support/infra.py for where they come from), and
per-test isolation."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from tests.support.infra import Infra, provide_infra
from tests.support.isolation import create_database, create_topics, delete_topics, drop_database
from turnout_events.topics import TopicRegistry


@pytest.fixture(scope="session")
def infra() -> Iterator[Infra]:
    with provide_infra() as found:
        print(f"\n[turnout tests] Kafka {found.kafka_bootstrap_servers}, "
              f"PostgreSQL from {found.how}")
        yield found


@pytest.fixture(scope="session")
def kafka_bootstrap(infra: Infra) -> str:
    return infra.kafka_bootstrap_servers


@pytest.fixture
async def topics(kafka_bootstrap: str) -> AsyncIterator[TopicRegistry]:
    """A topic set (all event topics + dead letter) no other test uses."""
    registry = await create_topics(kafka_bootstrap)
    yield registry
    await delete_topics(kafka_bootstrap, registry)


@pytest.fixture
async def database_url(infra: Infra) -> AsyncIterator[str]:
    """An empty database of the test's own (postgresql+asyncpg URL), dropped afterwards."""
    url = await create_database(infra.database_url)
    yield url
    await drop_database(infra.database_url, url)


@pytest.fixture(scope="session")
def tokens():
    """Bearer tokens signed the way the services (in tests) verify them."""
    from tests.support.services import TokenMaker

    return TokenMaker()


# -- No personal data in logs ---------------------------------------------------------
# Every log record of the run (structlog and stdlib alike, services in-process included)
# is written as JSON to .local/test-logs/ and inspected *before* redaction: a phone number
# or email reaching a log call fails the run even though production would redact it.

_PII_HITS: list[str] = []


def _pii_inspector(_logger, _method, event_dict):
    from turnout_kit.redaction import redact_text

    for key, value in event_dict.items():
        text = value if isinstance(value, str) else repr(value)
        if redact_text(text) != text:
            _PII_HITS.append(f"{event_dict.get('logger', '?')}: {event_dict.get('event')!r} "
                             f"has personal data in {key!r}")
    return event_dict


def _install_log_guard(stream, *, inspect: bool = True) -> None:
    from turnout_kit.logging import configure_logging

    configure_logging("tests", "INFO", json=True, stream=stream,
                      inspect=[_pii_inspector] if inspect else [])


@pytest.fixture(scope="session", autouse=True)
def _log_file():
    from turnout_local.paths import local_dir

    folder = local_dir() / "test-logs"
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "pytest.jsonl", "w") as stream:
        _install_log_guard(stream)
        yield stream
    assert not _PII_HITS, "personal data reached the logs:\n" + "\n".join(_PII_HITS[:20])


@pytest.fixture(autouse=True)
def _log_guard(request, _log_file):
    # Some unit tests configure logging their own way (to test redaction); put the guard
    # back for the tests after them.
    _install_log_guard(_log_file, inspect="no_log_guard" not in request.keywords)
    yield
