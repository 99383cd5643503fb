"""Reading a member's reply: what it means, and the number it came from (no database, no
broker: the rules alone)."""

from __future__ import annotations

import pytest
from turnout_notifications.domain.replies import (
    classify,
    normalise_number,
    recipient_hash,
)

from turnout_events.notifications import ReplyIntent


@pytest.mark.parametrize("text", [
    "STOP", "stop", " Stop! ", "STOP ALL", "stop  all", "Stop all.", "UNSUBSCRIBE",
    "unsubscribe", "END", "end.", "QUIT", "Quit!!", "CANCEL", "cancel", "\n'STOP'\n",
])
def test_stop_words_opt_out(text):
    assert classify(text) is ReplyIntent.OPT_OUT


@pytest.mark.parametrize("text", ["YES", "yes", "Yes!", "y", "Y.", "VOTED", "voted",
                                  "Done", "done!", "1", " 1 "])
def test_voted_words(text):
    assert classify(text) is ReplyIntent.VOTED


@pytest.mark.parametrize("text", ["NO", "no", "No.", "NOT YET", "not yet", "Not  yet!", "2"])
def test_not_yet_words(text):
    assert classify(text) is ReplyIntent.NOT_YET


@pytest.mark.parametrize("text", [
    "", "   ", "yes I will tomorrow", "Please don't stop reminding me", "stopped",
    "YESS", "12", "3", "no thanks, I lost my paper", "👍", "STOP IT", "send me a new paper",
])
def test_anything_else_is_for_a_rep_to_read(text):
    assert classify(text) is ReplyIntent.UNCLASSIFIED


@pytest.mark.parametrize(("raw", "e164"), [
    ("+447911123456", "+447911123456"),
    ("07911 123456", "+447911123456"),
    ("+44 (0)7911 123 456", "+447911123456"),
    ("0044 7911 123456", "+447911123456"),
    ("+1 415 867 5309", "+14158675309"),
])
def test_senders_are_normalised_to_e164(raw, e164):
    assert normalise_number(raw) == e164


@pytest.mark.parametrize("raw", ["Turnout", "", "12", "not a number"])
def test_short_codes_and_named_senders_are_no_number(raw):
    assert normalise_number(raw) is None


def test_the_number_hash_is_keyed():
    number = "+447911123456"
    digest = recipient_hash(b"key-one", number)
    assert len(digest) == 32 and digest == recipient_hash(b"key-one", number)
    assert digest != recipient_hash(b"key-two", number)  # not guessable without the key
    assert digest != recipient_hash(b"key-one", "+447911123457")
