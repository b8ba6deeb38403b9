"""Logins a stranger cannot use against a user: failures spread over many addresses do not
lock out a client that logged in before (its device cookie), and an unknown username costs
the same argon2 verification as a known one."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import httpx
import pytest
from argon2 import PasswordHasher
from conftest import ADMIN_PASSWORD, ADMIN_USER, BSS

from bss.accounts import service as accounts
from bss.db import init_db, make_engine
from bss.errors import NotAuthenticated
from bss.ratelimit import DatabaseRateLimiter
from bss.settings import Settings


def _login(
    url: str, password: str, client: str, cookies: dict[str, str] | None = None
) -> httpx.Response:
    headers = {"X-Forwarded-For": f"{client}, 127.0.0.1"}
    if cookies:
        headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in cookies.items())
    return httpx.post(
        f"{url}/auth",
        json={"auth": {"username": ADMIN_USER, "password": password}},
        headers=headers,
    )


def test_strangers_failures_do_not_lock_out_a_known_client(bss_server):
    srv = bss_server(
        trusted_proxies="127.0.0.1", login_failures_per_client=100, login_failures_per_user=3
    )
    first = _login(srv.url, ADMIN_PASSWORD, "10.0.0.1")
    assert first.status_code == 200
    device = first.cookies["bss_device"]
    set_cookie = next(
        h for h in first.headers.get_list("set-cookie") if h.startswith("bss_device=")
    )
    assert "Path=/auth" in set_cookie and "HttpOnly" in set_cookie

    # Strangers exhaust the per-user ceiling from addresses of their own.
    assert [_login(srv.url, "wrong", f"10.0.1.{i}").status_code for i in range(3)] == [401] * 3
    assert _login(srv.url, "wrong", "10.0.1.9").status_code == 429
    # A client that never logged in is held by the ceiling, password right or not...
    assert _login(srv.url, ADMIN_PASSWORD, "10.0.2.1").status_code == 429
    forged = {"bss_device": "0" * len(device)}
    assert _login(srv.url, ADMIN_PASSWORD, "10.0.2.1", forged).status_code == 429
    # ...the known client is not: its right password passes, a wrong one is still wrong.
    known = {"bss_device": device}
    assert _login(srv.url, "wrong", "10.0.0.1", known).status_code == 401
    again = _login(srv.url, ADMIN_PASSWORD, "10.0.0.1", known)
    assert again.status_code == 200 and again.json()["response"]["token"]
    # From another address too (a laptop moves), and still held by the per-address limit.
    assert _login(srv.url, ADMIN_PASSWORD, "10.0.3.1", known).status_code == 200


def test_the_cli_keeps_its_device_cookie_and_logs_in_while_strangers_are_stopped(
    bss_server, tmp_path
):
    srv = bss_server(
        trusted_proxies="127.0.0.1", login_failures_per_client=100, login_failures_per_user=2
    )
    env = {k: v for k, v in os.environ.items() if k not in ("BSS_USERNAME", "BSS_PASSWORD")} | {
        "BSS_URL": srv.url,
        "XDG_CONFIG_HOME": str(tmp_path / "cfg"),
    }
    command = [str(BSS), "login", "--username", ADMIN_USER, "--password", ADMIN_PASSWORD]
    subprocess.run(command, env=env, check=True, capture_output=True)
    kept = json.loads((tmp_path / "cfg" / "bss" / "tokens.json").read_text())[srv.url]
    assert len(kept["device"]) == 64
    for i in range(3):
        _login(srv.url, "wrong", f"10.0.1.{i}")
    assert _login(srv.url, ADMIN_PASSWORD, "10.0.2.1").status_code == 429
    out = subprocess.run(command, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert (
        json.loads((tmp_path / "cfg" / "bss" / "tokens.json").read_text())[srv.url]["token"]
        != kept["token"]
    )


@pytest.fixture()
def db(tmp_path: Path):  # type: ignore[no-untyped-def]
    engine = make_engine(f"sqlite:///{tmp_path / 'bss.db'}")
    init_db(engine)
    yield engine
    engine.dispose()


def test_an_unknown_username_costs_one_argon2_verification_as_a_known_one(
    db, tmp_path, monkeypatch
) -> None:
    settings = Settings(
        data_dir=tmp_path / "data", admin_username="admin", admin_password="admin-password-1"
    )
    accounts.ensure_admin(db, settings)
    verified: list[str] = []
    real_verify = PasswordHasher.verify

    def counting(self: PasswordHasher, hash: str, password: str) -> bool:
        verified.append(hash)
        return real_verify(self, hash, password)

    monkeypatch.setattr(PasswordHasher, "verify", counting)
    for username in ("admin", "nobody"):
        with pytest.raises(NotAuthenticated, match="No match found for user/pass"):
            accounts.login(
                db,
                settings,
                username,
                "wrong-password",
                limiter=DatabaseRateLimiter(db),
                client="127.0.0.1",
            )
    assert len(verified) == 2 and all(h.startswith("$argon2") for h in verified)
    assert verified[0] != verified[1]  # the unknown user was checked against a dummy hash
