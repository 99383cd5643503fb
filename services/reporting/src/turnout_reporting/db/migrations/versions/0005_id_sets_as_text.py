"""an enrolment's reminders and replacement requests as comma-separated text

The fold holds each set as one string of canonical ids joined by commas; as uuid[] in
the table, every new enrolment with a reminder or a replacement request had to go
through a staging table for PostgreSQL to build its arrays, where the others were copied
straight in. As text, all new enrolments are.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-26 12:00:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = '0005'
down_revision: str | None = '0004'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_ID_SETS = ("replacement_requests", "reminders")


def upgrade() -> None:
    for column in _ID_SETS:
        op.execute(f"ALTER TABLE ballot_members ALTER COLUMN {column} TYPE text "
                   f"USING array_to_string({column}, ',')")


def downgrade() -> None:
    for column in _ID_SETS:
        op.execute(f"ALTER TABLE ballot_members ALTER COLUMN {column} TYPE uuid[] "
                   f"USING string_to_array({column}, ',')::uuid[]")
