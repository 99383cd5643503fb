"""Alembic environment of the notifications service: its own tables plus the shared
outbox, inbox and idempotency tables, in the service's own database."""

from turnout_notifications.db.tables import metadata

from turnout_events.tables import metadata as messaging_metadata
from turnout_kit import alembic_env
from turnout_kit.idempotency import metadata as idempotency_metadata

alembic_env.run([metadata, messaging_metadata, idempotency_metadata])
