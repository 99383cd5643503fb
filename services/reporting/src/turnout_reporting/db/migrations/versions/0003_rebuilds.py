"""projection rebuilds and their progress; room on the fold's state pages for updates

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26 00:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0003'
down_revision: str | None = '0002'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        'rebuilds',
        sa.Column('rebuild_id', sa.UUID(), nullable=False),
        sa.Column('state', sa.Text(), nullable=False),
        sa.Column('requested_by', sa.Text(), nullable=False),
        sa.Column('events_folded', sa.BigInteger(), server_default='0', nullable=False),
        sa.Column('events_total', sa.BigInteger(), server_default='0', nullable=False),
        sa.Column('error', sa.Text(), nullable=True),
        sa.Column('started_at', sa.DateTime(timezone=True), server_default=sa.text('now()'),
                  nullable=False),
        sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'),
                  nullable=False),
        sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint("state IN ('folding', 'swapping', 'done', 'failed')",
                           name='rebuilds_state'),
        sa.PrimaryKeyConstraint('rebuild_id'),
    )
    op.create_index('rebuilds_started_at', 'rebuilds', ['started_at'])
    # Most members' states are written again soon after their first write (their events
    # come on three topics): with room left on each page, PostgreSQL updates them in
    # place (HOT) instead of adding index entries for every new version.
    for table in ('member_states', 'ballot_members'):
        op.execute(f'ALTER TABLE {table} SET (fillfactor = 75)')


def downgrade() -> None:
    for table in ('member_states', 'ballot_members'):
        op.execute(f'ALTER TABLE {table} RESET (fillfactor)')
    op.drop_index('rebuilds_started_at', table_name='rebuilds')
    op.drop_table('rebuilds')
