"""The published contract, generated from the code: one JSON Schema per event (the whole
envelope, with `data` being that event's payload) and an AsyncAPI 3.0 document.

Both are committed (libs/events/schemas/, libs/events/asyncapi.json) so that other
systems can read the contract without Python, and so that a change to it shows in review.

    uv run python -m turnout_events.schemas write   # regenerate the committed files
    uv run python -m turnout_events.schemas check   # exit 1 if they are out of date

The committed schemas are also the "released" ones `compat` holds new code against, so
run `python -m turnout_events.compat` before `write`.
"""

from __future__ import annotations

import argparse
import copy
import difflib
import json
import sys
import uuid
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

from pydantic.json_schema import models_json_schema

from .envelope import Envelope, EventData
from .registry import all_events
from .topics import DEAD_LETTER_TOPIC_CONFIG, EVENT_TOPIC_CONFIG, SOURCES, TopicRegistry

JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
# Bump by hand: minor for an additive change or a new event version, major never (a
# breaking change is a new event version, published alongside the old one).
CONTRACT_VERSION = "1.0.0"
KAFKA_BINDING_VERSION = "0.5.0"

PACKAGE_ROOT = Path(__file__).resolve().parents[2]  # libs/events
SCHEMA_DIR_NAME = "schemas"
ASYNCAPI_FILE_NAME = "asyncapi.json"

PUBLISHERS = {
    "contacts": "the contacts service (services/contacts), the member directory",
    "ballots": "the ballots service (services/ballots), ballots and their rolls",
    "notifications": "the notification service (services/notifications), reminders and replies",
}


def schema_file_name(event_type: str, version: int) -> str:
    return f"{event_type}.v{version}.json"


def _summary(model: type[EventData]) -> str:
    return " ".join((model.__doc__ or model.event_type).split("\n\n")[0].split())


@cache
def _envelope_base() -> dict[str, Any]:
    return Envelope.model_json_schema()


def _envelope_for(model: type[EventData], data_schema: dict[str, Any]) -> dict[str, Any]:
    """The envelope schema narrowed to one event: fixed type, version and source."""
    schema = copy.deepcopy(_envelope_base())
    props = schema["properties"]
    props["type"] = {"const": model.event_type, "type": "string", "title": "Type"}
    props["version"] = {"const": model.version, "type": "integer", "title": "Version"}
    props["source"] = {"const": model.source, "type": "string", "title": "Source"}
    props["key"]["description"] = f"The Kafka partition key: data.{model.key_field}."
    if model.model_fields[model.key_field].annotation is uuid.UUID:
        props["key"]["format"] = "uuid"
    props["data"] = data_schema
    schema["title"] = f"{model.event_type} v{model.version}"
    schema["description"] = _summary(model)
    return schema


def event_schema(model: type[EventData]) -> dict[str, Any]:
    """A self-contained JSON Schema (2020-12) of the envelope carrying `model`."""
    data = model.model_json_schema()
    defs = data.pop("$defs", None)
    schema = {
        "$schema": JSON_SCHEMA_DIALECT,
        "$id": f"urn:turnout:events:{model.event_type}:v{model.version}",
        **_envelope_for(model, data),
    }
    if defs:
        schema["$defs"] = defs
    return schema


def _headers_schema(model: type[EventData]) -> dict[str, Any]:
    # The headers serde.headers_for and the outbox relay write, for routing without parsing.
    return {
        "type": "object",
        "properties": {
            "event-id": {"type": "string", "format": "uuid", "description": "Same as id."},
            "event-type": {"const": model.event_type, "type": "string"},
            "event-version": {"const": str(model.version), "type": "string"},
            "correlation-id": {"type": "string", "description": "Same as correlation_id."},
        },
        "required": ["event-id", "event-type", "event-version"],
    }


def _channel_id(source: str) -> str:
    return f"{source}Events"


def _topic_binding(name: str, config: dict[str, str], topics: TopicRegistry) -> dict[str, Any]:
    # Only the settings the AsyncAPI Kafka binding defines, in the types it expects.
    known: dict[str, Callable[[str], Any]] = {
        "retention.ms": int, "retention.bytes": int, "cleanup.policy": lambda v: v.split(","),
    }
    return {"kafka": {
        "topic": name,
        "partitions": topics.partitions,
        "replicas": topics.replication_factor,
        "topicConfiguration": {k: known[k](v) for k, v in sorted(config.items()) if k in known},
        "bindingVersion": KAFKA_BINDING_VERSION,
    }}


def asyncapi_document(topics: TopicRegistry | None = None) -> dict[str, Any]:
    """The AsyncAPI 3.0 description of every topic and event, from the registry."""
    topics = topics or TopicRegistry()
    models = all_events()
    refs, top = models_json_schema([(m, "validation") for m in models],
                                   ref_template="#/components/schemas/{model}")
    messages: dict[str, Any] = {}
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    for source in SOURCES:
        own = [m for m in models if m.source == source]
        ids = [f"{m.event_type}.v{m.version}" for m in own]
        for message_id, model in zip(ids, own, strict=True):
            key_schema = {"type": "string", "description": f"data.{model.key_field}"}
            if model.model_fields[model.key_field].annotation is uuid.UUID:
                key_schema["format"] = "uuid"
            messages[message_id] = {
                "name": model.event_type,
                "title": f"{model.event_type} v{model.version}",
                "summary": _summary(model),
                "contentType": "application/json",
                "headers": _headers_schema(model),
                "payload": _envelope_for(model, refs[(model, "validation")]),
                "correlationId": {"location": "$message.payload#/correlation_id"},
                "bindings": {"kafka": {"key": key_schema, "bindingVersion": KAFKA_BINDING_VERSION}},
                "x-turnout-publisher": source,
                "x-turnout-key-field": model.key_field,
            }
        channel = _channel_id(source)
        address = topics.events(source)
        channels[channel] = {
            "address": address,
            "title": f"{source} events",
            "description": (
                f"Every event published by {PUBLISHERS[source]}. Member-level events are "
                "keyed by member_id and ballot-level events by ballot_id; all event topics "
                "have the same partition count, so one member's events share a partition "
                "number across topics. Kept forever: projections are rebuilt by replay."),
            "messages": {i: {"$ref": f"#/components/messages/{i}"} for i in ids},
            "bindings": _topic_binding(address, EVENT_TOPIC_CONFIG, topics),
        }
        operations[f"publish{source.capitalize()}Events"] = {
            "action": "send",
            "channel": {"$ref": f"#/channels/{channel}"},
            "title": f"{source} publishes",
            "summary": (f"Published by {PUBLISHERS[source]} through its transactional "
                        "outbox (idempotent producer, acks=all)."),
            "messages": [{"$ref": f"#/channels/{channel}/messages/{i}"} for i in ids],
        }
    messages["dead-letter"] = _dead_letter_message()
    channels["deadLetter"] = {
        "address": topics.dead_letter,
        "title": "dead letters",
        "description": ("Events a consumer could not use (invalid, or its handler kept "
                        "failing), copied as they were, with the reason in headers. Kept "
                        "30 days for someone to look, fix and replay."),
        "messages": {"dead-letter": {"$ref": "#/components/messages/dead-letter"}},
        "bindings": _topic_binding(topics.dead_letter, DEAD_LETTER_TOPIC_CONFIG, topics),
    }
    operations["deadLetter"] = {
        "action": "send",
        "channel": {"$ref": "#/channels/deadLetter"},
        "title": "consumers dead-letter",
        "summary": "Sent by any consumer (turnout_events.consumer) that cannot use an event.",
        "messages": [{"$ref": "#/channels/deadLetter/messages/dead-letter"}],
    }
    return {
        "asyncapi": "3.0.0",
        "id": "urn:turnout:events",
        "info": {
            "title": "Turnout events",
            "version": CONTRACT_VERSION,
            "description": (
                "The event contract of Turnout, a get-out-the-vote hub for trade-union "
                "ballots. Every message is a JSON envelope whose `data` is the typed "
                "payload. Consumers ignore unknown fields and unknown event types or "
                "versions; changes within a version are additive only. Events carry "
                "pseudonymous ids, codes and flags, never names or contact details."),
        },
        "servers": {"local": {
            "host": "localhost:9092", "protocol": "kafka",
            "description": "The local runtime's broker (KAFKA_BOOTSTRAP_SERVERS overrides).",
        }},
        "defaultContentType": "application/json",
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages, "schemas": top.get("$defs", {})},
    }


def _dead_letter_message() -> dict[str, Any]:
    text = {"type": "string"}
    return {
        "name": "dead-letter",
        "title": "dead letter",
        "summary": "An event copied byte for byte from its topic, with why and where.",
        "payload": {"description": "The original record value; it may not even be JSON."},
        "headers": {
            "type": "object",
            "description": "The original record's headers, plus these.",
            "properties": {
                "dead-letter-reason": {"enum": ["invalid", "handler-failed"], "type": "string"},
                "dead-letter-error": {**text, "maxLength": 1000,
                                      "description": "What was wrong; never the values."},
                "dead-letter-topic": text,
                "dead-letter-partition": text,
                "dead-letter-offset": text,
                "dead-letter-consumer-group": text,
            },
            "required": ["dead-letter-reason", "dead-letter-error", "dead-letter-topic",
                         "dead-letter-partition", "dead-letter-offset",
                         "dead-letter-consumer-group"],
        },
        "bindings": {"kafka": {"key": {"description": "The original record's key."},
                               "bindingVersion": KAFKA_BINDING_VERSION}},
    }


def _dump(doc: dict[str, Any]) -> str:
    return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"


def expected_files() -> dict[str, str]:
    """Every generated file, by path relative to libs/events, with its exact text."""
    files = {f"{SCHEMA_DIR_NAME}/{schema_file_name(m.event_type, m.version)}":
             _dump(event_schema(m)) for m in all_events()}
    files[ASYNCAPI_FILE_NAME] = _dump(asyncapi_document())
    return files


def committed_schemas(root: Path = PACKAGE_ROOT) -> dict[str, dict[str, Any]]:
    """The committed event schemas, by file name."""
    paths = sorted((root / SCHEMA_DIR_NAME).glob("*.json"))
    return {p.name: json.loads(p.read_text()) for p in paths}


def write(root: Path = PACKAGE_ROOT) -> list[str]:
    """Write every generated file that differs; returns the paths written. Committed
    schemas of events no longer generated are left alone: released schemas stay."""
    written = []
    for rel, text in expected_files().items():
        path = root / rel
        if not path.exists() or path.read_text() != text:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            written.append(rel)
    return written


def display_path(path: Path) -> str:
    """`path` relative to the working directory when it is below it (shorter messages)."""
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def check(root: Path = PACKAGE_ROOT) -> list[str]:
    """Problems with the committed files, each naming the file and the difference."""
    problems = []
    expected = expected_files()
    for rel, text in expected.items():
        path = root / rel
        shown_path = display_path(path)
        if not path.exists():
            problems.append(f"{shown_path}: missing (a new event, or never written)")
            continue
        actual = path.read_text()
        if actual != text:
            diff = list(difflib.unified_diff(actual.splitlines(), text.splitlines(),
                                             f"{shown_path} (committed)",
                                             f"{shown_path} (generated from the code)",
                                             n=2, lineterm=""))
            shown = "\n".join(diff[:40]) + ("\n..." if len(diff) > 40 else "")
            problems.append(f"{shown_path}: differs from the code\n{shown}")
    for name in committed_schemas(root):
        if f"{SCHEMA_DIR_NAME}/{name}" not in expected:
            problems.append(f"{display_path(root / SCHEMA_DIR_NAME / name)}: committed, but no "
                            "event in the code produces it (released events stay; removing "
                            "one must be deliberate)")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m turnout_events.schemas",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["write", "check"])
    parser.add_argument("--root", type=Path, default=PACKAGE_ROOT,
                        help="the libs/events directory (default: this package's)")
    args = parser.parse_args(argv)
    if args.command == "write":
        written = write(args.root)
        print("\n".join(f"wrote {rel}" for rel in written) or "all files up to date")
        return 0
    problems = check(args.root)
    if problems:
        print("\n\n".join(problems), file=sys.stderr)
        print("\nrun `uv run python -m turnout_events.schemas write` (after "
              "`python -m turnout_events.compat`) and commit the result", file=sys.stderr)
        return 1
    print(f"{len(expected_files())} contract files up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
