"""The local runtime's Kafka cluster id (turnout_local.kafka.new_cluster_id)."""

from __future__ import annotations

import base64
import uuid

import pytest

from turnout_local import kafka

pytestmark = pytest.mark.unit

# 0xF8 starts with the six bits 111110: '-' in URL-safe base64.
STARTS_WITH_DASH = uuid.UUID(bytes=b"\xf8" + bytes(15))
PLAIN = uuid.UUID(bytes=b"\x10" + bytes(15))


def test_an_id_that_would_start_with_a_dash_is_drawn_again(
        monkeypatch: pytest.MonkeyPatch) -> None:
    draws = iter([STARTS_WITH_DASH, STARTS_WITH_DASH, PLAIN])
    monkeypatch.setattr(kafka.uuid, "uuid4", lambda: next(draws))
    assert base64.urlsafe_b64encode(STARTS_WITH_DASH.bytes).decode().startswith("-")
    cluster_id = kafka.new_cluster_id()
    assert cluster_id == base64.urlsafe_b64encode(PLAIN.bytes).decode().rstrip("=")


def test_ids_are_22_characters_of_url_safe_base64() -> None:
    for _ in range(1000):
        cluster_id = kafka.new_cluster_id()
        assert len(cluster_id) == 22 and not cluster_id.startswith("-")
        assert uuid.UUID(bytes=base64.urlsafe_b64decode(cluster_id + "==")).version == 4
