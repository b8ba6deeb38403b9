"""Which service and which token a command uses, and the file that keeps the token.

`bss login` stores the token (0600) in $XDG_CONFIG_HOME/bss/tokens.json (~/.config/bss/...),
one per service URL; every command reuses it until the service says it expired, so normal
use never meets the logins-per-window limit. BSS_TOKEN gives a token directly; with
BSS_USERNAME and BSS_PASSWORD a command logs in by itself (and keeps that token too).
"""

from __future__ import annotations

import functools
import inspect
import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

import httpx
import typer

from bss.client import ApiError, BssClient

URL = typer.Option("http://127.0.0.1:8080", "--url", envvar="BSS_URL", help="Service base URL.")
USERNAME = typer.Option(None, "--username", envvar="BSS_USERNAME", help="Login (BSS_USERNAME).")
PASSWORD = typer.Option(
    None, "--password", envvar="BSS_PASSWORD", help="Password (BSS_PASSWORD).", show_default=False
)
TOKEN = typer.Option(
    None,
    "--token",
    envvar="BSS_TOKEN",
    help="A token from POST /auth (BSS_TOKEN).",
    show_default=False,
)
NOT_LOGGED_IN = (
    "not logged in to {url}: run `bss login` (or set BSS_TOKEN, or BSS_USERNAME and BSS_PASSWORD)"
)


def token_file() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "bss" / "tokens.json"


def _saved() -> dict[str, Any]:
    try:
        data = json.loads(token_file().read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _entry(url: str) -> dict[str, Any]:
    entry = _saved().get(url.rstrip("/"))
    return entry if isinstance(entry, dict) else {}


def saved_token(url: str) -> str | None:
    return _entry(url).get("token")


def saved_device(url: str) -> str | None:
    """The device cookie of the login to `url` (until logout): it lets this client's correct
    password through when strangers' failures have stopped the user's other logins."""
    return _entry(url).get("device")


def save_token(
    url: str, token: str | None, username: str | None = None, device: str | None = None
) -> Path:
    """Keep (or with None, forget) the token for `url`; the file is owner-only (0600)."""
    path = token_file()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    data = _saved()
    device = device or saved_device(url)
    if token is None:
        data.pop(url.rstrip("/"), None)
    else:
        data[url.rstrip("/")] = {"token": token, "username": username, "device": device}
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh, indent=2)
    os.replace(tmp, path)
    return path


def fail(message: str, code: int = 1) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


@contextmanager
def connect(
    url: str,
    username: str | None = None,
    password: str | None = None,
    token: str | None = None,
) -> Iterator[BssClient]:
    """A client for one command, with service errors turned into `error: ...` and exit 1."""
    base = url.rstrip("/")
    remember: Callable[[str], None] | None = None
    if token is None:
        token = saved_token(base)

        def remember(new: str) -> None:
            save_token(base, new, username, client.device)

    if token is None and (username is None or password is None):
        fail(NOT_LOGGED_IN.format(url=base))
    client = BssClient(
        base, username, password, token=token, on_token=remember, device=saved_device(base)
    )
    try:
        yield client
    except ApiError as exc:
        if exc.error_id == "NOAUTH" and remember is not None and not client.can_login:
            save_token(base, None)
            fail(f"your token for {base} is no longer valid: run `bss login` again")
        fail(str(exc))
    except httpx.HTTPError as exc:
        fail(f"cannot reach {base}: {exc}")
    finally:
        client.close()


#: The options every command that talks to the service takes, added by `remote`.
_CONNECTION = (
    ("url", str, URL),
    ("username", str | None, USERNAME),
    ("password", str | None, PASSWORD),
    ("token", str | None, TOKEN),
)


def remote(command: Callable[..., Any]) -> Callable[..., Any]:
    """Make `command(client, ...)` a CLI command with --url, --username, --password and
    --token in place of `client`: it is called with a client connected by `connect`."""
    signature = inspect.signature(command)
    own = [p for p in signature.parameters.values() if p.name != "client"]
    added = [
        inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=kind)
        for name, kind, default in _CONNECTION
    ]

    @functools.wraps(command)
    def run(
        *, url: str, username: str | None, password: str | None, token: str | None, **options: Any
    ) -> Any:
        with connect(url, username, password, token) as client:
            return command(client, **options)

    # Typer reads the parameters from the signature and their types from the annotations.
    run.__signature__ = signature.replace(parameters=own + added)  # type: ignore[attr-defined]
    hints = dict(inspect.get_annotations(command, eval_str=True))
    hints.pop("client", None)
    run.__annotations__ = hints | {name: kind for name, kind, _ in _CONNECTION}
    return run


def print_json(value: Any) -> None:
    json.dump(value, sys.stdout, indent=2)
    sys.stdout.write("\n")


def parse_assignments(pairs: list[str]) -> dict[str, Any]:
    """`name=value` pairs; a value that is JSON (1, true, null, "\\t", [...]) is decoded."""
    fields: dict[str, Any] = {}
    for pair in pairs:
        name, sep, text = pair.partition("=")
        if not sep or not name:
            fail(f"expected NAME=VALUE, got {pair!r}", 2)
        try:
            fields[name.strip()] = json.loads(text)
        except ValueError:
            fields[name.strip()] = text
    return fields


def given(**fields: Any) -> dict[str, Any]:
    """The options the user gave (not None)."""
    return {k: v for k, v in fields.items() if v is not None}
