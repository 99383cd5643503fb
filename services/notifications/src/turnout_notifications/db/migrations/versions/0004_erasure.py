"""erasure: the members contacts erased, and an index to find a member's replies

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27 10:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0004'
down_revision: str | None = '0003'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Every column erasure clears (replies.text_sealed, replies.provider_message_id,
    # messages.recipient_hash, confirmations.to_sealed) is nullable already.
    op.create_table('erasures',
    sa.Column('member_id', sa.UUID(), nullable=False),
    sa.Column('erased_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('applied_at', sa.DateTime(timezone=True), server_default=sa.text('now()'),
              nullable=False),
    sa.PrimaryKeyConstraint('member_id')
    )
    op.create_index('replies_member', 'replies', ['member_id'], unique=False)


def downgrade() -> None:
    op.drop_index('replies_member', table_name='replies')
    op.drop_table('erasures')
