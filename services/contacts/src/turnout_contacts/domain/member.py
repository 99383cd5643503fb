"""A member as the contacts service holds it, and the values it validates on the way in."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, replace
from typing import Any

import phonenumbers
from email_validator import EmailNotValidError, validate_email

from turnout_events.common import ContactFlags, Placement


class InvalidValue(ValueError):
    """A value a person typed or imported that we cannot accept. The message says what is
    expected and never repeats the value."""


def normalise_mobile(raw: str, default_region: str = "GB") -> str:
    """Any common way of writing a mobile number -> E.164 (`+447700900123`).
    UK numbers without a country code are accepted."""
    try:
        number = phonenumbers.parse(raw, default_region)
    except phonenumbers.NumberParseException:
        raise InvalidValue("not a phone number") from None
    # number_type answers UNKNOWN for an invalid number, so one call does both checks
    # (is_valid_number would repeat the same work: it is most of an import's CPU).
    kind = phonenumbers.number_type(number)
    if kind is phonenumbers.PhoneNumberType.UNKNOWN:
        raise InvalidValue("not a valid phone number for its country")
    if kind not in (phonenumbers.PhoneNumberType.MOBILE,
                    phonenumbers.PhoneNumberType.FIXED_LINE_OR_MOBILE):
        raise InvalidValue("not a mobile number (SMS reminders need a mobile)")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def normalise_email(raw: str) -> str:
    try:
        return validate_email(raw, check_deliverability=False).normalized
    except EmailNotValidError:
        raise InvalidValue("not a valid email address") from None


_CONSENT_WORDS = {"yes": True, "y": True, "true": True, "1": True,
                  "no": False, "n": False, "false": False, "0": False, "": False}


def parse_consent(raw: str | bool | None) -> bool:
    if isinstance(raw, bool):
        return raw
    consent = _CONSENT_WORDS.get((raw or "").strip().lower())
    if consent is None:
        raise InvalidValue("consent must be yes/no, true/false or 1/0")
    return consent


def placement_of(group_code: Any, branch_code: Any, workplace_code: Any = None,
                 grade: Any = None) -> Placement:
    """Validated with the event contract's own rules, so anything accepted here can be
    published."""
    from pydantic import ValidationError

    try:
        return Placement(group_code=group_code, branch_code=branch_code,
                         workplace_code=workplace_code or None, grade=grade or None)
    except ValidationError as exc:
        fields = sorted({str(e["loc"][0]) for e in exc.errors()})
        raise InvalidValue("invalid code in " + ", ".join(fields)) from None


@dataclass(frozen=True)
class Member:
    member_id: uuid.UUID
    membership_number: str
    placement: Placement
    has_mobile: bool
    has_email: bool
    sms_consent: bool
    email_consent: bool
    version: int
    mobile_masked: str | None = None
    email_masked: str | None = None
    erased: bool = False

    @property
    def contact(self) -> ContactFlags:
        return ContactFlags(has_mobile=self.has_mobile, has_email=self.has_email,
                            sms_consent=self.sms_consent, email_consent=self.email_consent)

    @property
    def contactable(self) -> bool:
        return self.has_mobile or self.has_email

    def bumped(self, **changes: Any) -> Member:
        return replace(self, version=self.version + 1, **changes)

    @classmethod
    def from_row(cls, row: Any) -> Member:
        m = row._mapping
        return cls(
            member_id=m["member_id"], membership_number=m["membership_number"],
            placement=Placement(group_code=m["group_code"], branch_code=m["branch_code"],
                                workplace_code=m["workplace_code"], grade=m["grade"]),
            has_mobile=m["mobile"] is not None, has_email=m["email"] is not None,
            sms_consent=m["sms_consent"], email_consent=m["email_consent"],
            version=m["version"], mobile_masked=m["mobile_masked"],
            email_masked=m["email_masked"], erased=m["erased_at"] is not None,
        )
