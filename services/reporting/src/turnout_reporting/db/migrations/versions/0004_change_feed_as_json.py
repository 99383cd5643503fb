"""the change feed's rows as json text rather than jsonb

Each batch's feed row is built by PostgreSQL from the rows the batch upserted and read
back only to be sent on as text: jsonb's binary form was built, then turned back into
text, for nothing. json_build_object/json_agg cost about a third as much as their jsonb
forms, which counts while the fold catches up (thousands of hourly buckets a batch).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26 08:00:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = '0004'
down_revision: str | None = '0003'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute('ALTER TABLE turnout_changes ALTER COLUMN changes TYPE json USING changes::json')


def downgrade() -> None:
    op.execute('ALTER TABLE turnout_changes ALTER COLUMN changes TYPE jsonb '
               'USING changes::jsonb')
