"""The committed contract files are exactly what the code generates, and the check that
guards them says precisely what is wrong."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from turnout_events import schemas
from turnout_events.registry import all_events
from turnout_events.topics import TopicRegistry

pytestmark = pytest.mark.unit


def test_committed_files_equal_the_generated_ones():
    expected = schemas.expected_files()
    assert len(expected) == len(all_events()) + 1
    for rel, text in expected.items():
        path = schemas.PACKAGE_ROOT / rel
        assert path.exists(), f"{rel} is not committed: run python -m turnout_events.schemas write"
        assert path.read_text() == text, f"{rel} is out of date: run ... schemas write"
    assert schemas.check() == []


def test_check_command_passes(capsys):
    assert schemas.main(["check"]) == 0
    assert "up to date" in capsys.readouterr().out


@pytest.fixture
def copy_root(tmp_path: Path) -> Path:
    shutil.copytree(schemas.PACKAGE_ROOT / "schemas", tmp_path / "schemas")
    shutil.copy(schemas.PACKAGE_ROOT / "asyncapi.json", tmp_path / "asyncapi.json")
    return tmp_path


def test_check_reports_a_changed_file_with_a_diff(copy_root: Path, capsys):
    path = copy_root / "schemas" / "ballots.voted.v1.json"
    doc = json.loads(path.read_text())
    doc["properties"]["data"]["properties"]["voted_at"]["format"] = "date"
    path.write_text(json.dumps(doc, indent=2) + "\n")
    assert schemas.main(["check", "--root", str(copy_root)]) == 1
    err = capsys.readouterr().err
    assert "ballots.voted.v1.json: differs from the code" in err
    assert '-          "format": "date",' in err and '+          "format": "date-time",' in err
    assert "schemas write" in err


def test_check_reports_missing_and_stale_files(copy_root: Path):
    (copy_root / "asyncapi.json").unlink()
    (copy_root / "schemas" / "ballots.voted.v7.json").write_text("{}\n")
    problems = schemas.check(copy_root)
    assert len(problems) == 2
    assert problems[0].endswith("asyncapi.json: missing (a new event, or never written)")
    assert "ballots.voted.v7.json: committed, but no event in the code produces it" in problems[1]


def test_write_brings_files_up_to_date(copy_root: Path):
    (copy_root / "schemas" / "contacts.member-moved.v1.json").write_text("{}\n")
    assert schemas.write(copy_root) == ["schemas/contacts.member-moved.v1.json"]
    assert schemas.check(copy_root) == []


@pytest.mark.parametrize("model", all_events(), ids=lambda m: m.event_type)
def test_event_schema_fixes_type_version_and_source(model):
    schema = schemas.event_schema(model)
    props = schema["properties"]
    assert props["type"]["const"] == model.event_type
    assert props["version"]["const"] == model.version
    assert props["source"]["const"] == model.source
    assert model.key_field in props["data"]["properties"]
    assert model.key_field in props["data"]["required"]
    assert "additionalProperties" not in props["data"]  # consumers tolerate new fields
    assert all(ref.startswith("#/$defs/") for ref in _refs(schema))
    assert all(ref.removeprefix("#/$defs/") in schema.get("$defs", {}) for ref in _refs(schema))


def _refs(node) -> list[str]:
    if isinstance(node, dict):
        own = [node["$ref"]] if "$ref" in node else []
        return own + [r for v in node.values() for r in _refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return []


def test_asyncapi_describes_every_topic_and_event():
    doc = schemas.asyncapi_document()
    topics = TopicRegistry()
    assert doc["asyncapi"].startswith("3.")
    addresses = {c["address"] for c in doc["channels"].values()}
    assert addresses == {*topics.all_event_topics(), topics.dead_letter}
    messages = doc["components"]["messages"]
    for model in all_events():
        message = messages[f"{model.event_type}.v{model.version}"]
        assert message["name"] == model.event_type
        assert message["x-turnout-publisher"] == model.source
        assert message["bindings"]["kafka"]["key"]["description"] == f"data.{model.key_field}"
        channel = doc["channels"][f"{model.source}Events"]
        assert channel["address"] == topics.events(model.source)
        assert f"{model.event_type}.v{model.version}" in channel["messages"]
        operation = doc["operations"][f"publish{model.source.capitalize()}Events"]
        assert operation["action"] == "send"
        assert model.source in operation["summary"]
    for ref in _refs(doc):
        target = doc
        for part in ref.removeprefix("#/").split("/"):
            target = target[part]  # every $ref resolves inside the document
