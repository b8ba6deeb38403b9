"""Segments (per member CRUD) and batch segment configs (admin)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Engine, Select, delete, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from bss.db import INT32_MAX, bounded_int, fmt_ts, now_s, run_sql, write_tx
from bss.errors import BssError, Invalid, NotFound
from bss.formats.config import WEBHOOK_FIELDS, BatchSegmentConfig, ConfigError, load_config
from bss.ingest.registry import SegmentRegistry
from bss.segments.models import batch_segment_configs, segment_id_counter, segments
from bss.store import MembershipStore, regions, seqs

MAX_CODE_LENGTH = 50
MAX_TAXONOMY_NODE_LENGTH = 100
#: Segments one POST /segment may create at once (all or nothing).
MAX_SEGMENTS_PER_REQUEST = 1000


def segment_out(row: Any, member_count: int | None = None) -> dict[str, Any]:
    return {
        "id": row["id"],
        "code": row["code"],
        "short_name": row["short_name"],
        "description": row["description"],
        "member_id": row["member_id"],
        "state": row["state"],
        "expire_minutes": row["expire_minutes"],
        "taxonomy_id": row["taxonomy_id"],
        "taxonomy_node": row["taxonomy_node"],
        "member_count": member_count,
        "created_on": fmt_ts(row["created_on"]),
        "last_modified": fmt_ts(row["last_modified"]),
    }


def _query(
    *, member_id: int | None, segment_id: int | None, code: str | None, search: str | None
) -> Select[Any]:
    q = select(segments)
    if member_id is not None:
        q = q.where(segments.c.member_id == member_id)
    if segment_id is not None:
        q = q.where(segments.c.id == segment_id)
    if code is not None:
        q = q.where(segments.c.code_key == code.lower())
    if search:
        like = f"%{search.lower()}%"
        q = q.where(
            or_(
                segments.c.code_key.like(like),
                func.lower(segments.c.short_name).like(like),
                func.lower(segments.c.description).like(like),
            )
        )
    return q


def list_segments(
    db: Engine,
    *,
    member_id: int | None = None,
    segment_id: int | None = None,
    code: str | None = None,
    search: str | None = None,
    start: int = 0,
    limit: int = 100,
) -> tuple[int, list[Any]]:
    q = _query(member_id=member_id, segment_id=segment_id, code=code, search=search)
    with db.connect() as conn:
        total = conn.execute(select(func.count()).select_from(q.subquery())).scalar_one()
        rows = list(conn.execute(q.order_by(segments.c.id).offset(start).limit(limit)).mappings())
    return total, rows


def get_segment_row(db: Engine, segment_id: int) -> Any:
    with db.connect() as conn:
        row = conn.execute(select(segments).where(segments.c.id == segment_id)).mappings().first()
    if row is None:
        raise NotFound(f"segment {segment_id} not found")
    return row


def _values(data: dict[str, Any], *, partial: bool) -> dict[str, Any]:
    values: dict[str, Any] = {}
    if "code" in data or not partial:
        code = data.get("code")
        if code is not None:
            code = str(code).strip()
            if not code:
                code = None
            elif len(code) > MAX_CODE_LENGTH:
                raise Invalid(f"code may have at most {MAX_CODE_LENGTH} characters")
        values["code"] = code
        values["code_key"] = code.lower() if code else None
    for name in ("short_name", "description"):
        if name in data or not partial:
            values[name] = None if data.get(name) is None else str(data[name])
    if "state" in data or not partial:
        state = str(data.get("state") or "active").lower()
        if state not in ("active", "inactive"):
            raise Invalid("state must be active or inactive")
        values["state"] = state
    if "expire_minutes" in data or not partial:
        em = data.get("expire_minutes")
        if em is not None:
            em = bounded_int(em, "expire_minutes", minimum=0)
        values["expire_minutes"] = em
    if "taxonomy_id" in data or not partial:
        tax = data.get("taxonomy_id")
        values["taxonomy_id"] = None if tax is None else bounded_int(tax, "taxonomy_id", minimum=1)
    if "taxonomy_node" in data or not partial:
        node = data.get("taxonomy_node")
        if node is not None:
            node = str(node).strip() or None
            if node is not None and len(node) > MAX_TAXONOMY_NODE_LENGTH:
                raise Invalid(
                    f"taxonomy_node may have at most {MAX_TAXONOMY_NODE_LENGTH} characters"
                )
        values["taxonomy_node"] = node
    return values


def create_segment(db: Engine, member_id: int, data: dict[str, Any]) -> Any:
    """One segment; `data["id"]` (optional) keeps an id the member already uses elsewhere."""
    return create_segments(db, member_id, [data], label=None)[0]


def create_segments(
    db: Engine, member_id: int, items: list[Any], *, label: str | None = "segments"
) -> list[Any]:
    """Create up to MAX_SEGMENTS_PER_REQUEST segments in one transaction: all or none.
    Errors name the item (`segments[3]: ...`) unless `label` is None (a single segment)."""
    if not 1 <= len(items) <= MAX_SEGMENTS_PER_REQUEST:
        raise Invalid(f"segments must hold 1 to {MAX_SEGMENTS_PER_REQUEST} segment objects")
    now = now_s()
    rows: list[dict[str, Any]] = []
    for index, item in enumerate(items):
        where = "" if label is None else f"{label}[{index}]: "
        if not isinstance(item, dict):
            raise Invalid(f"{where}expected a segment object")
        try:
            values = _values(item, partial=False)
            if item.get("id") is not None:
                values["id"] = bounded_int(item["id"], "id", minimum=1, maximum=INT32_MAX)
        except BssError as exc:
            raise Invalid(where + exc.error) from exc
        rows.append({**values, "member_id": member_id, "created_on": now, "last_modified": now})
    _refuse_repeats(rows, label)
    explicit = [r["id"] for r in rows if "id" in r]
    code_keys = [r["code_key"] for r in rows if r["code_key"]]
    try:
        with write_tx(db) as conn:
            if explicit:
                taken = conn.execute(
                    select(segments.c.id).where(segments.c.id.in_(explicit)).limit(1)
                ).scalar()
                if taken is not None:
                    # Ids are global: say it is taken, never by which member.
                    raise Invalid(f"segment id {taken} is already taken; choose another id")
            if code_keys:
                clash = conn.execute(
                    select(segments.c.code).where(
                        segments.c.member_id == member_id, segments.c.code_key.in_(code_keys)
                    )
                ).scalar()
                if clash is not None:
                    raise Invalid(f"code {clash!r} already exists for member {member_id}")
            automatic = iter(_reserve_ids(conn, explicit, len(rows) - len(explicit)))
            for row in rows:
                if "id" not in row:
                    row["id"] = next(automatic)
            conn.execute(insert(segments), rows)
    except IntegrityError as exc:  # a concurrent request took an id or code in between
        raise Invalid(
            "a segment id or code of this request was just taken; nothing was created"
        ) from exc
    by_id = segments_by_ids(db, [r["id"] for r in rows])
    return [by_id[r["id"]] for r in rows]


def _refuse_repeats(rows: list[dict[str, Any]], label: str | None) -> None:
    seen_ids: set[int] = set()
    seen_codes: set[str] = set()
    for index, row in enumerate(rows):
        if row.get("id") in seen_ids:
            raise Invalid(f"{label}[{index}]: id {row['id']} appears twice in this request")
        if row["code_key"] in seen_codes:
            raise Invalid(f"{label}[{index}]: code {row['code']!r} appears twice in this request")
        if "id" in row:
            seen_ids.add(row["id"])
        if row["code_key"]:
            seen_codes.add(row["code_key"])


def _reserve_ids(conn: Any, explicit: list[int], count: int) -> list[int]:
    """`count` automatic ids above every id ever given out or taken explicitly (the counter row
    is locked on PostgreSQL; SQLite writers are serialised by write_tx)."""
    last = conn.execute(
        select(segment_id_counter.c.last_id).where(segment_id_counter.c.id == 1).with_for_update()
    ).scalar()
    if last is None:  # first use (or a database from before the counter): start above the rest
        last = conn.execute(select(func.max(segments.c.id))).scalar() or 0
        conn.execute(insert(segment_id_counter).values(id=1, last_id=last))
    high = max([last, *explicit])
    if high + count > INT32_MAX:
        raise Invalid(f"no automatic segment id is left below {INT32_MAX}; give explicit ids")
    conn.execute(
        update(segment_id_counter).where(segment_id_counter.c.id == 1).values(last_id=high + count)
    )
    return list(range(high + 1, high + count + 1))


def update_segment(db: Engine, segment_id: int, data: dict[str, Any]) -> Any:
    values = _values(data, partial=True)
    values["last_modified"] = now_s()
    try:
        with write_tx(db) as conn:
            n = conn.execute(
                update(segments).where(segments.c.id == segment_id).values(**values)
            ).rowcount
    except IntegrityError as exc:
        raise Invalid(f"code {values.get('code')!r} already exists for this member") from exc
    if n == 0:
        raise NotFound(f"segment {segment_id} not found")
    return get_segment_row(db, segment_id)


def delete_segment(
    db: Engine, segment_id: int, store: MembershipStore, other_regions: Sequence[str] = ()
) -> None:
    """Delete the segment and its memberships: the store hides every entry written before a
    seq reserved now, so a segment given the same id later starts empty. Store regions other
    than `store`'s are owed the same deletion (caught up by bss.jobs.regions)."""
    seq = seqs.reserve(db, 1)
    with write_tx(db) as conn:
        if conn.execute(delete(segments).where(segments.c.id == segment_id)).rowcount == 0:
            raise NotFound(f"segment {segment_id} not found")
        regions.record_segment_deletion(conn, segment_id, seq, other_regions)
    store.delete_segment(segment_id, seq)


def registry_for(
    db: Engine, member_ids: frozenset[int] | set[int] | None = None
) -> SegmentRegistry:
    """The segments the engine validates against (all of them, or those of some owners)."""
    q = select(
        segments.c.id,
        segments.c.code,
        segments.c.member_id,
        segments.c.state,
        segments.c.expire_minutes,
    )
    if member_ids is not None:
        q = q.where(segments.c.member_id.in_(sorted(member_ids)))
    with db.connect() as conn:
        rows = [dict(r) for r in conn.execute(q).mappings()]
    return SegmentRegistry.from_records(rows)


def segments_by_ids(db: Engine, ids: list[int]) -> dict[int, Any]:
    if not ids:
        return {}
    # Every lookup (GET /user-segments) names its segments: on the driver directly (run_sql).
    marks = ", ".join(f":id{i}" for i in range(len(ids)))
    rows = run_sql(
        db,
        f"SELECT * FROM segments WHERE id IN ({marks})",
        {f"id{i}": int(segment_id) for i, segment_id in enumerate(ids)},
    )
    return {r["id"]: r for r in rows}


# --- batch segment config --------------------------------------------------------------------


def config_out(cfg: BatchSegmentConfig, member_id: int, row: Any | None) -> dict[str, Any]:
    out = cfg.model_dump(mode="json", exclude={"webhook_secret"})  # write-only
    out["segment_fields"] = cfg.segment_fields_text()
    out["member_id"] = member_id
    out["id"] = row["id"] if row is not None else None
    out["created_on"] = fmt_ts(row["created_on"]) if row is not None else None
    out["last_modified"] = fmt_ts(row["last_modified"]) if row is not None else None
    return out


def get_config_row(db: Engine, member_id: int) -> Any | None:
    with db.connect() as conn:
        return (
            conn.execute(
                select(batch_segment_configs).where(batch_segment_configs.c.member_id == member_id)
            )
            .mappings()
            .first()
        )


def get_config(db: Engine, member_id: int) -> BatchSegmentConfig:
    """The member's config; a member without one gets the documented defaults."""
    row = get_config_row(db, member_id)
    if row is None:
        return BatchSegmentConfig(member_id=member_id)
    return BatchSegmentConfig.model_validate(json.loads(row["config_json"]))


def put_config(db: Engine, member_id: int, data: Any, *, merge: bool) -> dict[str, Any]:
    """Validate and store. `merge` (PUT) applies the given fields over the current config."""
    if isinstance(data, dict) and "batch_segment_upload_config" in data:
        data = data["batch_segment_upload_config"]
    if isinstance(data, list) and len(data) == 1:
        data = data[0]
    if not isinstance(data, dict):
        raise Invalid("expected a batch_segment_upload_config object")
    row = get_config_row(db, member_id)
    stored = json.loads(row["config_json"]) if row is not None else {}
    if merge:  # a PUT changes the fields it names and keeps the others the member set
        base = stored
        if "uses_external_uids" in data:
            base.pop("use_external_uids", None)
    else:  # a POST replaces the config, except the webhook it does not name
        base = {f: stored[f] for f in WEBHOOK_FIELDS if f in stored and f not in data}
    merged = {**base, **data, "member_id": member_id}
    for bookkeeping in ("id", "created_on", "last_modified"):
        merged.pop(bookkeeping, None)
    try:
        cfg = load_config(merged)
    except ConfigError as exc:
        raise Invalid(str(exc)) from exc
    text = json.dumps(cfg.member_settings())
    now = now_s()
    with write_tx(db) as conn:
        exists = conn.execute(
            select(batch_segment_configs.c.id).where(batch_segment_configs.c.member_id == member_id)
        ).first()
        if exists:
            conn.execute(
                update(batch_segment_configs)
                .where(batch_segment_configs.c.member_id == member_id)
                .values(config_json=text, last_modified=now)
            )
        else:
            conn.execute(
                insert(batch_segment_configs).values(
                    member_id=member_id, config_json=text, created_on=now, last_modified=now
                )
            )
    return config_out(cfg, member_id, get_config_row(db, member_id))


def delete_config(db: Engine, member_id: int) -> None:
    """Drop the member's config: it gets the documented defaults again."""
    with write_tx(db) as conn:
        deleted = conn.execute(
            delete(batch_segment_configs).where(batch_segment_configs.c.member_id == member_id)
        ).rowcount
    if deleted == 0:
        raise NotFound(f"member {member_id} has no config of its own (it uses the defaults)")
