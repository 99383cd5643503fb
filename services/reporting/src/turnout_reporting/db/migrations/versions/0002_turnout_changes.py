"""turnout change feed for the live stream

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25 23:10:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = '0002'
down_revision: str | None = '0001'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        'turnout_changes',
        sa.Column('seq', sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column('ballot_id', sa.UUID(), nullable=False),
        sa.Column('changes', postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column('committed_at', sa.DateTime(timezone=True),
                  server_default=sa.text('now()'), nullable=False),
        sa.PrimaryKeyConstraint('seq'),
    )
    op.create_index('turnout_changes_ballot_seq', 'turnout_changes', ['ballot_id', 'seq'])


def downgrade() -> None:
    op.drop_index('turnout_changes_ballot_seq', table_name='turnout_changes')
    op.drop_table('turnout_changes')
