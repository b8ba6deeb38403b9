"""The `bss` command line: a thin layer over the library."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from typer.core import TyperOption

from bss.admin import register as register_client_commands

if TYPE_CHECKING:
    from bss.settings import Settings

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Batch Segment Service.")
_typer_value_type = TyperOption.display_type_rich


def _flag_without_value_type(option: TyperOption, ctx: Any) -> str | None:
    """Typer's help shows `<bool>` after a flag (`--apply <bool>`), which reads as if the flag
    took a value: a flag shows no type."""
    return None if option.is_flag else _typer_value_type(option, ctx)


TyperOption.display_type_rich = _flag_without_value_type  # type: ignore[method-assign,assignment]


def _version(show: bool) -> None:
    if show:
        from importlib.metadata import version

        typer.echo(f"bss {version('bss')}")
        raise typer.Exit()


@app.callback()
def _main(
    _show_version: bool = typer.Option(
        False,
        "--version",
        "-V",
        callback=_version,
        is_eager=True,
        help="Print the version and exit.",
    ),
) -> None:
    """Batch Segment Service: `bss serve` runs it; the other commands talk to it or check files."""


@app.command()
def validate(
    file: Path = typer.Argument(
        ...,
        exists=True,
        dir_okay=False,
        help="Segment file (legacy text or Avro), or link file (CSV or Avro), optionally gzip.",
    ),
    config: Path | None = typer.Option(
        None,
        "--config",
        exists=True,
        help="JSON holding a batch_segment_upload_config object; default config if omitted.",
    ),
    segments: Path | None = typer.Option(
        None,
        "--segments",
        exists=True,
        help="The member's segments: the CSV `bss segment import` takes "
        "(id,code,short_name,state,expire_minutes; they belong to --member-id), or a JSON list "
        "of segment objects (id, code, member_id, state, expire_minutes); required for a "
        "segment file.",
    ),
    file_type: str = typer.Option(
        "segments", "--file-type", help="segments, or links for a link file (docs/identity.md)."
    ),
    member_id: int = typer.Option(..., "--member-id", help="The uploading member."),
    apply: bool = typer.Option(
        False,
        "--apply",
        help="Also write the memberships into the store (BSS_STORE_URL, default the data dir's); "
        "safe beside a running server: seqs come from the data dir's database.",
    ),
    data_dir: Path = typer.Option(
        Path("./bss-data"), "--data-dir", help="Where the store and database live (with --apply)."
    ),
    error_report: Path | None = typer.Option(
        None, "--error-report", help="Write every rejected line as CSV here."
    ),
) -> None:
    """Check a segment or link file and print the job's result fields as JSON (a dry run
    unless --apply)."""
    from bss.db import init_db, make_engine
    from bss.errors import StoreUrlError
    from bss.formats.config import BatchSegmentConfig, ConfigError, load_config
    from bss.settings import Settings
    from bss.store import JOB_SEQ_SPAN, MembershipStore, open_store, seqs
    from bss.store.dry import DryRunStore

    try:
        cfg = load_config(json.loads(config.read_text())) if config else BatchSegmentConfig()
    except (ConfigError, json.JSONDecodeError) as exc:
        typer.echo(f"error: invalid config: {exc}", err=True)
        raise typer.Exit(2) from exc
    registry = _validate_registry(file_type, segments, member_id)
    settings = Settings(data_dir=data_dir)
    store: MembershipStore
    seq_base = 0
    if apply:
        settings.make_data_dir()
        try:
            store = open_store(settings.resolved_store_url)
        except StoreUrlError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from exc
        # The same counter a server on this data dir takes job seqs from: never a collision,
        # and a later run wins over earlier ones.
        db = make_engine(settings.resolved_database_url)
        try:
            init_db(db)
            seq_base = seqs.reserve(db, JOB_SEQ_SPAN)
        finally:
            db.dispose()
    else:
        store = DryRunStore()
    started = time.monotonic()
    try:
        result = _validate_ingest(
            file, file_type, member_id, seq_base, cfg, registry, store, settings, error_report
        )
    finally:
        store.close()
    fields = {"phase": "error" if result.error_code else "completed", **result.job_fields()}
    fields["time_to_process"] = f"{(time.monotonic() - started) / 60:.2f}"
    json.dump(fields, sys.stdout, indent=2)
    sys.stdout.write("\n")
    if result.error_code:
        # The job object has no field for the reason; it goes to stderr.
        typer.echo(f"error: {result.error_code}: {result.error_message}", err=True)
        raise typer.Exit(1)


def _validate_registry(file_type: str, segments: Path | None, member_id: int) -> Any:
    """The segment registry `bss validate` checks against (none for a link file)."""
    from bss.ingest.registry import SegmentRegistry

    if file_type not in ("segments", "links"):
        typer.echo("error: --file-type must be segments or links", err=True)
        raise typer.Exit(2)
    if segments is None:
        if file_type == "segments":
            typer.echo("error: --segments is required for a segment file", err=True)
            raise typer.Exit(2)
        return SegmentRegistry.from_records([])
    return SegmentRegistry.from_records(_segment_records(segments, member_id))


def _validate_ingest(
    file: Path,
    file_type: str,
    member_id: int,
    seq_base: int,
    cfg: Any,
    registry: Any,
    store: Any,
    settings: Any,
    error_report: Path | None,
) -> Any:
    """`bss validate`'s run of a segment or a link file."""
    from bss import clock
    from bss.ingest.files import FileRun, LinkFile, SegmentFile, run_file

    kind = (
        LinkFile(settings.link_ttl_days, cfg.num_error_log_lines)
        if file_type == "links"
        else SegmentFile(cfg, registry)
    )
    run = FileRun(member_id, seq_base, store, clock.now_s(), kind, error_report_path=error_report)
    return run_file(file, run, settings)


def _segment_records(path: Path, member_id: int) -> list[dict[str, Any]]:
    """The segments of `bss validate --segments`: the file `bss segment import` takes (CSV
    rows belong to `member_id`; JSON objects name their member_id), checked field by field,
    or one line on stderr and exit status 2."""
    from bss.admin.segments import read_segment_file

    def bad(message: str) -> typer.Exit:
        typer.echo(f"error: invalid segments file {path}: {message}", err=True)
        return typer.Exit(2)

    is_csv = not path.read_text(encoding="utf-8-sig").lstrip().startswith(("[", "{"))
    records = []
    seen: set[tuple[int | None, int | None]] = set()
    for n, item in enumerate(read_segment_file(path), start=1):
        if is_csv:
            item = {"member_id": member_id, **item}
        for name in ("id", "member_id"):
            if item.get(name) in (None, ""):
                raise bad(f"segment {n} has no {name}")
        numbers: dict[str, int | None] = {}
        for name in ("id", "member_id", "expire_minutes"):
            value = item.get(name)
            try:
                numbers[name] = None if value in (None, "") else int(value)
            except (TypeError, ValueError):
                raise bad(f"segment {n}: {name} {value!r} is not an integer") from None
        if (numbers["member_id"], numbers["id"]) in seen:
            raise bad(f"segment {n}: id {numbers['id']} appears twice")
        seen.add((numbers["member_id"], numbers["id"]))
        records.append({**item, **numbers})
    return records


def _settings(**overrides: Any) -> Settings:
    """The settings, or one line on stderr and exit status 2 when they are invalid."""
    from pydantic import ValidationError

    from bss.settings import Settings

    given: dict[str, Any] = {k: v for k, v in overrides.items() if v is not None}
    try:
        return Settings(**given)
    except ValidationError as exc:
        reasons = "; ".join(
            (f"BSS_{'_'.join(map(str, e['loc'])).upper()}: " if e["loc"] else "")
            + e["msg"].removeprefix("Value error, ")
            for e in exc.errors()
        )
        typer.echo(f"bss: invalid settings: {reasons}", err=True)
        raise typer.Exit(2) from None


@app.command()
def serve(
    host: str = typer.Option("127.0.0.1", "--host", help="Interface to listen on."),
    port: int = typer.Option(8080, "--port", help="TCP port."),
    data_dir: Path | None = typer.Option(
        None, "--data-dir", help="Database, stores, uploads (default ./bss-data or BSS_DATA_DIR)."
    ),
    public_url: str | None = typer.Option(
        None,
        "--public-url",
        help="Base of upload URLs handed to clients (default: the request's base URL).",
    ),
    workers: int | None = typer.Option(
        None, "--workers", help="Worker threads processing jobs, per process (BSS_WORKERS)."
    ),
    processes: int | None = typer.Option(
        None,
        "--processes",
        min=1,
        help="API processes sharing the port (BSS_PROCESSES); limits stay shared.",
    ),
    fd: int | None = typer.Option(
        None, "--fd", hidden=True, help="Listening socket handed down by --processes."
    ),
) -> None:
    """Run the HTTP API with its workers and retention sweeps (nothing else to start)."""
    from bss.api.logs import configure_logging
    from bss.api.server import serve as run

    configure_logging()
    settings = _settings(
        data_dir=data_dir, public_url=public_url, workers=workers, processes=processes
    )
    run(settings, host, port, fd=fd)


@app.command()
def worker(
    data_dir: Path | None = typer.Option(
        None, "--data-dir", help="Same data dir / BSS_DATABASE_URL as the API."
    ),
    workers: int | None = typer.Option(None, "--workers", help="Worker threads (BSS_WORKERS)."),
) -> None:
    """Process queued jobs only (no HTTP), beside `bss serve` on the same data dir / database."""
    from bss.api.logs import configure_logging
    from bss.worker_process import run_worker

    configure_logging()
    run_worker(_settings(data_dir=data_dir, workers=workers))


db_app = typer.Typer(no_args_is_help=True, help="The database's schema (migrations).")
app.add_typer(db_app, name="db")


@db_app.command("upgrade")
def db_upgrade(
    data_dir: Path | None = typer.Option(
        None, "--data-dir", help="Data dir of the embedded database (or BSS_DATABASE_URL)."
    ),
) -> None:
    """Upgrade the database schema to this version's (stop processes of an older version
    first). One process migrates at a time; running it again does nothing."""
    from bss import migrate
    from bss.startup import connect_database, refuse

    settings = _settings(data_dir=data_dir)
    settings.make_data_dir()
    engine = connect_database(settings)
    try:
        found = migrate.upgrade(engine)
    except migrate.SchemaError as exc:
        refuse(str(exc))
    finally:
        engine.dispose()
    if found.up_to_date:
        typer.echo(f"database schema already at revision {found.head}")
    else:
        typer.echo(f"database schema upgraded from {found.describe()} to revision {found.head}")


@db_app.command("current")
def db_current(
    data_dir: Path | None = typer.Option(
        None, "--data-dir", help="Data dir of the embedded database (or BSS_DATABASE_URL)."
    ),
) -> None:
    """Print the database's schema revision and this version's; exit 1 if they differ."""
    from bss import migrate
    from bss.startup import connect_database

    engine = connect_database(_settings(data_dir=data_dir))
    try:
        found = migrate.state(engine)
    finally:
        engine.dispose()
    typer.echo(f"database: {found.describe()}; this bss: revision {found.head}")
    if not found.up_to_date:
        raise typer.Exit(1)


# login, member, user, segment, config, upload, status, jobs: clients of a running service.
register_client_commands(app)


def main() -> None:  # pragma: no cover - console entry
    app()
