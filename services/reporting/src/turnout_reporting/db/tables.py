"""The reporting database: per-member fold state, the projections it produces, and the
consumed offsets stored with them.

Nothing here is a source of truth: every table can be dropped and refolded from the
event topics (they keep everything).
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSON, UUID

metadata = sa.MetaData()

# Where the fold has got to, per partition, written in the same transaction as the
# effects of the events before it. The consumer seeks here on assignment; Kafka's own
# committed offsets are not used, so a crash between the two cannot happen.
consumer_offsets = sa.Table(
    "consumer_offsets",
    metadata,
    sa.Column("group", sa.Text, primary_key=True),
    sa.Column("topic", sa.Text, primary_key=True),
    sa.Column("partition", sa.Integer, primary_key=True),
    sa.Column("next_offset", sa.BigInteger, nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False,
              server_default=sa.func.now()),
)

# What the contacts service last said about a member. The two halves are versioned
# separately because each event carries only one of them (and member-contacted neither):
# the flags of version 3 are still the latest flags after a version 4 that moved them.
member_states = sa.Table(
    "member_states",
    metadata,
    sa.Column("member_id", UUID(as_uuid=True), primary_key=True),
    sa.Column("contact_version", sa.Integer, nullable=False),  # 0: no flags known yet
    sa.Column("has_mobile", sa.Boolean, nullable=False),
    sa.Column("has_email", sa.Boolean, nullable=False),
    sa.Column("sms_consent", sa.Boolean, nullable=False),
    sa.Column("placement_version", sa.Integer, nullable=False),  # 0: no placement yet
    sa.Column("group_code", sa.Text),
    sa.Column("branch_code", sa.Text),
    sa.Column("workplace_code", sa.Text),
    # Room on each page for the state's next versions (updated in place: HOT).
    postgresql_with={"fillfactor": 75},
)

# One member in one ballot, as far as the events told us; a row may exist before the
# enrolment (a vote or a contact that arrived first) and counts only once enrolled.
ballot_members = sa.Table(
    "ballot_members",
    metadata,
    # member first: the fold loads every ballot of the members a batch touches.
    sa.Column("member_id", UUID(as_uuid=True), primary_key=True),
    sa.Column("ballot_id", UUID(as_uuid=True), primary_key=True),
    sa.Column("enrolled", sa.Boolean, nullable=False),
    sa.Column("group_code", sa.Text),  # the placement on the roll, if contacts said none
    sa.Column("branch_code", sa.Text),
    sa.Column("workplace_code", sa.Text),
    sa.Column("voted", sa.Boolean, nullable=False),
    sa.Column("vote_changed_at", sa.DateTime(timezone=True)),
    sa.Column("voted_at", sa.DateTime(timezone=True)),
    sa.Column("contacted", sa.Boolean, nullable=False),
    # Distinct ids, so that a request or reminder published twice counts once: canonical
    # UUIDs joined by commas, '' for none, as the fold holds them (BallotMemberState).
    # Text rather than uuid[]: a new enrolment's row is then copied straight in, where
    # an array had to go through a stage and be built by PostgreSQL.
    sa.Column("replacement_requests", sa.Text, nullable=False),
    sa.Column("reminders", sa.Text, nullable=False),
    postgresql_with={"fillfactor": 75},
)

ballots = sa.Table(
    "ballots",
    metadata,
    sa.Column("ballot_id", UUID(as_uuid=True), primary_key=True),
    # NULL until ballot-opened arrives: it travels on the ballot's own partition and may
    # come after the ballot's enrolments, votes, or even its ballot-closed.
    sa.Column("name", sa.Text),
    sa.Column("kind", sa.Text),
    sa.Column("turnout_threshold", sa.Float),
    sa.Column("opens_at", sa.DateTime(timezone=True)),
    sa.Column("closes_at", sa.DateTime(timezone=True)),
    sa.Column("closed_at", sa.DateTime(timezone=True)),
)

# A unit is identified by its codes down to its level, '' below it (national is all
# ''), so the key has no NULLs and a branch row knows its group (scope, drill-down).
_UNIT_KEY = ("ballot_id", "level", "group_code", "branch_code", "workplace_code")


def _unit_columns() -> list[sa.Column]:
    return [
        sa.Column("ballot_id", UUID(as_uuid=True), primary_key=True),
        sa.Column("level", sa.Text, primary_key=True),
        sa.Column("group_code", sa.Text, primary_key=True),
        sa.Column("branch_code", sa.Text, primary_key=True),
        sa.Column("workplace_code", sa.Text, primary_key=True),
    ]


turnout = sa.Table(
    "turnout",
    metadata,
    *_unit_columns(),
    *(sa.Column(name, sa.BigInteger, nullable=False, server_default="0") for name in (
        "eligible", "voted", "contactable", "sms_consent", "contacted", "hard_to_reach",
        "reminders_sent", "replacements_requested")),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False,
              server_default=sa.func.now()),
    sa.CheckConstraint("level IN ('national', 'group', 'branch', 'workplace')",
                       name="turnout_level"),
)

# Net votes per unit and hour (of the vote's own time); a retraction takes one back.
turnout_hourly = sa.Table(
    "turnout_hourly",
    metadata,
    *_unit_columns(),
    sa.Column("hour", sa.DateTime(timezone=True), primary_key=True),
    sa.Column("votes", sa.BigInteger, nullable=False, server_default="0"),
)

# What each committed batch changed, per ballot (projections/changes.py): the live
# stream's source and its replay log for clients resuming with Last-Event-ID. Pruned to
# the latest rows; it is a feed, not a history.
turnout_changes = sa.Table(
    "turnout_changes",
    metadata,
    sa.Column("seq", sa.BigInteger, sa.Identity(), primary_key=True),
    sa.Column("ballot_id", UUID(as_uuid=True), nullable=False),
    # {"rows": [turnout rows after the batch], "hours": [hourly buckets after it]}, as
    # text (json): only ever read back whole, to be sent on.
    sa.Column("changes", JSON, nullable=False),
    sa.Column("committed_at", sa.DateTime(timezone=True), nullable=False,
              server_default=sa.func.now()),
    sa.Index("turnout_changes_ballot_seq", "ballot_id", "seq"),
)

# Rebuilds of the projections from the beginning of the topics (service/rebuild.py): one
# row each, its progress updated as it folds, so either instance can answer for it.
rebuilds = sa.Table(
    "rebuilds",
    metadata,
    sa.Column("rebuild_id", UUID(as_uuid=True), primary_key=True),
    # folding (into the shadow tables), swapping (them in), done, failed
    sa.Column("state", sa.Text, nullable=False),
    sa.Column("requested_by", sa.Text, nullable=False),  # the caller's actor
    sa.Column("events_folded", sa.BigInteger, nullable=False, server_default="0"),
    # the records in the topics (their end offsets summed), as last seen
    sa.Column("events_total", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("error", sa.Text),  # why it failed: a kind of error, never event data
    sa.Column("started_at", sa.DateTime(timezone=True), nullable=False,
              server_default=sa.func.now()),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False,
              server_default=sa.func.now()),
    sa.Column("finished_at", sa.DateTime(timezone=True)),
    sa.CheckConstraint("state IN ('folding', 'swapping', 'done', 'failed')",
                       name="rebuilds_state"),
    sa.Index("rebuilds_started_at", "started_at"),
)
