"""`bss login`, `bss logout`, `bss member ...`, `bss user ...`."""

from __future__ import annotations

import typer

from bss.admin.session import (
    PASSWORD,
    TOKEN,
    URL,
    USERNAME,
    connect,
    fail,
    given,
    print_json,
    save_token,
    saved_token,
)
from bss.client import BssClient, BssError

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
    with BssClient(url, username, password) as client:
        try:
            token = client.login()
        except BssError as exc:
            fail(str(exc))
    path = save_token(url, token, username)
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
def member_create(
    member_id: int | None = typer.Option(None, "--id", help="Member id (default: the next one)."),
    name: str = typer.Option("", "--name"),
    state: str = typer.Option("active", "--state", help="active or inactive."),
    url: str = URL,
    username: str | None = USERNAME,
    password: str | None = PASSWORD,
    token: str | None = TOKEN,
) -> None:
    """Create a member and print it as JSON."""
    with connect(url, username, password, token) as client:
        print_json(client.create_member(given(id=member_id, name=name, state=state)))


@member_app.command("list")
def member_list(
    url: str = URL,
    username: str | None = USERNAME,
    password: str | None = PASSWORD,
    token: str | None = TOKEN,
) -> None:
    """Print all members as a JSON list."""
    with connect(url, username, password, token) as client:
        print_json(client.list_members())


@member_app.command("show")
def member_show(
    member_id: int = typer.Argument(...),
    url: str = URL,
    username: str | None = USERNAME,
    password: str | None = PASSWORD,
    token: str | None = TOKEN,
) -> None:
    """Print one member as JSON."""
    with connect(url, username, password, token) as client:
        print_json(client.get_member(member_id))


@member_app.command("update")
def member_update(
    member_id: int = typer.Argument(...),
    name: str | None = typer.Option(None, "--name"),
    state: str | None = typer.Option(None, "--state", help="active or inactive."),
    url: str = URL,
    username: str | None = USERNAME,
    password: str | None = PASSWORD,
    token: str | None = TOKEN,
) -> None:
    """Change the given fields of a member."""
    with connect(url, username, password, token) as client:
        print_json(client.update_member(member_id, given(name=name, state=state)))


@member_app.command("delete")
def member_delete(
    member_id: int = typer.Argument(...),
    url: str = URL,
    username: str | None = USERNAME,
    password: str | None = PASSWORD,
    token: str | None = TOKEN,
) -> None:
    """Delete a member with its users, segments and config."""
    with connect(url, username, password, token) as client:
        client.delete_member(member_id)
    typer.echo(f"deleted member {member_id}", err=True)


# --- users -----------------------------------------------------------------------------------


@user_app.command("create")
def user_create(
    new_username: str = typer.Option(..., "--name", help="The new user's login name."),
    new_password: str | None = typer.Option(
        None, "--new-password", help="At least 8 characters (prompted if not given)."
    ),
    user_type: str = typer.Option("member", "--user-type", help="admin, member, data_provider."),
    member_id: int | None = typer.Option(None, "--member-id", help="Required unless admin."),
    url: str = URL,
    username: str | None = USERNAME,
    password: str | None = PASSWORD,
    token: str | None = TOKEN,
) -> None:
    """Create a user and print it as JSON."""
    if new_password is None:
        new_password = typer.prompt(
            "new user's password", hide_input=True, confirmation_prompt=True
        )
    fields = given(
        username=new_username, password=new_password, user_type=user_type, member_id=member_id
    )
    with connect(url, username, password, token) as client:
        print_json(client.create_user(fields))


@user_app.command("list")
def user_list(
    member_id: int | None = typer.Option(None, "--member-id"),
    url: str = URL,
    username: str | None = USERNAME,
    password: str | None = PASSWORD,
    token: str | None = TOKEN,
) -> None:
    """Print users (all, or one member's) as a JSON list."""
    with connect(url, username, password, token) as client:
        print_json(client.list_users(member_id))


@user_app.command("show")
def user_show(
    user_id: int = typer.Argument(...),
    url: str = URL,
    username: str | None = USERNAME,
    password: str | None = PASSWORD,
    token: str | None = TOKEN,
) -> None:
    """Print one user as JSON."""
    with connect(url, username, password, token) as client:
        print_json(client.get_user(user_id))


@user_app.command("update")
def user_update(
    user_id: int = typer.Argument(...),
    new_password: str | None = typer.Option(None, "--new-password"),
    user_type: str | None = typer.Option(None, "--user-type"),
    member_id: int | None = typer.Option(None, "--member-id"),
    url: str = URL,
    username: str | None = USERNAME,
    password: str | None = PASSWORD,
    token: str | None = TOKEN,
) -> None:
    """Change the given fields of a user (a new password ends the user's sessions)."""
    fields = given(password=new_password, user_type=user_type, member_id=member_id)
    with connect(url, username, password, token) as client:
        print_json(client.update_user(user_id, fields))


@user_app.command("delete")
def user_delete(
    user_id: int = typer.Argument(...),
    url: str = URL,
    username: str | None = USERNAME,
    password: str | None = PASSWORD,
    token: str | None = TOKEN,
) -> None:
    """Delete a user."""
    with connect(url, username, password, token) as client:
        client.delete_user(user_id)
    typer.echo(f"deleted user {user_id}", err=True)
