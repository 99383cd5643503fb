"""The catalog of every event payload class, keyed by (type, version).

Consumers decode the envelope first and then ask `parse_payload` for the typed payload.
An event type or version this code does not know yields None: the contract says
consumers ignore those (a newer producer may publish v2 alongside v1). A known type whose
payload fails validation is a broken event and raises `InvalidEvent` (dead-letter it).
"""

from __future__ import annotations

from pydantic import ValidationError

from . import ballots, contacts, notifications
from .envelope import Envelope, EventData, InvalidEvent
from .serde import describe_validation_error
from .topics import SOURCES


def _build(*groups: tuple[type[EventData], ...]) -> dict[tuple[str, int], type[EventData]]:
    catalog: dict[tuple[str, int], type[EventData]] = {}
    for group in groups:
        for model in group:
            key = (model.event_type, model.version)
            # Checked at import so that a slip in a new event fails every test at once.
            if key in catalog:
                raise RuntimeError(f"event {key} registered twice")
            if model.source not in SOURCES or not model.event_type.startswith(f"{model.source}."):
                raise RuntimeError(f"event {model.event_type} does not match source {model.source}")
            if model.key_field not in model.model_fields:
                raise RuntimeError(f"event {model.event_type} has no key field {model.key_field}")
            catalog[key] = model
    return dict(sorted(catalog.items()))


_CATALOG = _build(contacts.EVENTS, ballots.EVENTS, notifications.EVENTS)


def all_events() -> list[type[EventData]]:
    """Every payload class, ordered by (type, version)."""
    return list(_CATALOG.values())


def model_for(event_type: str, version: int) -> type[EventData]:
    """The payload class of an event type and version; KeyError if there is none."""
    try:
        return _CATALOG[(event_type, version)]
    except KeyError:
        raise KeyError(f"no event {event_type} v{version} in the catalog") from None


def is_known(event_type: str, version: int) -> bool:
    return (event_type, version) in _CATALOG


def parse_payload(envelope: Envelope) -> EventData | None:
    """The typed payload of `envelope`, or None for an event type/version we do not know.

    Raises `InvalidEvent` when the payload fails its model, or when the envelope's source
    or key disagree with the payload (a key mismatch means the event sits on the wrong
    partition, and per-member ordering would silently break).
    """
    model = _CATALOG.get((envelope.type, envelope.version))
    if model is None:
        return None
    what = f"{envelope.type} v{envelope.version} payload"
    try:
        payload = model.model_validate(envelope.data)
    except ValidationError as exc:
        raise InvalidEvent(describe_validation_error(what, exc)) from None
    if envelope.source != model.source:
        raise InvalidEvent(f"invalid {what}: envelope source must be {model.source!r}")
    if envelope.key != payload.partition_key():
        raise InvalidEvent(f"invalid {what}: envelope key does not match data.{model.key_field}")
    return payload
