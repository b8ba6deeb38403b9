"""The writer schema of an Avro file: checked, and turned into a plan for reading its records.

Members may register their own schema, so the writer schema in the file header is what we
read with; it must have a `uid` field and a `segments` array of records, and the `uid`
branches are recognised by their record NAME (`ifa`, `xfa`, `external_id`, `device_id`,
`eid`) or, for `anid`, by being a long (the published schema writes anid as a plain long).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from typing import Any

import fastavro

from bss.formats.avro_container import CORRUPT
from bss.formats.detect import InputError

#: Name of the published schema file, shipped in the `bss.formats.schema` package data.
PUBLISHED_SCHEMA_FILE = "xandr_user.avsc"
#: The `uid` branches we recognise, by (short) name.
UID_BRANCHES = ("anid", "ifa", "xfa", "external_id", "device_id", "eid")

SCHEMA_INVALID = "avro_schema_invalid"


@lru_cache(maxsize=1)
def _published_schema_text() -> str:
    return (resources.files("bss.formats.schema") / PUBLISHED_SCHEMA_FILE).read_text("utf-8")


def published_schema() -> dict[str, Any]:
    """The published BSS Avro schema (namespace xandr.avro, record user), as a fresh dict."""
    return json.loads(_published_schema_text())


@dataclass(slots=True)
class ReadPlan:
    """How to interpret records of one writer schema."""

    uid_is_union: bool
    #: Avro type name of the integer branch ("long" or "int"), if the uid has one.
    int_branch: str | None = None
    #: Full record name -> branch short name, for the recognised record branches.
    record_branches: dict[str, str] = field(default_factory=dict)
    #: When the uid is not a union: its branch short name (None if unrecognised).
    single_branch: str | None = None
    #: Segment fields have the plain types polars can take as they are (vectorized rules).
    fast_segments: bool = False
    #: The uid's branch schemas in writer order (resolved), or [the uid schema] if no union.
    uid_branches: list[Any] = field(default_factory=list)
    #: The top-level field names in writer order (every one of them makes up a record).
    top_fields: list[str] = field(default_factory=list)
    #: The segment record's field names.
    segment_fields: list[str] = field(default_factory=list)
    #: Why the native reader cannot take this schema; None when it can.
    not_native: str | None = None
    #: The writer's record schema (parsed by fastavro) and its named types.
    record_schema: dict[str, Any] = field(default_factory=dict)
    named: dict[str, Any] = field(default_factory=dict)


def short_name(name: str) -> str:
    return name.rsplit(".", 1)[-1]


def _resolve(schema: Any, named: dict[str, Any]) -> Any:
    """Follow named-type references and {"type": <nested type>} wrappers."""
    for _ in range(100):
        if isinstance(schema, str) and schema in named:
            schema = named[schema]
            continue
        if isinstance(schema, dict):
            inner = schema.get("type")
            if isinstance(inner, (dict, list)) or (isinstance(inner, str) and inner in named):
                schema = inner
                continue
        break
    return schema


def _type_name(schema: Any) -> str | None:
    if isinstance(schema, str):
        return schema
    if isinstance(schema, dict):
        kind = schema.get("type")
        return kind if isinstance(kind, str) else None
    return None


def branch_of(schema: Any) -> tuple[str | None, str | None]:
    """(branch short name, full record name) for one uid branch schema."""
    kind = _type_name(schema)
    if kind in ("long", "int") and not (isinstance(schema, dict) and "logicalType" in schema):
        return "anid", None
    if kind == "record" and isinstance(schema, dict):
        full = str(schema.get("name", ""))
        short = short_name(full)
        if short in UID_BRANCHES and short != "anid":
            return short, full
    return None, None


def plan_reading(schema_json: bytes) -> ReadPlan:
    """Check the writer schema and work out how to read its records."""
    try:
        return _plan_schema(schema_json)
    except InputError:
        raise
    except Exception as exc:  # a schema shape fastavro accepts but nobody expects
        raise InputError(SCHEMA_INVALID, f"writer schema cannot be used: {exc!r}") from exc


def _plan_schema(schema_json: bytes) -> ReadPlan:
    try:
        schema = json.loads(schema_json)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(
            CORRUPT, f"Avro file header is corrupt: schema is not JSON ({exc})"
        ) from exc
    named: dict[str, Any] = {}
    try:
        parsed = fastavro.parse_schema(schema, named, _write_hint=False, _force=True)
    except Exception as exc:  # fastavro raises several types for a bad schema
        raise InputError(
            SCHEMA_INVALID, f"writer schema is not a valid Avro schema: {exc}"
        ) from exc
    top = _resolve(parsed, named)
    if _type_name(top) != "record" or not isinstance(top, dict):
        raise InputError(SCHEMA_INVALID, "writer schema must be a record with uid and segments")
    fields = {f.get("name"): f.get("type") for f in top.get("fields", []) if isinstance(f, dict)}
    missing = [name for name in ("uid", "segments") if name not in fields]
    if missing:
        raise InputError(
            SCHEMA_INVALID,
            "writer schema has no "
            + " and no ".join(f"`{m}` field" for m in missing)
            + f" (its fields: {', '.join(str(f) for f in fields) or 'none'})",
        )

    uid = _resolve(fields["uid"], named)
    if isinstance(uid, list):
        plan = ReadPlan(uid_is_union=True, uid_branches=[_resolve(b, named) for b in uid])
        for branch in uid:
            branch = _resolve(branch, named)
            short, full = branch_of(branch)
            if short == "anid":
                name = _type_name(branch)
                if plan.int_branch is None or name == "long":
                    plan.int_branch = name
            elif short is not None and full is not None:
                plan.record_branches[full] = short
        recognised = plan.int_branch is not None or bool(plan.record_branches)
    else:
        short, _full = branch_of(uid)
        plan = ReadPlan(uid_is_union=False, single_branch=short, uid_branches=[uid])
        recognised = short is not None
    if not recognised:
        raise InputError(
            SCHEMA_INVALID,
            "writer schema's `uid` has no recognised ID type: it must be a long (anid) or a "
            "union including anid (long) or records named " + ", ".join(UID_BRANCHES[1:]),
        )

    segments = _resolve(fields["segments"], named)
    items = _resolve(segments.get("items"), named) if _type_name(segments) == "array" else None
    items_union = isinstance(items, list)
    if isinstance(items, list):  # a union of item types: it must hold the segment record
        records = [_resolve(b, named) for b in items]
        items = next((b for b in records if _type_name(b) == "record"), None)
    if _type_name(items) != "record" or not isinstance(items, dict):
        raise InputError(SCHEMA_INVALID, "writer schema's `segments` must be an array of records")
    seg_fields: dict[str, Any] = {
        str(f.get("name")): f.get("type") for f in items.get("fields", []) if isinstance(f, dict)
    }
    if not seg_fields.keys() & {"id", "code"}:
        raise InputError(
            SCHEMA_INVALID, "writer schema's segment record has neither an `id` nor a `code` field"
        )
    # Union items come as (name, record) tuples: those take the per-segment path.
    plan.fast_segments = not items_union and fast_segments_ok(seg_fields, named)
    plan.top_fields = [str(name) for name in fields]
    plan.segment_fields = list(seg_fields)
    plan.not_native = _why_not_native(plan, top, named)
    plan.record_schema, plan.named = top, named
    return plan


_INTEGER_TYPES = frozenset({"int", "long"})


def _plain_type(schema: Any, named: dict[str, Any], allowed: frozenset[str]) -> bool:
    """An allowed primitive (no logical type), or a union of it with null."""
    schema = _resolve(schema, named)
    if isinstance(schema, list):
        kinds = [_resolve(b, named) for b in schema]
        return all(k == "null" or _plain_type(k, named, allowed) for k in kinds)
    if isinstance(schema, dict):
        return "logicalType" not in schema and schema.get("type") in allowed
    return schema in allowed


def fast_segments_ok(fields: dict[str, Any], named: dict[str, Any]) -> bool:
    """Whether the segment fields we read all decode to int / str / None."""
    for name in ("id", "member_id", "expiration", "timestamp", "value"):
        if name in fields and not _plain_type(fields[name], named, _INTEGER_TYPES):
            return False
    return "code" not in fields or _plain_type(fields["code"], named, frozenset({"string"}))


# The fields of each uid branch the rules read, and the kind of value each must be for the
# native reader: "text" (string or enum) or "int" (int or long), either of them nullable.
NATIVE_BRANCH_FIELDS: dict[str, dict[str, str]] = {
    "ifa": {"id": "text", "type": "text"},
    "xfa": {"device_make_id": "int", "device_model_id": "int", "ip": "text"},
    "external_id": {"id": "text", "member_id": "int"},
    "device_id": {"id": "text", "domain": "text"},
    "eid": {"source": "text", "id": "text"},
}
_NATIVE_PRIMITIVES = frozenset({"null", "boolean", "int", "long", "string", "bytes"})
_NATIVE_NAMED = frozenset({"enum", "fixed"})


def _native_value_ok(schema: Any, named: dict[str, Any], seen: set[str]) -> str | None:
    """Why a value of this type cannot be read natively (None when it can).

    The native reader's records are compared for duplicates by DuckDB's hash of the decoded
    values, so every type must decode to values that are equal exactly when their JSON
    text is: no floats (-0.0, NaN), maps, logical types, or unions of several non-null
    types (an int 5 and a long 5 are the same JSON).
    """
    if isinstance(schema, str):
        if schema in named:
            if schema in seen:
                return f"recursive type {schema}"
            return _native_value_ok(named[schema], named, seen | {schema})
        return None if schema in _NATIVE_PRIMITIVES else f"type {schema}"
    if isinstance(schema, list):
        non_null = [b for b in schema if b != "null"]
        if len(non_null) > 1:
            return "a union of several non-null types"
        return next((why for b in non_null if (why := _native_value_ok(b, named, seen))), None)
    if not isinstance(schema, dict):
        return "an unknown type"
    if "logicalType" in schema:
        return f"logical type {schema['logicalType']}"
    kind = schema.get("type")
    if kind in _NATIVE_PRIMITIVES or kind in _NATIVE_NAMED:
        return None
    if kind == "array":
        return _native_value_ok(schema.get("items"), named, seen)
    if kind == "record":
        inner = seen | {str(schema.get("name"))}
        for f in schema.get("fields", []):
            if why := _native_value_ok(f.get("type"), named, inner):
                return why
        return None
    if isinstance(kind, (dict, list)):
        return _native_value_ok(kind, named, seen)
    return f"type {kind}"


def _field_kind(schema: Any, named: dict[str, Any]) -> str | None:
    """ "text", "int" or None, for a branch field the rules read (nullable allowed)."""
    schema = _resolve(schema, named)
    if isinstance(schema, list):
        kinds = {_field_kind(b, named) for b in schema if _resolve(b, named) != "null"}
        return kinds.pop() if len(kinds) == 1 else None
    name = _type_name(schema)
    if isinstance(schema, dict) and "logicalType" in schema:
        return None
    if name in ("string", "enum"):
        return "text"
    if name in ("int", "long"):
        return "int"
    return None


def _why_not_native(plan: ReadPlan, top: dict[str, Any], named: dict[str, Any]) -> str | None:
    if not plan.fast_segments:
        return "segment fields of other types than int, long and string"
    uid_field = next(f for f in top["fields"] if f.get("name") == "uid")
    for f in top["fields"]:
        if f is not uid_field and (why := _native_value_ok(f.get("type"), named, set())):
            return f"field {f.get('name')}: {why}"
    keys: list[str] = []
    for branch in plan.uid_branches:
        if branch == "null":
            continue
        short, _full = branch_of(branch)
        if short is None:
            if why := _native_value_ok(branch, named, set()):
                return f"uid branch: {why}"
            continue
        keys.append("anid" if short == "anid" else short)
        if short == "anid":
            continue
        if why := _native_value_ok(branch, named, set()):
            return f"uid branch {short}: {why}"
        types = {f.get("name"): f.get("type") for f in branch.get("fields", [])}
        for name, kind in NATIVE_BRANCH_FIELDS[short].items():
            if name in types and _field_kind(types[name], named) != kind:
                return f"uid branch {short} field {name} is not of type {kind}"
    if len(keys) != len(set(keys)):
        return "two uid branches of the same kind"
    return None
