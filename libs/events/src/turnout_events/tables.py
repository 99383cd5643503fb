"""The messaging tables every service includes in its own database.

A service's Alembic environment targets `[its own metadata, turnout_events.tables.metadata]`
so its migrations create `outbox` and `inbox` next to its own tables.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import BYTEA, UUID

metadata = sa.MetaData()

# Events waiting to be published, written in the same transaction as the state change
# they describe. `seq` gives the publishing order; a row is kept after publishing (with
# `published_at`) for a while so an operator can see what went out, then purged.
outbox = sa.Table(
    "outbox",
    metadata,
    sa.Column("seq", sa.BigInteger, sa.Identity(always=True), primary_key=True),
    sa.Column("event_id", UUID(as_uuid=True), nullable=False, unique=True),
    sa.Column("topic", sa.Text, nullable=False),
    sa.Column("key", sa.Text, nullable=False),
    sa.Column("event_type", sa.Text, nullable=False),
    sa.Column("event_version", sa.Integer, nullable=False),
    sa.Column("correlation_id", sa.Text),
    sa.Column("payload", BYTEA, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False,
              server_default=sa.func.now()),
    sa.Column("published_at", sa.DateTime(timezone=True)),
    sa.Index("outbox_unpublished", "seq", postgresql_where=sa.text("published_at IS NULL")),
    sa.Index("outbox_published_at", "published_at",
             postgresql_where=sa.text("published_at IS NOT NULL")),
)

# Event ids a consumer has already applied, recorded in the same transaction as the
# effect, so a redelivered event changes nothing the second time.
inbox = sa.Table(
    "inbox",
    metadata,
    sa.Column("consumer", sa.Text, primary_key=True),
    sa.Column("event_id", UUID(as_uuid=True), primary_key=True),
    sa.Column("processed_at", sa.DateTime(timezone=True), nullable=False,
              server_default=sa.func.now()),
)

OUTBOX_CHANNEL = "turnout_outbox"
