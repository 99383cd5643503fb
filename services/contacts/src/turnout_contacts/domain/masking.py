"""Masked forms of contact values, shown by default (`07••• ••• 123`, `j•••@•••.uk`).

They are computed when a value is stored and kept beside the ciphertext, so listing
members never decrypts anything. A masked form is not a phone number or an email.
"""

from __future__ import annotations

import phonenumbers

DOT = "•"


def mask_mobile(e164: str) -> str:
    """`+447700900123` -> `07••• ••• 123`; non-UK numbers keep their country code."""
    number = phonenumbers.parse(e164, None)
    national = str(number.national_number)
    last = national[-3:]
    if number.country_code == 44:
        return f"0{national[:1]}{DOT * 3} {DOT * 3} {last}"
    return f"+{number.country_code} {DOT * 3} {DOT * 3} {last}"


def mask_email(email: str) -> str:
    """`jo.bloggs@example.org.uk` -> `j•••@•••.uk`."""
    local, _, domain = email.rpartition("@")
    tld = domain.rsplit(".", 1)[-1] if "." in domain else ""
    return f"{local[:1]}{DOT * 3}@{DOT * 3}" + (f".{tld}" if tld else "")
