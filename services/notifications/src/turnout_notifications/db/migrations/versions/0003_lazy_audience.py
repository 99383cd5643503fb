"""lazy audience: recipients frozen per slot in parts, messages made a batch at a time;
skips and messages by branch (reps' counts); the branches each campaign reaches; the
index the rescue of messages left in `sending` uses

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26 12:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = '0003'
down_revision: str | None = '0002'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('audience_parts',
    sa.Column('campaign_id', sa.UUID(), nullable=False),
    sa.Column('slot', sa.Integer(), nullable=False),
    sa.Column('part', sa.Integer(), nullable=False),
    sa.Column('branch_code', sa.Text(), nullable=False),
    sa.Column('member_ids', postgresql.ARRAY(sa.UUID()), nullable=False),
    sa.Column('size', sa.Integer(), nullable=False),
    sa.Column('taken', sa.Integer(), server_default='0', nullable=False),
    sa.Column('deferred', sa.Boolean(), server_default=sa.text('false'), nullable=False),
    sa.PrimaryKeyConstraint('campaign_id', 'slot', 'part')
    )
    op.create_index('audience_parts_open', 'audience_parts', ['campaign_id', 'slot', 'part'],
                    unique=False, postgresql_where=sa.text('taken < size'))
    op.create_table('audience_skips',
    sa.Column('campaign_id', sa.UUID(), nullable=False),
    sa.Column('slot', sa.Integer(), nullable=False),
    sa.Column('branch_code', sa.Text(), nullable=False),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.Column('n', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('campaign_id', 'slot', 'branch_code', 'reason')
    )
    op.create_table('campaign_branches',
    sa.Column('campaign_id', sa.UUID(), nullable=False),
    sa.Column('branch_code', sa.Text(), nullable=False),
    sa.PrimaryKeyConstraint('campaign_id', 'branch_code')
    )
    op.create_index('campaign_branches_branch', 'campaign_branches', ['branch_code'],
                    unique=False)
    # Skipped-at-selection counts now live in audience_skips, by branch.
    op.drop_column('campaign_slots', 'skipped')
    op.add_column('messages', sa.Column('branch_code', sa.Text(), nullable=True))
    op.create_index('messages_campaign_branch', 'messages', ['campaign_id', 'branch_code'],
                    unique=False)
    op.create_index('messages_sending', 'messages', ['attempted_at'], unique=False,
                    postgresql_where=sa.text("status = 'sending'"))


def downgrade() -> None:
    op.drop_index('messages_sending', table_name='messages',
                  postgresql_where=sa.text("status = 'sending'"))
    op.drop_index('messages_campaign_branch', table_name='messages')
    op.drop_column('messages', 'branch_code')
    op.add_column('campaign_slots', sa.Column(
        'skipped', postgresql.JSONB(astext_type=sa.Text()), server_default='{}',
        nullable=False))
    op.drop_index('campaign_branches_branch', table_name='campaign_branches')
    op.drop_table('campaign_branches')
    op.drop_table('audience_skips')
    op.drop_index('audience_parts_open', table_name='audience_parts',
                  postgresql_where=sa.text('taken < size'))
    op.drop_table('audience_parts')
