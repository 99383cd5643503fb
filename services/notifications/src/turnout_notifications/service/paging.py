"""Keyset pages, newest first: a cursor is the (time, id) of the last item handed out,
opaque to the caller (base64url), and the next page is everything strictly before it in
(time desc, id desc) order — stable while new items arrive at the top."""

from __future__ import annotations

import base64
import binascii
import uuid
from datetime import datetime

from turnout_kit.problems import Problem


def encode_cursor(at: datetime, item_id: uuid.UUID) -> str:
    raw = f"{at.isoformat()}|{item_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        at, item_id = raw.split("|")
        when = datetime.fromisoformat(at)
        if when.tzinfo is None:
            raise ValueError
        return when, uuid.UUID(item_id)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise Problem(422, detail="The cursor is not one this service handed out.",
                      errors=[{"field": "cursor", "message": "use next_cursor as given"}]
                      ) from None
