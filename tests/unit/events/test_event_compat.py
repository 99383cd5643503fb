"""The compatibility check flags every kind of breaking change and lets additive ones
through; and the code as it stands is compatible with the released schemas."""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from turnout_events import compat, schemas
from turnout_events.ballots import BallotOpened, Voted
from turnout_events.compat import check_compatible
from turnout_events.contacts import MemberRegistered

pytestmark = pytest.mark.unit


def _changed(model, change: Callable[[dict], object]) -> list[str]:
    old = schemas.event_schema(model)
    new = copy.deepcopy(old)
    change(new)
    return check_compatible(old, new)


def _data(schema: dict) -> dict:
    return schema["properties"]["data"]


BREAKING = {
    "property removed": (
        BallotOpened, lambda s: _data(s)["properties"].pop("eligible_count"),
        ["data.eligible_count: property removed"]),
    "nested property removed": (
        BallotOpened, lambda s: s["$defs"]["BallotScope"]["properties"].pop("branch_codes"),
        ["data.scope.branch_codes: property removed"]),
    "optional property now required": (
        Voted, lambda s: _data(s)["required"].append("conversation_id"),
        ["data.conversation_id: became required"]),
    "new required property": (
        Voted, lambda s: (_data(s)["properties"].update(weight={"type": "integer"}),
                          _data(s)["required"].append("weight")),
        ["data.weight: new required property"]),
    "type changed": (
        BallotOpened, lambda s: _data(s)["properties"]["eligible_count"].update(type="string"),
        ["data.eligible_count: type changed from integer to string"]),
    "no longer nullable": (
        BallotOpened, lambda s: _data(s)["properties"].update(
            turnout_threshold={"type": "number", "exclusiveMinimum": 0, "maximum": 1}),
        ["data.turnout_threshold: type changed from null|number to number"]),
    "enum value removed": (
        BallotOpened, lambda s: s["$defs"]["BallotKind"]["enum"].remove("survey"),
        ["data.kind: enum values removed: 'survey'"]),
    "const changed": (
        Voted, lambda s: s["properties"]["version"].update(const=2),
        ["version: const changed from 1 to 2"]),
    "maxLength narrowed": (
        BallotOpened, lambda s: _data(s)["properties"]["ballot_name"].update(maxLength=100),
        ["data.ballot_name: maxLength narrowed from 200 to 100"]),
    "minLength raised": (
        BallotOpened, lambda s: _data(s)["properties"]["ballot_name"].update(minLength=5),
        ["data.ballot_name: minLength narrowed from 1 to 5"]),
    "maximum lowered inside anyOf": (
        BallotOpened, lambda s: _data(s)["properties"]["turnout_threshold"]["anyOf"][0].update(
            maximum=0.9),
        ["data.turnout_threshold: maximum narrowed from 1 to 0.9"]),
    "pattern changed": (
        MemberRegistered, lambda s: s["$defs"]["Placement"]["properties"]["branch_code"].update(
            pattern="^[A-Z0-9]{1,10}$"),
        ["data.placement.branch_code: pattern changed from '^[A-Za-z0-9][A-Za-z0-9_.-]{0,39}$' "
         "to '^[A-Z0-9]{1,10}$'"]),
    "format added": (
        BallotOpened, lambda s: _data(s)["properties"]["ballot_name"].update(format="email"),
        ["data.ballot_name: format changed from none to 'email'"]),
    "list items narrowed": (
        BallotOpened, lambda s: s["$defs"]["BallotScope"]["properties"]["group_codes"].update(
            maxItems=10),
        ["data.scope.group_codes: maxItems narrowed from 1000 to 10"]),
    "required property made optional": (
        BallotOpened, lambda s: _data(s)["required"].remove("eligible_count"),
        ["data.eligible_count: no longer required"]),
    "additional properties forbidden": (
        Voted, lambda s: _data(s).update(additionalProperties=False),
        ["data: additional properties newly forbidden"]),
}


@pytest.mark.parametrize("case", BREAKING, ids=str)
def test_breaking_change_is_flagged(case):
    model, change, expected = BREAKING[case]
    assert _changed(model, change) == expected


ADDITIVE = {
    "new optional property": lambda s: _data(s)["properties"].update(
        recount={"type": "boolean", "default": False}),
    "new enum value": lambda s: s["$defs"]["BallotKind"]["enum"].append("consultation"),
    "looser maxLength": lambda s: _data(s)["properties"]["ballot_name"].update(maxLength=500),
    "description edited": lambda s: _data(s).update(description="Reworded."),
    "pattern dropped": lambda s: s["$defs"]["BallotScope"]["properties"]["group_codes"][
        "items"].pop("pattern"),
}


@pytest.mark.parametrize("case", ADDITIVE, ids=str)
def test_additive_change_is_accepted(case):
    assert _changed(BallotOpened, ADDITIVE[case]) == []


def test_unchanged_schema_is_compatible_with_itself():
    for model in (BallotOpened, Voted, MemberRegistered):
        schema = schemas.event_schema(model)
        assert check_compatible(schema, copy.deepcopy(schema)) == []


def test_refs_and_inline_schemas_compare_by_content():
    old = schemas.event_schema(MemberRegistered)
    new = copy.deepcopy(old)
    new["properties"]["data"]["properties"]["placement"] = new["$defs"].pop("Placement")
    assert check_compatible(old, new) == []


def test_the_code_is_compatible_with_the_released_schemas(capsys):
    breaks, unreleased = compat.compare_with_released(schemas.committed_schemas())
    assert breaks == [] and unreleased == []
    assert compat.main([]) == 0
    assert "all compatible" in capsys.readouterr().out


def test_released_schemas_can_come_from_git(tmp_path: Path, capsys):
    # A git tree (no commit needed) holding the released schemas under <root>/schemas.
    shutil.copytree(schemas.PACKAGE_ROOT / "schemas", tmp_path / "schemas")
    released = tmp_path / "schemas" / "ballots.ballot-opened.v1.json"
    doc = json.loads(released.read_text())
    doc["$defs"]["BallotKind"]["enum"].append("recount")
    released.write_text(json.dumps(doc))

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(tmp_path), *args], check=True,
                              capture_output=True, text=True).stdout.strip()

    git("init", "-q")
    git("add", "schemas")
    tree = git("write-tree")
    released.unlink()  # the working tree no longer matters
    assert compat.main(["--root", str(tmp_path), "--git-ref", tree]) == 1
    assert "data.kind: enum values removed: 'recount'" in capsys.readouterr().err


def test_command_lists_breaks_and_fails(tmp_path: Path, capsys):
    shutil.copytree(schemas.PACKAGE_ROOT / "schemas", tmp_path / "schemas")
    released = tmp_path / "schemas" / "ballots.vote-retracted.v1.json"
    doc = json.loads(released.read_text())
    doc["$defs"]["RetractionReason"]["enum"].append("recount")  # the code has no 'recount'
    released.write_text(json.dumps(doc))
    (tmp_path / "schemas" / "ballots.voted.v0.json").write_text(json.dumps(doc))
    assert compat.main(["--root", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "2 breaking change(s)" in err
    assert "ballots.vote-retracted.v1: data.reason_code: enum values removed: 'recount'" in err
    assert "ballots.voted.v0: released, but the code no longer has this event version" in err
