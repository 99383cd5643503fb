"""Redacting contact values (email addresses, phone numbers) from log events.

Log lines end up in places we cannot erase (log shippers, backups, a developer's
terminal), so a member's contact details must never reach them, even by accident: a
validation message that quotes its input, an exception from a provider that names the
number it failed to text, a rep's search term.

Unlike the event contract (`turnout_events.privacy`, which rejects any long run of
digits outright), logs are full of legitimate numbers that operators need: counts,
offsets, ports, durations, ids, timestamps. So a phone number here is a digit sequence
that has the *shape* of one:

* international: `+` or `00`, then 8-15 digits (E.164), e.g. `+44 7700 900 123`,
  `+44 (0)20 7946 0018`, `0044 7700 900123`, `+1 (415) 555-2671`;
* UK national: a leading `0` then 9-10 more digits, e.g. `07700 900123`,
  `(020) 7946 0018`, `0161 496 0000`;
* UK numbers as spreadsheets mangle them: `447700900123` (E.164 without the plus) and
  `7700900123` (a mobile whose leading zero was eaten by Excel);
* North American `(415) 555-2671` / `415-555-2671` (3-3-4 groups).

Separators are spaces, hyphens and parentheses, never dots or colons, so decimals, IP
addresses and clock times are not candidates. UUIDs and ISO dates/timestamps are cut out
before looking. The cost of a false positive is one unreadable number in one log line;
the cost of a false negative is a member's phone number in a log forever.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping, MutableMapping
from typing import Any

REDACTED = "[redacted]"

# Local part, "@" (or its URL encoding), and a domain whose last label has letters: so
# `postgres@127.0.0.1` in a DSN is not an email, `alice@example.org` is.
_EMAIL_RE = re.compile(
    r"[\w.!#$%&'*+/=?^`{|}~-]+(?:@|%40)[\w-]+(?:\.[\w-]+)*\.[A-Za-z]{2,}(?![\w-])"
)

# A candidate: digits in groups joined by 1-3 separator characters, optionally led by
# "+" or "(". Not glued to a word or a decimal point on either side.
_CANDIDATE_RE = re.compile(
    r"(?<![\w.])"
    r"(?:\+|\(\+?)?"
    r"\d+(?:[ \t()\-]{1,3}\d+)*"
    r"\)?"
    r"(?![\w])(?!\.\d)"
)
_GROUP_RE = re.compile(r"\d+")
_MAX_GROUPS = 7

# Legitimate digit-heavy tokens, taken out before looking for phone numbers.
_HARMLESS_RE = re.compile(
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"  # UUID
    r"|(?<!\d)\d{4}-\d{2}-\d{2}"  # ISO date, then optional time and offset
    r"(?:[T ]\d{2}:\d{2}(?::\d{2}(?:[.,]\d+)?)?(?:Z|[+-]\d{2}(?::?\d{2})?)?)?(?!\d)"
)

# Keys whose values are personal whatever they look like (a name has no shape to spot).
SENSITIVE_KEYS = frozenset({
    "mobile", "phone", "phone_number", "email", "personal_email",
    "first_name", "last_name", "full_name", "address", "note",
    "password", "secret", "jwt_secret", "token", "access_token", "authorization",
})


def _is_phone(groups: list[str], starts_with_plus: bool, paren_trunk: bool) -> bool:
    digits = "".join(groups)
    n = len(digits)
    if starts_with_plus:
        # A leading "+" says "phone number" on its own, whatever the grouping
        # ("+33 1 23 45 67 89"). E.164 allows 15 digits; one more for a "(0)" trunk.
        return 8 <= n <= 16
    # Without it, single-digit groups are lists of small numbers ("partitions 0 1 2"),
    # except the "(0)" trunk prefix.
    if any(len(g) == 1 and not (paren_trunk and g == "0") for g in groups):
        return False
    if digits.startswith("00"):
        return 10 <= n <= 17 and digits[2] != "0"
    if digits.startswith("0"):
        return n in (10, 11)
    if digits.startswith("44") and n == 12:
        return True
    if digits.startswith("7") and n == 10:
        return True
    return n == 10 and [len(g) for g in groups] == [3, 3, 4] and digits[0] in "23456789"


def _redact_candidate(text: str) -> str:
    """Redact the phone numbers within one candidate run, which may also hold
    neighbouring numbers ("3 calls to 07700 900123 in 12 s" yields "3 ... 12")."""
    spans = [(m.start(), m.end()) for m in _GROUP_RE.finditer(text)]
    plus = text.startswith(("+", "(+"))
    i = 0
    out: list[str] = []
    pos = 0
    while i < len(spans):
        match_end = None
        # Longest phone-shaped run of groups starting at group i. No phone number has
        # more than a handful of groups; the cap keeps a long list of numbers linear.
        for j in range(min(len(spans), i + _MAX_GROUPS), i, -1):
            start = 0 if i == 0 else spans[i][0]
            chunk = text[start:spans[j - 1][1]]
            groups = [text[a:b] for a, b in spans[i:j]]
            if _is_phone(groups, plus and i == 0, "(0)" in chunk):
                match_end = j
                break
        if match_end is None:
            i += 1
            continue
        start = 0 if i == 0 else spans[i][0]
        if start > 0 and text[start - 1] == "(":
            start -= 1  # "3 (020) 7946 0018": the "(" belongs to the number
        end = spans[match_end - 1][1]
        if end < len(text) and text[end] == ")" and "(" in text[start:end]:
            end += 1  # keep "(020) 7946 0018" balanced: the ")" goes with the number
        out.append(text[pos:start])
        out.append(REDACTED)
        pos = end
        i = match_end
    out.append(text[pos:])
    return "".join(out)


def _redact_phones(text: str) -> str:
    return _CANDIDATE_RE.sub(lambda m: _redact_candidate(m.group(0)), text)


# Short strings found clean before, so the values every log line repeats (event names,
# logger and service names, route templates, roles) are searched once, not on every
# line. Only strings that needed no redaction are kept, so nothing here is personal data
# the log lines would not show anyway; emptied when full rather than tracked by use.
_CLEAN: set[str] = set()
_CLEAN_MAX_ENTRIES = 4096
_CLEAN_MAX_LENGTH = 120


def redact_text(text: str) -> str:
    """`text` with every email address and phone number replaced by "[redacted]"."""
    if text in _CLEAN:
        return text
    redacted = _redact_text(text)
    if len(text) <= _CLEAN_MAX_LENGTH and redacted == text:
        if len(_CLEAN) >= _CLEAN_MAX_ENTRIES:
            _CLEAN.clear()
        _CLEAN.add(text)
    return redacted


def _redact_text(text: str) -> str:
    if "@" in text or "%40" in text:
        text = _EMAIL_RE.sub(REDACTED, text)
    if not _CANDIDATE_RE.search(text):
        return text
    # Digits, but maybe only those of UUIDs and timestamps (a path with ids in it): look
    # again with those cut out. "\0" is neither a word character nor a separator, so a
    # candidate is found here exactly when one is in a piece the loop below searches.
    if not _CANDIDATE_RE.search(_HARMLESS_RE.sub("\0", text)):
        return text
    # Only the pieces between harmless tokens are searched, so a UUID or a timestamp can
    # neither be redacted nor lend its digits to a neighbour.
    out: list[str] = []
    pos = 0
    for m in _HARMLESS_RE.finditer(text):
        out.append(_redact_phones(text[pos:m.start()]))
        out.append(m.group(0))
        pos = m.end()
    out.append(_redact_phones(text[pos:]))
    return "".join(out)


_PLAIN = (int, float, bool, type(None))
# The exact types of most values, checked by identity before the isinstance chain.
_PLAIN_TYPES = frozenset({int, float, bool, type(None)})


def redact_value(value: Any) -> Any:
    """Redact strings anywhere inside `value` (dicts, lists, tuples, sets); other objects
    are rendered with `str()` first, since that is what a renderer would print."""
    kind = type(value)
    if kind is str:
        return redact_text(value)
    if kind in _PLAIN_TYPES:
        return value
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, _PLAIN):
        return value
    if isinstance(value, Mapping):
        return {k: _redact_item(k, v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [redact_value(v) for v in value]
    return redact_text(str(value))


def _is_sensitive_key(key: Any) -> bool:
    if not isinstance(key, str):
        return False
    # Most keys are lower case already: no need to build a lowered copy.
    return key in SENSITIVE_KEYS or (not key.islower() and key.lower() in SENSITIVE_KEYS)


def _redact_item(key: Any, value: Any) -> Any:
    if _is_sensitive_key(key) and value not in (None, ""):
        return REDACTED
    return redact_value(value)


def redact_event(
    event_dict: MutableMapping[str, Any], trusted_keys: Collection[str] = ()
) -> MutableMapping[str, Any]:
    """Redact every value of a structlog event dict in place, except keys starting with
    "_" (structlog/stdlib plumbing, the LogRecord) and `trusted_keys`, whose values the
    caller knows it produced itself (e.g. the timestamp its own processor wrote)."""
    for key, value in event_dict.items():
        if key.startswith("_") or key in trusted_keys:
            continue
        # Inline fast path for the common case: a number, or a string seen clean before,
        # under a lower-case key that is not personal whatever its value.
        kind = type(value)
        if ((kind in _PLAIN_TYPES or (kind is str and value in _CLEAN))
                and key not in SENSITIVE_KEYS and key.islower()):
            continue
        event_dict[key] = _redact_item(key, value)
    return event_dict


def redact_pii(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: redact contact values from every value of the event dict.

    Keys starting with "_" are structlog/stdlib plumbing (the LogRecord) and left alone.
    Run it after `format_exc_info`, so tracebacks are redacted too.
    """
    return redact_event(event_dict)
