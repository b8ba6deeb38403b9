"""`bss optout add FILE`: bulk opt-out requests (POST /user-optout, 1000 IDs a request)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from bss.admin.session import fail, print_json, remote
from bss.client import BssClient

optout_app = typer.Typer(no_args_is_help=True, help="Opt-outs (docs/lifecycle.md).")

#: IDs one request carries (the API's limit).
BATCH = 1000


def _user(line: str, number: int) -> dict[str, Any]:
    """A line: a platform user ID (digits), or a JSON object as POST /user-segments names a
    user ({"device_id": "...", "domain": "idfa"}, {"eid": "...", "source": "..."}, ...)."""
    if line.isascii() and line.isdigit():
        return {"uid": line}
    try:
        user = json.loads(line)
    except json.JSONDecodeError:
        user = None
    if not isinstance(user, dict):
        fail(f'line {number}: expected a uid or a JSON object such as {{"uid": "..."}}', 2)
    return user


@optout_app.command("add")
@remote
def optout_add(
    client: BssClient,
    file: Path = typer.Argument(..., exists=True, dir_okay=False, help="One user ID a line."),
    member_id: int | None = typer.Option(
        None, "--member-id", help="The member's scope (an admin without it: platform-wide)."
    ),
    related: bool = typer.Option(False, "--related", help="Also each ID's related IDs."),
) -> None:
    """Opt out every ID of FILE (a uid, or a JSON user object, a line; blank lines and lines
    starting with # are skipped), 1000 IDs a request; print the totals as JSON."""
    users: list[dict[str, Any]] = []
    totals = {"requests": 0, "ids": 0, "memberships_removed": 0, "links_removed": 0}

    def send() -> None:
        params = {} if member_id is None else {"member_id": member_id}
        body = client.request(
            "POST", "/user-optout", params=params, json={"users": users, "related": related}
        )["user_optout"]
        totals["requests"] += 1
        for name in ("ids", "memberships_removed", "links_removed"):
            totals[name] += body[name]
        users.clear()

    with file.open(encoding="utf-8") as lines:
        for number, raw in enumerate(lines, start=1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            users.append(_user(line, number))
            if len(users) == BATCH:
                send()
    if users:
        send()
    print_json(totals)
