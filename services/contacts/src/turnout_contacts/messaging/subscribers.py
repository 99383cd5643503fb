"""What the contacts service consumes: ballots events (vote status for the chase list)
and notifications events (opt-outs withdraw SMS consent)."""

from __future__ import annotations

from faststream.kafka import KafkaBroker

from ..context import ContactsContext


def register_subscribers(broker: KafkaBroker, ctx: ContactsContext) -> None:
    # Filled in with the chase list and opt-out handling.
    return None
