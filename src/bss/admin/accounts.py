"""`bss login`, `bss logout`, `bss member ...`, `bss user ...`."""

from __future__ import annotations

import httpx
import typer

from bss.admin.session import (
    PASSWORD,
    URL,
    USERNAME,
    connect,
    fail,
    given,
    print_json,
    remote,
    save_token,
    saved_device,
    saved_token,
)
from bss.client import ApiError, BssClient

member_app = typer.Typer(no_args_is_help=True, help="Members (admin).")
user_app = typer.Typer(no_args_is_help=True, help="Users (admin).")


def login(
    url: str = URL,
    username: str | None = USERNAME,
    password: str | None = PASSWORD,
) -> None:
    """Log in once and keep the token (0600, under your config dir) for the other commands."""
    if username is None:
        username = typer.prompt("username")
    if password is None:
        password = typer.prompt("password", hide_input=True)
    with BssClient(url, username, password, device=saved_device(url)) as client:
        try:
            token = client.login()
        except ApiError as exc:
            fail(str(exc))
        except httpx.HTTPError as exc:
            fail(f"cannot reach {url.rstrip('/')}: {exc}")
        path = save_token(url, token, username, client.device)
    typer.echo(f"logged in to {url.rstrip('/')} as {username}; token kept in {path}", err=True)


def logout(url: str = URL) -> None:
    """End the session and forget the kept token."""
    if saved_token(url) is None:
        fail(f"not logged in to {url.rstrip('/')}")
    with connect(url) as client:
        try:
            client.logout()
        finally:
            save_token(url, None)
    typer.echo("logged out", err=True)


# --- members ---------------------------------------------------------------------------------


@member_app.command("create")
@remote
def member_create(
    client: BssClient,
    member_id: int | None = typer.Option(None, "--id", help="Member id (default: the next one)."),
    name: str = typer.Option("", "--name"),
    state: str = typer.Option("active", "--state", help="active or inactive."),
) -> None:
    """Create a member and print it as JSON."""
    print_json(client.create_member(given(id=member_id, name=name, state=state)))


@member_app.command("list")
@remote
def member_list(client: BssClient) -> None:
    """Print all members as a JSON list."""
    print_json(client.list_members())


@member_app.command("show")
@remote
def member_show(
    client: BssClient,
    member_id: int = typer.Argument(...),
) -> None:
    """Print one member as JSON."""
    print_json(client.get_member(member_id))


@member_app.command("update")
@remote
def member_update(
    client: BssClient,
    member_id: int = typer.Argument(...),
    name: str | None = typer.Option(None, "--name"),
    state: str | None = typer.Option(None, "--state", help="active or inactive."),
) -> None:
    """Change the given fields of a member."""
    print_json(client.update_member(member_id, given(name=name, state=state)))


@member_app.command("delete")
@remote
def member_delete(
    client: BssClient,
    member_id: int = typer.Argument(...),
) -> None:
    """Delete a member with its users, segments and config."""
    client.delete_member(member_id)
    typer.echo(f"deleted member {member_id}", err=True)


# --- users -----------------------------------------------------------------------------------


@user_app.command("create")
@remote
def user_create(
    client: BssClient,
    new_username: str = typer.Option(..., "--name", help="The new user's login name."),
    new_password: str | None = typer.Option(
        None, "--new-password", help="At least 8 characters (prompted if not given)."
    ),
    user_type: str = typer.Option("member", "--user-type", help="admin, member, data_provider."),
    member_id: int | None = typer.Option(None, "--member-id", help="Required unless admin."),
) -> None:
    """Create a user and print it as JSON."""
    if new_password is None:
        new_password = typer.prompt(
            "new user's password", hide_input=True, confirmation_prompt=True
        )
    fields = given(
        username=new_username, password=new_password, user_type=user_type, member_id=member_id
    )
    print_json(client.create_user(fields))


@user_app.command("list")
@remote
def user_list(
    client: BssClient,
    member_id: int | None = typer.Option(None, "--member-id"),
) -> None:
    """Print users (all, or one member's) as a JSON list."""
    print_json(client.list_users(member_id))


@user_app.command("show")
@remote
def user_show(
    client: BssClient,
    user: str = typer.Argument(..., help="The user's id or username."),
) -> None:
    """Print one user as JSON."""
    if user.isascii() and user.isdigit():
        print_json(client.get_user(int(user)))
        return
    found = [u for u in client.list_users() if u["username"] == user]
    if not found:
        fail(f"no user named {user!r}")
    print_json(found[0])


@user_app.command("update")
@remote
def user_update(
    client: BssClient,
    user_id: int = typer.Argument(...),
    new_password: str | None = typer.Option(None, "--new-password"),
    user_type: str | None = typer.Option(None, "--user-type"),
    member_id: int | None = typer.Option(None, "--member-id"),
) -> None:
    """Change the given fields of a user (a new password ends the user's sessions)."""
    fields = given(password=new_password, user_type=user_type, member_id=member_id)
    print_json(client.update_user(user_id, fields))


@user_app.command("delete")
@remote
def user_delete(
    client: BssClient,
    user_id: int = typer.Argument(...),
) -> None:
    """Delete a user."""
    client.delete_user(user_id)
    typer.echo(f"deleted user {user_id}", err=True)
