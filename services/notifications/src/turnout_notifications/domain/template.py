"""Reminder templates: plain text with named placeholders, checked when a campaign is
created so that a typo is a 422 then rather than a broken message to thousands later.

    "Hi {first_name}, {days_left} days left to post your {ballot_name} vote: {link}"

Only the names below are allowed, with no format spec, conversion, attribute or index
(`{first_name!r}`, `{link.x}` and `{days_left:>5}` are all refused): a template is
written by campaign staff, and str.format's mini-language can reach into objects.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from string import Formatter

PLACEHOLDERS = ("first_name", "ballot_name", "days_left", "link")
# Said instead of a first name contacts does not hold ("Hi there, ...").
NO_FIRST_NAME = "there"


def placeholder_errors(template: str) -> list[str]:
    """What is wrong with the template's placeholders; empty when it is fine. Messages
    name placeholders, never the surrounding text."""
    errors: list[str] = []
    try:
        parts = list(Formatter().parse(template))
    except ValueError:
        return ["unbalanced braces: write {{ and }} for literal braces"]
    for _text, name, spec, conversion in parts:
        if name is None:
            continue
        if name not in PLACEHOLDERS:
            shown = name if name.isidentifier() and len(name) <= 40 else "(unnamed)"
            errors.append(f"unknown placeholder {{{shown}}}; allowed: "
                          + ", ".join(f"{{{p}}}" for p in PLACEHOLDERS))
        elif spec or conversion:
            errors.append(f"placeholder {{{name}}} takes no format spec or conversion")
    return errors


def used_placeholders(template: str) -> set[str]:
    return {name for _t, name, _s, _c in Formatter().parse(template) if name}


def days_left(closes_at: datetime, now: datetime) -> int:
    """Whole days until close, rounded up: 3 days and 1 hour before is "4 days left"."""
    return max(0, math.ceil((closes_at - now).total_seconds() / 86400))


@dataclass(frozen=True)
class Rendering:
    ballot_name: str
    closes_at: datetime
    link: str | None

    def render(self, template: str, *, first_name: str | None, now: datetime) -> str:
        return template.format_map({
            "first_name": first_name or NO_FIRST_NAME,
            "ballot_name": self.ballot_name,
            "days_left": days_left(self.closes_at, now),
            "link": self.link or "",
        })
