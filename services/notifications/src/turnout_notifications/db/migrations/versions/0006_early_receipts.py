"""early_receipts: delivery receipts that came before their send was recorded

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-26 05:50:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import TIMESTAMP

revision: str = '0006'
down_revision: str | None = '0005'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        'early_receipts',
        sa.Column('provider_message_id', sa.Text(), nullable=False),
        sa.Column('status', sa.Text(), nullable=False),
        sa.Column('error', sa.Text(), nullable=True),
        sa.Column('received_at', TIMESTAMP(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('provider_message_id'),
    )
    op.create_index('early_receipts_received', 'early_receipts', ['received_at'],
                    unique=False)


def downgrade() -> None:
    op.drop_index('early_receipts_received', table_name='early_receipts')
    op.drop_table('early_receipts')
