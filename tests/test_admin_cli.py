"""The admin CLI (`bss login`, `bss member|user|segment|config ...`, `bss --version`), the
upload command's output, and the bootstrap messages: the real `bss` against a real server."""

from __future__ import annotations

import gzip
import json
import os
import stat
import subprocess
from pathlib import Path

from conftest import ADMIN_PASSWORD, ADMIN_USER, BSS, Api, ServerProc, legacy


class Cli:
    """Runs `bss` with its own config dir (where `bss login` keeps the token)."""

    def __init__(self, url: str, home: Path, **env: str) -> None:
        self.home = home
        self.env = {
            k: v
            for k, v in os.environ.items()
            if k not in ("BSS_USERNAME", "BSS_PASSWORD", "BSS_TOKEN")
        }
        self.env.update({"BSS_URL": url, "XDG_CONFIG_HOME": str(home), **env})

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        out = subprocess.run(
            [str(BSS), *args], env=self.env, capture_output=True, text=True, timeout=120
        )
        if check:
            assert out.returncode == 0, (args, out.stdout, out.stderr)
        return out

    def json(self, *args: str) -> object:
        return json.loads(self.run(*args).stdout)


def test_login_once_then_every_command_reuses_the_token(bss_server, tmp_path):
    # Three logins per window: every command logging in again would be stopped at the 4th.
    srv = bss_server(logins_per_window=3)
    cli = Cli(srv.url, tmp_path / "cfg")
    assert "not logged in" in cli.run("member", "list", check=False).stderr
    out = cli.run("login", "--username", ADMIN_USER, "--password", ADMIN_PASSWORD)
    token_file = tmp_path / "cfg" / "bss" / "tokens.json"
    assert str(token_file) in out.stderr
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600

    assert cli.json("member", "create", "--id", "77", "--name", "Acme")["id"] == 77
    assert cli.json("member", "update", "77", "--name", "Acme Inc")["name"] == "Acme Inc"
    assert [m["id"] for m in cli.json("member", "list")] == [77]
    assert cli.json("member", "show", "77")["name"] == "Acme Inc"
    user = cli.json(
        "user", "create", "--name", "acme", "--new-password", "acme-pass-1", "--member-id", "77"
    )
    assert user["member_id"] == 77 and user["user_type"] == "member"
    assert [u["username"] for u in cli.json("user", "list", "--member-id", "77")] == ["acme"]
    assert cli.json("user", "show", str(user["id"]))["username"] == "acme"
    cli.json("user", "update", str(user["id"]), "--new-password", "acme-pass-2")

    seg = cli.json("segment", "create", "--member-id", "77", "--code", "autos", "--id", "4242")
    assert seg["id"] == 4242
    assert cli.json("segment", "update", "4242", "--state", "inactive")["state"] == "inactive"
    assert cli.json("segment", "show", "4242")["code"] == "autos"
    csv_file = tmp_path / "segments.csv"
    csv_file.write_text(
        "id,code,short_name,state,expire_minutes\n"
        "5001,cars,Cars,active,1440\n"
        ",bikes,Bikes,,\n"
        "5003,boats,,inactive,\n"
    )
    imported = cli.json("segment", "import", str(csv_file), "--member-id", "77")
    assert [(s["id"], s["code"], s["state"], s["expire_minutes"]) for s in imported] == [
        (5001, "cars", "active", 1440),
        (5004, "bikes", "active", None),  # automatic: above every id seen so far
        (5003, "boats", "inactive", None),
    ]
    json_file = tmp_path / "segments.json"
    json_file.write_text(json.dumps([{"id": 6000, "code": "planes"}, {"code": "cars"}]))
    failed = cli.run("segment", "import", str(json_file), "--member-id", "77", check=False)
    assert failed.returncode == 1 and "code 'cars' already exists" in failed.stderr
    json_file.write_text(json.dumps([{"id": 6000, "code": "planes"}]))
    assert cli.json("segment", "import", str(json_file), "--member-id", "77")[0]["id"] == 6000
    listed = cli.json("segment", "list", "--member-id", "77")
    assert [s["id"] for s in listed] == [4242, 5001, 5003, 5004, 6000]
    cli.run("segment", "delete", "6000")

    cfg = cli.json("config", "create", "--member-id", "77", "--set", "num_error_log_lines=5")
    assert cfg["num_error_log_lines"] == 5
    cfg = cli.json("config", "update", "--member-id", "77", "--set", 'separator_2="#"')
    assert cfg["separator_2"] == "#" and cfg["num_error_log_lines"] == 5
    assert cli.json("config", "show", "--member-id", "77")["separator_2"] == "#"
    assert [c["member_id"] for c in cli.json("config", "list")] == [77]
    cli.run("config", "delete", "--member-id", "77")
    assert cli.json("config", "show", "--member-id", "77")["separator_2"] == ";"
    cli.run("user", "delete", str(user["id"]))
    cli.run("member", "delete", "77")
    assert cli.json("member", "list") == []

    # BSS_TOKEN works without the file; a token that is no longer valid says what to do.
    token = json.loads(token_file.read_text())[srv.url]["token"]
    other = Cli(srv.url, tmp_path / "other", BSS_TOKEN=token)
    assert other.json("member", "list") == []
    cli.run("logout")
    assert srv.url not in json.loads(token_file.read_text())
    expired = other.run("member", "list", check=False)
    assert expired.returncode == 1 and "NOAUTH" in expired.stderr


def test_cli_version():
    out = subprocess.run([str(BSS), "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "bss 0.1.0"


def test_upload_prints_only_the_result_on_stdout(bss_server, tmp_path):
    srv = bss_server(max_file_bytes=2000)
    api = Api(srv.url, ADMIN_USER, ADMIN_PASSWORD)
    api.member(5)
    seg = api.segment(5, "up")
    cli = Cli(srv.url, tmp_path / "cfg", BSS_USERNAME=ADMIN_USER, BSS_PASSWORD=ADMIN_PASSWORD)
    path = tmp_path / "seg.gz"
    path.write_bytes(gzip.compress(legacy([f"{100 + i},{seg['id']}:0" for i in range(20)])))
    out = cli.run("upload", str(path), "--member-id", "5", "--json", "--poll", "0.1")
    job = json.loads(out.stdout)  # nothing but the job on stdout
    assert job["phase"] == "completed" and job["num_valid"] == 20
    assert "uploading" in out.stderr and "100%" in out.stderr
    out = cli.run("upload", str(path), "--member-id", "5", "--poll", "0.1")
    assert out.stdout.endswith(": completed; num_valid 20, num_valid_user 20\n")
    big = tmp_path / "big.txt"
    big.write_bytes(legacy([f"{100 + i},{seg['id']}:0" for i in range(300)]))
    out = cli.run("upload", str(big), "--member-id", "5", check=False)
    assert out.returncode == 1 and out.stdout == ""
    assert f"has {big.stat().st_size} bytes, over the service's limit of 2000 bytes" in out.stderr


def _log_messages(proc: ServerProc) -> list[str]:
    return [json.loads(line)["msg"] for line in proc.log().splitlines() if line.startswith("{")]


def test_bootstrap_says_how_to_create_an_admin_and_reports_an_ignored_password(tmp_path):
    bare = ServerProc(tmp_path / "bare", {"admin_username": "", "admin_password": ""}).start()
    bare.stop()
    assert any(m.startswith("no users yet, so nobody can log in") for m in _log_messages(bare))

    first = ServerProc(tmp_path / "data", {}).start()
    first.stop()
    assert "created the admin user from BSS_ADMIN_USERNAME" in _log_messages(first)
    again = ServerProc(tmp_path / "data", {"admin_password": "a-new-password"}).start()
    try:
        ignored = [m for m in _log_messages(again) if m.startswith("BSS_ADMIN_PASSWORD differs")]
        assert len(ignored) == 1 and "bss user update 1 --new-password" in ignored[0]
        # The stored password stays.
        assert Api(again.url).login(ADMIN_USER, ADMIN_PASSWORD)["status"] == "OK"
    finally:
        again.stop()


def test_cli_flags_read_as_flags_and_dash_capital_v_prints_the_version():
    out = subprocess.run([str(BSS), "-V"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "bss 0.1.0"
    for command in (["validate"], ["upload"]):
        text = subprocess.run(
            [str(BSS), *command, "--help"],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "COLUMNS": "200"},
        ).stdout
        assert "<bool>" not in text, text
        flag = "--apply" if command == ["validate"] else "--json"
        line = next(line for line in text.splitlines() if flag in line)
        assert "<" not in line.split(flag, 1)[1].split("  ", 2)[1], line
    assert "<int>" in text  # options that take a value still show its type


def test_login_to_an_unreachable_url_prints_one_line(tmp_path):
    from conftest import free_port

    url = f"http://127.0.0.1:{free_port()}"
    out = Cli(url, tmp_path / "cfg").run("login", "--username", "a", "--password", "b", check=False)
    assert out.returncode == 1
    assert out.stderr.splitlines() == [f"error: cannot reach {url}: [Errno 111] Connection refused"]


def test_validate_takes_the_csv_segment_import_takes(tmp_path):
    (tmp_path / "f.txt").write_text("11,5001:0;5002:0;5003:0\n")
    (tmp_path / "segments.csv").write_text(
        "id,code,short_name,state,expire_minutes\n"
        "5001,cars,Cars,active,1440\n"
        "5002,bikes,,inactive,\n"
    )
    command = [str(BSS), "validate", str(tmp_path / "f.txt"), "--member-id", "77", "--segments"]
    out = subprocess.run([*command, str(tmp_path / "segments.csv")], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    fields = json.loads(out.stdout)
    assert (fields["num_valid"], fields["num_inactive_segment"], fields["num_invalid_segment"]) == (
        1,
        1,
        1,
    )
    # A JSON segment without member_id, and CSV cells that are no numbers: one line, status 2.
    (tmp_path / "segments.json").write_text(json.dumps([{"id": 5001, "code": "cars"}]))
    (tmp_path / "bad.csv").write_text("5001,cars,,active,soon\n")
    for name, message in (
        ("segments.json", "segment 1 has no member_id"),
        ("bad.csv", "segment 1: expire_minutes 'soon' is not an integer"),
    ):
        out = subprocess.run([*command, str(tmp_path / name)], capture_output=True, text=True)
        assert out.returncode == 2
        assert out.stderr.splitlines() == [
            f"error: invalid segments file {tmp_path / name}: {message}"
        ]


def test_show_by_username_segment_show_by_member_and_unknown_config_fields(bss_server, tmp_path):
    srv = bss_server()
    cli = Cli(srv.url, tmp_path / "cfg", BSS_USERNAME=ADMIN_USER, BSS_PASSWORD=ADMIN_PASSWORD)
    for member_id in (77, 78):
        cli.json("member", "create", "--id", str(member_id))
    seg = cli.json("segment", "create", "--member-id", "78", "--code", "c78")
    user = cli.json(
        "user", "create", "--name", "acme", "--new-password", "acme-pass-1", "--member-id", "77"
    )
    assert cli.json("user", "show", "acme") == user
    assert cli.json("user", "show", str(user["id"])) == user
    missing = cli.run("user", "show", "nobody", check=False)
    assert missing.returncode == 1 and "no user named 'nobody'" in missing.stderr
    # --member-id scopes the lookup as it does for the other segment commands.
    seg_id = str(seg["id"])
    assert cli.json("segment", "show", seg_id, "--member-id", "78")["code"] == "c78"
    other = cli.run("segment", "show", seg_id, "--member-id", "77", check=False)
    assert other.returncode == 1 and "segment not found" in other.stderr

    before = cli.json("config", "show", "--member-id", "77")
    refused = cli.run(
        "config", "update", "--member-id", "77", "--set", "nosuchfield=1", check=False
    )
    assert refused.returncode == 2
    assert "unknown config field(s) nosuchfield" in refused.stderr
    refused = cli.run(
        "config", "create", "--member-id", "77", "--set", "num_error_log_line=5", check=False
    )
    assert refused.returncode == 2 and "num_error_log_line" in refused.stderr
    assert cli.json("config", "show", "--member-id", "77") == before
