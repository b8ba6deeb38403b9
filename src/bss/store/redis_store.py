"""The membership store on Redis: a Redis Cluster (`redis+cluster://h:p[,h:p...]`) or one
server (`redis://h:p/db`), same semantics as the embedded store.

Layout (v2, see redis_functions.lua): users are spread over BUCKETS buckets by a stable hash
of `<kind>:<key>`; every key of a bucket carries the hash tag `{<bucket>}`, so the bucket's
users (one hash: user -> its entries as packed binary records), member counts, expiry index
and its slice of each segment's member index (an appended string) live in one hash slot.
All logic runs server-side in Redis Functions, one bucket per call, atomically: the seq
rule, the counts, the indexes. Readers sum the buckets' counts. Buckets written by the
first layout (v1) are converted by the first call that touches them.

A batch is grouped by bucket and user in one columnar pass (Arrow) that also writes the
Redis protocol bytes of every call (one per bucket): each user's records as stored, and
what a first load of the bucket takes as sent (per segment its live entries and its index
entries), so that Python does no work per pair and, on a first load, neither does the
Function. The calls go out in a few slices of buckets, each slice one write per master,
all masters at once (on threads); a slice is sent as soon as it is encoded, while earlier
ones may still be in flight. Each master's writes end with `WAIT`, so a batch only counts
as applied once a replica of every master involved holds it. Any error (a failover, a moved slot, a lost connection) re-sends
the slice after refreshing the topology: re-applying is harmless under the seq rule. If the
cluster does not recover within `retry_seconds` the error is raised and the job is retried
later, by replaying it.

The identity graph's links live in the same buckets, in a library of their own
(redis_links.lua, bss.store.redis_links).
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import logging
import struct
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import wait as wait_all
from importlib.resources import files
from typing import Any, Literal
from urllib.parse import urlsplit

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import redis
from redis.cluster import ClusterNode, RedisCluster
from redis.crc import key_slot
from redis.exceptions import RedisClusterException

from bss.errors import StoreUnavailable
from bss.metrics import COUNTERS
from bss.store import redis_links
from bss.store.base import APPLY_SCHEMA, Floors, Link, Membership, no_floors
from bss.store.sorted_runs import WrittenKeys

log = logging.getLogger("bss.store.redis")

#: Users are hashed into this many buckets (one hash slot each). Fixed for the life of the
#: data: changing it would move users. 1024 slots spread evenly over up to ~100 masters.
BUCKETS = 1024
LIBRARY = files("bss.store").joinpath("redis_functions.lua").read_text()
LIBRARY_NAME = "bss_store_v2"
#: Libraries of earlier layouts: deleted before LIBRARY is loaded (they define the same
#: function names). Their data is read by LIBRARY as it is (see redis_functions.lua).
OLD_LIBRARIES = ("bss_store_v1",)

_HASH_SQL = "SELECT md5_number_lower(kk) AS h FROM users"
#: apply() encodes and sends a batch in slices of buckets split here.
_SLICES = 4
#: apply_many() applies a job's batches together up to this many rows (~4 engine batches).
_MANY_ROWS = 1_000_000
_SLICE_EDGES = np.arange(1, _SLICES) * (BUCKETS // _SLICES)


def bucket_of(user_kind: int, user_key: str) -> int:
    """The bucket of a user: the same hash as RedisStore._hash_users (MD5, lower 64 bits)."""
    digest = hashlib.md5(f"{user_kind}:{user_key}".encode()).digest()
    return int.from_bytes(digest[8:], "little") % BUCKETS


def _key(bucket: int) -> str:
    """The bucket's counts: the one key every Function call names (the others derive from
    the bucket tag server-side)."""
    return f"bss:c{{{bucket}}}"


def _links_key(bucket: int) -> str:
    """The bucket's set of link scopes: the key every links Function call names."""
    return f"bss:ls{{{bucket}}}"


#: A record after its segment id: seq, flags (1 removed, 2 has a value), timestamp, expiry.
_FIXED = struct.Struct(">QBqq")
_VALUE = struct.Struct(">q")


def _memberships(
    records: bytes, now: int, floors: Mapping[int, int] | None = None
) -> Iterator[Membership]:
    """The live entries among stored records (see redis_functions.lua), none of a segment
    below its read floor."""
    pos, end = 0, len(records)
    while pos < end:
        n = records[pos]
        segment = int(records[pos + 1 : pos + 1 + n])
        pos += 1 + n
        seq, flags, ts, exp = _FIXED.unpack_from(records, pos)
        pos += _FIXED.size
        value = None
        if flags & 2:
            (value,) = _VALUE.unpack_from(records, pos)
            pos += _VALUE.size
        if not flags & 1 and ts <= now < exp and not (floors and seq < floors.get(segment, 0)):
            yield Membership(segment, value, ts, exp)


def _seqs_and_liveness(records: bytes, now: int) -> Iterator[tuple[int, bool]]:
    """(seq, live at `now`) of each stored record (see `_memberships`)."""
    pos, end = 0, len(records)
    while pos < end:
        pos += 1 + records[pos]
        seq, flags, ts, exp = _FIXED.unpack_from(records, pos)
        pos += _FIXED.size + (_VALUE.size if flags & 2 else 0)
        yield seq, not flags & 1 and ts <= now < exp


class RedisStore:
    def __init__(
        self,
        url: str,
        *,
        wait_replicas: int | Literal["attached"] | None = None,
        wait_timeout_ms: int = 2000,
        retry_seconds: float = 30.0,
        connect_timeout: float = 5.0,
    ) -> None:
        parts = urlsplit(url)
        self.cluster = parts.scheme == "redis+cluster"
        self.replicas = ReplicaWait(
            "attached" if wait_replicas is None else wait_replicas, alone_is_degraded=self.cluster
        )
        self.wait_timeout_ms = wait_timeout_ms
        self.retry_seconds = retry_seconds
        self.floors: Floors = no_floors
        # One thread: the pack is small and the machine runs Redis and other processes too.
        self._pack_db = duckdb.connect(config={"threads": 1})
        self._pack_lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=16, thread_name_prefix="bss-redis")
        self._senders = ThreadPoolExecutor(max_workers=_SLICES, thread_name_prefix="bss-redis-send")
        options: dict[str, Any] = {
            "socket_connect_timeout": connect_timeout,
            "socket_timeout": 60,
            "password": parts.password,
            "username": parts.username,
        }
        try:
            if self.cluster:
                nodes = [
                    ClusterNode(host, int(port))
                    for host, _, port in (
                        n.rpartition(":") for n in parts.netloc.split("@")[-1].split(",")
                    )
                ]
                self._cluster: RedisCluster | None = RedisCluster(
                    startup_nodes=nodes, require_full_coverage=True, **options
                )
                self._single: redis.Redis | None = None
            else:
                self._cluster = None
                self._single = redis.Redis.from_url(url, **options)
                self._single.ping()
            self._load_functions()
        except (redis.RedisError, RedisClusterException) as exc:
            raise StoreUnavailable(f"cannot reach the Redis store at {_safe(url)}: {exc}") from exc

    # --- topology ---------------------------------------------------------------------------

    def _masters(self) -> list[redis.Redis]:
        if self._cluster is None:
            assert self._single is not None
            return [self._single]
        return [
            node.redis_connection
            for node in self._cluster.get_primaries()
            if node.redis_connection is not None
        ]

    def _route(self, buckets: Sequence[int]) -> dict[redis.Redis, list[int]]:
        """Buckets grouped by the master that holds their slot."""
        if self._cluster is None:
            assert self._single is not None
            return {self._single: list(buckets)}
        groups: dict[redis.Redis, list[int]] = defaultdict(list)
        manager = self._cluster.nodes_manager
        for bucket in buckets:
            node = manager.get_node_from_slot(key_slot(f"{{{bucket}}}".encode()))
            groups[node.redis_connection].append(bucket)
        return groups

    def _refresh(self) -> None:
        if self._cluster is not None:
            try:
                self._cluster.nodes_manager.initialize()
            except (redis.RedisError, RedisClusterException):
                log.warning("cluster topology refresh failed", exc_info=True)

    def _load_functions(self) -> None:
        for node in self._masters():
            try:
                node.function_load(LIBRARY, replace=True)
            except redis.ResponseError as exc:
                if "already exists" not in str(exc):
                    raise
                for name in OLD_LIBRARIES:
                    with contextlib.suppress(redis.ResponseError):
                        node.function_delete(name)
                node.function_load(LIBRARY, replace=True)
            node.function_load(redis_links.LIBRARY, replace=True)

    def _on_every_master(
        self,
        buckets: Sequence[int],
        command: Callable[[int], Command],
        *,
        wait: bool = False,
    ) -> dict[int, Any]:
        """Send `command(bucket)` for every bucket, pipelined per master, all masters at
        once; {bucket: reply}. Retried whole (after a topology refresh) on any
        error until retry_seconds pass: callers only send idempotent calls."""
        deadline = time.monotonic() + self.retry_seconds
        delay = 0.05
        while True:
            try:
                return self._run_once(buckets, command, wait=wait)
            except (redis.RedisError, RedisClusterException, StoreUnavailable) as exc:
                if time.monotonic() >= deadline:
                    raise StoreUnavailable(f"Redis store error: {exc}") from exc
                log.warning("Redis call failed; retrying after a topology refresh: %s", exc)
                time.sleep(delay)
                delay = min(1.0, delay * 2)
                self._refresh()
                # A promoted replica has the functions already (they replicate); a master
                # restarted empty or added by a reshard might not.
                with contextlib.suppress(redis.RedisError):
                    self._load_functions()

    def _run_once(
        self, buckets: Sequence[int], command: Callable[[int], Command], *, wait: bool
    ) -> dict[int, Any]:
        groups = self._route(buckets)

        def on_master(node: redis.Redis, node_buckets: list[int]) -> list[Any]:
            commands = [command(bucket) for bucket in node_buckets]
            replicas = self.replicas.for_master(node) if wait else 0
            try:
                return _send(node, commands, replicas, self.wait_timeout_ms)
            except StoreUnavailable:
                self.replicas.forget(node)  # attached replicas are counted again next time
                raise

        if len(groups) == 1:  # a lookup of one user, one server: no thread hop
            ((node, node_buckets),) = groups.items()
            return dict(zip(node_buckets, on_master(node, node_buckets), strict=True))
        futures = {
            self._pool.submit(on_master, node, node_buckets): node_buckets
            for node, node_buckets in groups.items()
        }
        out: dict[int, Any] = {}
        for future, node_buckets in futures.items():
            out.update(zip(node_buckets, future.result(), strict=True))
        return out

    # --- the interface ----------------------------------------------------------------------

    def apply_many(
        self,
        batches: Iterable[pa.Table],
        progress: Callable[[float], None] | None = None,
        written: WrittenKeys | None = None,
    ) -> None:
        # Batches are applied together up to _MANY_ROWS rows: bigger calls per bucket cost the
        # masters less per pair (one APPEND per segment, one ZADD, one HSET per call). The
        # same as one by one under the seq rule: each (user, segment) keeps its highest seq.
        held: list[pa.Table] = []
        rows = 0
        for batch in batches:
            held.append(batch.select(APPLY_SCHEMA.names).cast(APPLY_SCHEMA))
            rows += batch.num_rows
            if rows >= _MANY_ROWS:
                self.apply(pa.concat_tables(held))
                held, rows = [], 0
        if held:
            self.apply(pa.concat_tables(held))

    def apply(self, batch: pa.Table) -> None:
        if batch.num_rows == 0:
            return
        now = int(time.time())
        batch, buckets, starts = _by_user(
            batch.select(APPLY_SCHEMA.names).cast(APPLY_SCHEMA), self._hash_users
        )
        # In a few slices of buckets, each sent (on its own connections, with its own
        # WAIT) as soon as it is encoded, so that the masters and replicas work while this
        # process does and while earlier slices wait for their replicas.
        edges = np.searchsorted(starts, np.searchsorted(buckets, _SLICE_EDGES))
        sent = []
        for first, last in itertools.pairwise([0, *edges.tolist(), len(starts)]):
            if first == last:
                continue
            end = int(starts[last]) if last < len(starts) else batch.num_rows
            begin = int(starts[first])
            calls = _pack(
                batch.slice(begin, end - begin), buckets[begin:end], starts[first:last] - begin, now
            )
            sent.append(
                self._senders.submit(
                    self._on_every_master, sorted(calls), calls.__getitem__, wait=True
                )
            )
        wait_all(sent)  # a failed slice raises only once the others are done
        for future in sent:
            future.result()

    def _hash_users(self, kk: pa.Array) -> np.ndarray:
        """MD5's lower 64 bits of each <kind>:<key> (DuckDB's md5_number_lower)."""
        with self._pack_lock:
            cur = self._pack_db.cursor()
            try:
                cur.register("users", pa.table({"kk": kk}))
                return np.asarray(cur.execute(_HASH_SQL).fetchnumpy()["h"], dtype=np.uint64)
            finally:
                cur.close()

    def user_segments(self, user_kind: int, user_key: str, now: int) -> list[Membership]:
        return self.users_segments([(user_kind, user_key)], now)[0]

    def users_segments(self, users: Sequence[tuple[int, str]], now: int) -> list[list[Membership]]:
        by_bucket: dict[int, list[int]] = defaultdict(list)
        for i, (kind, key) in enumerate(users):
            by_bucket[bucket_of(kind, key)].append(i)

        def call(bucket: int) -> Command:
            kks = [f"{users[i][0]}:{users[i][1]}" for i in by_bucket[bucket]]
            return ("FCALL", "bss_read_users", 1, _key(bucket), bucket, *kks)

        floors = self.floors()
        replies = self._on_every_master(sorted(by_bucket), call)
        out: list[list[Membership]] = [[] for _ in users]
        for bucket, per_user in replies.items():
            for i, records in zip(by_bucket[bucket], per_user, strict=True):
                out[i] = sorted(_memberships(records, now, floors), key=lambda m: m.segment_id)
        return out

    def segment_member_counts(self, now: int) -> dict[int, int]:
        present = int(time.time())

        def call(bucket: int) -> Command:
            return ("FCALL", "bss_counts", 1, _key(bucket), bucket, now, present)

        totals: dict[int, int] = defaultdict(int)
        for flat in self._on_every_master(range(BUCKETS), call).values():
            for j in range(0, len(flat), 2):
                totals[int(flat[j])] += int(flat[j + 1])
        return {seg: n for seg, n in totals.items() if n > 0}

    def segment_members(self, segment_id: int, now: int) -> Iterator[tuple[int, str, Membership]]:
        floors = self.floors()
        for kk, records in self._segment_records(segment_id):
            for membership in _memberships(records, now, floors):
                kind, _, key = kk.decode().partition(":")
                yield int(kind), key, membership

    def count_below(self, segment_id: int, seq: int, now: int) -> int:
        floor = self.floors().get(segment_id, 0)
        return sum(
            1
            for _kk, records in self._segment_records(segment_id)
            for entry_seq, live in _seqs_and_liveness(records, now)
            if live and floor <= entry_seq < seq
        )

    def _segment_records(self, segment_id: int) -> Iterator[tuple[bytes, bytes]]:
        """(<kind>:<key>, its record of the segment) of every member the index lists."""
        cursors = dict.fromkeys(range(BUCKETS), b"0")
        while cursors:

            def call(bucket: int) -> Command:
                return (
                    "FCALL",
                    "bss_segment_members",
                    1,
                    _key(bucket),
                    bucket,
                    segment_id,
                    cursors[bucket],
                )

            replies = self._on_every_master(sorted(cursors), call)
            for bucket in sorted(replies):
                cursor, flat = replies[bucket]
                for j in range(0, len(flat), 2):
                    yield flat[j], flat[j + 1]
                if cursor in (b"0", 0, "0"):
                    del cursors[bucket]
                else:
                    cursors[bucket] = cursor

    def delete_segment(self, segment_id: int, seq: int) -> None:
        marker = seq.to_bytes(8, "big")
        cursors = dict.fromkeys(range(BUCKETS), b"0")
        while cursors:

            def call(bucket: int) -> Command:
                return (
                    "FCALL",
                    "bss_delete_segment",
                    1,
                    _key(bucket),
                    bucket,
                    segment_id,
                    marker,
                    cursors[bucket],
                )

            replies = self._on_every_master(sorted(cursors), call, wait=True)
            for bucket, cursor in replies.items():
                if cursor in (b"0", 0, "0"):
                    del cursors[bucket]
                else:
                    cursors[bucket] = cursor

    def purge_expired(self, now: int) -> int:
        """Memberships dropped are counted; lapsed links and tombstones go too, uncounted."""

        def purge_links(bucket: int) -> Command:
            return ("FCALL", "bss_purge_links", 1, _links_key(bucket), bucket, now)

        self._on_every_master(range(BUCKETS), purge_links, wait=True)

        def call(bucket: int) -> Command:
            return ("FCALL", "bss_purge", 1, _key(bucket), bucket, now)

        return sum(int(n) for n in self._on_every_master(range(BUCKETS), call, wait=True).values())

    # --- links (bss.store.redis_links) --------------------------------------------------------

    def apply_links(self, batch: pa.Table) -> None:
        if batch.num_rows == 0:
            return
        calls = redis_links.apply_args(batch, bucket_of)

        def call(bucket: int) -> Command:
            return ("FCALL", "bss_apply_links", 1, _links_key(bucket), bucket, *calls[bucket])

        self._on_every_master(sorted(calls), call, wait=True)

    def apply_links_many(self, batches: Iterable[pa.Table]) -> None:
        for batch in batches:
            self.apply_links(batch)

    def top_links(
        self, users: Sequence[tuple[int, str]], scopes: Sequence[int], now: int, limit: int
    ) -> list[list[Link]]:
        by_bucket: dict[int, list[int]] = defaultdict(list)
        for i, (kind, key) in enumerate(users):
            by_bucket[bucket_of(kind, key)].append(i)

        def call(bucket: int) -> Command:
            kks = [f"{users[i][0]}:{users[i][1]}" for i in by_bucket[bucket]]
            return (
                "FCALL",
                "bss_read_links",
                1,
                _links_key(bucket),
                bucket,
                len(scopes),
                *scopes,
                *kks,
            )

        out: list[list[Link]] = [[] for _ in users]
        n = len(scopes)
        for bucket, flat in self._on_every_master(sorted(by_bucket), call).items():
            for j, i in enumerate(by_bucket[bucket]):
                out[i] = redis_links.ranked(flat[j * n : (j + 1) * n], scopes, now, limit)
        return out

    def delete_scope_links(self, scope: int) -> None:
        def call(bucket: int) -> Command:
            return ("FCALL", "bss_delete_scope_links", 1, _links_key(bucket), bucket, scope)

        self._on_every_master(range(BUCKETS), call, wait=True)

    def close(self) -> None:
        self._senders.shutdown(wait=False)
        self._pool.shutdown(wait=False)
        if self._cluster is not None:
            self._cluster.close()
        if self._single is not None:
            self._single.close()
        self._pack_db.close()


def _by_user(
    batch: pa.Table, hash_users: Callable[[pa.Array], np.ndarray]
) -> tuple[pa.Table, np.ndarray, np.ndarray]:
    """The batch with a `kk` column (<kind>:<key>), ordered by bucket and user, each
    (user, segment) once (its highest seq, as the seq rule would keep); the rows'
    buckets; where each user's rows start. Users are ordered by a 64-bit hash."""
    kk = pc.binary_join_element_wise(
        pc.cast(batch["user_kind"], pa.string()), batch["user_key"], ":"
    ).combine_chunks()
    # A file's pairs come grouped by line (user): hash each run once.
    heads = np.flatnonzero(~_same_as_previous(kk))
    hashes = hash_users(kk.take(pa.array(heads)))
    hashes = np.repeat(hashes, np.diff(np.append(heads, len(kk))))
    buckets = (hashes % BUCKETS).astype(np.int64)
    # One sort key: the bucket, then the rest of the hash.
    key = (hashes % np.uint64(BUCKETS)) << np.uint64(54) | hashes >> np.uint64(10)
    seq, seg = batch["seq"].to_numpy(), batch["segment_id"].to_numpy()
    order = np.lexsort((seq, seg, key))
    same_user = _same_as_previous(kk.take(pa.array(order)))
    user_keys = key[order][~same_user]
    if np.any(user_keys[1:] == user_keys[:-1]):
        # Two users of the batch share a hash (about once in 10**9 batches): the key
        # decides their order, so that each user's rows stay together.
        ties = pa.table({"key": key, "kk": kk, "seg": seg, "seq": seq})
        order = pc.sort_indices(ties, [(c, "ascending") for c in ties.column_names]).to_numpy()
    batch = batch.append_column("kk", kk).take(pa.array(order))
    buckets = buckets[order]
    kk, seg = batch["kk"].combine_chunks(), seg[order]
    same_user = _same_as_previous(kk)
    # Within a (user, segment) run the last row has the highest seq: keep only it.
    repeated = np.zeros(len(kk), dtype=bool)
    repeated[:-1] = same_user[1:] & (seg[1:] == seg[:-1])
    if repeated.any():
        batch, buckets = batch.filter(pa.array(~repeated)), buckets[~repeated]
        same_user = _same_as_previous(batch["kk"].combine_chunks())
    return batch, buckets, np.flatnonzero(~same_user)


def _pack(batch: pa.Table, buckets: np.ndarray, starts: np.ndarray, now: int) -> dict[int, bytes]:
    """{bucket: its `bss_apply_users` call as Redis protocol bytes}, built columnar from
    rows grouped by user (`starts`: where each user's rows start).

    Arguments (see redis_functions.lua): tag, now, pairs, S, then S triples (segment, its
    entries live at `now`, its index entries), the users' next events at `now` (8 bytes
    each), then per user <kind>:<key> and its records."""
    n = batch.num_rows
    user_offsets = np.append(starts, n).astype(np.int32)

    def col(name: str) -> np.ndarray:
        return batch[name].to_numpy(zero_copy_only=False)

    ts, exp, removed = col("timestamp"), col("expires_at"), col("removed")
    live = ~removed & (ts <= now) & (exp > now)
    event = np.where(ts > now, np.minimum(ts, exp), exp)
    # Records: <n><segment digits><seq><flags><ts><exp>[<value>].
    seg_text = _flat(pc.cast(pc.cast(batch["segment_id"], pa.string()), pa.binary()))
    has_value = pc.is_valid(batch["value"]).to_numpy(zero_copy_only=False)
    fixed = np.empty(n, dtype=[("seq", ">u8"), ("flags", "u1"), ("ts", ">i8"), ("exp", ">i8")])
    fixed["seq"] = col("seq")
    fixed["flags"] = removed.astype(np.uint8) | (has_value.astype(np.uint8) << 1)
    fixed["ts"], fixed["exp"] = ts, exp
    values = pc.fill_null(batch["value"], 0).to_numpy()[has_value].astype(">i8")
    value_offsets = np.zeros(n + 1, dtype=np.int32)
    np.cumsum(has_value * 8, out=value_offsets[1:])
    records = _flat(
        pc.binary_join_element_wise(
            _fixed_binary(pc.binary_length(seg_text).to_numpy().astype(np.uint8), 1),
            seg_text,
            _fixed_binary(fixed, _FIXED.size),
            pa.BinaryArray.from_buffers(
                pa.binary(), n, [None, pa.py_buffer(value_offsets), pa.py_buffer(values.tobytes())]
            ),
            b"",
        )
    )
    kk = batch["kk"].combine_chunks().cast(pa.binary())
    users = pc.binary_join_element_wise(
        _bulk(kk.take(pa.array(starts))),
        _bulk(pc.binary_join(pa.ListArray.from_arrays(pa.array(user_offsets), records), b"")),
        b"",
    )
    users_per_bucket = np.bincount(buckets[starts], minlength=BUCKETS)
    bucket_users = np.concatenate([[0], np.cumsum(users_per_bucket)])
    bodies = pc.binary_join(
        pa.ListArray.from_arrays(pa.array(bucket_users.astype(np.int32)), _flat(users)), b""
    ).to_pylist()
    events = np.minimum.reduceat(event, starts).astype(">i8").tobytes()
    # What a first load takes as sent: per (bucket, segment), its live entries and its
    # index entries (3-byte length, then <kind>:<key>).
    seg = col("segment_id")
    order = np.lexsort((seg, buckets))
    sb, ss = buckets[order], seg[order]
    heads = np.flatnonzero(np.append(True, (sb[1:] != sb[:-1]) | (ss[1:] != ss[:-1])))
    sizes = pc.binary_length(kk).to_numpy().astype(np.uint32)
    entries = pc.binary_join_element_wise(
        _fixed_binary(sizes.astype(">u4").view(np.uint8).reshape(-1, 4)[:, 1:].copy(), 3), kk, b""
    ).take(pa.array(order))
    group_offsets = pa.array(np.append(heads, n).astype(np.int32))
    groups = pc.binary_join_element_wise(
        _bulk(seg_text.take(pa.array(order[heads]))),
        _bulk(_text(np.add.reduceat(live[order].astype(np.int64), heads))),
        _bulk(pc.binary_join(pa.ListArray.from_arrays(group_offsets, entries), b"")),
        b"",
    )
    groups_per_bucket = np.bincount(sb[heads], minlength=BUCKETS)
    bucket_groups = np.concatenate([[0], np.cumsum(groups_per_bucket)]).astype(np.int32)
    sections = pc.binary_join(
        pa.ListArray.from_arrays(pa.array(bucket_groups), _flat(groups)), b""
    ).to_pylist()
    pairs_per_bucket = np.bincount(buckets, minlength=BUCKETS)
    now_arg = _bulk_bytes(str(now).encode())
    out = {}
    for b in np.flatnonzero(users_per_bucket).tolist():
        nusers, ngroups = int(users_per_bucket[b]), int(groups_per_bucket[b])
        argc = 9 + 3 * ngroups + 2 * nusers
        first = int(bucket_users[b])
        out[b] = b"".join(
            [
                f"*{argc}\r\n".encode(),
                _APPLY_HEAD,
                _bulk_bytes(_key(b).encode()),
                _bulk_bytes(str(b).encode()),
                now_arg,
                _bulk_bytes(str(int(pairs_per_bucket[b])).encode()),
                _bulk_bytes(str(ngroups).encode()),
                sections[b],
                _bulk_bytes(events[8 * first : 8 * (first + nusers)]),
                bodies[b],
            ]
        )
    return out


def _fixed_binary(values: np.ndarray, width: int) -> pa.Array:
    """Each row of `values` (width bytes) as a binary value."""
    data = np.ascontiguousarray(values)
    fixed = pa.FixedSizeBinaryArray.from_buffers(
        pa.binary(width), len(data), [None, pa.py_buffer(data.tobytes())]
    )
    return fixed.cast(pa.binary())


#: How long a master's count of attached replicas is trusted (one INFO call per master
#: per this many seconds while writing).
_ATTACHED_TTL = 1.0
SHARDS_WITHOUT_REPLICA = "bss_store_shards_without_replica"


def _address(node: redis.Redis) -> str:
    kwargs = node.connection_pool.connection_kwargs
    return f"{kwargs.get('host')}:{kwargs.get('port')}"


class ReplicaWait:
    """How many replicas each master's writes WAIT for.

    A number: that many, always (a master with fewer attached fails the write, and the job
    waits until they are back). `attached`: as many as the master has online now (INFO
    replication, cached for _ATTACHED_TTL): after a failover the promoted replica has none
    until the dead node returns, and its writes go on unconfirmed; such a master is logged
    once, counted in the bss_store_shards_without_replica gauge, and every unconfirmed write
    adds one to `unconfirmed_writes` (a job compares it before and after its run). One
    Redis server usually runs alone: there (`alone_is_degraded` False) none is expected."""

    def __init__(self, mode: int | Literal["attached"], *, alone_is_degraded: bool) -> None:
        self.mode = mode
        self.alone_is_degraded = alone_is_degraded
        self._lock = threading.Lock()
        self._attached: dict[str, tuple[float, int]] = {}
        self._alone: set[str] = set()
        self.unconfirmed_writes = 0

    def for_master(self, node: redis.Redis) -> int:
        if self.mode != "attached":
            return self.mode
        address = _address(node)
        with self._lock:
            cached = self._attached.get(address)
        if cached is not None and time.monotonic() - cached[0] < _ATTACHED_TTL:
            attached = cached[1]
        else:
            attached = _online_replicas(node)
            with self._lock:
                self._attached[address] = (time.monotonic(), attached)
        self._note(address, attached)
        return attached

    def forget(self, node: redis.Redis) -> None:
        with self._lock:
            self._attached.pop(_address(node), None)

    def _note(self, address: str, attached: int) -> None:
        if not self.alone_is_degraded:
            return
        with self._lock:
            if attached:
                if address in self._alone:
                    self._alone.discard(address)
                    log.warning("Redis master %s has a replica again", address)
            else:
                self.unconfirmed_writes += 1
                if address not in self._alone:
                    self._alone.add(address)
                    log.warning(
                        "Redis master %s has no replica attached: its writes are not "
                        "confirmed by a replica until one is back (BSS_STORE_WAIT_REPLICAS="
                        "attached)",
                        address,
                    )
            COUNTERS.set(SHARDS_WITHOUT_REPLICA, len(self._alone))


def _online_replicas(node: redis.Redis) -> int:
    """Replicas attached to `node` and online (INFO replication's slaveN lines)."""
    info = node.info("replication")
    return sum(
        1
        for key, value in info.items()
        if key.startswith("slave") and isinstance(value, dict) and value.get("state") == "online"
    )


def _send(node: redis.Redis, commands: list[Command], replicas: int, timeout_ms: int) -> list[Any]:
    """Send `commands` (argument tuples, or calls already in protocol bytes) to one node as
    one write, then WAIT for `replicas` if any; their replies, in order. Raises the first
    error reply once every reply is read (the connection stays usable); drops the
    connection on any other failure."""
    pool = node.connection_pool
    conn = pool.get_connection()
    try:
        chunks: list[bytes] = []
        for command in commands:
            if isinstance(command, bytes):
                chunks.append(command)
            else:
                chunks += conn.pack_command(*command)
        if replicas:
            chunks += conn.pack_command("WAIT", replicas, timeout_ms)
        conn.send_packed_command(chunks)
        replies, error = [], None
        for _ in range(len(commands) + (1 if replicas else 0)):
            try:
                replies.append(conn.read_response())
            except redis.ResponseError as exc:
                error = error or exc
                replies.append(None)
    except BaseException:
        conn.disconnect()
        raise
    finally:
        pool.release(conn)
    if error is not None:
        raise error
    if replicas and replies.pop() < replicas:
        raise StoreUnavailable(f"fewer than {replicas} replicas confirmed a write")
    return replies


def _bulk(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    """Each value as a Redis protocol bulk string: $<bytes>\\r\\n<value>\\r\\n."""
    size = pc.cast(pc.cast(pc.binary_length(values), pa.string()), pa.binary())
    values = pc.cast(values, pa.binary())
    return pc.binary_join_element_wise(b"$", size, b"\r\n", values, b"\r\n", b"")


def _same_as_previous(values: pa.Array) -> np.ndarray:
    out = np.zeros(len(values), dtype=bool)
    if len(values) > 1:
        out[1:] = pc.equal(values[1:], values[:-1]).to_numpy(zero_copy_only=False)
    return out


def _text(values: np.ndarray) -> pa.Array:
    return pc.cast(pa.array(values), pa.string())


def _flat(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    return values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values


def _bulk_bytes(value: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(value), value)


#: The start of every bss_apply_users call after its argument count: the function, 1 key.
_APPLY_HEAD = b"".join(_bulk_bytes(a) for a in (b"FCALL", b"bss_apply_users", b"1"))
#: A call: an argument tuple, or already in protocol bytes.
Command = tuple[Any, ...] | bytes


def _safe(url: str) -> str:
    """The URL without its password, for messages."""
    parts = urlsplit(url)
    if parts.password:
        return url.replace(f":{parts.password}@", ":***@")
    return url
