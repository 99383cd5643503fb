"""Key rotation: re-encrypt every stored value that is not under the active key.

Put the new key first in CONTACTS_ENCRYPTION_KEYS (keeping the old ones after it), roll
it out to every instance, then run `turnout contacts rotate-keys`. New writes already
use the new key; this moves the old rows over, after which the old key can be dropped.
Run it again if an instance still writing with the old key was missed: it only touches
values whose key id is not the active one, so a second run is cheap and a finished one
does nothing.

Each batch is one transaction that locks its rows (FOR UPDATE), so a rep editing a
member at the same moment is not overwritten with the value read before their edit. The
values do not change, so no event is published and no version is bumped. The blind-index
(HMAC) key is a different key and is not rotated here.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from ..db.tables import conversations, members
from ..domain.crypto import ContactCipher

DEFAULT_BATCH = 500


@dataclass(frozen=True)
class EncryptedColumns:
    """A table's encrypted columns, with the key and the member id they are bound to."""

    table: sa.Table
    key: sa.Column
    member_id: sa.Column
    columns: tuple[sa.Column, ...]

    @property
    def name(self) -> str:
        return self.table.name


ENCRYPTED: tuple[EncryptedColumns, ...] = (
    EncryptedColumns(members, members.c.member_id, members.c.member_id,
                     (members.c.first_name, members.c.last_name, members.c.mobile,
                      members.c.email)),
    EncryptedColumns(conversations, conversations.c.conversation_id,
                     conversations.c.member_id, (conversations.c.note,)),
)


@dataclass
class RotationReport:
    active_key: str
    rows: dict[str, int] = field(default_factory=dict)
    values: int = 0


def key_prefix(cipher: ContactCipher) -> bytes:
    """How every value under the active key starts (see the layout in domain/crypto.py)."""
    kid = cipher.active.encode()
    return bytes([len(kid)]) + kid


def _stale(column: sa.Column, prefix: bytes) -> sa.ColumnElement[bool]:
    return sa.and_(column.is_not(None),
                   sa.func.substring(column, 1, len(prefix)) != sa.literal(prefix, sa.LargeBinary))


def _any_stale(spec: EncryptedColumns, prefix: bytes) -> sa.ColumnElement[bool]:
    return sa.or_(*(_stale(c, prefix) for c in spec.columns))


async def count_stale(sessions: async_sessionmaker[AsyncSession], cipher: ContactCipher
                      ) -> dict[str, int]:
    """Values not under the active key, per table (what a rotation has left to do)."""
    prefix = key_prefix(cipher)
    counts: dict[str, int] = {}
    async with sessions() as session:
        for spec in ENCRYPTED:
            per_column = [sa.func.count().filter(_stale(c, prefix)) for c in spec.columns]
            counts[spec.name] = sum((await session.execute(
                sa.select(*per_column).select_from(spec.table))).one())
    return counts


async def rotate_keys(sessions: async_sessionmaker[AsyncSession], cipher: ContactCipher, *,
                      batch_size: int = DEFAULT_BATCH,
                      progress: Callable[[str, int], None] | None = None) -> RotationReport:
    """Re-encrypt, batch by batch, every value not under `cipher.active`. `progress` is
    told the table and how many values each committed batch re-encrypted. A value under a
    key that is no longer in the ring stops the rotation with `KeyRingError` (naming the
    key id): add that key back, after the active one, and run again."""
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    prefix = key_prefix(cipher)
    report = RotationReport(active_key=cipher.active)
    for spec in ENCRYPTED:
        report.rows[spec.name] = 0
        after: uuid.UUID | None = None
        while True:
            async with sessions() as session, session.begin():
                query = (sa.select(spec.key, spec.member_id, *spec.columns)
                         .where(_any_stale(spec, prefix)).order_by(spec.key)
                         .limit(batch_size).with_for_update())
                if after is not None:
                    query = query.where(spec.key > after)
                rows = (await session.execute(query)).all()
                if not rows:
                    break
                updates, values = _reencrypt(cipher, spec, rows, prefix)
                await session.execute(
                    sa.update(spec.table).where(spec.key == sa.bindparam("_key")),
                    updates)
            after = rows[-1][0]
            report.rows[spec.name] += len(rows)
            report.values += values
            if progress is not None:
                progress(spec.name, values)
    return report


def _reencrypt(cipher: ContactCipher, spec: EncryptedColumns, rows: Sequence[sa.Row],
               prefix: bytes) -> tuple[list[dict], int]:
    updates: list[dict] = []
    values = 0
    for row in rows:
        key, member_id = row[0], row[1]
        params: dict = {"_key": key}
        for column, blob in zip(spec.columns, row[2:], strict=True):
            if blob is not None and not bytes(blob).startswith(prefix):
                params[column.name] = cipher.encrypt(member_id, cipher.decrypt(member_id, blob))
                values += 1
            else:
                params[column.name] = blob
        updates.append(params)
    return updates, values
