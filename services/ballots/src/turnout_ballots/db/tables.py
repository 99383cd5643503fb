"""The ballots database. No personal values live here: members are pseudonymous ids
with their placement (codes), as the contacts service publishes them."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY, UUID

metadata = sa.MetaData()
TZ = sa.DateTime(timezone=True)

# The members as contacts' events describe them: this service never reads the contacts
# database. `member_version` is the version of the event that gave the placement held
# here; an event with a lower one arrives late and changes nothing.
member_replica = sa.Table(
    "member_replica", metadata,
    sa.Column("member_id", UUID(as_uuid=True), primary_key=True),
    sa.Column("group_code", sa.Text, nullable=False),
    sa.Column("branch_code", sa.Text, nullable=False),
    sa.Column("workplace_code", sa.Text),
    sa.Column("grade", sa.Text),
    sa.Column("member_version", sa.Integer, nullable=False),
    sa.Column("updated_at", TZ, nullable=False, server_default=sa.func.now()),
    sa.Index("member_replica_group", "group_code"),
    sa.Index("member_replica_branch", "branch_code"),
)

ballots = sa.Table(
    "ballots", metadata,
    sa.Column("ballot_id", UUID(as_uuid=True), primary_key=True),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("kind", sa.Text, nullable=False),
    # draft -> open -> closed; see domain/ballot.py.
    sa.Column("status", sa.Text, nullable=False, server_default="draft"),
    sa.Column("opens_at", TZ, nullable=False),
    sa.Column("closes_at", TZ, nullable=False),
    sa.Column("turnout_threshold", sa.Float),  # null: no legal threshold applies
    sa.Column("scope_group_codes", ARRAY(sa.Text), nullable=False, server_default="{}"),
    sa.Column("scope_branch_codes", ARRAY(sa.Text), nullable=False, server_default="{}"),
    sa.Column("eligible_count", sa.Integer),  # fixed when the roll is snapshotted
    sa.Column("created_by", sa.Text, nullable=False),
    sa.Column("created_at", TZ, nullable=False, server_default=sa.func.now()),
    sa.Column("opened_by", sa.Text),
    sa.Column("opened_at", TZ),
    sa.Column("closed_by", sa.Text),
    sa.Column("closed_at", TZ),
    sa.CheckConstraint("status IN ('draft', 'open', 'closed')", name="ballots_status"),
)

# The eligible roll: every member in the ballot's scope when it opened, placed as they
# were then. Later moves and new members do not change it.
roll = sa.Table(
    "roll", metadata,
    sa.Column("ballot_id", UUID(as_uuid=True), sa.ForeignKey("ballots.ballot_id"),
              primary_key=True),
    sa.Column("member_id", UUID(as_uuid=True), primary_key=True),
    sa.Column("group_code", sa.Text, nullable=False),
    sa.Column("branch_code", sa.Text, nullable=False),
    sa.Column("workplace_code", sa.Text),
    sa.Column("grade", sa.Text),
    sa.Index("roll_branch", "ballot_id", "branch_code"),
    sa.Index("roll_group", "ballot_id", "group_code"),
)

# Publishing a roll's member-enrolled events, chunk by chunk, each chunk its own
# transaction; `last_member_id` is where the next chunk starts, so a restart resumes
# instead of starting over (or publishing twice). Every event of one opening shares
# the opening's time, actor and correlation id, kept here for the resumption.
enrolments = sa.Table(
    "enrolments", metadata,
    sa.Column("ballot_id", UUID(as_uuid=True), sa.ForeignKey("ballots.ballot_id"),
              primary_key=True),
    sa.Column("total", sa.Integer, nullable=False),
    sa.Column("published", sa.Integer, nullable=False, server_default="0"),
    sa.Column("last_member_id", UUID(as_uuid=True)),
    sa.Column("occurred_at", TZ, nullable=False),
    sa.Column("actor", sa.Text, nullable=False),
    sa.Column("correlation_id", sa.Text),
    sa.Column("completed_at", TZ),
)

# The current voted mark of a member in a ballot: at most one, whatever the sources.
votes = sa.Table(
    "votes", metadata,
    sa.Column("ballot_id", UUID(as_uuid=True), primary_key=True),
    sa.Column("member_id", UUID(as_uuid=True), primary_key=True),
    sa.Column("source", sa.Text, nullable=False),
    sa.Column("actor", sa.Text, nullable=False),
    sa.Column("voted_at", TZ, nullable=False),
    sa.Column("conversation_id", UUID(as_uuid=True)),
    sa.Column("recorded_at", TZ, nullable=False, server_default=sa.func.now()),
    sa.ForeignKeyConstraint(["ballot_id", "member_id"], ["roll.ballot_id", "roll.member_id"]),
)

# Marks withdrawn (a rep marked the wrong person, a scrutineer's correction): kept, with
# who withdrew them and why, so a count can be explained later.
retracted_votes = sa.Table(
    "retracted_votes", metadata,
    sa.Column("retraction_id", sa.BigInteger, sa.Identity(), primary_key=True),
    sa.Column("ballot_id", UUID(as_uuid=True), nullable=False),
    sa.Column("member_id", UUID(as_uuid=True), nullable=False),
    sa.Column("source", sa.Text, nullable=False),
    sa.Column("actor", sa.Text, nullable=False),
    sa.Column("voted_at", TZ, nullable=False),
    sa.Column("conversation_id", UUID(as_uuid=True)),
    sa.Column("reason_code", sa.Text, nullable=False),
    sa.Column("retracted_by", sa.Text, nullable=False),
    sa.Column("retracted_at", TZ, nullable=False, server_default=sa.func.now()),
    sa.Index("retracted_votes_member", "ballot_id", "member_id"),
)

replacement_requests = sa.Table(
    "replacement_requests", metadata,
    sa.Column("request_id", UUID(as_uuid=True), primary_key=True),
    sa.Column("ballot_id", UUID(as_uuid=True), nullable=False),
    sa.Column("member_id", UUID(as_uuid=True), nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("requested_by", sa.Text, nullable=False),
    sa.Column("requested_at", TZ, nullable=False, server_default=sa.func.now()),
    sa.ForeignKeyConstraint(["ballot_id", "member_id"], ["roll.ballot_id", "roll.member_id"]),
    sa.Index("replacement_requests_member", "ballot_id", "member_id"),
)
