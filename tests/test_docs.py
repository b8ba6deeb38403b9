"""The newcomer's path (issue 9.5): the README's commands run as written against a real
server, the docs agree with the README, docs/settings.md is up to date, the Avro example
works, and /docs and /redoc load nothing from elsewhere."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from conftest import BSS, ServerProc

from bss import settings_doc

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
README_URL = "http://127.0.0.1:8080"


def _blocks(text: str, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", text, flags=re.S)


def _readme_admin() -> dict[str, str]:
    serve = next(b for b in _blocks(README, "sh") if "bss serve" in b)
    found = dict(re.findall(r"BSS_ADMIN_(USERNAME|PASSWORD)=(\S+)", serve))
    return {"admin_username": found["USERNAME"], "admin_password": found["PASSWORD"]}


@pytest.fixture(scope="module")
def readme_server(tmp_path_factory: pytest.TempPathFactory):
    proc = ServerProc(tmp_path_factory.mktemp("readme") / "data", _readme_admin()).start()
    yield proc
    proc.stop()


def _answers(stdout: str) -> list[dict]:
    """The JSON answers curl printed one after another (curl adds no newline)."""
    decoder, found, at = json.JSONDecoder(), [], 0
    while at < len(stdout):
        if stdout[at].isspace():
            at += 1
            continue
        value, at = decoder.raw_decode(stdout, at)
        found.append(value["response"])
    return found


def _run_shell(script: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-eu", "-c", script],
        cwd=cwd,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=180,
    )


def test_readme_runs_as_written(readme_server, tmp_path):
    """The curl block, then the `bss` block, with only the base URL pointed at the test's
    server (and `.venv/bin/bss` at this environment's `bss`)."""
    curl_block = next(b for b in _blocks(README, "sh") if "curl" in b)
    assert f"B={README_URL};" in curl_block
    out = _run_shell(curl_block.replace(README_URL, readme_server.url), tmp_path)
    assert out.returncode == 0, out.stderr
    answers = _answers(out.stdout)
    job = answers[-2]["batch_segment_upload_job"]
    assert (job["phase"], job["num_valid"]) == ("completed", 3)
    assert [s["id"] for s in answers[-1]["segments"]] == [1, 2]

    bss_block = next(b for b in _blocks(README, "sh") if "bss login" in b)
    script = bss_block.replace(README_URL, readme_server.url).replace(".venv/bin/bss", str(BSS))
    out = _run_shell(script, tmp_path, XDG_CONFIG_HOME=str(tmp_path / "config"))
    assert out.returncode == 0, out.stderr
    job = json.loads(out.stdout)
    assert (job["phase"], job["num_valid"]) == ("completed", 3)


def test_avro_example_runs(readme_server, tmp_path):
    """docs/avro-example.md's Python, after the README's set-up (member 456, segments 1, 2)."""
    doc = (ROOT / "docs" / "avro-example.md").read_text()
    (script,) = _blocks(doc, "python")
    out = subprocess.run(
        [sys.executable, "-c", script.replace(README_URL, readme_server.url)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "completed 4"


def test_docs_use_the_readme_commands_and_passwords():
    password = _readme_admin()["admin_password"]
    for path in sorted((ROOT / "docs").glob("*.md")):
        for block in _blocks(path.read_text(), "sh"):
            for line in block.splitlines():
                assert not re.search(r"(^|[;&|(]\s*)bss ", line), (
                    f"{path.name}: write .venv/bin/bss, as the README does: {line}"
                )
                if "BSS_ADMIN_PASSWORD" in line or '"username":"admin"' in line:
                    assert password in line, f"{path.name}: use the README's password: {line}"


def test_settings_doc_is_up_to_date():
    current = (ROOT / "docs" / "settings.md").read_text()
    assert current == settings_doc.render(), (
        f"docs/settings.md is out of date: run `{settings_doc.REGENERATE}` and commit it"
    )


def test_docs_pages_load_only_assets_served_by_the_service(readme_server):
    for page in ("/docs", "/redoc"):
        html = httpx.get(readme_server.url + page).text
        assets = re.findall(r"""(?:src|href)=["']([^"']+)["']""", html)
        assets += re.findall(r"""url: ?["']([^"']+)["']""", html)
        assert any(a.endswith(".js") for a in assets), html
        for asset in assets:
            assert asset.startswith("/"), f"{page} loads {asset} from elsewhere"
            assert httpx.get(readme_server.url + asset).status_code == 200, asset
    assert "/docs" in README and "/redoc" in README


def test_readme_says_how_to_change_the_port_and_that_command_listens_there(tmp_path):
    found = re.search(r"`(\.venv/bin/bss serve --port) (\d+) (--host) (\S+)`", README)
    assert found is not None, "the README shows how to change the port"
    from conftest import free_port

    port = free_port()
    command = [str(BSS), "serve", "--port", str(port), "--host", "127.0.0.1"]
    proc = subprocess.Popen(
        command,
        cwd=tmp_path,
        env={**os.environ, **{f"BSS_{k.upper()}": v for k, v in _readme_admin().items()}},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(600):
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200:
                    break
            except httpx.TransportError:
                proc.poll()
                assert proc.returncode is None, "bss serve --port exited"
                import time

                time.sleep(0.1)
        else:
            raise AssertionError("bss serve --port did not listen there")
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_the_walkthrough_no_longer_describes_the_duckdb_one_process_rule():
    walkthrough = (ROOT / "docs" / "http-walkthrough.md").read_text()
    assert "DuckDB" not in walkthrough and "one process at a time" not in walkthrough
    assert "bss worker" in walkthrough and "processes.md" in walkthrough


#: Job error codes the BSS API documents, kept to the letter whatever their case.
DOCUMENTED_JOB_CODES = {"uploading-error", "processing-error", "FILESIZE_LIMIT_EXCEEDED"}


def _job_error_codes() -> set[str]:
    """Every error_code a job can end with: the named ones, and every code a file reader
    raises by its literal (InputError("..."), found in the source so a new one is not missed)."""
    from bss.formats.avro_container import CORRUPT
    from bss.formats.avro_schema import SCHEMA_INVALID
    from bss.formats.detect import EMPTY_FILE, NOT_A_SEGMENT_FILE
    from bss.ingest.engine import TOO_MANY_INVALID
    from bss.lifecycle.replace import REMOVAL_OVER_LIMIT
    from bss.passive.scanner import FILESIZE_LIMIT_EXCEEDED, REPLACE_LINKS

    named = {CORRUPT, SCHEMA_INVALID, EMPTY_FILE, NOT_A_SEGMENT_FILE, TOO_MANY_INVALID}
    named |= {REMOVAL_OVER_LIMIT, FILESIZE_LIMIT_EXCEEDED, REPLACE_LINKS}
    jobs = {"uploading-error", "processing-error", "upload_url_expired", "upload_url_replaced"}
    jobs.add("file_missing")
    source = "\n".join(p.read_text() for p in (ROOT / "src" / "bss").rglob("*.py"))
    raised = set(re.findall(r'InputError\(\s*"([^"]+)"', source))
    return named | jobs | raised


def test_job_error_codes_are_lower_snake_case_documented_and_explained():
    from bss.web.views import FAILURE_HELP

    codes = _job_error_codes()
    assert {"empty_file", "not_a_segment_file", "corrupt_gzip", "invalid_avro"} <= codes
    own = sorted(c for c in codes - DOCUMENTED_JOB_CODES if not re.fullmatch(r"[a-z][a-z0-9_]*", c))
    assert own == []
    walkthrough = (ROOT / "docs" / "http-walkthrough.md").read_text()
    table = set(re.findall(r"^\| `([A-Za-z_-]+)` \|", walkthrough, flags=re.M))
    assert codes <= table, sorted(codes - table)
    assert codes <= set(FAILURE_HELP), sorted(codes - set(FAILURE_HELP))  # the dashboard's help


def test_the_once_per_job_counters_are_documented():
    from bss.ingest.engine import DEDUPLICATED

    walkthrough = (ROOT / "docs" / "http-walkthrough.md").read_text()
    once = walkthrough.split("count each segment once per job", 1)[0].rsplit("\n\n", 1)[-1]
    assert all(f"`{name}`" in once for name in DEDUPLICATED)
    dashboard = (ROOT / "docs" / "dashboard.md").read_text()
    assert "once per job" in dashboard


def test_the_scale_out_runbook_creates_the_bucket_and_gives_each_process_its_own_dirs(
    tmp_path,
):
    from passive_util import MotoServer

    runbook = (ROOT / "docs" / "scale-out.md").read_text().split("## Runbook", 1)[1]
    runbook = runbook.split("\n## ", 1)[0]
    bucket_block, machine_block = _blocks(runbook, "sh")[:2]
    moto = MotoServer()
    try:
        script = bucket_block.replace("http://10.0.0.20:9000", moto.url).replace(
            ".venv/bin/python", sys.executable
        )
        out = _run_shell(script, tmp_path)
        assert out.returncode == 0, out.stderr
        import boto3

        s3 = boto3.client(
            "s3",
            endpoint_url=moto.url,
            aws_access_key_id="bss",
            aws_secret_access_key="change-me-too",
            region_name="us-east-1",
        )
        # The moto server may be shared with earlier tests' buckets: the runbook's is there.
        assert "acme-bss" in [b["Name"] for b in s3.list_buckets()["Buckets"]]
    finally:
        moto.stop()
    commands = [line for line in machine_block.replace("\\\n", " ").splitlines() if "bss " in line]
    dirs = [re.search(r"--data-dir (\S+)", c).group(1) for c in commands]  # type: ignore[union-attr]
    ports = [re.search(r"--port (\d+)", c).group(1) for c in commands if "serve" in c]  # type: ignore[union-attr]
    assert len(commands) == 4 and len(set(dirs)) == 4 and len(set(ports)) == 2
    assert [c for c in commands if "BSS_ADMIN_" in c] == [commands[0]]
    assert "serve" in commands[0]
    assert "replica" in runbook and "cluster-migration-barrier" in runbook
