"""Records to events, fast: msgspec Structs that mirror the contract's pydantic models.

The fold reads every event ever published, so decoding is one of its biggest costs: the
contract's models (`turnout_events`) take about 14 µs an event, these about 3 with every
check. They are a mirror, not a second contract — `turnout_events` stays the judge:

- every field, constraint and check of a payload is here too (types, patterns, bounds,
  the envelope's actor rule, the privacy scan of every string), so that what the fast
  path accepts the contract accepts;
- anything the fast path does not take (bad JSON, a value out of bounds, a lax form such
  as "1" for a bool, an unknown type or version, a string the privacy scan flags) is
  handed to the contract's own `serde.decode` + `registry.parse_payload`, which either
  rejects it with the contract's message (the consumer dead-letters it), says it is an
  event nobody here knows (ignored), or accepts it: then it is decoded again from the
  contract's canonical JSON. Being stricter than pydantic's lax mode costs a detour,
  never a wrong answer.
- one exception: an event the contract accepts but reporting's tables cannot hold (a
  `member_version` past int4, a NUL in a ballot's name, a moment that cannot be written
  in UTC) is refused here too, with its own message (`unstorable`), and dead-lettered
  like an invalid one, rather than failing every batch that holds it.

`tests/test_decode.py` checks the mirror against the catalogue field by field, so a
field added to the contract without being added here fails loudly.

Ids the fold keys on (member, ballot, request and message ids) decode as canonical
lowercase strings: they hash faster than `uuid.UUID` and compare with the envelope's
key as they are. Other ids are checked as UUIDs and kept as such. Those ids and the
codes are checked after decoding rather than by a pattern in the Struct (a regular
expression per field would cost more than all the rest), against sets of the strings
already found good: a ballot's id recurs in nearly every event, a code in thousands.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from operator import attrgetter
from typing import Annotated, Any, ClassVar, Union, cast

import msgspec
from msgspec import Meta, Struct

from turnout_events import ballots as contract_ballots
from turnout_events import contacts as contract_contacts
from turnout_events import notifications as contract_notifications
from turnout_events.ballots import BallotKind, ReplacementReason, RetractionReason, VoteSource
from turnout_events.common import CODE_PATTERN, MessageChannel
from turnout_events.contacts import (
    ConsentSource,
    ContactAttribute,
    ContactChangeReason,
    ConversationChannel,
    ConversationOutcome,
)
from turnout_events.envelope import SYSTEM_ACTOR, Envelope, EventData, InvalidEvent
from turnout_events.notifications import ReplyIntent
from turnout_events.privacy import contact_kind
from turnout_events.registry import parse_payload
from turnout_events.serde import MAX_EVENT_BYTES
from turnout_events.serde import decode as contract_decode
from turnout_kit.moments import in_utc

# Reporting's own limits, past the contract's: what its tables can store. An event beyond
# them would fail every batch that holds it, and the fold holds its partition on a failed
# batch (a bug must not skip events), so it is dead-lettered instead (`unstorable`).
# The highest member_version the int4 columns hold; contacts counts in int4 too, so no
# event of its own comes near it.
MAX_STORED_VERSION = 2**31 - 1

Id = str  # a canonical UUID string, checked after decoding (see EventDecoder)
Code = str  # checked after decoding against CODE_PATTERN and the privacy scan
Moment = Annotated[datetime, Meta(tz=True)]
Version = Annotated[int, Meta(ge=1, le=MAX_STORED_VERSION)]  # past it: see `unstorable`
Count = Annotated[int, Meta(ge=0)]

# An id as the fold keys its states: a UUID in its canonical (lowercase) form.
CANONICAL_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_CODE = re.compile(CODE_PATTERN)


class NotPublishable(ValueError):
    """A value the contract would refuse: the contract gets the last word."""


def _check_code(value: str | None) -> None:
    if value is not None and not _good_code(value):
        raise NotPublishable


def _good_code(value: str) -> bool:
    return bool(_CODE.match(value)) and not contact_kind(value)


class _Part(Struct, frozen=True, gc=False):
    pass


# The parts repeat frozen=True, gc=False: msgspec inherits them from _Part, but a type
# checker takes a subclass that does not say frozen=True for a mutable one.
class Placement(_Part, frozen=True, gc=False):
    group_code: Code
    branch_code: Code
    workplace_code: Code | None = None
    grade: Code | None = None


class ContactFlags(_Part, frozen=True, gc=False):
    has_mobile: bool
    has_email: bool
    sms_consent: bool
    email_consent: bool


class BallotScope(_Part, frozen=True, gc=False):
    # Rare (one per ballot): checked here rather than through the caches below.
    group_codes: Annotated[list[str], Meta(max_length=1000)] = []
    branch_codes: Annotated[list[str], Meta(max_length=10000)] = []

    def __post_init__(self) -> None:
        for code in (*self.group_codes, *self.branch_codes):
            _check_code(code)


class Data(Struct, frozen=True, gc=False):
    """Base of the payload mirrors; `contract` is the pydantic model mirrored.

    Nothing decoded here can hold a reference cycle, so nothing is tracked by the
    garbage collector (`gc=False`): a batch holds tens of thousands of events, and the
    collector would otherwise walk them all, over and over, as the batch is built."""

    contract: ClassVar[type[EventData]]


# -- contacts -------------------------------------------------------------------------

class MemberRegistered(Data, frozen=True, gc=False):
    contract = contract_contacts.MemberRegistered
    member_id: Id
    member_version: Version
    placement: Placement
    contact: ContactFlags


class MemberMoved(Data, frozen=True, gc=False):
    contract = contract_contacts.MemberMoved
    member_id: Id
    member_version: Version
    previous: Placement
    placement: Placement


class ContactUpdated(Data, frozen=True, gc=False):
    contract = contract_contacts.ContactUpdated
    member_id: Id
    member_version: Version
    contact: ContactFlags
    changed: Annotated[list[ContactAttribute], Meta(min_length=1)]
    reason: ContactChangeReason


class MemberContacted(Data, frozen=True, gc=False):
    contract = contract_contacts.MemberContacted
    member_id: Id
    member_version: Version
    conversation_id: uuid.UUID
    channel: ConversationChannel
    outcome: ConversationOutcome
    contacted_at: Moment
    ballot_id: Id | None = None


class ConsentChanged(Data, frozen=True, gc=False):
    contract = contract_contacts.ConsentChanged
    member_id: Id
    member_version: Version
    channel: MessageChannel
    granted: bool
    via: ConsentSource
    contact: ContactFlags


# -- ballots --------------------------------------------------------------------------

class BallotOpened(Data, frozen=True, gc=False):
    contract = contract_ballots.BallotOpened
    ballot_id: Id
    ballot_name: Annotated[str, Meta(min_length=1, max_length=200)]
    kind: BallotKind
    opens_at: Moment
    closes_at: Moment
    turnout_threshold: Annotated[float, Meta(gt=0, le=1)] | None
    scope: BallotScope
    eligible_count: Count

    def __post_init__(self) -> None:
        if self.closes_at <= self.opens_at or contact_kind(self.ballot_name) \
                or "\x00" in self.ballot_name:  # the last: see `unstorable`
            raise NotPublishable


class MemberEnrolled(Data, frozen=True, gc=False):
    contract = contract_ballots.MemberEnrolled
    ballot_id: Id
    member_id: Id
    placement: Placement


class Voted(Data, frozen=True, gc=False):
    contract = contract_ballots.Voted
    ballot_id: Id
    member_id: Id
    vote_source: VoteSource
    voted_at: Moment
    conversation_id: uuid.UUID | None = None


class VoteRetracted(Data, frozen=True, gc=False):
    contract = contract_ballots.VoteRetracted
    ballot_id: Id
    member_id: Id
    reason_code: RetractionReason


class ReplacementRequested(Data, frozen=True, gc=False):
    contract = contract_ballots.ReplacementRequested
    ballot_id: Id
    member_id: Id
    request_id: Id
    reason: ReplacementReason


class BallotClosed(Data, frozen=True, gc=False):
    contract = contract_ballots.BallotClosed
    ballot_id: Id
    closed_at: Moment
    eligible_count: Count
    voted_count: Count


# -- notifications --------------------------------------------------------------------

class ReminderSent(Data, frozen=True, gc=False):
    contract = contract_notifications.ReminderSent
    member_id: Id
    message_id: Id
    campaign_id: uuid.UUID
    ballot_id: Id
    channel: MessageChannel
    template_code: Code | None = None


class MessageDelivered(Data, frozen=True, gc=False):
    contract = contract_notifications.MessageDelivered
    member_id: Id
    message_id: Id
    channel: MessageChannel
    delivered_at: Moment


class MessageFailed(Data, frozen=True, gc=False):
    contract = contract_notifications.MessageFailed
    member_id: Id
    message_id: Id
    channel: MessageChannel
    error_code: Code
    permanent: bool
    failed_at: Moment


class OptOutReceived(Data, frozen=True, gc=False):
    contract = contract_notifications.OptOutReceived
    member_id: Id
    channel: MessageChannel
    received_at: Moment


class ReplyReceived(Data, frozen=True, gc=False):
    contract = contract_notifications.ReplyReceived
    member_id: Id
    message_id: Id
    channel: MessageChannel
    intent: ReplyIntent
    received_at: Moment
    in_reply_to: uuid.UUID | None = None
    ballot_id: Id | None = None


DATA_TYPES: tuple[type[Data], ...] = (
    MemberRegistered, MemberMoved, ContactUpdated, MemberContacted, ConsentChanged,
    BallotOpened, MemberEnrolled, Voted, VoteRetracted, ReplacementRequested, BallotClosed,
    ReminderSent, MessageDelivered, MessageFailed, OptOutReceived, ReplyReceived,
)


class Event(Struct, frozen=True, kw_only=True, tag_field="type", gc=False):
    """The envelope, one subclass per event type (the tag): decoding picks the payload's
    mirror from the envelope's `type` in the same pass."""

    id: uuid.UUID
    version: Version
    occurred_at: Moment
    recorded_at: Moment
    source: Annotated[str, Meta(min_length=1, max_length=50)]
    key: Annotated[str, Meta(min_length=1, max_length=200)]
    actor: Annotated[str, Meta(min_length=1, max_length=100)]
    correlation_id: Annotated[str, Meta(max_length=100)] | None = None
    causation_id: uuid.UUID | None = None
    data: Any


def _envelope_type(data_type: type[Data]) -> type[Event]:
    # defstruct is typed as making a plain Struct; with bases=(Event,) it makes an Event.
    return cast("type[Event]", msgspec.defstruct(
        f"{data_type.__name__}Event", [("data", data_type)], bases=(Event,),
        tag=data_type.contract.event_type, frozen=True, kw_only=True, gc=False))


ENVELOPES: dict[type[Data], type[Event]] = {t: _envelope_type(t) for t in DATA_TYPES}


def _getter(names: list[str]) -> Callable[[Any], tuple]:
    # attrgetter walks dotted names in C; given one name it returns the value, not a tuple.
    return attrgetter(*names) if len(names) > 1 else attrgetter(*names, *names)


def _string_fields(model: type) -> tuple[list[str], list[str]]:
    """The dotted names of a mirror's id fields and of its code fields: the strings the
    decoder checks itself, through the caches below."""
    ids: list[str] = []
    codes: list[str] = []
    for field in msgspec.structs.fields(model):
        if field.type in (Placement, Placement | None):
            codes += [f"{field.name}.{part.name}" for part in msgspec.structs.fields(Placement)]
        elif field.type in (str, str | None) and field.name.endswith("_id"):
            ids.append(field.name)
        elif field.type in (str, str | None) and field.name.endswith("_code"):
            codes.append(field.name)
    return ids, codes


@dataclass(frozen=True, slots=True)
class _Rule:
    """What the fast path checks after decoding one event type: the version it mirrors,
    the source that publishes it, the payload field that must equal the envelope's key,
    and the id and code strings to check."""

    version: int
    source: str
    key: Callable[[Any], str]
    ids: Callable[[Any], tuple]
    codes: Callable[[Any], tuple] | None
    moments: Callable[[Any], tuple] | None  # the payload's datetimes (see `unstorable`)


def _rule(data: type[Data]) -> _Rule:
    ids, codes = _string_fields(data)
    moments = [f.name for f in msgspec.structs.fields(data) if f.type in (Moment, Moment | None)]
    return _Rule(data.contract.version, data.contract.source,
                 attrgetter(data.contract.key_field), _getter(ids),
                 _getter(codes) if codes else None, _getter(moments) if moments else None)


_RULES: dict[type[Event], _Rule] = {envelope: _rule(data) for data, envelope in ENVELOPES.items()}

# Strings found good, so that each is checked once rather than once per event: a ballot
# id recurs in nearly every event, a member id in each of the member's, and there are a
# few thousand codes and actors. Bounded: emptied when full, then refilled as they recur.
_GOOD_IDS: set[str | None] = {None}
_GOOD_CODES: set[str | None] = {None}
_GOOD_ACTORS: set[str] = {SYSTEM_ACTOR}
_GOOD_MAX = 200_000


def _remember(good: set, values: tuple, check: Callable[[str], bool]) -> bool:
    for value in values:
        if value not in good:
            if not check(value):
                return False
            if len(good) >= _GOOD_MAX:
                good.clear()
                good.add(None)
            good.add(value)
    return True


def _good_id(value: str) -> bool:
    return bool(CANONICAL_ID.fullmatch(value))


def _good_actor(actor: str) -> bool:
    # The contract's rule (`Envelope._actor_is_pseudonymous`).
    kind, _, ident = actor.partition(":")
    return kind.isidentifier() and (actor == SYSTEM_ACTOR or bool(ident)) and "@" not in actor


def unstorable(envelope: Envelope, payload: EventData) -> str | None:
    """Why reporting cannot store an event the contract accepts (None: it can). The
    reason names the field, never its value."""
    moments = [("occurred_at", envelope.occurred_at),
               *((f"data.{name}", value) for name, value in payload
                 if isinstance(value, datetime))]
    for name, moment in moments:
        if not in_utc(moment):
            return (f"{name}: cannot be written in UTC (past the ends of the calendar), "
                    "which reporting cannot store")
    version = getattr(payload, "member_version", None)
    if isinstance(version, int) and version > MAX_STORED_VERSION:
        return (f"data.member_version: above {MAX_STORED_VERSION}, more than reporting can "
                "store (contacts never counts that high)")
    ballot_name = getattr(payload, "ballot_name", None)
    if isinstance(ballot_name, str) and "\x00" in ballot_name:
        return ("data.ballot_name: holds a NUL character, which reporting cannot store "
                "(PostgreSQL text cannot hold one)")
    return None


class DecoderMismatch(RuntimeError):
    """The contract accepted an event that its mirror here cannot read: a bug in this
    module (the mirror fell behind the contract), never the event's fault."""


class EventDecoder:
    """`decode(raw)` -> the event, or None for a type or version nobody here knows;
    raises `InvalidEvent` (with the contract's message) for anything else."""

    def __init__(self) -> None:
        self._fast = msgspec.json.Decoder(Union[tuple(ENVELOPES.values())])  # noqa: UP007
        self.detours = 0  # records the contract had to judge (for tests and metrics)

    def decode(self, raw: bytes | None) -> Event | None:
        if raw is not None and len(raw) <= MAX_EVENT_BYTES:
            try:
                event = self._fast.decode(raw)
            except (msgspec.ValidationError, msgspec.DecodeError):
                pass
            else:
                if self._checked(event):
                    return event
        return self._by_the_contract(raw)

    @staticmethod
    def _checked(event: Event) -> bool:
        """The contract's checks that the Structs' types do not make."""
        rule = _RULES[type(event)]
        data = event.data
        if (event.version != rule.version or event.source != rule.source
                or event.key != rule.key(data)):
            return False
        ids = rule.ids(data)
        if not _GOOD_IDS.issuperset(ids) and not _remember(_GOOD_IDS, ids, _good_id):
            return False
        if rule.codes is not None:
            codes = rule.codes(data)
            if not _GOOD_CODES.issuperset(codes) and not _remember(_GOOD_CODES, codes,
                                                                   _good_code):
                return False
        if not 1 < event.occurred_at.year < 9999 and not in_utc(event.occurred_at):
            return False
        if rule.moments is not None:
            for moment in rule.moments(data):
                if moment is not None and not 1 < moment.year < 9999 and not in_utc(moment):
                    return False
        return event.actor in _GOOD_ACTORS or _remember(_GOOD_ACTORS, (event.actor,),
                                                        _good_actor)

    def _by_the_contract(self, raw: bytes | None) -> Event | None:
        self.detours += 1
        envelope = contract_decode(raw)  # raises InvalidEvent
        payload = parse_payload(envelope)  # raises InvalidEvent
        if payload is None:
            return None
        problem = unstorable(envelope, payload)
        if problem is not None:
            raise InvalidEvent(f"{envelope.type}: {problem}")
        return self.from_contract(envelope, payload)

    def from_contract(self, envelope: Envelope, payload: EventData) -> Event:
        """The event the contract's models hold, in the fold's form (for events the fast
        path left to the contract, and for tests written with the contract's models)."""
        canonical = envelope.model_copy(update={"data": payload.model_dump(mode="json")})
        try:
            event = self._fast.decode(canonical.model_dump_json())
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            raise DecoderMismatch(
                f"{envelope.type} v{envelope.version}: the contract accepts it but the "
                f"reporting decoder does not ({type(exc).__name__})") from None
        if not self._checked(event):
            raise DecoderMismatch(f"{envelope.type} v{envelope.version}: the contract "
                                  f"accepts it but the reporting decoder's checks do not")
        return event


__all__ = ["CANONICAL_ID", "DATA_TYPES", "ENVELOPES", "Event", "EventDecoder", "DecoderMismatch",
           "InvalidEvent", "MAX_STORED_VERSION", "unstorable", "Placement", "ContactFlags",
           *(t.__name__ for t in DATA_TYPES)]
