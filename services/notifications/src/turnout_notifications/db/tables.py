"""The notifications database: the state it keeps from events (ballots, the roll with each
member's vote status, contact flags, opt-outs), its campaigns and their slots, and every
message it decided to send. No phone number is stored here in clear: numbers are fetched
from contacts at send time and dropped after the provider call (a keyed hash of each is
kept, to recognise replies; a STOP's confirmation keeps its number sealed until sent;
both go, with the texts of replies, when contacts erases the member). The sandbox
provider keeps what it "sent" (a masked number and the text) in its own table."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY, BYTEA, UUID

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

# Members whose personal data contacts erased, for good (as contacts' own erased_at is):
# what stops a text or a reply in flight at the moment of erasure from tying their
# number back to them (service/erasure.py). No personal data: an id and a time.
erasures = sa.Table(
    "erasures", metadata,
    sa.Column("member_id", UUID(as_uuid=True), primary_key=True),
    sa.Column("erased_at", TZ, nullable=False),  # the erasure event's occurred_at
    sa.Column("applied_at", TZ, nullable=False, server_default=sa.func.now()),
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
# pending -> selected (audience frozen in audience_parts, who was left out and why in
# audience_skips) | expired (the ballot closed first); a slot is selected exactly once.
campaign_slots = sa.Table(
    "campaign_slots", metadata,
    sa.Column("campaign_id", UUID(as_uuid=True), sa.ForeignKey("campaigns.campaign_id"),
              primary_key=True),
    sa.Column("slot", sa.Integer, primary_key=True),
    sa.Column("spec", sa.Text, nullable=False),  # as written: "P3D" or an ISO time
    sa.Column("due_at", TZ, nullable=False),
    sa.Column("state", sa.Text, nullable=False, server_default="pending"),
    sa.Column("selected_at", TZ),
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
    # HMAC-SHA256 (a key from settings) of the E.164 number the message went to: how a
    # reply from that number finds the member, without the number stored here.
    sa.Column("recipient_hash", BYTEA),
    # The member's branch on the roll (reps read the counts of their branches).
    sa.Column("branch_code", sa.Text),
    sa.Column("created_at", TZ, nullable=False, server_default=sa.func.now()),
    sa.Column("updated_at", TZ, nullable=False, server_default=sa.func.now()),
    sa.Index("messages_campaign_status", "campaign_id", "status"),
    sa.Index("messages_queued", "campaign_id", "created_at",
             postgresql_where=sa.text("status = 'queued'")),
    sa.Index("messages_member_attempted", "member_id", "attempted_at",
             postgresql_where=sa.text("attempted_at IS NOT NULL")),
    sa.Index("messages_recipient", "recipient_hash", "attempted_at",
             postgresql_where=sa.text("recipient_hash IS NOT NULL")),
    sa.Index("messages_provider_message", "provider_message_id",
             postgresql_where=sa.text("provider_message_id IS NOT NULL")),
    sa.Index("messages_campaign_branch", "campaign_id", "branch_code"),
    # Claimed but no answer recorded: what the dispatcher's rescue looks for.
    sa.Index("messages_sending", "attempted_at",
             postgresql_where=sa.text("status = 'sending'")),
)

# A selected slot's recipients, frozen at selection and turned into messages a batch at a
# time as the dispatcher sends (see service/audience.py). Per branch, in parts of at most
# a thousand ids; `taken` of a part's ids have become messages. `deferred`: the ids not
# taken yet were held back by quiet hours.
audience_parts = sa.Table(
    "audience_parts", metadata,
    sa.Column("campaign_id", UUID(as_uuid=True), primary_key=True),
    sa.Column("slot", sa.Integer, primary_key=True),
    sa.Column("part", sa.Integer, primary_key=True),  # the order parts are sent in
    sa.Column("branch_code", sa.Text, nullable=False),
    sa.Column("member_ids", ARRAY(UUID(as_uuid=True)), nullable=False),
    sa.Column("size", sa.Integer, nullable=False),
    sa.Column("taken", sa.Integer, nullable=False, server_default="0"),
    sa.Column("deferred", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Index("audience_parts_open", "campaign_id", "slot", "part",
             postgresql_where=sa.text("taken < size")),
)

# Members of a slot's audience left out at selection, counted by branch and reason.
audience_skips = sa.Table(
    "audience_skips", metadata,
    sa.Column("campaign_id", UUID(as_uuid=True), primary_key=True),
    sa.Column("slot", sa.Integer, primary_key=True),
    sa.Column("branch_code", sa.Text, primary_key=True),
    sa.Column("reason", sa.Text, primary_key=True),
    sa.Column("n", sa.Integer, nullable=False),
)

# The branches a campaign's audience reaches (from the roll when it was created, and from
# each selection): the campaigns a rep may read.
campaign_branches = sa.Table(
    "campaign_branches", metadata,
    sa.Column("campaign_id", UUID(as_uuid=True), primary_key=True),
    sa.Column("branch_code", sa.Text, primary_key=True),
    sa.Index("campaign_branches_branch", "branch_code"),
)

# -- inbound: replies, opt-out confirmations, webhook replays ------------------------------

# Every webhook call accepted (a hash of its signature and body): the same call again is
# a replay, refused. A provider's signature carries no time, so an old call is as
# replayable as a new one: inbound calls (replies) are kept for good. Status calls are
# purged after `webhook_status_replay_days` (inbound.purge_status_calls): a receipt moves
# a message out of `sent` once, so a replay of an old one changes nothing anyway, and
# they are most of the rows (several per text sent).
webhook_calls = sa.Table(
    "webhook_calls", metadata,
    sa.Column("digest", BYTEA, primary_key=True),
    sa.Column("endpoint", sa.Text, nullable=False),  # inbound | status
    sa.Column("received_at", TZ, nullable=False),
    sa.Index("webhook_calls_endpoint_received", "endpoint", "received_at"),
)

# A delivery receipt for a provider message id we have no record of yet: the provider
# may call back before the dispatcher has recorded the send it just made (its answer and
# the callback race). Kept until the send is recorded, which applies it in the same
# transaction (service/receipts.py), or for the replay window if no send ever is.
early_receipts = sa.Table(
    "early_receipts", metadata,
    sa.Column("provider_message_id", sa.Text, primary_key=True),
    sa.Column("status", sa.Text, nullable=False),  # the provider's word, as received
    sa.Column("error", sa.Text),  # the provider's error code, if any
    sa.Column("received_at", TZ, nullable=False),
    sa.Index("early_receipts_received", "received_at"),
)

# One row per reply from a member we could identify, with its classified intent. Only an
# unclassified reply keeps its text, sealed (AES-GCM, a key from settings), for a rep to
# read; a classified one needs no text. The member's erasure removes the text and the
# provider's id; the intent and the time stay.
replies = sa.Table(
    "replies", metadata,
    sa.Column("reply_id", UUID(as_uuid=True), primary_key=True),
    sa.Column("provider_message_id", sa.Text, unique=True),
    sa.Column("member_id", UUID(as_uuid=True), nullable=False),
    sa.Column("ballot_id", UUID(as_uuid=True)),
    sa.Column("in_reply_to", UUID(as_uuid=True)),  # messages.message_id
    sa.Column("intent", sa.Text, nullable=False),
    sa.Column("text_sealed", BYTEA),
    sa.Column("received_at", TZ, nullable=False),
    sa.Index("replies_ballot", "ballot_id", "received_at"),
    sa.Index("replies_member", "member_id"),  # a member's replies, for their erasure
)

# The one text confirming a STOP. The number it goes to (the one the STOP came from) is
# kept sealed only until the provider has the message, for a retry after an outage.
# status: queued -> sending -> sent -> delivered | failed
confirmations = sa.Table(
    "confirmations", metadata,
    sa.Column("confirmation_id", UUID(as_uuid=True), primary_key=True),
    sa.Column("member_id", UUID(as_uuid=True), nullable=False),
    sa.Column("idempotency_key", sa.Text, nullable=False, unique=True),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("to_sealed", BYTEA),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("next_attempt_at", TZ),
    sa.Column("provider", sa.Text),
    sa.Column("provider_message_id", sa.Text),
    sa.Column("error_code", sa.Text),
    sa.Column("created_at", TZ, nullable=False, server_default=sa.func.now()),
    sa.Column("updated_at", TZ, nullable=False, server_default=sa.func.now()),
    sa.Index("confirmations_queued", "created_at",
             postgresql_where=sa.text("status = 'queued'")),
    sa.Index("confirmations_provider_message", "provider_message_id",
             postgresql_where=sa.text("provider_message_id IS NOT NULL")),
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
