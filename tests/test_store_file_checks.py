"""A damaged or missing embedded store file stops start-up with one line, exit status 2.

A truncated data.mdb used to kill `bss serve` with SIGBUS and no log line (and `--processes 2`
restarted its children in a loop); a missing one was silently recreated empty while completed
jobs still listed their counts. Real `bss serve` processes on a real data dir here.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from conftest import ADMIN_PASSWORD, ADMIN_USER, BSS, Api, ServerProc, legacy

from bss.store.keyvalue import LmdbStore, StoreFileDamaged


def run_serve(data_dir: Path, **env: str) -> subprocess.CompletedProcess[str]:
    proc = ServerProc(data_dir, env)
    return subprocess.run(
        [str(BSS), "serve", "--data-dir", str(data_dir), "--port", str(proc.port)],
        env=proc.env,
        capture_output=True,
        text=True,
        timeout=180,
    )


@pytest.fixture
def used_data_dir(bss_server) -> Path:
    """A data dir whose store holds memberships of a completed job; the server is stopped."""
    server = bss_server()
    admin = Api(server.url, ADMIN_USER, ADMIN_PASSWORD)
    admin.member(9301)
    seg = admin.segment(9301, "kept")["id"]
    job = admin.run(9301, legacy([f"{10**15 + i},{seg}:0" for i in range(5000)]))
    assert job["phase"] == "completed" and job["num_valid"] == 5000
    server.stop()
    return server.data_dir


def store_file(data_dir: Path) -> Path:
    (found,) = data_dir.rglob("data.mdb")
    return found


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    # One line (each API process of `--processes 2` says the same one before the stop).
    lines = {line for line in result.stderr.splitlines() if line.startswith("bss: ")}
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    return lines.pop()


@pytest.mark.parametrize("processes", ["1", "2"])
def test_a_truncated_store_file_stops_start_up_in_one_line(used_data_dir, processes):
    data = store_file(used_data_dir)
    size = data.stat().st_size
    with data.open("r+b") as fh:
        fh.truncate(size // 2)
    result = run_serve(used_data_dir, processes=processes)
    assert result.returncode == 2  # not -SIGBUS
    line = one_line(result)
    assert f"the membership store file {data} is cut short ({size // 2} bytes" in line
    assert "restore it from a backup" in line
    assert "restarting" not in result.stderr + result.stdout  # no restart loop


def test_a_missing_store_file_is_refused_unless_told(used_data_dir, bss_server):
    data = store_file(used_data_dir)
    os.unlink(data)
    result = run_serve(used_data_dir)
    assert result.returncode == 2
    line = one_line(result)
    assert f"the membership store file {data} is missing or empty" in line
    assert "BSS_STORE_ALLOW_EMPTY=true" in line
    assert not data.exists()  # nothing was created in its place

    server = ServerProc(used_data_dir, {"store_allow_empty": "true"}).start()
    try:
        admin = Api(server.url, ADMIN_USER, ADMIN_PASSWORD)
        assert admin.get("/segment", member_id=9301)["status"] == "OK"
        assert data.exists()
    finally:
        server.stop()


def test_the_check_is_where_the_store_opens(tmp_path):
    store = LmdbStore(tmp_path / "s")
    store.close()
    with pytest.raises(StoreFileDamaged, match="missing or empty"):
        os.unlink(tmp_path / "s" / "data.mdb")
        LmdbStore(tmp_path / "s", held_data=lambda: True)
    LmdbStore(tmp_path / "s", held_data=lambda: False).close()  # a new store: nothing held
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "data.mdb").write_bytes(b"not an LMDB file" * 512)
    with pytest.raises(StoreFileDamaged, match="cannot be opened"):
        LmdbStore(tmp_path / "t")
