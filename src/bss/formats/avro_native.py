"""The native Avro reader: DuckDB's avro extension decodes records in bulk, Polars applies the
rules to whole batches, and `raw` is built only for the records the engine reports.

The container framing is still read and checked by avro_container (sync markers, bounded
decompression, gzip-wrapped uploads), block by block. The checked, decompressed blocks are
gathered into batches of about BATCH_BYTES; each batch is written as a small null-codec
Avro file into a private temporary folder, and DuckDB's `read_avro` decodes it into flat
columns (the uid branch, the fields the user rules read, the segments, and a 64-bit hash of
the whole record for the duplicate-line check). DuckDB needs a file it can seek in, which a
gzip stream is not; the batch files are what make gzip-wrapped uploads and the codecs the
extension lacks (bzip2) take the native path too.

Whatever the native reader cannot take goes to the reference reader (avro_reference), with
identical results: a writer schema with types outside `avro_schema._why_not_native`, the
extension missing for the installed duckdb, and any batch DuckDB fails on (a damaged
record), which the reference then reads record by record up to the exact failing record.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import tempfile
import threading
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
from polars.expr.whenthen import ChainedThen, Then

from bss.formats.avro_container import CORRUPT, Header, encode_long, null_codec_header
from bss.formats.avro_encoded_size import blocks_match, union_by_tag_sizes, value_sizes
from bss.formats.avro_reference import normalize_uid, open_records, to_json
from bss.formats.avro_rules import (
    ERR_NO_SEGMENTS,
    ERR_NO_UID_TYPE,
    ERR_TOO_MANY_SEGMENTS,
    KIND_ANID,
    KIND_DEVICE,
    KIND_EID,
    KIND_EXTERNAL,
    KIND_IFA,
    KIND_XFA,
    SEGMENT_INPUT,
    vectorized_pairs,
)
from bss.formats.avro_schema import NATIVE_BRANCH_FIELDS, ReadPlan, branch_of
from bss.formats.config import BatchSegmentConfig
from bss.formats.detect import InputError
from bss.formats.records import (
    DEVICE_DOMAINS,
    LINE_SCHEMA,
    MAX_SEGMENTS_PER_LINE,
)

#: Decompressed bytes of blocks gathered into one DuckDB query (a batch ends after the block
#: that reaches it). Larger batches cost memory; smaller ones cost a query each.
BATCH_BYTES = 4 << 20

Block = tuple[int, bytes]


def extension_path() -> Path | None:
    """The avro extension file shipped by duckdb-extension-avro for the installed duckdb."""
    try:
        import duckdb
        import duckdb_extension_avro
    except ImportError:
        return None
    path = (
        Path(duckdb_extension_avro.__file__).parent
        / "extensions"
        / f"v{duckdb.__version__}"
        / "avro.duckdb_extension"
    )
    return path if path.is_file() else None


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def has_boolean(schema: Any, named: dict[str, Any], seen: frozenset[str] = frozenset()) -> bool:
    """Whether values of this type can hold a boolean anywhere."""
    if isinstance(schema, str):
        if schema in named and schema not in seen:
            return has_boolean(named[schema], named, seen | {schema})
        return schema == "boolean"
    if isinstance(schema, list):
        return any(has_boolean(branch, named, seen) for branch in schema)
    if not isinstance(schema, dict):
        return False
    kind = schema.get("type")
    if kind == "record":
        inner = seen | {str(schema.get("name"))}
        return any(has_boolean(f.get("type"), named, inner) for f in schema.get("fields", []))
    if kind == "array":
        return has_boolean(schema.get("items"), named, seen)
    if kind == "map":
        return has_boolean(schema.get("values"), named, seen)
    return has_boolean(kind, named, seen)


def _select_list(plan: ReadPlan, hash_in_query: bool) -> tuple[str, dict[int, str]]:
    """The batch query, and uid branch index -> recognised branch short name.

    Per record: the uid branch index (`tag`), one column per non-null uid branch ("u<i>",
    null on the other branches' rows), every other top-level field as it is, and, with
    `hash_in_query`, DuckDB's hash of the whole record with its branch.
    """
    real = [(i, b) for i, b in enumerate(plan.uid_branches) if b != "null"]
    union = plan.uid_is_union and len(real) > 1
    if union:
        tag = "CAST(substr(CAST(union_tag(uid) AS VARCHAR), 2) AS SMALLINT)"
    elif plan.uid_is_union:  # one non-null branch: DuckDB gives it as a nullable value
        tag = f"CAST(CASE WHEN uid IS NULL THEN NULL ELSE {real[0][0]} END AS SMALLINT)"
    else:
        tag = "CAST(0 AS SMALLINT)"
    exprs = [f"{tag} AS tag"]
    branches: dict[int, str] = {}
    for index, schema in real:
        value = f"union_extract(uid, 'u{index}')" if union else "uid"
        exprs.append(f"{value} AS u{index}")
        short, _full = branch_of(schema)
        if short is not None:
            branches[index] = short
    exprs += [_quote(name) for name in plan.top_fields if name != "uid"]
    if hash_in_query:
        record = ", ".join(_quote(name) for name in plan.top_fields)
        exprs.append(f"hash({tag}, {record}) AS line_hash")
    return "SELECT " + ", ".join(exprs) + " FROM read_avro(?)", branches


def _column(table: pa.Table, name: str) -> pa.Array:
    column = table.column(name)
    return column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column


def _record_sizes(table: pa.Table, plan: ReadPlan) -> np.ndarray | None:
    """The encoded size of each record, from DuckDB's decoded values."""
    total = np.zeros(table.num_rows, dtype=np.int64)
    for field in plan.record_schema["fields"]:
        name, schema = field["name"], field["type"]
        if name == "uid":
            resolved = plan.uid_branches
            if plan.uid_is_union and sum(b != "null" for b in resolved) > 1:
                columns = {
                    i: _column(table, f"u{i}") for i, b in enumerate(resolved) if b != "null"
                }
                sizes = union_by_tag_sizes(_column(table, "tag"), columns, resolved, plan.named)
            else:
                index = next(i for i, b in enumerate(resolved) if b != "null")
                sizes = value_sizes(_column(table, f"u{index}"), schema, plan.named)
        else:
            sizes = value_sizes(_column(table, name), schema, plan.named)
        if sizes is None:
            return None
        total += sizes
    return total


def _byte_hashes(blocks: list[Block], sizes: np.ndarray) -> pa.Array:
    """A 64-bit hash of each record's encoded bytes (the blocks' records, in order)."""
    data = b"".join(data for _, data in blocks)
    offsets = np.concatenate([np.zeros(1, dtype=np.int64), np.cumsum(sizes, dtype=np.int64)])
    records = pa.Array.from_buffers(
        pa.large_binary(), len(sizes), [None, pa.py_buffer(offsets), pa.py_buffer(data)]
    )
    return pl.Series(records).hash(seed=0).to_arrow()


_DATABASE_GUARD = threading.Lock()
_database_of: dict[tuple[int, Path], Any] = {}


def _database(extension: Path) -> Any:
    """The process's in-memory DuckDB with the avro extension loaded: opening one and
    loading the extension took 200-440 ms, once for every file before."""
    import duckdb

    key = (os.getpid(), extension)  # a forked child opens its own
    with _DATABASE_GUARD:
        database = _database_of.get(key)
        if database is None:
            # No network and no implicit installs: the extension is the file the package
            # ships. No file cache: DuckDB would keep every batch file it read (a new file
            # each batch) in memory, which grew with the file (about 4 MiB more per batch).
            database = duckdb.connect(
                config={
                    "autoinstall_known_extensions": False,
                    "autoload_known_extensions": False,
                    "enable_external_file_cache": False,
                    "threads": 1,
                }
            )
            database.execute("LOAD '" + str(extension).replace("'", "''") + "'")
            _database_of[key] = database
        return database


class NativeDecoder:
    """One DuckDB connection (a cursor of the process's database), for the batches of one file."""

    def __init__(self, header: Header, plan: ReadPlan, extension: Path) -> None:
        import duckdb

        self._header = header
        self._plan = plan
        self._head = null_codec_header(header)
        self._folder = tempfile.TemporaryDirectory(prefix="bss-avro-")
        self._batch_no = 0
        # The duplicate-line check compares hashes that are equal exactly when the records'
        # JSON is. A record's bytes are such a key once the size check has shown them to be
        # the canonical encoding of the decoded values (any other encoding of the same
        # values is longer), and hashing them costs far less than DuckDB's hash of the
        # decoded record. Not for booleans: a byte 2 decodes to true as 1 does.
        self.hash_in_query = has_boolean(plan.record_schema, plan.named)
        self._select, self.branches = _select_list(plan, self.hash_in_query)
        # A cursor is a connection of its own to the process's one database (usable on
        # this decoder's thread while others decode on theirs), sharing its loaded extension.
        self._con = _database(extension).cursor()
        self.error_type: type[Exception] = duckdb.Error

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._con.close()
        self._folder.cleanup()

    def decode(self, blocks: list[Block]) -> pa.Table | None:
        """The batch's records as columns; None when DuckDB cannot decode it, or decodes
        it to records that do not take up exactly each block's bytes (a damaged block)."""
        self._batch_no += 1
        path = Path(self._folder.name) / f"batch-{self._batch_no}.avro"
        sync = self._header.sync
        with path.open("wb") as out:
            out.write(self._head)
            for count, data in blocks:
                out.write(encode_long(count) + encode_long(len(data)))
                out.write(data)
                out.write(sync)
        try:
            table = self._con.execute(self._select, [str(path)]).to_arrow_table()
        except self.error_type:
            return None
        finally:
            path.unlink()
        sizes = _record_sizes(table, self._plan)
        counts = [count for count, _ in blocks]
        if sizes is None or not blocks_match(sizes, counts, [len(d) for _, d in blocks]):
            return None
        if self.hash_in_query:
            return table
        return table.append_column("line_hash", _byte_hashes(blocks, sizes))


def _all_ascii(series: pl.Series) -> bool:
    return bool(pc.all(pc.string_is_ascii(series.to_arrow())).as_py() in (True, None))


def _lower(series: pl.Series) -> pl.Series:
    """str.lower of every value: Polars for ASCII text, Python's own rules otherwise."""
    if _all_ascii(series):
        return series.str.to_lowercase()
    return pl.Series(
        series.name, [None if v is None else v.lower() for v in series.to_list()], pl.String
    )


#: user_kind, user_key, user_error; the error is a when/then chain the caller closes with
#: .otherwise(None).
_UserRule = tuple[int, pl.Expr, Then | ChainedThen]


def _branch_rules(branch: str, rows: pl.DataFrame, default_owner: int) -> _UserRule:
    """The rules of avro_rules.user_functions for one branch, over that branch's rows."""

    def text(field: str) -> pl.Series:
        return rows[f"{branch}.{field}"].fill_null("")

    def lower(field: str) -> pl.Expr:
        return pl.lit(_lower(text(field)))

    error: Then | ChainedThen
    if branch == "anid":
        anid = rows["anid"]
        key = pl.lit(anid.reinterpret(signed=False).cast(pl.String))
        return (
            KIND_ANID,
            key,
            pl.when(pl.lit(anid) == 0).then(pl.lit("anid 0 is not a valid user ID")),
        )
    if branch == "ifa":
        ident, kind = pl.lit(text("id")), pl.lit(text("type"))
        error = (
            pl.when(ident == "")
            .then(pl.lit("ifa id is empty"))
            .when(kind == "")
            .then(pl.lit("ifa type is empty"))
        )
        return KIND_IFA, lower("type") + ":" + lower("id"), error
    if branch == "xfa":
        ip = pl.lit(text("ip"))
        make = pl.lit(rows["xfa.device_make_id"].fill_null(0).cast(pl.String))
        model = pl.lit(rows["xfa.device_model_id"].fill_null(0).cast(pl.String))
        return (
            KIND_XFA,
            make + ":" + model + ":" + ip,
            pl.when(ip == "").then(pl.lit("xfa ip is empty")),
        )
    if branch == "external_id":
        ident, owner = pl.lit(text("id")), pl.lit(rows["external_id.member_id"])
        owner = (
            pl.when(owner.fill_null(0) != 0)
            .then(owner)
            .otherwise(pl.lit(default_owner, pl.Int64))
            .cast(pl.String)
        )
        error = pl.when(ident == "").then(pl.lit("external_id id is empty"))
        return KIND_EXTERNAL, owner + ":" + ident, error
    if branch == "device_id":
        device_id, domain = text("id"), _lower(text("domain"))
        known = domain.is_in(sorted(DEVICE_DOMAINS))
        unknown = domain.filter(~known & (device_id != "")).unique()
        messages = {d: f"device_id domain {d!r} is not supported" for d in unknown.to_list()}
        error = (
            pl.when(pl.lit(device_id) == "")
            .then(pl.lit("device_id id is empty"))
            .when(~pl.lit(known))
            .then(pl.lit(domain).replace_strict(messages, default=None, return_dtype=pl.String))
        )
        return KIND_DEVICE, pl.lit(domain) + ":" + lower("id"), error
    source, ident = pl.lit(text("source")), pl.lit(text("id"))  # eid
    error = (
        pl.when(source == "")
        .then(pl.lit("eid source is empty"))
        .when(ident == "")
        .then(pl.lit("eid id is empty"))
    )
    return KIND_EID, lower("source") + ":" + ident, error


def _user_columns(
    cols: pl.DataFrame, branch: pl.Series, config: BatchSegmentConfig, member_id: int
) -> tuple[pl.Series, pl.Series, pl.Series]:
    """user_kind, user_key, user_error per record; each branch's rules run on its rows only."""
    default_owner = config.external_member_uid or member_id
    n = len(branch)
    kinds = pl.repeat(None, n, dtype=pl.UInt8, eager=True)
    keys = pl.repeat(None, n, dtype=pl.String, eager=True)
    errors = pl.repeat(None, n, dtype=pl.String, eager=True)
    for name in branch.unique().drop_nulls().to_list():
        where = (branch == name).arg_true()
        rows = cols.select(c for c in cols.columns if c == name or c.startswith(f"{name}."))
        kind, key, error = _branch_rules(name, rows[where], default_owner)
        out = pl.select(
            user_error=error.otherwise(None).cast(pl.String), user_key=key.cast(pl.String)
        )
        valid = out["user_error"].is_null()
        errors.scatter(where, out["user_error"])
        keys.scatter(where, out["user_key"].zip_with(valid, pl.Series([None], dtype=pl.String)))
        kinds.scatter(where, pl.select(pl.when(valid).then(pl.lit(kind, pl.UInt8))).to_series())
    return kinds, keys, errors


def _segment_rows(segments: pa.ChunkedArray | pa.Array, first_line_no: int) -> pl.DataFrame:
    """One row per segment: line_no, pos and the SEGMENT_INPUT fields (absent ones null)."""
    if isinstance(segments, pa.ChunkedArray):
        segments = segments.combine_chunks()
    parents = pc.list_parent_indices(segments).to_numpy()
    items = pc.list_flatten(segments)
    starts = segments.offsets.to_numpy()[:-1] - segments.offsets[0].as_py()
    pos = np.arange(len(parents), dtype=np.int64) - starts[parents]
    present = {items.type.field(i).name for i in range(items.type.num_fields)}
    columns: dict[str, Any] = {
        "line_no": pl.Series(parents + first_line_no + 1, dtype=pl.Int64),
        "pos": pl.Series(pos, dtype=pl.Int32),
    }
    for name, dtype in SEGMENT_INPUT.items():
        if name in present:
            columns[name] = pl.from_arrow(items.field(name)).cast(dtype)
        else:
            columns[name] = pl.Series(name, [None] * len(parents), dtype=dtype)
    return pl.DataFrame(columns)


def _rule_columns(table: pa.Table, branches: dict[int, str]) -> pl.DataFrame:
    """The uid fields the user rules read, as "<branch>.<field>" (and "anid") columns."""
    columns: dict[str, pl.Series] = {}
    n = table.num_rows
    for index, short in branches.items():
        value = _column(table, f"u{index}")
        if short == "anid":
            columns["anid"] = pl.Series("anid", value.cast(pa.int64()))
            continue
        names = {value.type.field(i).name for i in range(value.type.num_fields)}
        for name, kind in NATIVE_BRANCH_FIELDS[short].items():
            dtype = pl.String if kind == "text" else pl.Int64
            if name not in names:
                columns[f"{short}.{name}"] = pl.Series([None] * n, dtype=dtype)
                continue
            child = pc.struct_field(value, name)
            if isinstance(child.type, pa.DictionaryType):
                child = child.dictionary_decode()
            columns[f"{short}.{name}"] = pl.Series(child).cast(dtype)
    return pl.DataFrame(columns)


def native_chunk(
    table: pa.Table,
    branches: dict[int, str],
    first_line_no: int,
    config: BatchSegmentConfig,
    member_id: int,
) -> tuple[pl.DataFrame, pl.DataFrame, pl.Series]:
    """lines (raw left null), pairs and line hashes of one decoded batch."""
    n = table.num_rows
    segments = table.column("segments")
    counts = pl.from_arrow(pc.list_value_length(segments)).fill_null(0)
    tags = pl.from_arrow(table.column("tag"))
    branch = tags.replace_strict(branches, default=None, return_dtype=pl.String)  # type: ignore[union-attr]
    format_error = (
        pl.DataFrame({"branch": branch, "n": counts})
        .select(
            pl.when(pl.col("branch").is_null())
            .then(pl.lit(ERR_NO_UID_TYPE))
            .when(pl.col("n") == 0)
            .then(pl.lit(ERR_NO_SEGMENTS))
            .when(pl.col("n") > MAX_SEGMENTS_PER_LINE)
            .then(pl.lit(ERR_TOO_MANY_SEGMENTS))
        )
        .to_series()
    )
    kind, key, user_error = _user_columns(_rule_columns(table, branches), branch, config, member_id)
    well_formed = format_error.is_null()
    line_no = pl.Series(np.arange(first_line_no + 1, first_line_no + 1 + n), dtype=pl.Int64)
    lines = pl.DataFrame(
        {
            "line_no": line_no,
            "raw": pl.Series([None] * n, dtype=pl.String),
            "format_error": format_error,
            "user_kind": kind.zip_with(well_formed, pl.Series([None], dtype=pl.UInt8)),
            "user_key": key.zip_with(well_formed, pl.Series([None], dtype=pl.String)),
            "user_error": user_error.zip_with(well_formed, pl.Series([None], dtype=pl.String)),
        },
        schema=LINE_SCHEMA,
    )
    seg = _segment_rows(segments, first_line_no)
    good = line_no.filter(well_formed)
    if len(good) < n:
        seg = seg.filter(pl.col("line_no").is_in(good.implode()))
    lines, pairs = vectorized_pairs(lines, seg)
    hashes = pl.from_arrow(table.column("line_hash")).cast(pl.UInt64)
    return lines, pairs, hashes  # type: ignore[return-value]


class RawRenderer:
    """`raw` of chosen records of one batch: fastavro decodes just the blocks they are in."""

    def __init__(self, header: Header, plan: ReadPlan, blocks: list[Block], first_line_no: int):
        self._header = header
        self._plan = plan
        self._blocks = blocks
        self._starts = np.cumsum([0] + [count for count, _ in blocks]) + first_line_no

    def __call__(self, line_nos: pl.Series) -> pl.Series:
        wanted = sorted(set(line_nos.to_list()))
        found: dict[int, str] = {}
        block_of = np.searchsorted(self._starts, np.array(wanted, dtype=np.int64), side="left") - 1
        for index, group in itertools.groupby(
            zip(block_of.tolist(), wanted, strict=True), lambda x: x[0]
        ):
            first = int(self._starts[index]) + 1
            need = {line for _, line in group}
            records = open_records(self._header, iter([self._blocks[index]]))
            try:
                for line, record in enumerate(records, start=first):
                    if line in need:
                        normalize_uid(record, self._plan)
                        found[line] = to_json(record)
                        if line >= max(need):
                            break
            except InputError:
                raise
            except Exception as exc:  # the native reader took a record fastavro cannot
                raise InputError(CORRUPT, f"Avro record cannot be decoded: {exc}") from exc
        return pl.Series("raw", [found.get(line) for line in line_nos.to_list()], pl.String)
