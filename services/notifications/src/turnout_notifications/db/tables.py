"""The notifications database: the state it keeps from events (ballots, the roll with each
member's vote status, contact flags, opt-outs), its campaigns and their slots, and every
message it decided to send. No phone number is stored here: numbers are fetched from
contacts at send time and dropped after the provider call. The sandbox provider keeps
what it "sent" (a masked number and the text) in its own table."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, UUID

metadata = sa.MetaData()
TZ = sa.DateTime(timezone=True)

# -- state from events ------------------------------------------------------------------

ballots = sa.Table(
    "ballots", metadata,
    sa.Column("ballot_id", UUID(as_uuid=True), primary_key=True),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("opens_at", TZ, nullable=False),
    sa.Column("closes_at", TZ, nullable=False),
    sa.Column("closed_at", TZ),
    sa.Column("updated_at", TZ, nullable=False, server_default=sa.func.now()),
)

# One row per member and ballot: on the roll (with the placement the roll snapshotted,
# which audience filters use) and voted or not. Either half may arrive first.
roll = sa.Table(
    "roll", metadata,
    sa.Column("ballot_id", UUID(as_uuid=True), primary_key=True),
    sa.Column("member_id", UUID(as_uuid=True), primary_key=True),
    sa.Column("enrolled", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("group_code", sa.Text),
    sa.Column("branch_code", sa.Text),
    sa.Column("workplace_code", sa.Text),
    sa.Column("voted", sa.Boolean, nullable=False, server_default=sa.false()),
    # The order key of the latest voted/retracted event applied (see service/state.py).
    sa.Column("voted_changed_at", TZ),
)

# Contact flags per member as contacts' events describe them; the highest member_version
# that carried flags wins.
member_contact = sa.Table(
    "member_contact", metadata,
    sa.Column("member_id", UUID(as_uuid=True), primary_key=True),
    sa.Column("member_version", sa.Integer, nullable=False),
    sa.Column("has_mobile", sa.Boolean, nullable=False),
    sa.Column("sms_consent", sa.Boolean, nullable=False),
    sa.Column("has_email", sa.Boolean, nullable=False),
    sa.Column("email_consent", sa.Boolean, nullable=False),
)

# Members who asked to stop messages on a channel (STOP); kept even when contacts has
# not withdrawn the consent yet, so nothing goes out in between.
opt_outs = sa.Table(
    "opt_outs", metadata,
    sa.Column("member_id", UUID(as_uuid=True), primary_key=True),
    sa.Column("channel", sa.Text, primary_key=True),
    sa.Column("received_at", TZ, nullable=False),
)

# -- campaigns ---------------------------------------------------------------------------

campaigns = sa.Table(
    "campaigns", metadata,
    sa.Column("campaign_id", UUID(as_uuid=True), primary_key=True),
    sa.Column("ballot_id", UUID(as_uuid=True), nullable=False),
    sa.Column("channel", sa.Text, nullable=False),
    sa.Column("template", sa.Text, nullable=False),
    sa.Column("link", sa.Text),
    sa.Column("quiet_start", sa.Time, nullable=False),
    sa.Column("quiet_end", sa.Time, nullable=False),
    sa.Column("timezone", sa.Text, nullable=False),
    sa.Column("max_per_day", sa.Integer, nullable=False),
    sa.Column("group_codes", ARRAY(sa.Text), nullable=False, server_default="{}"),
    sa.Column("branch_codes", ARRAY(sa.Text), nullable=False, server_default="{}"),
    sa.Column("workplace_codes", ARRAY(sa.Text), nullable=False, server_default="{}"),
    # active | paused | cancelled
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("created_by", sa.Text, nullable=False),
    sa.Column("created_at", TZ, nullable=False, server_default=sa.func.now()),
    sa.Column("updated_at", TZ, nullable=False, server_default=sa.func.now()),
    sa.Index("campaigns_ballot", "ballot_id"),
)

# Each send time of a campaign, resolved to an instant when the campaign is created.
# pending -> selected (recipients queued) ; a slot is selected exactly once.
campaign_slots = sa.Table(
    "campaign_slots", metadata,
    sa.Column("campaign_id", UUID(as_uuid=True), sa.ForeignKey("campaigns.campaign_id"),
              primary_key=True),
    sa.Column("slot", sa.Integer, primary_key=True),
    sa.Column("spec", sa.Text, nullable=False),  # as written: "P3D" or an ISO time
    sa.Column("due_at", TZ, nullable=False),
    sa.Column("state", sa.Text, nullable=False, server_default="pending"),
    sa.Column("selected_at", TZ),
    # Members of the audience left out at selection, by reason: {"voted": 12, ...}.
    sa.Column("skipped", JSONB, nullable=False, server_default="{}"),
    sa.Index("campaign_slots_due", "due_at", postgresql_where=sa.text("state = 'pending'")),
)

# One row per member, campaign and slot, written BEFORE the provider is called: the
# unique idempotency key is what makes a second send of the same reminder impossible.
# status: queued -> sending -> sent -> delivered | failed ; or skipped (skip_reason).
messages = sa.Table(
    "messages", metadata,
    sa.Column("message_id", UUID(as_uuid=True), primary_key=True),
    sa.Column("idempotency_key", sa.Text, nullable=False, unique=True),
    sa.Column("campaign_id", UUID(as_uuid=True), nullable=False),
    sa.Column("slot", sa.Integer, nullable=False),
    sa.Column("ballot_id", UUID(as_uuid=True), nullable=False),
    sa.Column("member_id", UUID(as_uuid=True), nullable=False),
    sa.Column("channel", sa.Text, nullable=False),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("skip_reason", sa.Text),
    # Held back at least once by quiet hours (counted as quiet_hours_deferred).
    sa.Column("deferred", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("next_attempt_at", TZ),
    sa.Column("attempted_at", TZ),  # when handed to the provider: the per-day cap counts it
    sa.Column("provider", sa.Text),
    sa.Column("provider_message_id", sa.Text),
    sa.Column("error_code", sa.Text),
    sa.Column("created_at", TZ, nullable=False, server_default=sa.func.now()),
    sa.Column("updated_at", TZ, nullable=False, server_default=sa.func.now()),
    sa.Index("messages_campaign_status", "campaign_id", "status"),
    sa.Index("messages_queued", "campaign_id", "created_at",
             postgresql_where=sa.text("status = 'queued'")),
    sa.Index("messages_member_attempted", "member_id", "attempted_at",
             postgresql_where=sa.text("attempted_at IS NOT NULL")),
)

# -- the sandbox provider ----------------------------------------------------------------

sandbox_messages = sa.Table(
    "sandbox_messages", metadata,
    sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
    sa.Column("provider_message_id", sa.Text, nullable=False, unique=True),
    sa.Column("idempotency_key", sa.Text, nullable=False, unique=True),
    sa.Column("to_masked", sa.Text, nullable=False),
    sa.Column("body", sa.Text, nullable=False),
    sa.Column("accepted_at", TZ, nullable=False),
)
