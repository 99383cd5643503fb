"""Contact values never reach a log line; the numbers operators need still do."""

from __future__ import annotations

import logging

import pytest
import structlog

from turnout_kit.logging import correlation_context
from turnout_kit.redaction import REDACTED, redact_pii, redact_text

pytestmark = pytest.mark.unit

PHONES = [
    "+447700900123",
    "+44 7700 900123",
    "+44 7700 900 123",
    "+44 (0)7700 900123",
    "+44 (0)20 7946 0018",
    "(+44) 7700 900123",
    "0044 7700 900123",
    "07700 900123",
    "07700900123",
    "07700-900-123",
    "(020) 7946 0018",
    "020 7946 0018",
    "0161 496 0000",
    "01632 960001",
    "0800 123 4567",
    "+1 (415) 555-2671",
    "+1-415-555-2671",
    "+33 1 23 45 67 89",
    "+353 85 123 4567",
    "415-555-2671",
    "447700900123",  # E.164 without its plus, as spreadsheets export it
    "7700900123",  # a UK mobile whose leading zero a spreadsheet ate
]

EMAILS = [
    "alice@example.org",
    "Alice.Smith+union@mail.example.co.uk",
    "o'brien@example.ie",
    "bob_99@sub-domain.example.com",
    "alice%40example.org",
]

HARMLESS = [
    "3f2b8c1e-7d4a-4c1b-9e2f-0a1b2c3d4e5f",
    "00000000-0000-0000-0000-000000000000",
    "12345678-1234-1234-1234-123456789012",
    "5f2b8c1e7d4a4c1b9e2f0a1b2c3d4e5f",  # a correlation id
    "2026-02-18T09:30:00+00:00",
    "2026-02-18T09:30:00.123456Z",
    "2026-02-18 09:30:00.123456+00:00",
    "2026-02-18",
    "09:30:00",
    "127.0.0.1:9092",
    "localhost:55432",
    "port 8001",
    "http://127.0.0.1:8004/v1/ballots",
    "1500000 rows in 12.5 s",
    "took 0.123456789012 s",
    "duration_ms=1234.56",
    "offset 1234567890",
    "1766700000",  # epoch seconds
    "1766700000123",  # epoch milliseconds
    "partitions 0 1 2 3 4 5",
    "v1.2.3",
    "B123",
    "turnout.ballots.events",
    "postgresql+asyncpg://postgres@127.0.0.1:55432/postgres",
    "ballot 2025-2026",
]


@pytest.mark.parametrize("phone", PHONES)
def test_phone_numbers_are_redacted(phone: str) -> None:
    out = redact_text(f"could not send to {phone} today")
    assert out == f"could not send to {REDACTED} today"


@pytest.mark.parametrize("phone", PHONES)
def test_phone_numbers_alone_are_redacted(phone: str) -> None:
    assert redact_text(phone) == REDACTED


@pytest.mark.parametrize("email", EMAILS)
def test_emails_are_redacted(email: str) -> None:
    assert redact_text(f"bounce from <{email}>.") == f"bounce from <{REDACTED}>."


@pytest.mark.parametrize("value", HARMLESS)
def test_ids_timestamps_and_numbers_are_untouched(value: str) -> None:
    assert redact_text(value) == value


def test_numbers_next_to_a_phone_number_survive() -> None:
    assert (redact_text("3 calls to 07700 900123 in 12 s")
            == f"3 calls to {REDACTED} in 12 s")
    assert (redact_text("member 3f2b8c1e-7d4a-4c1b-9e2f-0a1b2c3d4e5f mobile 07700900123 "
                        "at 2026-02-18T09:30:00Z")
            == f"member 3f2b8c1e-7d4a-4c1b-9e2f-0a1b2c3d4e5f mobile {REDACTED} "
               "at 2026-02-18T09:30:00Z")


def test_processor_walks_nested_values_and_keeps_other_types() -> None:
    event = {
        "event": "import row rejected: 07700 900123",
        "row": {"mobile_raw": "+44 7700 900123", "n": 3, "ok": False, "ratio": 0.5},
        "emails": ["a@example.org", ("b@example.org",)],
        "member_id": "3f2b8c1e-7d4a-4c1b-9e2f-0a1b2c3d4e5f",
        "count": 1234567890123,
        "_record": object(),
    }
    record = event["_record"]
    out = redact_pii(None, "info", event)
    assert out["event"] == f"import row rejected: {REDACTED}"
    assert out["row"] == {"mobile_raw": REDACTED, "n": 3, "ok": False, "ratio": 0.5}
    assert out["emails"] == [REDACTED, [REDACTED]]
    assert out["member_id"] == "3f2b8c1e-7d4a-4c1b-9e2f-0a1b2c3d4e5f"
    assert out["count"] == 1234567890123  # ints are not strings: left alone
    assert out["_record"] is record  # plumbing untouched


def test_values_of_personal_keys_are_redacted_whatever_they_look_like() -> None:
    out = redact_pii(None, "info", {"event": "x", "first_name": "Ada", "note": "rang twice",
                                    "mobile": None, "authorization": "Bearer abc"})
    assert out == {"event": "x", "first_name": REDACTED, "note": REDACTED, "mobile": None,
                   "authorization": REDACTED}


def test_objects_are_rendered_then_redacted() -> None:
    class Member:
        def __repr__(self) -> str:
            return "Member(mobile='07700900123')"

        __str__ = __repr__

    assert redact_pii(None, "info", {"m": Member()})["m"] == f"Member(mobile='{REDACTED}')"


def test_log_lines_are_json_with_context_and_redacted(log_lines) -> None:
    with correlation_context("corr-123"):
        structlog.get_logger("contacts.import").info(
            "row rejected", reason="bad mobile +44 7700 900123", rows=12,
            member_id="3f2b8c1e-7d4a-4c1b-9e2f-0a1b2c3d4e5f",
        )
    [line] = log_lines.records()
    assert line["event"] == "row rejected"
    assert line["reason"] == f"bad mobile {REDACTED}"
    assert line["rows"] == 12
    assert line["member_id"] == "3f2b8c1e-7d4a-4c1b-9e2f-0a1b2c3d4e5f"
    assert line["correlation_id"] == "corr-123"
    assert line["service"] == "testsvc"
    assert line["level"] == "info"
    assert line["logger"] == "contacts.import"
    assert line["timestamp"].endswith("Z") and "T" in line["timestamp"]
    assert "07700" not in log_lines.text


def test_stdlib_loggers_go_through_the_same_processors(log_lines) -> None:
    with correlation_context("corr-456"):
        logging.getLogger("uvicorn.error").warning("client sent %s", "alice@example.org")
        logging.getLogger("aiokafka").info("Joined group %s", "reporting")
    first, second = log_lines.records()
    assert first["event"] == f"client sent {REDACTED}"
    assert first["logger"] == "uvicorn.error"
    assert first["level"] == "warning"
    assert first["correlation_id"] == "corr-456"
    assert first["service"] == "testsvc"
    assert second["event"] == "Joined group reporting"


def test_tracebacks_are_redacted(log_lines) -> None:
    try:
        raise ValueError("provider refused 07700 900123")
    except ValueError:
        structlog.get_logger("notifications").exception("send failed")
        logging.getLogger("faststream").exception("handler failed")
    lines = log_lines.records()
    assert len(lines) == 2
    for line in lines:
        assert "ValueError" in line["exception"]
        assert REDACTED in line["exception"]
    assert "900123" not in log_lines.text


def test_chatty_loggers_are_quietened(log_lines) -> None:
    logging.getLogger("sqlalchemy.engine.Engine").info("INSERT ... ('Ada', '07700900123')")
    logging.getLogger("httpx").info("POST https://sms.example/send?to=07700900123")
    logging.getLogger("uvicorn.access").info('127.0.0.1 - "GET /v1/members?q=Ada" 200')
    assert log_lines.records() == []


def test_console_renderer_still_redacts() -> None:
    import io

    from turnout_kit.logging import configure_logging

    root = logging.getLogger()
    saved = list(root.handlers)
    stream = io.StringIO()
    try:
        configure_logging("testsvc", "INFO", json=False, stream=stream)
        structlog.get_logger("x").info("texting 07700 900123")
    finally:
        for h in list(root.handlers):
            root.removeHandler(h)
        for h in saved:
            root.addHandler(h)
        structlog.reset_defaults()
    assert REDACTED in stream.getvalue()
    assert "900123" not in stream.getvalue()


def test_a_value_seen_clean_elsewhere_is_still_redacted_under_a_personal_key() -> None:
    # "Ada" and 7700900123-as-int pass unchanged under ordinary keys, and are remembered
    # as clean; under a personal key they must be redacted all the same.
    assert redact_pii(None, "info", {"event": "Ada", "n": 7700900123}) == {
        "event": "Ada", "n": 7700900123}
    assert redact_pii(None, "info", {"event": "x", "first_name": "Ada",
                                     "Mobile": 7700900123, "PHONE": "Ada"}) == {
        "event": "x", "first_name": REDACTED, "Mobile": REDACTED, "PHONE": REDACTED}


def test_numbers_between_ids_and_timestamps_are_still_found() -> None:
    ids = "3f2b8c1e-7d4a-4c1b-9e2f-0a1b2c3d4e5f"
    clean = f"/v1/ballots/{ids}/votes/{ids}"
    assert redact_text(clean) == clean
    assert redact_text(clean) == clean  # again, remembered as clean
    assert (redact_text(f"/v1/ballots/{ids}/search/07700900123")
            == f"/v1/ballots/{ids}/search/{REDACTED}")
    assert (redact_text(f"{ids} 07700 900123 2026-02-18T09:30:00Z")
            == f"{ids} {REDACTED} 2026-02-18T09:30:00Z")


def test_access_log_fields_are_redacted_except_the_timestamp(log_lines) -> None:
    structlog.get_logger("turnout.access").info(
        "request", method="GET", path="/v1/members/search/07700900123",
        route="/v1/members/search/{term}", status=200, duration_ms=1.5,
        subject="07700 900123", role="rep")
    (line,) = log_lines.events("request")
    assert line["path"] == f"/v1/members/search/{REDACTED}"
    assert line["subject"] == REDACTED
    assert line["route"] == "/v1/members/search/{term}"
    assert (line["status"], line["duration_ms"], line["role"]) == (200, 1.5, "rep")
    assert line["timestamp"].endswith("Z") and line["level"] == "info"
