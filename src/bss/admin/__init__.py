"""The `bss` commands that talk to a running service through the Python client (bss.client):
login, members, users, segments, configs, uploads, jobs and opt-outs."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add the client-side commands to the `bss` command."""
    from bss.admin import accounts, jobs, optout, segments

    app.command()(accounts.login)
    app.command()(accounts.logout)
    app.add_typer(accounts.member_app, name="member")
    app.add_typer(accounts.user_app, name="user")
    app.add_typer(segments.segment_app, name="segment")
    app.add_typer(segments.config_app, name="config")
    app.command()(jobs.upload)
    app.command()(jobs.status)
    app.command()(jobs.jobs)
    app.add_typer(optout.optout_app, name="optout")
