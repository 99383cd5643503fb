"""What a member's SMS reply means, and who it comes from.

Replies are matched whole, after trimming whitespace and punctuation and ignoring case:
"Yes!" is a voted report, "yes I will tomorrow" is not (a rep reads it instead). A
keyword inside a sentence ("don't stop reminding me") must not opt anyone out or count a
vote, so only the whole reply counts.

The sender's number is normalised to E.164 and hashed with a key (HMAC-SHA256) before it
is looked up: the messages table holds the hash of each number texted, never the
number.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import string

import phonenumbers

from turnout_events.notifications import ReplyIntent

STOP_WORDS = frozenset({"STOP", "STOP ALL", "STOPALL", "UNSUBSCRIBE", "END", "QUIT",
                        "CANCEL"})
VOTED_WORDS = frozenset({"YES", "Y", "VOTED", "DONE", "1"})
NOT_YET_WORDS = frozenset({"NO", "NOT YET", "2"})

# Punctuation around a reply ("STOP.", "'yes'", "¡Sí!") and the spaces inside it.
_EDGES = string.whitespace + string.punctuation + "¡¿“”‘’«»…"
_SPACES = re.compile(r"\s+")


def normalise_reply(text: str) -> str:
    return _SPACES.sub(" ", text.strip(_EDGES)).upper()


def classify(text: str) -> ReplyIntent:
    words = normalise_reply(text)
    if words in STOP_WORDS:
        return ReplyIntent.OPT_OUT
    if words in VOTED_WORDS:
        return ReplyIntent.VOTED
    if words in NOT_YET_WORDS:
        return ReplyIntent.NOT_YET
    return ReplyIntent.UNCLASSIFIED


def normalise_number(raw: str, default_region: str = "GB") -> str | None:
    """The E.164 form of a sender's number, or None when it is not a phone number (a
    short code or an alphanumeric sender cannot be one of our members)."""
    try:
        number = phonenumbers.parse(raw, default_region)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_possible_number(number):
        return None
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def recipient_hash(key: bytes, e164: str) -> bytes:
    """The keyed hash a number is stored and looked up as. Keyed, because a plain hash of
    a phone number is reversed by trying every number."""
    return hmac.new(key, e164.encode(), hashlib.sha256).digest()
