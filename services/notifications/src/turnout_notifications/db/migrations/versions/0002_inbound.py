"""inbound: replies, opt-out confirmations, webhook replay guard, recipient hashes

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26 10:00:00
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
    # Who a reply comes from: a keyed hash of the number each message went to, and the
    # provider's id of each message, which delivery receipts name.
    op.add_column('messages', sa.Column('recipient_hash', postgresql.BYTEA(), nullable=True))
    op.create_index('messages_recipient', 'messages', ['recipient_hash', 'attempted_at'],
                    unique=False, postgresql_where=sa.text('recipient_hash IS NOT NULL'))
    op.create_index('messages_provider_message', 'messages', ['provider_message_id'],
                    unique=False, postgresql_where=sa.text('provider_message_id IS NOT NULL'))

    op.create_table('webhook_calls',
    sa.Column('digest', postgresql.BYTEA(), nullable=False),
    sa.Column('endpoint', sa.Text(), nullable=False),
    sa.Column('received_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('digest')
    )
    op.create_table('replies',
    sa.Column('reply_id', sa.UUID(), nullable=False),
    sa.Column('provider_message_id', sa.Text(), nullable=True),
    sa.Column('member_id', sa.UUID(), nullable=False),
    sa.Column('ballot_id', sa.UUID(), nullable=True),
    sa.Column('in_reply_to', sa.UUID(), nullable=True),
    sa.Column('intent', sa.Text(), nullable=False),
    sa.Column('text_sealed', postgresql.BYTEA(), nullable=True),
    sa.Column('received_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('reply_id'),
    sa.UniqueConstraint('provider_message_id')
    )
    op.create_index('replies_ballot', 'replies', ['ballot_id', 'received_at'], unique=False)
    op.create_table('confirmations',
    sa.Column('confirmation_id', sa.UUID(), nullable=False),
    sa.Column('member_id', sa.UUID(), nullable=False),
    sa.Column('idempotency_key', sa.Text(), nullable=False),
    sa.Column('status', sa.Text(), nullable=False),
    sa.Column('to_sealed', postgresql.BYTEA(), nullable=True),
    sa.Column('attempts', sa.Integer(), server_default='0', nullable=False),
    sa.Column('next_attempt_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('provider', sa.Text(), nullable=True),
    sa.Column('provider_message_id', sa.Text(), nullable=True),
    sa.Column('error_code', sa.Text(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.PrimaryKeyConstraint('confirmation_id'),
    sa.UniqueConstraint('idempotency_key')
    )
    op.create_index('confirmations_queued', 'confirmations', ['created_at'], unique=False,
                    postgresql_where=sa.text("status = 'queued'"))
    op.create_index('confirmations_provider_message', 'confirmations',
                    ['provider_message_id'], unique=False,
                    postgresql_where=sa.text('provider_message_id IS NOT NULL'))


def downgrade() -> None:
    op.drop_index('confirmations_provider_message', table_name='confirmations')
    op.drop_index('confirmations_queued', table_name='confirmations')
    op.drop_table('confirmations')
    op.drop_index('replies_ballot', table_name='replies')
    op.drop_table('replies')
    op.drop_table('webhook_calls')
    op.drop_index('messages_provider_message', table_name='messages')
    op.drop_index('messages_recipient', table_name='messages')
    op.drop_column('messages', 'recipient_hash')
