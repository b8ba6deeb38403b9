"""`bss segment ...` (including `import`) and `bss config ...`."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import typer

from bss.admin.session import (
    fail,
    given,
    parse_assignments,
    print_json,
    remote,
)
from bss.client import ApiError, BssClient
from bss.formats.config import BatchSegmentConfig

segment_app = typer.Typer(no_args_is_help=True, help="Segments of a member.")
config_app = typer.Typer(no_args_is_help=True, help="Batch segment upload configs (admin).")

#: POST /segment creates at most this many segments at once (all or nothing).
IMPORT_BATCH = 1000
IMPORT_COLUMNS = ("id", "code", "short_name", "state", "expire_minutes")


@segment_app.command("create")
@remote
def segment_create(
    client: BssClient,
    member_id: int = typer.Option(..., "--member-id"),
    code: str | None = typer.Option(None, "--code", help="Unique per member, case-insensitive."),
    segment_id: int | None = typer.Option(
        None, "--id", help="Keep an id the segment already has elsewhere (1 to 2^31-1)."
    ),
    short_name: str | None = typer.Option(None, "--short-name"),
    description: str | None = typer.Option(None, "--description"),
    state: str | None = typer.Option(None, "--state", help="active (default) or inactive."),
    expire_minutes: int | None = typer.Option(None, "--expire-minutes"),
) -> None:
    """Create a segment and print it as JSON."""
    fields = given(
        id=segment_id,
        code=code,
        short_name=short_name,
        description=description,
        state=state,
        expire_minutes=expire_minutes,
    )
    print_json(client.create_segment(member_id, fields))


@segment_app.command("list")
@remote
def segment_list(
    client: BssClient,
    member_id: int | None = typer.Option(None, "--member-id", help="Admin: all if omitted."),
    search: str | None = typer.Option(None, "--search", help="In code, short name, description."),
) -> None:
    """Print segments as a JSON list (every page)."""
    print_json(client.list_segments(member_id, search=search))


@segment_app.command("show")
@remote
def segment_show(
    client: BssClient,
    segment_id: int = typer.Argument(...),
    member_id: int | None = typer.Option(
        None, "--member-id", help="The segment's member (admin: any member if omitted)."
    ),
) -> None:
    """Print one segment as JSON."""
    print_json(client.get_segment(segment_id, member_id))


@segment_app.command("update")
@remote
def segment_update(
    client: BssClient,
    segment_id: int = typer.Argument(...),
    code: str | None = typer.Option(None, "--code"),
    short_name: str | None = typer.Option(None, "--short-name"),
    description: str | None = typer.Option(None, "--description"),
    state: str | None = typer.Option(None, "--state"),
    expire_minutes: int | None = typer.Option(None, "--expire-minutes"),
) -> None:
    """Change the given fields of a segment."""
    fields = given(
        code=code,
        short_name=short_name,
        description=description,
        state=state,
        expire_minutes=expire_minutes,
    )
    print_json(client.update_segment(segment_id, fields))


@segment_app.command("delete")
@remote
def segment_delete(
    client: BssClient,
    segment_id: int = typer.Argument(...),
) -> None:
    """Delete a segment."""
    client.delete_segment(segment_id)
    typer.echo(f"deleted segment {segment_id}", err=True)


def read_segment_file(path: Path) -> list[dict[str, Any]]:
    """A JSON list of segment objects, or CSV `id,code,short_name,state,expire_minutes` (with
    that header line, or those columns in that order); empty cells are left out, so an empty
    id gets an automatic one."""
    text = path.read_text(encoding="utf-8-sig")
    if text.lstrip().startswith(("[", "{")):
        try:
            data = json.loads(text)
        except ValueError as exc:
            fail(f"{path}: not valid JSON: {exc}", 2)
        if isinstance(data, dict):  # {"segments": [...]} or a whole API answer
            data = data.get("segments", (data.get("response") or {}).get("segments"))
        if not isinstance(data, list) or not all(isinstance(d, dict) for d in data):
            fail(f"{path}: expected a JSON list of segment objects", 2)
        return data
    rows = [row for row in csv.reader(io.StringIO(text)) if any(cell.strip() for cell in row)]
    header = list(IMPORT_COLUMNS)
    if rows and rows[0] and rows[0][0].strip().lower() == "id":
        header = [cell.strip().lower() for cell in rows.pop(0)]
        unknown = sorted(set(header) - set(IMPORT_COLUMNS))
        if unknown:
            fail(f"{path}: unknown column(s) {unknown}; expected {','.join(IMPORT_COLUMNS)}", 2)
    items = []
    for line_no, row in enumerate(rows, start=1):
        if len(row) > len(header):
            fail(f"{path}: row {line_no} has {len(row)} cells, expected {len(header)}", 2)
        items.append(
            {name: cell.strip() for name, cell in zip(header, row, strict=False) if cell.strip()}
        )
    return items


@segment_app.command("import")
@remote
def segment_import(
    client: BssClient,
    file: Path = typer.Argument(
        ...,
        exists=True,
        dir_okay=False,
        help="CSV (id,code,short_name,state,expire_minutes) or JSON list.",
    ),
    member_id: int = typer.Option(..., "--member-id"),
) -> None:
    """Create the file's segments, keeping their ids, and print them as a JSON list.

    Sent in requests of 1000, each all or nothing: on an error nothing of that request is
    created, and the message says how many segments earlier requests created."""
    items = read_segment_file(file)
    if not items:
        fail(f"{file}: no segments in it", 2)
    created: list[dict[str, Any]] = []
    for start in range(0, len(items), IMPORT_BATCH):
        batch = items[start : start + IMPORT_BATCH]
        try:
            created.extend(client.create_segments(member_id, batch))
        except ApiError as exc:
            where = f"segments {start + 1}-{start + len(batch)} of {len(items)}"
            fail(f"{where}: {exc}; {len(created)} segments before them were created")
    print_json(created)
    typer.echo(f"imported {len(created)} segments", err=True)


# --- configs ---------------------------------------------------------------------------------


def _config_fields(file: Path | None, assignments: list[str]) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    if file is not None:
        try:
            data = json.loads(file.read_text())
        except ValueError as exc:
            fail(f"{file}: not valid JSON: {exc}", 2)
        if isinstance(data, dict) and "batch_segment_upload_config" in data:
            data = data["batch_segment_upload_config"]
        if not isinstance(data, dict):
            fail(f"{file}: expected a batch_segment_upload_config object", 2)
        fields.update(data)
    assigned = parse_assignments(assignments)
    unknown = sorted(set(assigned) - set(BatchSegmentConfig.model_fields))
    if unknown:
        fail(
            f"unknown config field(s) {', '.join(unknown)}; the fields are: "
            + ", ".join(BatchSegmentConfig.model_fields),
            2,
        )
    fields.update(assigned)
    if not fields:
        fail("give a JSON file and/or --set NAME=VALUE", 2)
    return fields


_FILE = typer.Argument(None, exists=True, dir_okay=False, help="JSON config object (optional).")
_SET = typer.Option(
    [], "--set", help="NAME=VALUE, repeatable; JSON values decoded (--set separator_4='\"\\t\"')."
)


@config_app.command("show")
@remote
def config_show(
    client: BssClient,
    member_id: int = typer.Option(..., "--member-id"),
) -> None:
    """Print the member's config (the defaults if it has none) as JSON."""
    print_json(client.get_config(member_id))


@config_app.command("list")
@remote
def config_list(client: BssClient) -> None:
    """Print the config of every member as a JSON list."""
    print_json([client.get_config(m["id"]) for m in client.list_members()])


@config_app.command("create")
@remote
def config_create(
    client: BssClient,
    member_id: int = typer.Option(..., "--member-id"),
    file: Path | None = _FILE,
    assignments: list[str] = _SET,
) -> None:
    """Set the member's whole config (fields not given take their defaults)."""
    fields = _config_fields(file, assignments)
    print_json(client.set_config(member_id, fields))


@config_app.command("update")
@remote
def config_update(
    client: BssClient,
    member_id: int = typer.Option(..., "--member-id"),
    file: Path | None = _FILE,
    assignments: list[str] = _SET,
) -> None:
    """Change the given fields of the member's config, keep the others."""
    fields = _config_fields(file, assignments)
    print_json(client.set_config(member_id, fields, merge=True))


@config_app.command("delete")
@remote
def config_delete(
    client: BssClient,
    member_id: int = typer.Option(..., "--member-id"),
) -> None:
    """Drop the member's config: it uses the defaults again."""
    client.delete_config(member_id)
    typer.echo(f"member {member_id} uses the default config again", err=True)
