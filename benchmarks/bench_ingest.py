"""Ingest throughput against a parse-only floor measured in the same run.

Writes a deterministic legacy file of N lines (1 to 6 segments a line, 63-bit UIDs, 2,000
segments, mixed expirations including removals), then times, each in a fresh process:

  (a) DuckDB reading the file and splitting it into typed user/segment pairs: the floor a
      data engineer would reach for instead;
  (b) our complete path (parse, validate, count, report, apply) into a fresh embedded store.

Prints pairs per second for both, the ratio b/a and each side's peak RSS.

    python benchmarks/bench_ingest.py --lines 2000000

With `--format avro` it writes a deterministic deflate Avro file with the published schema
instead (N records: 60% anid, 20% device_id, 20% external_id, 1 to 6 segments each, written
by fastavro) and times, each in a fresh process: our complete path as a dry run (read,
validate, count, report: `bss validate` without --apply), fastavro iterating the records
and nothing else, DuckDB's `read_avro` counting records and segments, and our dry run on a
legacy file of as many lines (as many pairs, the same distribution); then the ratios.

    python benchmarks/bench_ingest.py --format avro --lines 1000000

With `--replace` it measures a replace-mode job against the same file appended (each in a
fresh process, on a copy of one embedded store holding a segment of N members): the file
holds 90% of those members, so the replace removes the other 10% (the issue's 10M-pair
segment replaced by 9M users is `--lines 10000000`).

    python benchmarks/bench_ingest.py --replace --lines 1000000

The replace side does what a replace job does: the store keeps the keys it writes
(`written_keys`), then in one walk of the segment and one store write transaction it drops
the entries below the floor counting them (reading only the entries the job did not
write), and before committing writes the floor to a database (SQLite, bss.lifecycle.floors). Three rounds,
alternating; each line gives wall and CPU seconds of both sides, then the median ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

SEGMENTS = 2000
MEMBER_ID = 958
OUT = Path(__file__).parent / "out"


def write_file(path: Path, n_lines: int, seed: int = 7) -> int:
    """Write the file in blocks; return the number of pairs in it."""
    rng = np.random.default_rng(seed)
    expirations = np.array([0, 1440, 10080, 43200, -1])
    pairs = 0
    with path.open("w", encoding="latin-1") as out:
        for start in range(0, n_lines, 200_000):
            n = min(200_000, n_lines - start)
            uids = rng.integers(1, 2**63, n, dtype=np.int64)
            counts = rng.integers(1, 7, n)
            total = int(counts.sum())
            pairs += total
            segs = rng.integers(1, SEGMENTS + 1, total)
            exps = expirations[rng.integers(0, len(expirations), total)]
            blocks = [f"{s}:{e}" for s, e in zip(segs.tolist(), exps.tolist(), strict=True)]
            pos = 0
            lines = []
            for uid, k in zip(uids.tolist(), counts.tolist(), strict=True):
                lines.append(f"{uid},{';'.join(blocks[pos : pos + k])}\n")
                pos += k
            out.write("".join(lines))
    return pairs


def write_avro_file(path: Path, n_records: int, seed: int = 7) -> int:
    """The Avro file of --format avro; returns the number of segment entries in it."""
    import fastavro

    from bss.formats.avro_schema import published_schema

    rng = np.random.default_rng(seed)
    expirations = [0, 1440, 10080, 43200, -1]
    domains = ["idfa", "aaid", "rida", "tifa"]
    namespace = "xandr.avro"
    total = 0

    def records():
        nonlocal total
        for start in range(0, n_records, 100_000):
            n = min(100_000, n_records - start)
            kinds = rng.random(n).tolist()
            counts = rng.integers(1, 7, n)
            uids = rng.integers(1, 2**63, n, dtype=np.int64).tolist()
            segs = rng.integers(1, SEGMENTS + 1, int(counts.sum())).tolist()
            exps = rng.integers(0, len(expirations), int(counts.sum())).tolist()
            total += int(counts.sum())
            pos = 0
            for i, k in enumerate(counts.tolist()):
                if kinds[i] < 0.6:
                    uid: object = uids[i]
                elif kinds[i] < 0.8:
                    device = {"id": f"{uids[i]:032x}", "domain": domains[uids[i] % 4]}
                    uid = (f"{namespace}.device_id", device)
                else:
                    uid = (f"{namespace}.external_id", {"id": f"cust{uids[i]}", "member_id": 0})
                segments = [
                    {"id": segs[pos + j], "code": "", "member_id": 0,
                     "expiration": expirations[exps[pos + j]], "timestamp": 0, "value": 0}
                    for j in range(k)
                ]  # fmt: skip
                pos += k
                yield {"uid": uid, "segments": segments}

    with path.open("wb") as out:
        fastavro.writer(out, fastavro.parse_schema(published_schema()), records(), codec="deflate")
    return total


def cpu_seconds() -> float:
    """User + system CPU of this process, every thread (DuckDB's and Polars' included)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_fastavro(path: Path) -> dict[str, float]:
    import fastavro

    started, cpu = time.perf_counter(), cpu_seconds()
    records = pairs = 0
    with path.open("rb") as f:
        for record in fastavro.reader(f):
            records += 1
            pairs += len(record["segments"])
    return {
        "seconds": time.perf_counter() - started,
        "cpu": cpu_seconds() - cpu,
        "records": records,
        "pairs": pairs,
    }


def run_duckdb_avro(path: Path) -> dict[str, float]:
    import duckdb

    from bss.formats.avro_native import extension_path

    con = duckdb.connect(config={"autoinstall_known_extensions": False})
    con.execute(f"LOAD '{extension_path()}'")
    started, cpu = time.perf_counter(), cpu_seconds()
    records, pairs = con.execute(  # type: ignore[misc]
        f"SELECT count(*), sum(len(segments)) FROM read_avro('{path}')"
    ).fetchone()
    return {
        "seconds": time.perf_counter() - started,
        "cpu": cpu_seconds() - cpu,
        "records": records,
        "pairs": pairs,
    }


def run_bss_dry(path: Path) -> dict[str, float]:
    """Our complete path without a store: what `bss validate` does without --apply."""
    from bss.formats.config import BatchSegmentConfig
    from bss.ingest.engine import ingest_file
    from bss.ingest.registry import SegmentRegistry
    from bss.settings import Settings
    from bss.store.dry import DryRunStore

    registry = SegmentRegistry.from_records(
        {"id": i, "code": f"seg{i}", "member_id": MEMBER_ID} for i in range(1, SEGMENTS + 1)
    )
    with tempfile.TemporaryDirectory() as tmp:
        started, cpu = time.perf_counter(), cpu_seconds()
        result = ingest_file(
            path,
            member_id=MEMBER_ID,
            seq_base=0,
            config=BatchSegmentConfig(),
            registry=registry,
            store=DryRunStore(),
            now=int(time.time()),
            error_report_path=Path(tmp) / "errors.csv",
            max_decompressed_bytes=10 * 536_870_912,
            chunk_bytes=int(os.environ.get("BSS_CHUNK_BYTES", Settings().chunk_bytes)),
        )
        elapsed, used = time.perf_counter() - started, cpu_seconds() - cpu
    assert result.error_code is None, result.error_message
    return {
        "seconds": elapsed,
        "cpu": used,
        "records": result.lines_read,
        "pairs": result.counters.num_valid,
    }


def run_duckdb(path: Path) -> dict[str, float]:
    import duckdb

    con = duckdb.connect()
    started = time.perf_counter()
    con.execute(
        f"""
        CREATE TEMP TABLE pairs AS
        WITH lines AS (
            SELECT line FROM read_csv('{path}', columns={{'line': 'VARCHAR'}}, delim='\\x01',
                                      header=false, quote='', escape='')
        ), blocks AS (
            SELECT split_part(line, ',', 1) AS uid,
                   unnest(string_split(split_part(line, ',', 2), ';')) AS block
            FROM lines
        )
        SELECT uid::UBIGINT AS uid, split_part(block, ':', 1)::BIGINT AS seg_id,
               split_part(block, ':', 2)::BIGINT AS expiration
        FROM blocks
        """
    )
    elapsed = time.perf_counter() - started
    (n,) = con.execute("SELECT count(*) FROM pairs").fetchone()  # type: ignore[misc]
    return {"seconds": elapsed, "pairs": n}


def run_bss(path: Path) -> dict[str, float]:
    from bss.formats.config import BatchSegmentConfig
    from bss.ingest.engine import ingest_file
    from bss.ingest.registry import SegmentRegistry
    from bss.settings import Settings
    from bss.store.base import JOB_SEQ_SPAN
    from bss.store.keyvalue import LmdbStore

    registry = SegmentRegistry.from_records(
        {"id": i, "code": f"seg{i}", "member_id": MEMBER_ID} for i in range(1, SEGMENTS + 1)
    )
    with tempfile.TemporaryDirectory() as tmp:
        store = LmdbStore(Path(tmp) / "m.lmdb")
        started = time.perf_counter()
        result = ingest_file(
            path,
            member_id=MEMBER_ID,
            seq_base=JOB_SEQ_SPAN,
            config=BatchSegmentConfig(),
            registry=registry,
            store=store,
            now=int(time.time()),
            error_report_path=Path(tmp) / "errors.csv",
            max_decompressed_bytes=10 * 536_870_912,
            chunk_bytes=int(os.environ.get("BSS_CHUNK_BYTES", Settings().chunk_bytes)),
        )
        elapsed = time.perf_counter() - started
        store.close()
    assert result.error_code is None, result.error_message
    return {"seconds": elapsed, "pairs": result.counters.num_valid}


def _one_segment_file(path: Path, users: int) -> None:
    with path.open("w") as out:
        for start in range(0, users, 200_000):
            out.write(
                "".join(f"{u},1:0\n" for u in range(start + 1, min(users, start + 200_000) + 1))
            )


def _replace_paths(path: Path) -> tuple[Path, Path]:
    """(the store holding the old members, the new file) of a --replace run."""
    return path.parent / f"{path.name}.store", path.parent / f"{path.name}.new"


def _ingest_one_segment(path: Path, store: Any, seq_base: int, written: Any = None) -> Any:
    from bss.formats.config import BatchSegmentConfig
    from bss.ingest.engine import ingest_file
    from bss.ingest.registry import SegmentRegistry

    return ingest_file(
        path,
        member_id=MEMBER_ID,
        seq_base=seq_base,
        config=BatchSegmentConfig(),
        registry=SegmentRegistry.from_records([{"id": 1, "code": "s", "member_id": MEMBER_ID}]),
        store=store,
        now=int(time.time()),
        max_decompressed_bytes=10 * 536_870_912,
        written=written,
    )


def run_replace_job(path: Path, replace: bool) -> dict[str, float]:
    import functools

    from bss.db import init_db, make_engine
    from bss.formats.config import BatchSegmentConfig
    from bss.lifecycle.floors import SegmentFloors, set_floors
    from bss.lifecycle.replace import ReplaceState, apply_floors
    from bss.store.base import JOB_SEQ_SPAN
    from bss.store.keyvalue import LmdbStore

    base, new_file = _replace_paths(path)
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        copy = Path(tmp) / "m.lmdb"
        shutil.copytree(base, copy)
        # The copy's pages written back now, not behind the timed job's own syncs.
        os.sync()
        url = f"sqlite:///{Path(tmp) / 'bss.db'}"
        db = make_engine(url)
        init_db(db)
        store = LmdbStore(copy)
        store.floors = SegmentFloors.for_url(url).reader(None)
        before = store.segment_member_counts(int(time.time()))
        written = store.written_keys() if replace else None
        started, cpu = time.perf_counter(), time.process_time()
        result = _ingest_one_segment(new_file, store, 2 * JOB_SEQ_SPAN, written)
        removed = 0
        if written is not None:
            state = ReplaceState(before=before)
            apply_floors(
                store,
                added=result.added_by_segment,
                seq_base=2 * JOB_SEQ_SPAN,
                state=state,
                config=BatchSegmentConfig(),
                force=True,
                now=int(time.time()),
                keep_state=lambda _state: None,
                publish=functools.partial(set_floors, db, seq=2 * JOB_SEQ_SPAN, region=None),
                written=written,
            )
            written.close()
            removed = sum((state.removed or {}).values())
        elapsed, used = time.perf_counter() - started, time.process_time() - cpu
        members = store.segment_member_counts(int(time.time())).get(1, 0)
        store.close()
    return {
        "seconds": elapsed,
        "job_cpu_s": used,
        "pairs": result.counters.num_valid,
        "removed": removed,
        "members": members,
    }


def prepare_replace(path: Path) -> dict[str, float]:
    from bss.store.base import JOB_SEQ_SPAN
    from bss.store.keyvalue import LmdbStore

    base, _ = _replace_paths(path)
    store = LmdbStore(base)
    result = _ingest_one_segment(path, store, JOB_SEQ_SPAN)
    store.close()
    return {"seconds": 0.0, "pairs": result.counters.num_valid}


RUNS = {
    "replace-prepare": prepare_replace,
    "replace-append": lambda path: run_replace_job(path, replace=False),
    "replace": lambda path: run_replace_job(path, replace=True),
    "duckdb": run_duckdb,
    "bss": run_bss,
    "bss-dry": run_bss_dry,
    "fastavro": run_fastavro,
    "duckdb-avro": run_duckdb_avro,
}


def _rss_anon_kb() -> int:
    """Anonymous resident memory: the heap, not the pages of a memory-mapped store file."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("RssAnon:"):
                return int(line.split()[1])
    return 0


def child(which: str, path: Path) -> None:
    peak, done = [0], threading.Event()

    def sample() -> None:
        while not done.wait(0.02):
            peak[0] = max(peak[0], _rss_anon_kb())

    threading.Thread(target=sample, daemon=True).start()
    cpu = time.process_time()
    figures = RUNS[which](path)
    figures["cpu_s"] = time.process_time() - cpu
    done.set()
    figures["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    figures["peak_rss_anon_mb"] = max(peak[0], _rss_anon_kb()) / 1024
    print(json.dumps(figures))


def measure(which: str, path: Path) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, __file__, "--child", which, "--file", str(path)],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=2_000_000)
    parser.add_argument("--skip-duckdb", action="store_true", help="only our path (RSS runs)")
    parser.add_argument("--format", choices=["legacy", "avro"], default="legacy")
    parser.add_argument("--child", choices=sorted(RUNS))
    parser.add_argument("--file", type=Path)
    parser.add_argument("--replace", action="store_true", help="replace mode against append")
    args = parser.parse_args()
    if args.child:
        child(args.child, args.file)
        return
    if args.replace:
        main_replace(args.lines)
        return
    if args.format == "avro":
        main_avro(args.lines)
        return

    OUT.mkdir(exist_ok=True)
    path = OUT / f"legacy-{args.lines}.txt"
    if not path.exists():
        print(f"writing {path} ...", flush=True)
        write_file(path, args.lines)
    size_mb = path.stat().st_size / 1e6
    print(f"file: {args.lines:,} lines, {size_mb:.0f} MB")
    print(f"load average before: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    ours = measure("bss", path)
    print(
        f"bss    complete path: {ours['seconds']:7.2f} s  {ours['pairs'] / ours['seconds']:12,.0f} pairs/s"
        f"  CPU {ours['cpu_s']:6.2f} s  peak RSS {ours['peak_rss_mb']:.0f} MB"
        f"  peak RssAnon {ours['peak_rss_anon_mb']:.0f} MB"
    )
    if args.skip_duckdb:
        return
    floor = measure("duckdb", path)
    print(
        f"duckdb parse floor:   {floor['seconds']:7.2f} s  {floor['pairs'] / floor['seconds']:12,.0f} pairs/s"
        f"  CPU {floor['cpu_s']:6.2f} s  peak RSS {floor['peak_rss_mb']:.0f} MB"
    )
    if floor["pairs"] != ours["pairs"]:
        print(f"note: pair counts differ: duckdb {floor['pairs']:,} vs bss valid {ours['pairs']:,}")
    print(
        f"ratio bss/duckdb: {ours['seconds'] / floor['seconds']:.2f} (wall), "
        f"{ours['cpu_s'] / floor['cpu_s']:.2f} (CPU seconds)"
    )
    print(f"load average after: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")


def main_replace(members: int) -> None:
    OUT.mkdir(exist_ok=True)
    path = OUT / f"replace-{members}.txt"
    base, new_file = _replace_paths(path)
    if not base.exists():
        print(f"writing {path} and its store ...", flush=True)
        _one_segment_file(path, members)
        _one_segment_file(new_file, members * 9 // 10)
        measure("replace-prepare", path)
    print(f"segment of {members:,} members; the file holds {members * 9 // 10:,} of them")
    print(f"load average before: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    walls, cpus = [], []
    for _ in range(3):  # alternating, so that neither side always runs on a warmer cache
        appended = measure("replace-append", path)
        replaced = measure("replace", path)
        walls.append(replaced["seconds"] / appended["seconds"])
        cpus.append(replaced["job_cpu_s"] / appended["job_cpu_s"])
        print(
            f"append {appended['seconds']:6.2f} s (CPU {appended['job_cpu_s']:6.2f} s)"
            f"  replace {replaced['seconds']:6.2f} s (CPU {replaced['job_cpu_s']:6.2f} s)"
            f"  removed {replaced['removed']:,.0f}, members after {replaced['members']:,.0f}"
            f"  ratio {walls[-1]:.2f} (CPU {cpus[-1]:.2f})"
            f"  peak RssAnon {appended['peak_rss_anon_mb']:.0f} / {replaced['peak_rss_anon_mb']:.0f} MB"
        )
    print(f"median ratio: wall {sorted(walls)[1]:.2f}, CPU {sorted(cpus)[1]:.2f}")
    print(f"load average after: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")


def main_avro(n_records: int) -> None:
    OUT.mkdir(exist_ok=True)
    path = OUT / f"avro-{n_records}.avro"
    if not path.exists():
        print(f"writing {path} ...", flush=True)
        write_avro_file(path, n_records)
    legacy = OUT / f"legacy-{n_records}.txt"
    if not legacy.exists():
        print(f"writing {legacy} ...", flush=True)
        write_file(legacy, n_records)
    print(f"file: {n_records:,} Avro records, {path.stat().st_size / 1e6:.0f} MB (deflate)")
    load = os.getloadavg()[0]
    figures = {
        "bss dry run (ours)": measure("bss-dry", path),
        "fastavro iteration": measure("fastavro", path),
        "duckdb read_avro count": measure("duckdb-avro", path),
        "bss dry run, legacy file": measure("bss-dry", legacy),
    }
    print(f"load average (1 min) {load:.1f} before, {os.getloadavg()[0]:.1f} after")
    for label, f in figures.items():
        print(
            f"{label:26} {f['seconds']:7.2f} s  CPU {f['cpu']:6.2f} s"
            f"  {f['records'] / f['seconds']:11,.0f} records/s"
            f"  {f['pairs'] / f['seconds']:11,.0f} pairs/s  peak RSS {f['peak_rss_mb']:.0f} MB"
        )
    ours = figures["bss dry run (ours)"]
    for label in ("fastavro iteration", "duckdb read_avro count"):
        other = figures[label]
        print(
            f"ratio ours/{label.split()[0]:9} wall {ours['seconds'] / other['seconds']:5.2f}"
            f"  CPU {ours['cpu'] / other['cpu']:5.2f}"
        )
    leg = figures["bss dry run, legacy file"]
    wall = (ours["seconds"] / ours["pairs"]) / (leg["seconds"] / leg["pairs"])
    cpu = (ours["cpu"] / ours["pairs"]) / (leg["cpu"] / leg["pairs"])
    print(f"ratio ours/legacy dry run, per pair: wall {wall:.2f}  CPU {cpu:.2f}")
    rate = ours["records"] / ours["seconds"]
    print(f"target: >= 500,000 records/s and per pair <= legacy: {rate:,.0f} records/s, {wall:.2f}")


if __name__ == "__main__":
    main()
