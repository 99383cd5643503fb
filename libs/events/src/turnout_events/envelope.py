"""The one envelope every Turnout event travels in, and the base class of every payload.

A payload class declares what it is (`event_type`, `version`), which service emits it
(`source`), and which of its fields is the partition key (`key_field`). The envelope is
what goes on the wire; consumers decode the envelope first and then, if they know the
type, the typed payload (see `registry.parse_payload`).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any, ClassVar

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from .privacy import find_contact_values

SYSTEM_ACTOR = "system"


class InvalidEvent(ValueError):
    """Raised for bytes that are not a valid event: bad JSON, a bad envelope, or a payload
    that fails its model's validation. The message says what is wrong, never the values."""


class EventData(BaseModel):
    """Base class of every event payload.

    Payloads are frozen and ignore unknown fields, so a consumer built against version N
    reads any later additive change of version N.

    Every string in a payload, however deeply nested, is checked for email addresses and
    phone numbers: the event log cannot be erased, so contact values must never get in.
    Validation errors never echo the input (`hide_input_in_errors`) for the same reason.
    """

    model_config = ConfigDict(extra="ignore", frozen=True, hide_input_in_errors=True)

    event_type: ClassVar[str]
    version: ClassVar[int] = 1
    source: ClassVar[str]
    key_field: ClassVar[str]

    def partition_key(self) -> str:
        return str(getattr(self, self.key_field))

    # One model-level pass rather than a validator per field: payload validation sits on
    # the hot path of every consumer, and this pass costs about a microsecond.
    @model_validator(mode="after")
    def _no_contact_values(self) -> EventData:
        found = find_contact_values(self)
        if found:
            raise PydanticCustomError(
                "personal_data",
                "{problems}; events carry pseudonymous ids, codes and flags, never contact "
                "details",
                {"problems": "; ".join(f"field {path} looks like {kind}" for path, kind in found)},
            )
        return self


class Envelope(BaseModel):
    # hide_input_in_errors: a malformed envelope may carry personal data; keep it out of logs.
    model_config = ConfigDict(extra="ignore", frozen=True, hide_input_in_errors=True)

    id: uuid.UUID
    type: str = Field(min_length=3, max_length=100, pattern=r"^[a-z]+\.[a-z][a-z0-9_-]*$")
    version: int = Field(ge=1)
    occurred_at: AwareDatetime
    recorded_at: AwareDatetime
    source: str = Field(min_length=1, max_length=50)
    key: str = Field(min_length=1, max_length=200)
    correlation_id: str | None = Field(default=None, max_length=100)
    causation_id: uuid.UUID | None = None
    actor: str = Field(min_length=1, max_length=100)
    data: dict[str, Any]

    @field_validator("actor")
    @classmethod
    def _actor_is_pseudonymous(cls, v: str) -> str:
        # "system", "service:<name>", "rep:<id>", "member:<id>", "scrutineer:<id>", ...
        kind, _, ident = v.partition(":")
        if not kind.isidentifier() or (v != SYSTEM_ACTOR and not ident):
            raise ValueError("actor must be 'system' or '<kind>:<pseudonymous id>'")
        if "@" in v:
            raise ValueError("actor must not be an email address")
        return v

    @classmethod
    def wrap(
        cls,
        data: EventData,
        *,
        actor: str = SYSTEM_ACTOR,
        occurred_at: datetime | None = None,
        correlation_id: str | None = None,
        causation_id: uuid.UUID | None = None,
        event_id: uuid.UUID | None = None,
    ) -> Envelope:
        now = datetime.now(UTC)
        return cls(
            id=event_id or uuid.uuid4(),
            type=data.event_type,
            version=data.version,
            occurred_at=occurred_at or now,
            recorded_at=now,
            source=data.source,
            key=data.partition_key(),
            correlation_id=correlation_id,
            causation_id=causation_id,
            actor=actor,
            data=data.model_dump(mode="json"),
        )
