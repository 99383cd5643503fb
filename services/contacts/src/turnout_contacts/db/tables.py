"""The contacts database. Personal values (names, mobile, email, conversation notes) are
stored only as AES-GCM ciphertext (`domain/crypto.py`); beside them, masked forms for
display and HMAC tokens for search. A dump of this database shows no phone number,
email or name."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY, BYTEA, UUID

metadata = sa.MetaData()
TZ = sa.DateTime(timezone=True)

members = sa.Table(
    "members", metadata,
    sa.Column("member_id", UUID(as_uuid=True), primary_key=True),
    sa.Column("membership_number", sa.Text, nullable=False, unique=True),
    sa.Column("group_code", sa.Text, nullable=False),
    sa.Column("branch_code", sa.Text, nullable=False),
    sa.Column("workplace_code", sa.Text),
    sa.Column("grade", sa.Text),
    sa.Column("first_name", BYTEA),
    sa.Column("last_name", BYTEA),
    sa.Column("name_tokens", ARRAY(sa.Text), nullable=False, server_default="{}"),
    sa.Column("mobile", BYTEA),
    sa.Column("mobile_masked", sa.Text),
    sa.Column("email", BYTEA),
    sa.Column("email_masked", sa.Text),
    sa.Column("sms_consent", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("email_consent", sa.Boolean, nullable=False, server_default=sa.false()),
    # HMAC of the personal fields as last imported/edited: "unchanged" without decrypting.
    sa.Column("personal_digest", BYTEA),
    # Increases with every event about this member, so consumers can order them.
    sa.Column("version", sa.Integer, nullable=False, server_default="1"),
    sa.Column("erased_at", TZ),
    # The last full roster import that listed this member; members it did not list are
    # flagged for review rather than deleted (see service/roster.py).
    sa.Column("last_import_id", UUID(as_uuid=True)),
    sa.Column("missing_since_import_id", UUID(as_uuid=True)),
    sa.Column("created_at", TZ, nullable=False, server_default=sa.func.now()),
    sa.Column("updated_at", TZ, nullable=False, server_default=sa.func.now()),
    sa.Index("members_branch", "branch_code", "member_id"),
    sa.Index("members_group", "group_code", "member_id"),
    sa.Index("members_name_tokens", "name_tokens", postgresql_using="gin"),
)

conversations = sa.Table(
    "conversations", metadata,
    sa.Column("conversation_id", UUID(as_uuid=True), primary_key=True),
    sa.Column("member_id", UUID(as_uuid=True), sa.ForeignKey("members.member_id"),
              nullable=False),
    sa.Column("ballot_id", UUID(as_uuid=True)),
    sa.Column("channel", sa.Text, nullable=False),
    sa.Column("outcome", sa.Text, nullable=False),
    sa.Column("note", BYTEA),  # free text can name people: encrypted like contact values
    sa.Column("logged_by", sa.Text, nullable=False),
    sa.Column("contacted_at", TZ, nullable=False),
    sa.Column("created_at", TZ, nullable=False, server_default=sa.func.now()),
    sa.Index("conversations_member", "member_id", "contacted_at"),
)

reveal_audit = sa.Table(
    "reveal_audit", metadata,
    sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
    sa.Column("revealed_at", TZ, nullable=False, server_default=sa.func.now()),
    sa.Column("revealed_by", sa.Text, nullable=False),
    sa.Column("role", sa.Text, nullable=False),
    sa.Column("member_id", UUID(as_uuid=True), nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("fields", ARRAY(sa.Text), nullable=False),
    sa.Index("reveal_audit_by", "revealed_by", "revealed_at"),
    sa.Index("reveal_audit_member", "member_id", "revealed_at"),
)

reveal_anomalies = sa.Table(
    "reveal_anomalies", metadata,
    sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
    sa.Column("detected_at", TZ, nullable=False, server_default=sa.func.now()),
    sa.Column("subject", sa.Text, nullable=False),
    sa.Column("member_id", UUID(as_uuid=True), nullable=False),
    sa.Column("reveals_in_last_hour", sa.Integer, nullable=False),
    sa.Column("hourly_limit", sa.Integer, nullable=False),
)

# Each member's vote status per ballot, kept from ballots events for the chase list.
vote_status = sa.Table(
    "vote_status", metadata,
    sa.Column("ballot_id", UUID(as_uuid=True), primary_key=True),
    sa.Column("member_id", UUID(as_uuid=True), primary_key=True),
    sa.Column("enrolled", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("voted", sa.Boolean, nullable=False, server_default=sa.false()),
    # The time of the latest voted/retracted event applied: an older one arriving late
    # does not overwrite a newer one.
    sa.Column("voted_changed_at", TZ),
    sa.Column("updated_at", TZ, nullable=False, server_default=sa.func.now()),
)

roster_imports = sa.Table(
    "roster_imports", metadata,
    sa.Column("import_id", UUID(as_uuid=True), primary_key=True),
    sa.Column("imported_at", TZ, nullable=False, server_default=sa.func.now()),
    sa.Column("imported_by", sa.Text, nullable=False),
    sa.Column("rows", sa.Integer, nullable=False),
    sa.Column("created", sa.Integer, nullable=False),
    sa.Column("updated", sa.Integer, nullable=False),
    sa.Column("unchanged", sa.Integer, nullable=False),
    sa.Column("missing", sa.Integer, nullable=False),
)
