"""Is a new event schema a compatible change of the released one?

Topics keep every event forever and projections are rebuilt by replay, so new code must
still read every event ever published under a version, and consumers still on the old
code must still read what the new code publishes. Within one version, therefore, only
additive changes are allowed: a new optional property, a new enum value, a looser limit.
Anything else is a breaking change and needs a new event version. (Strictly, a new enum
value can surprise an old consumer too; the contract accepts that, and consumers treat an
unknown value of an enum they switch on as "other".)

    check_compatible(old_schema, new_schema) -> ["data.reason: enum values removed: 'lost'"]

    uv run python -m turnout_events.compat                   # against libs/events/schemas/
    uv run python -m turnout_events.compat --git-ref origin/main

The comparison understands the JSON Schema that pydantic emits (local `$ref`s, `anyOf`
for optional values, `allOf` wrappers); it is conservative where it cannot decide, e.g.
any change of a `pattern` counts as breaking.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

Schema = dict[str, Any]

_UPPER_BOUNDS = ("maximum", "exclusiveMaximum", "maxLength", "maxItems", "maxProperties")
_LOWER_BOUNDS = ("minimum", "exclusiveMinimum", "minLength", "minItems", "minProperties")
_EXACT = ("pattern", "format", "multipleOf", "contentEncoding", "contentMediaType")
_MISSING = object()
_MAX_DEPTH = 32


def check_compatible(old_schema: Schema, new_schema: Schema) -> list[str]:
    """The breaking changes from `old_schema` to `new_schema`; empty when compatible."""
    return _Comparison(old_schema, new_schema).run()


class _Comparison:
    def __init__(self, old_root: Schema, new_root: Schema) -> None:
        self.old_root, self.new_root = old_root, new_root

    def run(self) -> list[str]:
        return self.compare(self.old_root, self.new_root, "")

    # -- resolving ---------------------------------------------------------------------
    def _resolve(self, node: Any, root: Schema) -> Schema:
        if node is True or node is None:
            return {}
        if node is False:
            return {"not": {}}
        seen_refs = 0
        while "$ref" in node:
            ref = node["$ref"]
            if not ref.startswith("#"):
                raise ValueError(f"only local $refs are supported, got {ref!r}")
            target: Any = root
            for part in filter(None, ref[1:].split("/")):
                target = target[part.replace("~1", "/").replace("~0", "~")]
            siblings = {k: v for k, v in node.items() if k != "$ref"}
            node = {**target, **siblings}
            seen_refs += 1
            if seen_refs > 50:
                raise ValueError(f"$ref cycle at {ref}")
        if "allOf" in node:
            merged = {k: v for k, v in node.items() if k != "allOf"}
            for part in node["allOf"]:
                merged = {**self._resolve(part, root), **merged}
            node = merged
        return node

    def _alternatives(self, node: Any, root: Schema) -> list[Schema]:
        node = self._resolve(node, root)
        branches = node.get("anyOf") or node.get("oneOf")
        if not branches:
            return [node]
        shared = {k: v for k, v in node.items() if k not in ("anyOf", "oneOf")}
        out: list[Schema] = []
        for branch in branches:
            out.extend({**shared, **alt} for alt in self._alternatives(branch, root))
        return out

    # -- comparing ---------------------------------------------------------------------
    def compare(self, old: Any, new: Any, path: str) -> list[str]:
        old_alts = self._alternatives(old, self.old_root)
        new_alts = self._alternatives(new, self.new_root)
        old_types = set().union(*(_types(a) for a in old_alts))
        new_types = set().union(*(_types(a) for a in new_alts))
        where = path or "(root)"
        if old_types != new_types and "any" not in new_types:
            return [f"{where}: type changed from {_fmt_types(old_types)} "
                    f"to {_fmt_types(new_types)}"]
        if path.count(".") + path.count("[") > _MAX_DEPTH:
            return []  # a recursive schema: its shape has been compared on the way down
        problems: list[str] = []
        for t in sorted(old_types & new_types - {"null"}):
            olds = [a for a in old_alts if t in _types(a)]
            news = [a for a in new_alts if t in _types(a)]
            for o in olds:
                # A union of several object shapes: the old shape must still fit one of them.
                attempts = [self._compare_one(o, n, path) for n in news]
                problems.extend(sorted(attempts, key=len)[0])
        return problems

    def _compare_one(self, old: Schema, new: Schema, path: str) -> list[str]:
        where = path or "(root)"
        problems: list[str] = []
        if old.get("const", _MISSING) != new.get("const", _MISSING) and "const" in new:
            was = f"{old['const']!r}" if "const" in old else "any value"
            problems.append(f"{where}: const changed from {was} to {new['const']!r}")
        if "enum" in new:
            if "enum" not in old and "const" not in old:
                problems.append(f"{where}: newly restricted to the values {new['enum']!r}")
            elif "const" in old and old["const"] not in new["enum"]:
                problems.append(f"{where}: value {old['const']!r} no longer allowed")
            elif "enum" in old:
                removed = [v for v in old["enum"] if v not in new["enum"]]
                if removed:
                    problems.append(f"{where}: enum values removed: "
                                    f"{', '.join(repr(v) for v in removed)}")
        for name in _UPPER_BOUNDS:
            if name in new and (name not in old or new[name] < old[name]):
                problems.append(f"{where}: {name} narrowed from {old.get(name, 'none')} "
                                f"to {new[name]}")
        for name in _LOWER_BOUNDS:
            if name in new and (name not in old or new[name] > old[name]):
                problems.append(f"{where}: {name} narrowed from {old.get(name, 'none')} "
                                f"to {new[name]}")
        for name in _EXACT:
            if name in new and new[name] != old.get(name):
                was = repr(old[name]) if name in old else "none"
                problems.append(f"{where}: {name} changed from {was} to {new[name]!r}")
        if new.get("uniqueItems") and not old.get("uniqueItems"):
            problems.append(f"{where}: items newly required to be unique")
        problems.extend(self._compare_object(old, new, path))
        problems.extend(self._compare_array(old, new, path))
        return problems

    def _compare_object(self, old: Schema, new: Schema, path: str) -> list[str]:
        problems = []
        old_props, new_props = old.get("properties", {}), new.get("properties", {})
        old_req, new_req = set(old.get("required", ())), set(new.get("required", ()))
        prefix = f"{path}." if path else ""
        for name in old_props:
            if name not in new_props:
                problems.append(f"{prefix}{name}: property removed")
        for name in sorted(new_req - old_req):
            what = "became required" if name in old_props else "new required property"
            problems.append(f"{prefix}{name}: {what}")
        # Old consumers count on a required property being there, as on any property.
        for name in sorted(old_req - new_req):
            if name in new_props:
                problems.append(f"{prefix}{name}: no longer required")
        for name, old_prop in old_props.items():
            if name in new_props:
                problems.extend(self.compare(old_prop, new_props[name], f"{prefix}{name}"))
        old_extra = old.get("additionalProperties", True)
        new_extra = new.get("additionalProperties", True)
        if new_extra is False and old_extra is not False:
            problems.append(f"{path or '(root)'}: additional properties newly forbidden")
        elif isinstance(old_extra, dict) or isinstance(new_extra, dict):
            problems.extend(self.compare(old_extra, new_extra, f"{prefix}*"))
        return problems

    def _compare_array(self, old: Schema, new: Schema, path: str) -> list[str]:
        problems = []
        if "items" in old or "items" in new:
            problems.extend(self.compare(old.get("items", {}), new.get("items", {}), f"{path}[]"))
        old_prefix, new_prefix = old.get("prefixItems", []), new.get("prefixItems", [])
        for i, old_item in enumerate(old_prefix):
            new_item = new_prefix[i] if i < len(new_prefix) else new.get("items", {})
            problems.extend(self.compare(old_item, new_item, f"{path}[{i}]"))
        return problems


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    return {float: "number", str: "string", list: "array", dict: "object"}[type(value)]


def _types(node: Schema) -> set[str]:
    if "type" in node:
        t = node["type"]
        return {t} if isinstance(t, str) else set(t)
    if "const" in node:
        return {_json_type(node["const"])}
    if "enum" in node:
        return {_json_type(v) for v in node["enum"]}
    if "properties" in node:
        return {"object"}
    if "items" in node or "prefixItems" in node:
        return {"array"}
    if node.get("not") == {}:
        return set()
    return {"any"}


def _fmt_types(types: set[str]) -> str:
    return "|".join(sorted(types)) or "nothing"


# -- the command -------------------------------------------------------------------------
def _released_from_git(root: Path, ref: str) -> dict[str, Schema]:
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(root), *args], check=True,
                              capture_output=True, text=True).stdout

    prefix = git("rev-parse", "--show-prefix").strip()
    names = git("ls-tree", "--name-only", ref, f"{prefix}schemas/").split()
    return {Path(n).name: json.loads(git("show", f"{ref}:{n}"))
            for n in names if n.endswith(".json")}


def compare_with_released(released: dict[str, Schema]) -> tuple[list[str], list[str]]:
    """(breaking changes, events not released yet) of the code against `released`, a
    mapping of schema file name to schema."""
    from .registry import all_events
    from .schemas import event_schema, schema_file_name

    current = {schema_file_name(m.event_type, m.version): event_schema(m) for m in all_events()}
    breaks: list[str] = []
    for name, old in sorted(released.items()):
        event = name.removesuffix(".json")
        if name not in current:
            breaks.append(f"{event}: released, but the code no longer has this event version")
            continue
        breaks.extend(f"{event}: {p}" for p in check_compatible(old, current[name]))
    unreleased = sorted(n.removesuffix(".json") for n in current if n not in released)
    return breaks, unreleased


def main(argv: list[str] | None = None) -> int:
    from .schemas import PACKAGE_ROOT, committed_schemas, display_path

    parser = argparse.ArgumentParser(
        prog="python -m turnout_events.compat",
        description="Check every current event schema against the released ones.")
    parser.add_argument("--root", type=Path, default=PACKAGE_ROOT,
                        help="the libs/events directory (default: this package's)")
    parser.add_argument("--git-ref", help="take the released schemas from this git ref "
                        "(e.g. origin/main) instead of the working tree")
    args = parser.parse_args(argv)
    if args.git_ref:
        released, where = _released_from_git(args.root, args.git_ref), args.git_ref
    else:
        released, where = committed_schemas(args.root), display_path(args.root / "schemas")
    breaks, unreleased = compare_with_released(released)
    if unreleased:
        print(f"not released yet (no schema in {where}): {', '.join(unreleased)}")
    if breaks:
        print(f"{len(breaks)} breaking change(s) against {where}:", file=sys.stderr)
        print("\n".join(f"  {b}" for b in breaks), file=sys.stderr)
        print("a breaking change needs a new event version, published alongside the old one",
              file=sys.stderr)
        return 1
    print(f"{len(released)} released event schema(s) in {where}: all compatible")
    return 0


if __name__ == "__main__":
    sys.exit(main())
