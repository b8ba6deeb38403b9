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
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from bss.formats.avro_container import CORRUPT, Header, encode_long, null_codec_header
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
BATCH_BYTES = 8 << 20

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


def _long_size(expr: str) -> str:
    """The size of a long in Avro's zig-zag varint encoding, without overflowing BIGINT."""
    a = f"(CASE WHEN ({expr}) >= 0 THEN ({expr}) ELSE -(({expr}) + 1) END)"
    bounds = [2 ** (7 * k - 1) for k in range(1, 10)]
    cases = " ".join(f"WHEN {a} < {b} THEN {k}" for k, b in enumerate(bounds, start=1))
    return f"(CASE {cases} ELSE 10 END)"


def _size_sql(schema: Any, expr: str, named: dict[str, Any], depth: int = 0) -> str:
    """SQL for the number of bytes a value of this type takes in Avro's binary encoding,
    as DuckDB decoded it: NULL where the value cannot be what the schema says."""
    if isinstance(schema, str) and schema in named:
        return _size_sql(named[schema], expr, named, depth)
    if isinstance(schema, list):
        real = [(i, b) for i, b in enumerate(schema) if b != "null"]
        nulls = [i for i, b in enumerate(schema) if b == "null"]
        (index, branch) = real[0]
        present = f"({_long_size(str(index))} + {_size_sql(branch, expr, named, depth)})"
        if not nulls:
            return present
        return f"(CASE WHEN ({expr}) IS NULL THEN {_long_size(str(nulls[0]))} ELSE {present} END)"
    kind = schema if isinstance(schema, str) else schema.get("type")
    if isinstance(kind, (dict, list)):
        return _size_sql(kind, expr, named, depth)
    if kind == "null":
        return f"(CASE WHEN ({expr}) IS NULL THEN 0 END)"
    if kind == "boolean":
        return f"(CASE WHEN ({expr}) IS NOT NULL THEN 1 END)"
    if kind in ("int", "long"):
        return _long_size(f"CAST({expr} AS BIGINT)")
    if kind == "string":
        n = f"strlen({expr})"
        return f"({_long_size(n)} + {n})"
    if kind == "bytes":
        n = f"octet_length({expr})"
        return f"({_long_size(n)} + {n})"
    if kind == "fixed":
        return f"(CASE WHEN octet_length({expr}) = {int(schema['size'])} THEN {int(schema['size'])} END)"
    if kind == "enum":
        return _long_size(f"CAST(enum_code({expr}) AS BIGINT)")
    if kind == "array":
        item = f"x{depth}"
        inner = _size_sql(schema["items"], item, named, depth + 1)
        n = f"len({expr})"
        return (
            f"(CASE WHEN {n} = 0 THEN 1 ELSE {_long_size(n)} + "
            f"list_sum(list_transform({expr}, lambda {item}: {inner})) + 1 END)"
        )
    if kind == "record":
        parts = [
            _size_sql(f["type"], f"({expr}).{_quote(f['name'])}", named, depth)
            for f in schema["fields"]
        ]
        return "(" + " + ".join(parts or ["0"]) + ")"
    raise ValueError(f"no size for Avro type {kind!r}")


def _record_size_sql(plan: ReadPlan) -> str:
    """The encoded size of each record: DuckDB's decoding is taken only where these sizes add
    up to exactly the bytes of each block (a damaged block decodes to other sizes, or fails)."""
    parts = []
    for f in plan.record_schema["fields"]:
        name, kind = f["name"], f["type"]
        column = _quote(name)
        if name == "uid" and isinstance(kind, list) and sum(b != "null" for b in kind) > 1:
            tag = f"union_tag({column})"
            cases = " ".join(
                f"WHEN 'u{i}' THEN {_long_size(str(i))} + "
                f"{_size_sql(b, f'union_extract({column}, {chr(39)}u{i}{chr(39)})', plan.named)}"
                for i, b in enumerate(kind)
                if b != "null"
            )
            nulls = [i for i, b in enumerate(kind) if b == "null"]
            by_tag = f"(CASE {tag} {cases} END)"
            if nulls:
                null_size = _long_size(str(nulls[0]))
                by_tag = f"(CASE WHEN {column} IS NULL THEN {null_size} ELSE {by_tag} END)"
            parts.append(by_tag)
        else:
            parts.append(_size_sql(kind, column, plan.named))
    return "(" + " + ".join(parts) + ")"


def _select_list(plan: ReadPlan) -> tuple[list[str], dict[int, str]]:
    """SQL expressions for one batch, and uid branch index -> branch short name."""
    real = [(i, b) for i, b in enumerate(plan.uid_branches) if b != "null"]
    union = plan.uid_is_union and len(real) > 1
    if union:
        tag = "CAST(substr(CAST(union_tag(uid) AS VARCHAR), 2) AS SMALLINT)"
    elif plan.uid_is_union:  # one non-null branch: DuckDB gives it as a nullable value
        tag = f"CASE WHEN uid IS NULL THEN NULL ELSE {real[0][0]} END"
    else:
        tag = "0"
    branches: dict[int, str] = {}
    exprs = [f"CAST({tag} AS SMALLINT) AS tag"]
    for index, schema in real:
        short, _full = branch_of(schema)
        if short is None:
            continue
        branches[index] = short
        value = f"union_extract(uid, 'u{index}')" if union else "uid"
        if short == "anid":
            exprs.append(f"CAST({value} AS BIGINT) AS anid")
            continue
        present = {f.get("name") for f in schema.get("fields", [])}
        for name, kind in NATIVE_BRANCH_FIELDS[short].items():
            sql_type = "VARCHAR" if kind == "text" else "BIGINT"
            source = f"({value}).{_quote(name)}" if name in present else "NULL"
            exprs.append(f"CAST({source} AS {sql_type}) AS {_quote(f'{short}.{name}')}")
    exprs.append("segments")
    record = ", ".join(_quote(name) for name in plan.top_fields)
    exprs.append(f"hash({tag}, {record}) AS line_hash")
    exprs.append(f"CAST({_record_size_sql(plan)} AS BIGINT) AS encoded_size")
    return exprs, branches


class NativeDecoder:
    """One DuckDB connection with the avro extension loaded, for the batches of one file."""

    def __init__(self, header: Header, plan: ReadPlan, extension: Path) -> None:
        import duckdb

        self._header = header
        self._plan = plan
        self._head = null_codec_header(header)
        self._folder = tempfile.TemporaryDirectory(prefix="bss-avro-")
        self._batch_no = 0
        exprs, self.branches = _select_list(plan)
        self._select = "SELECT " + ", ".join(exprs) + " FROM read_avro(?)"
        # No network and no implicit installs: the extension is the file the package ships.
        self._con = duckdb.connect(
            config={
                "autoinstall_known_extensions": False,
                "autoload_known_extensions": False,
                "threads": 1,
            }
        )
        self._con.execute("LOAD " + "'" + str(extension).replace("'", "''") + "'")
        self.error_type: type[Exception] = duckdb.Error

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._con.close()
        self._folder.cleanup()

    def decode(self, blocks: list[Block]) -> pa.Table:
        """The batch's records as flat columns; raises `error_type` when DuckDB cannot."""
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
        finally:
            path.unlink()
        if not _sizes_match(table, blocks):
            raise self.error_type("records do not take up exactly their blocks' bytes")
        return table.drop_columns(["encoded_size"])


def _sizes_match(table: pa.Table, blocks: list[Block]) -> bool:
    counts = np.array([count for count, _ in blocks], dtype=np.int64)
    if table.num_rows != int(counts.sum()):
        return False
    sizes = table.column("encoded_size")
    if sizes.null_count:
        return False
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    per_block = np.add.reduceat(sizes.to_numpy(), starts)
    return bool((per_block == np.array([len(data) for _, data in blocks])).all())


def _all_ascii(series: pl.Series) -> bool:
    return bool(pc.all(pc.string_is_ascii(series.to_arrow())).as_py() in (True, None))


def _lower(series: pl.Series) -> pl.Series:
    """str.lower of every value: Polars for ASCII text, Python's own rules otherwise."""
    if _all_ascii(series):
        return series.str.to_lowercase()
    return pl.Series(
        series.name, [None if v is None else v.lower() for v in series.to_list()], pl.String
    )


def _user_columns(
    cols: pl.DataFrame, branch: pl.Series, config: BatchSegmentConfig, member_id: int
) -> tuple[pl.Series, pl.Series, pl.Series]:
    """user_kind, user_key, user_error per record: the rules of avro_rules.user_functions."""
    default_owner = config.external_member_uid or member_id
    names = set(cols.columns)
    kinds: list[tuple[str, int, pl.Expr, pl.Expr]] = []  # branch, kind, key, error

    def text(name: str) -> pl.Series:
        return cols[name].fill_null("")

    if "anid" in names:
        anid = cols["anid"]
        key = anid.cast(pl.Int64).reinterpret(signed=False).cast(pl.String)
        error = pl.when(anid == 0).then(pl.lit("anid 0 is not a valid user ID"))
        kinds.append(("anid", KIND_ANID, pl.lit(key), error))
    if "ifa.id" in names:
        ident, kind = text("ifa.id"), text("ifa.type")
        error = (
            pl.when(pl.lit(ident) == "")
            .then(pl.lit("ifa id is empty"))
            .when(pl.lit(kind) == "")
            .then(pl.lit("ifa type is empty"))
        )
        key = pl.lit(_lower(kind)) + ":" + pl.lit(_lower(ident))
        kinds.append(("ifa", KIND_IFA, key, error))
    if "xfa.ip" in names:
        ip = text("xfa.ip")
        make = cols["xfa.device_make_id"].fill_null(0).cast(pl.String)
        model = cols["xfa.device_model_id"].fill_null(0).cast(pl.String)
        error = pl.when(pl.lit(ip) == "").then(pl.lit("xfa ip is empty"))
        kinds.append(("xfa", KIND_XFA, pl.lit(make) + ":" + pl.lit(model) + ":" + ip, error))
    if "external_id.id" in names:
        ident, owner = text("external_id.id"), cols["external_id.member_id"]
        owner = (
            pl.when(pl.lit(owner).fill_null(0) != 0)
            .then(pl.lit(owner))
            .otherwise(pl.lit(default_owner, pl.Int64))
            .cast(pl.String)
        )
        error = pl.when(pl.lit(ident) == "").then(pl.lit("external_id id is empty"))
        kinds.append(("external_id", KIND_EXTERNAL, owner + ":" + pl.lit(ident), error))
    if "device_id.id" in names:
        ident, domain = text("device_id.id"), _lower(text("device_id.domain"))
        known = domain.is_in(sorted(DEVICE_DOMAINS))
        unknown = domain.filter(~known & (ident != "") & (branch == "device_id")).unique()
        messages = {d: f"device_id domain {d!r} is not supported" for d in unknown.to_list()}
        error = (
            pl.when(pl.lit(ident) == "")
            .then(pl.lit("device_id id is empty"))
            .when(~pl.lit(known))
            .then(pl.lit(domain).replace_strict(messages, default=None, return_dtype=pl.String))
        )
        key = pl.lit(domain) + ":" + pl.lit(_lower(ident))
        kinds.append(("device_id", KIND_DEVICE, key, error))
    if "eid.source" in names:
        source, ident = text("eid.source"), text("eid.id")
        error = (
            pl.when(pl.lit(source) == "")
            .then(pl.lit("eid source is empty"))
            .when(pl.lit(ident) == "")
            .then(pl.lit("eid id is empty"))
        )
        kinds.append(("eid", KIND_EID, pl.lit(_lower(source)) + ":" + pl.lit(ident), error))

    frame = pl.DataFrame({"branch": branch})
    is_branch = {name: pl.col("branch") == name for name, _, _, _ in kinds}
    error_expr: pl.Expr = pl.lit(None, pl.String)
    kind_expr: pl.Expr = pl.lit(None, pl.UInt8)
    key_expr: pl.Expr = pl.lit(None, pl.String)
    for name, kind, key, error in reversed(kinds):
        error_expr = pl.when(is_branch[name]).then(error.otherwise(None)).otherwise(error_expr)
        kind_expr = pl.when(is_branch[name]).then(pl.lit(kind, pl.UInt8)).otherwise(kind_expr)
        key_expr = pl.when(is_branch[name]).then(key).otherwise(key_expr)
    out = frame.select(
        user_error=error_expr.cast(pl.String),
        user_kind=kind_expr.cast(pl.UInt8),
        user_key=key_expr.cast(pl.String),
    )
    valid = out["user_error"].is_null()
    return (
        out["user_kind"].zip_with(valid, pl.Series([None], dtype=pl.UInt8)),
        out["user_key"].zip_with(valid, pl.Series([None], dtype=pl.String)),
        out["user_error"],
    )


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
            columns[name] = pl.from_arrow(items.field(name)).cast(dtype)  # type: ignore[union-attr]
        else:
            columns[name] = pl.Series(name, [None] * len(parents), dtype=dtype)
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
    counts = pl.from_arrow(pc.list_value_length(segments)).fill_null(0)  # type: ignore[arg-type]
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
    user_cols = pl.from_arrow(table.drop_columns(["tag", "segments", "line_hash"]))  # type: ignore[assignment]
    kind, key, user_error = _user_columns(user_cols, branch, config, member_id)  # type: ignore[arg-type]
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
    hashes = pl.from_arrow(table.column("line_hash")).cast(pl.UInt64)  # type: ignore[union-attr]
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
