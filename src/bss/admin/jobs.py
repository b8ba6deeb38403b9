"""`bss upload`, `bss status`, `bss jobs`.

Progress goes to stderr and only the result to stdout, so `bss upload F --json | jq` works."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import typer

from bss.admin.session import PASSWORD, TOKEN, URL, USERNAME, connect, fail, print_json, remote
from bss.client import BssClient
from bss.ingest.result import COUNTER_NAMES

_MEMBER = typer.Option(..., "--member-id", help="The member the job belongs to.")
#: The documented per-file limit, for a service that does not announce its own.
DOCUMENTED_MAX_FILE_BYTES = 536_870_912


def _summary(job: dict[str, Any]) -> str:
    counts = ", ".join(f"{name} {job.get(name)}" for name in COUNTER_NAMES if job.get(name))
    text = f"job {job['job_id']}: {job['phase']}"
    if job.get("error_code"):
        text += f" ({job['error_code']})"
    return f"{text}; {counts or 'nothing counted'}"


def upload(
    file: Path = typer.Argument(
        ..., exists=True, dir_okay=False, help="Segment file (gzip or plain, legacy or Avro)."
    ),
    member_id: int = _MEMBER,
    file_type: str = typer.Option(
        "segments", "--file-type", help="segments, or links for a link file (docs/identity.md)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the final job as JSON."),
    replace: bool = typer.Option(
        False,
        "--replace",
        help="Replace mode: each segment the file adds to holds exactly the file's members "
        "once the job completes (docs/lifecycle.md).",
    ),
    force: bool = typer.Option(
        False,
        "--force",
        help="With --replace: replace even when more than max_replace_removal_fraction of a "
        "segment's members would be removed.",
    ),
    poll: float = typer.Option(1.0, "--poll", help="Seconds between status checks."),
    url: str = URL,
    username: str | None = USERNAME,
    password: str | None = PASSWORD,
    token: str | None = TOKEN,
) -> None:
    """Upload a file, follow the job until completed or error, print the result.

    Bars on stderr; on stdout one summary line, or with --json the job object. Exit 1 when
    the job ends in error."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TaskProgressColumn,
        TextColumn,
        TransferSpeedColumn,
    )

    size = file.stat().st_size
    with connect(url, username, password, token) as client:
        if force and not replace:
            fail("--force only applies with --replace", 2)
        if replace and file_type == "links":
            fail("--replace applies to segment files, not --file-type links", 2)
        job = client.create_job(member_id, file_type, replace=replace, force=force)
        limit = job.get("max_file_bytes") or DOCUMENTED_MAX_FILE_BYTES
        if size > limit:
            fail(
                f"{file} has {size} bytes, over the service's limit of {limit} bytes per file: "
                "split it (nothing was sent)"
            )
        stderr = Console(stderr=True)
        columns = ("[progress.description]{task.description}", BarColumn())
        with Progress(*columns, DownloadColumn(), TransferSpeedColumn(), console=stderr) as bar:
            sending = bar.add_task("uploading", total=size)
            client.upload(job["upload_url"], file, progress=lambda n: bar.advance(sending, n))
        with Progress(
            TextColumn("{task.description:<10}"), BarColumn(), TaskProgressColumn(), console=stderr
        ) as bar:
            work = bar.add_task("validating", total=100)

            def on_update(current: dict[str, Any]) -> None:
                done = 100 if current["phase"] == "completed" else current.get("percent_complete")
                bar.update(work, completed=done or 0, description=current["phase"])

            final = client.wait(member_id, job["job_id"], poll=poll, on_update=on_update)
    if as_json:
        print_json(final)
    else:
        sys.stdout.write(_summary(final) + "\n")
    if final["phase"] != "completed":
        raise typer.Exit(1)


@remote
def status(
    client: BssClient,
    job_id: str = typer.Argument(..., help="The job_id (40 characters)."),
    member_id: int = _MEMBER,
) -> None:
    """Print one job as JSON."""
    print_json(client.get_job(member_id, job_id))


@remote
def jobs(
    client: BssClient,
    member_id: int = _MEMBER,
    start_element: int = typer.Option(0, "--start-element"),
    num_elements: int = typer.Option(100, "--num-elements"),
    sort: str | None = typer.Option(None, "--sort", help="e.g. last_modified.desc"),
) -> None:
    """List the member's jobs of the last 30 days as a table."""
    from rich.console import Console
    from rich.table import Table

    body = client.list_jobs(
        member_id, start_element=start_element, num_elements=num_elements, sort=sort
    )
    table = Table(title=f"jobs of member {member_id} ({body['count']} total)")
    for col in ("id", "job_id", "phase", "percent", "num_valid", "error_code", "last_modified"):
        table.add_column(col, no_wrap=col in ("job_id", "last_modified"))
    for j in body["batch_segment_upload_job"]:
        table.add_row(
            str(j["id"]),
            j["job_id"],
            j["phase"],
            str(j["percent_complete"]),
            str(j["num_valid"]),
            str(j["error_code"] or ""),
            j["last_modified"],
        )
    Console(width=None if sys.stdout.isatty() else 160).print(table)
