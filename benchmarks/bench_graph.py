"""Identity graph benchmark: link ingest beside segment ingest, and expanded lookups beside
plain ones, in process on the embedded store.

    .venv/bin/python benchmarks/bench_graph.py --lines 200000 --links 200000

Builds two LMDB stores of the same segment file (`--lines` users, 3-4 segments each), one
of them also given `--links` links through a link job (groups of 2-8 related IDs: the
users, their devices and CRM ids, a few hubs with more links than BSS_LINKS_PER_ID). Prints
segment ingest in pairs/s and link ingest in links/s (same run), then expanded lookups of
IDs with 2-5 related IDs (rate, rate per CPU second, p50, p99) and plain lookups on the store
with links against the same lookups on the store without (the ratio). One core: the lookups
run on one thread, the three kinds taking turns so that all see the same load. The store
files are read into the page cache first, as a serving process's traffic keeps them
(`--cold` skips that); the page faults that went to disk while measuring are printed.
Figures depend on the machine and its load: compare ratios from one run.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import harness

MEMBER_ID = 1
SEGMENTS = 20


def segment_file(path: Path, lines: int) -> Path:
    rng = random.Random(1)
    with path.open("w") as fh:
        for i in range(lines):
            segs = rng.sample(range(1, SEGMENTS + 1), 3 + i % 2)
            fh.write(f"{1_000_000 + i}," + ";".join(f"{s}:0" for s in segs) + "\n")
    return path


def link_file(path: Path, lines: int, links: int) -> tuple[Path, list[str]]:
    """Groups of 2-8 IDs around users; every 1000th group a hub of 40. Returns the file
    and the IDs that have 2-5 related IDs."""
    rng = random.Random(2)
    written, group, probes = 0, 0, []
    with path.open("w") as fh:
        while written < links:
            user = 1_000_000 + rng.randrange(lines)
            size = 40 if group % 1000 == 999 else rng.randint(2, 8)
            ids = [f"uid={user}"]
            ids += [f"device=idfa:{group:08x}-{k:04x}" for k in range(size // 2)]
            ids += [f"ext={MEMBER_ID}:crm{group}-{k}" for k in range(size - 1 - size // 2)]
            for other in ids[1:]:
                fh.write(f"{ids[0]},{other}\n")
                written += 1
            if 3 <= size <= 6:
                probes.append(ids[0])
            group += 1
    return path, probes


def build(store_dir: Path, segments: Path, links: Path | None) -> dict[str, float]:
    from bss.formats.config import BatchSegmentConfig
    from bss.identity.ingest import ingest_links_file
    from bss.ingest.engine import ingest_file
    from bss.ingest.registry import SegmentRegistry
    from bss.store.keyvalue import LmdbStore

    registry = SegmentRegistry.from_records(
        {"id": i, "code": f"seg{i}", "member_id": MEMBER_ID} for i in range(1, SEGMENTS + 1)
    )
    store = LmdbStore(store_dir)
    out: dict[str, float] = {}
    try:
        started = time.perf_counter()
        result = ingest_file(
            segments,
            member_id=MEMBER_ID,
            seq_base=0,
            config=BatchSegmentConfig(),
            registry=registry,
            store=store,
            now=int(time.time()),
            max_decompressed_bytes=10 << 30,
        )
        out["pairs_per_s"] = result.counters.num_valid / (time.perf_counter() - started)
        if links is not None:
            started = time.perf_counter()
            linked = ingest_links_file(
                links,
                member_id=MEMBER_ID,
                seq_base=1 << 40,
                store=store,
                asserted_at=int(time.time()),
                ttl_days=180,
                max_decompressed_bytes=10 << 30,
            )
            out["links_per_s"] = linked.counters.num_valid / (time.perf_counter() - started)
    finally:
        store.close()
    return out


def timed(cases: dict[str, Callable[[Any], object]], args: list, turns: int = 8) -> dict:
    """Per case: calls/s (wall), calls/s of CPU time (what one core gives whatever else runs
    on the machine), p50 and p99 ms of fn(arg) over args, one thread. The cases take turns
    over slices of args, so that on a shared machine all see the same load."""
    times: dict[str, list[float]] = {name: [] for name in cases}
    cpu = dict.fromkeys(cases, 0.0)
    step = -(-len(args) // turns)
    for start in range(0, len(args), step):
        for name, fn in cases.items():
            c0 = time.process_time()
            for arg in args[start : start + step]:
                t = time.perf_counter()
                fn(arg)
                times[name].append(time.perf_counter() - t)
            cpu[name] += time.process_time() - c0
    out = {}
    for name, spent in times.items():
        cuts = statistics.quantiles(spent, n=100)
        out[name] = (
            len(spent) / sum(spent),
            len(spent) / cpu[name],
            cuts[49] * 1e3,
            cuts[98] * 1e3,
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=100_000, help="users in the segment file")
    parser.add_argument("--links", type=int, default=100_000, help="links in the link file")
    parser.add_argument("--lookups", type=int, default=20_000, help="lookups per measurement")
    parser.add_argument(
        "--cold",
        action="store_true",
        help="measure the stores as the build left them, without reading them into the page "
        "cache first",
    )
    args = parser.parse_args()

    from bss.identity.graph import Caps, expanded_segments
    from bss.identity.ids import parse_id
    from bss.store.keyvalue import LmdbStore

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        segments = segment_file(tmp / "segments.txt", args.lines)
        links, probes = link_file(tmp / "links.csv", args.lines, args.links)
        plain = build(tmp / "plain.lmdb", segments, None)
        linked = build(tmp / "linked.lmdb", segments, links)
        print(f"segment ingest: {linked['pairs_per_s']:,.0f} pairs/s "
              f"(without links: {plain['pairs_per_s']:,.0f})")  # fmt: skip
        print(f"link ingest:    {linked['links_per_s']:,.0f} links/s")

        rng = random.Random(3)
        users = [parse_id(rng.choice(probes)) for _ in range(args.lookups)]
        users = [(int(k), key) for k, key in users]
        caps = Caps()
        now = int(time.time())
        if not args.cold:
            for name in ("linked.lmdb", "plain.lmdb"):
                harness.warm_page_cache(tmp / name / "data.mdb")
        with_links, without = LmdbStore(tmp / "linked.lmdb"), LmdbStore(tmp / "plain.lmdb")
        try:
            faults = harness.major_faults()
            got = timed(
                {
                    "expanded": lambda u: expanded_segments(with_links, [u], MEMBER_ID, now, caps),
                    "plain": lambda u: with_links.user_segments(*u, now),
                    "plain, no links": lambda u: without.user_segments(*u, now),
                },
                users,
            )
            faults = harness.major_faults() - faults
            rate, cpu_rate, p50, p99 = got["expanded"]
            print(f"expanded lookups: {rate:,.0f}/s ({cpu_rate:,.0f} per CPU second), "
                  f"p50 {p50:.3f} ms, p99 {p99:.3f} ms")  # fmt: skip
            same, base = got["plain"][0], got["plain, no links"][0]
            print(f"plain lookups: {same:,.0f}/s with links, {base:,.0f}/s without "
                  f"(ratio {same / base:.2f})")  # fmt: skip
            print(f"load average {os.getloadavg()[0]:.1f}; page faults read from disk while "
                  f"measuring: {faults:,}")  # fmt: skip
        finally:
            with_links.close()
            without.close()


if __name__ == "__main__":
    main()
