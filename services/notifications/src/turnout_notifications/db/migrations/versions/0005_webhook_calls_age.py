"""webhook_calls: an index to purge status calls by age

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-26 03:40:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = '0005'
down_revision: str | None = '0004'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index('webhook_calls_endpoint_received', 'webhook_calls',
                    ['endpoint', 'received_at'], unique=False)


def downgrade() -> None:
    op.drop_index('webhook_calls_endpoint_received', table_name='webhook_calls')
