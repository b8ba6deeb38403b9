"""The `bss` command line: a thin layer over the library."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import typer

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Batch Segment Service.")


@app.command()
def validate(
    file: Path = typer.Argument(
        ...,
        exists=True,
        dir_okay=False,
        help="Segment file (legacy text or Avro, optionally gzip).",
    ),
    config: Path | None = typer.Option(
        None,
        "--config",
        exists=True,
        help="JSON holding a batch_segment_upload_config object; default config if omitted.",
    ),
    segments: Path = typer.Option(
        ...,
        "--segments",
        exists=True,
        help="JSON list of segment objects (id, code, member_id, state, expire_minutes).",
    ),
    member_id: int = typer.Option(..., "--member-id", help="The uploading member."),
    apply: bool = typer.Option(
        False, "--apply", help="Also write the memberships into the embedded store."
    ),
    data_dir: Path = typer.Option(
        Path("./bss-data"), "--data-dir", help="Where the embedded store lives (with --apply)."
    ),
    error_report: Path | None = typer.Option(
        None, "--error-report", help="Write every rejected line as CSV here."
    ),
) -> None:
    """Check a segment file and print the job's result fields as JSON (a dry run unless --apply)."""
    from bss.formats.config import BatchSegmentConfig, ConfigError, load_config
    from bss.ingest.engine import ingest_file
    from bss.ingest.registry import SegmentRegistry
    from bss.settings import Settings
    from bss.store import MembershipStore
    from bss.store.dry import DryRunStore
    from bss.store.embedded import EmbeddedStore

    try:
        cfg = load_config(json.loads(config.read_text())) if config else BatchSegmentConfig()
    except (ConfigError, json.JSONDecodeError) as exc:
        typer.echo(f"error: invalid config: {exc}", err=True)
        raise typer.Exit(2) from exc
    raw_segments = json.loads(segments.read_text())
    if isinstance(raw_segments, dict):  # accept the API's {"segments": [...]} as well
        raw_segments = raw_segments.get(
            "segments", raw_segments.get("response", {}).get("segments", [])
        )
    registry = SegmentRegistry.from_records(raw_segments)
    settings = Settings(data_dir=data_dir)
    store: MembershipStore
    job_no = 1
    if apply:
        data_dir.mkdir(parents=True, exist_ok=True)
        embedded = EmbeddedStore(settings.resolved_store_url.removeprefix("duckdb://"))
        job_no = embedded.last_job_no() + 1  # later local runs win over earlier ones
        store = embedded
    else:
        store = DryRunStore()
    started = time.monotonic()
    try:
        result = ingest_file(
            file,
            member_id=member_id,
            job_no=job_no,
            config=cfg,
            registry=registry,
            store=store,
            now=int(time.time()),
            error_report_path=error_report,
            max_decompressed_bytes=settings.max_decompressed_bytes,
            chunk_bytes=settings.chunk_bytes,
        )
    finally:
        store.close()
    fields = {"phase": "error" if result.error_code else "completed", **result.job_fields()}
    fields["time_to_process"] = f"{(time.monotonic() - started) / 60:.2f}"
    if result.error_message:
        fields["error_message"] = result.error_message
    json.dump(fields, sys.stdout, indent=2)
    sys.stdout.write("\n")
    if result.error_code:
        raise typer.Exit(1)


def main() -> None:  # pragma: no cover - console entry
    app()
