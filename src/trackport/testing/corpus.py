"""The conformance corpus: one canonical run per case of the conformance suite (docs/architecture.md, Testing).

Every connector's conformance test sends these runs through its sink, reads
them back through its source and compares the result with the input after
only the connector's declared transformations.  `build_corpus()` is pure and
deterministic: the same call gives equal tables and equal file bytes on every
machine (values come from seeded numpy generators and only IEEE-exact
arithmetic -- `+ - * /`, `cumsum` -- never `exp`/`sin`, whose last bit varies
between SIMD implementations).

Cases (`CorpusRun.case`), all in project `trackport-tests/corpus`:

    scalars          every param type and the run metadata of the `sys/` vocabulary
    nested_config    `config/optimizer/lr`, `config/model/...`, several levels deep
    unicode_keys     non-ASCII, spaces, `:`, `..`, punctuation, a 300-character key
    long_values      a 10,000-character param, limit boundaries, a 1,500-character series value
    nan_inf          NaN, +inf, -inf, -0.0, subnormal and max floats in a series and params
    steps            fractional steps (0.5, 1.25, 1000000.125, 0.000001, ...), gaps, int32 edges
    big_series       one float series of 100,000 points (2,000 with big=False), ms timestamps
    string_series    `monitoring/stdout` and `monitoring/stderr`, with timestamps
    histograms       `histogram_series`, type COUNTING, uniform and non-uniform edges
    files            `file`, `file_series` (3 PNGs), `file_set` (a directory), `artifact`
    fork_parent      a run that is forked...
    fork_child       ...by this one: `sys/forking/parent` = parent run id, `sys/forking/step`
    empty            a run with nothing but `sys/name` (see `_case_empty`)
"""

from __future__ import annotations

import json
import struct
import zlib
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import pyarrow as pa

from trackport.core.schema import (
    SCHEMA,
    STEP_SCALE,
    TIMESTAMP_TYPE,
    VALUE_COLUMN,
)
from trackport.core.steps import decimal_steps

CORPUS_PROJECT = "trackport-tests/corpus"
SEED = 20261123
# 2024-05-01T00:00:00Z, in ms since the epoch.
BASE_MS = 1_714_521_600_000
_HOUR_MS = 3_600_000
_STEP_DENOM = 10**STEP_SCALE
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


@dataclass
class CorpusRun:
    """One run of the corpus (or of any generated export).

    `table` is in the canonical SCHEMA; `files` maps each file path as written
    in `file_value.path` (relative to the project's files directory, so
    `<project_id>/<run_id>/<attribute_path>[/...]`) to its bytes.  A `file_set`
    row points at a directory: its files are the keys below that directory.
    """

    project_id: str
    run_id: str
    table: pa.Table
    files: dict[str, bytes] = field(default_factory=dict)
    case: str = ""

    @property
    def num_rows(self) -> int:
        return self.table.num_rows


# ---------------------------------------------------------------------------
# Builders (public: scripts/make_sample_export.py and tests use them too)
# ---------------------------------------------------------------------------


def micro_steps(values: Iterable[str | int | Decimal]) -> np.ndarray:
    """Exact steps as int64 millionths ("1000000.125" -> 1000000125000)."""
    out = []
    for v in values:
        scaled = Decimal(str(v)) * _STEP_DENOM
        if scaled != scaled.to_integral_value():
            raise ValueError(f"step {v!r} has more than {STEP_SCALE} decimal places")
        out.append(int(scaled))
    return np.asarray(out, dtype=np.int64)


def steps_array(micro: np.ndarray | Sequence[int | None]) -> pa.Array:
    """decimal128(18,6) from int64 millionths (None -> null), without floats."""
    if isinstance(micro, np.ndarray) and micro.dtype.kind in "iu":
        return decimal_steps(micro)
    items = list(micro)
    valid = np.array([v is not None for v in items], dtype=bool)
    return decimal_steps(np.array([0 if v is None else v for v in items], dtype=np.int64), valid)


def timestamps_array(ms: np.ndarray | Sequence[int]) -> pa.Array:
    """timestamp(ms, UTC) from int64 ms since the epoch."""
    return pa.array(np.asarray(ms, dtype=np.int64), pa.int64()).view(TIMESTAMP_TYPE)


def _repeat(value: str, n: int) -> pa.Array:
    return pa.array([value] * n, pa.string())


def series_table(
    project_id: str,
    run_id: str,
    attribute_path: str,
    attribute_type: str,
    values: Any,
    steps_micro: np.ndarray | Sequence[int | None] | None = None,
    timestamps_ms: np.ndarray | Sequence[int] | None = None,
) -> pa.Table:
    """Canonical rows of one series: `values` go to the type's value column.

    Steps default to 0..n-1; timestamps to null (as neptune-exporter writes for files).
    """
    value_column = VALUE_COLUMN[attribute_type]
    value_type = SCHEMA.field(value_column).type
    if isinstance(values, (pa.Array, pa.ChunkedArray)):
        value_array = values
    elif isinstance(values, np.ndarray):
        value_array = pa.array(values, value_type)
    else:
        value_array = pa.array(list(values), value_type)
    n = len(value_array)
    if steps_micro is None:
        steps_micro = np.arange(n, dtype=np.int64) * _STEP_DENOM
    step = steps_array(steps_micro)
    ts = pa.nulls(n, TIMESTAMP_TYPE) if timestamps_ms is None else timestamps_array(timestamps_ms)
    if len(step) != n or len(ts) != n:
        raise ValueError(f"{attribute_path}: steps, timestamps and values differ in length")
    arrays = []
    for f in SCHEMA:
        if f.name == "project_id":
            arrays.append(_repeat(project_id, n))
        elif f.name == "run_id":
            arrays.append(_repeat(run_id, n))
        elif f.name == "attribute_path":
            arrays.append(_repeat(attribute_path, n))
        elif f.name == "attribute_type":
            arrays.append(_repeat(attribute_type, n))
        elif f.name == "step":
            arrays.append(step)
        elif f.name == "timestamp":
            arrays.append(ts)
        elif f.name == value_column:
            arrays.append(value_array)
        else:
            arrays.append(pa.nulls(n, f.type))
    return pa.Table.from_arrays(arrays, schema=SCHEMA)


def rows_table(project_id: str, run_id: str, rows: Sequence[Mapping[str, Any]]) -> pa.Table:
    """Canonical rows from small dicts: `path`, `type`, `value`, optional `step`
    (anything `micro_steps` takes) and `timestamp` (int ms).  For params and files.

    A datetime value is int ms since the epoch or an aware datetime; a file
    value is its path string."""
    cols: dict[str, list] = {name: [] for name in SCHEMA.names}
    for row in rows:
        kind = row["type"]
        value_column = VALUE_COLUMN[kind]
        value = row["value"]
        if value_column == "datetime_value" and isinstance(value, datetime):
            value = _datetime_ms(value)
        if value_column == "file_value" and isinstance(value, str):
            value = {"path": value}
        step = row.get("step")
        ts = row.get("timestamp")
        for name in SCHEMA.names:
            if name == "project_id":
                cols[name].append(project_id)
            elif name == "run_id":
                cols[name].append(run_id)
            elif name == "attribute_path":
                cols[name].append(row["path"])
            elif name == "attribute_type":
                cols[name].append(kind)
            elif name == "step":
                cols[name].append(None if step is None else int(micro_steps([step])[0]))
            elif name == "timestamp":
                cols[name].append(ts)
            elif name == value_column:
                cols[name].append(value)
            else:
                cols[name].append(None)
    arrays = []
    for f in SCHEMA:
        if f.name == "step":
            arrays.append(steps_array(cols["step"]))
        elif f.name in ("timestamp", "datetime_value"):
            arrays.append(pa.array(cols[f.name], pa.int64()).view(TIMESTAMP_TYPE))
        else:
            arrays.append(pa.array(cols[f.name], f.type))
    return pa.Table.from_arrays(arrays, schema=SCHEMA)


def _datetime_ms(value: datetime) -> int:
    if value.tzinfo is None:
        raise ValueError("naive datetime; give an aware one (UTC)")
    return (value - _EPOCH) // timedelta(milliseconds=1)


def concat(tables: Sequence[pa.Table]) -> pa.Table:
    return pa.concat_tables(tables).combine_chunks()


def png_bytes(seed: int, size: int = 8) -> bytes:
    """A small valid grayscale PNG (stored deflate blocks, so byte-stable across zlib versions)."""
    rng = np.random.default_rng([SEED, 77, seed])
    pixels = rng.integers(0, 256, size=(size, size), dtype=np.uint8)
    raw = b"".join(b"\x00" + row.tobytes() for row in pixels)

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    header = struct.pack(">IIBBBBB", size, size, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw, 0))
        + chunk(b"IEND", b"")
    )


def file_path(project_id: str, run_id: str, attribute_path: str) -> str:
    """Where neptune-exporter puts an attribute's file(s), relative to the project's files dir."""
    return f"{project_id}/{run_id}/{attribute_path}"


def increasing_ms(rng: np.random.Generator, start_ms: int, n: int, lo: int = 1, hi: int = 50) -> np.ndarray:
    """n strictly increasing ms timestamps from start_ms."""
    return start_ms + np.cumsum(rng.integers(lo, hi, size=n, dtype=np.int64))


# ---------------------------------------------------------------------------
# Cases
# ---------------------------------------------------------------------------


@dataclass
class _Ctx:
    project_id: str
    run_id: str
    index: int
    case: str
    big: bool

    @property
    def rng(self) -> np.random.Generator:
        return np.random.default_rng([SEED, self.index])

    @property
    def created_ms(self) -> int:
        return BASE_MS + self.index * _HOUR_MS + 123

    def sys_rows(self, modified_after_ms: int = 1_800_000) -> list[dict]:
        return [
            {"path": "sys/name", "type": "string", "value": f"corpus-{self.case}"},
            {"path": "sys/creation_time", "type": "datetime", "value": self.created_ms},
            {"path": "sys/modification_time", "type": "datetime", "value": self.created_ms + modified_after_ms + 456},
        ]

    def params(self, rows: list[dict]) -> pa.Table:
        return rows_table(self.project_id, self.run_id, rows)

    def series(self, path: str, kind: str, values, steps=None, timestamps=None) -> pa.Table:
        return series_table(self.project_id, self.run_id, path, kind, values, steps, timestamps)

    def run(self, tables: Sequence[pa.Table], files: dict[str, bytes] | None = None) -> CorpusRun:
        return CorpusRun(self.project_id, self.run_id, concat(tables), dict(files or {}), self.case)


def _case_scalars(c: _Ctx) -> CorpusRun:
    rows = c.sys_rows() + [
        {"path": "sys/id", "type": "string", "value": c.run_id},
        {"path": "sys/custom_run_id", "type": "string", "value": "scalars-7f3a9c"},
        {"path": "sys/description", "type": "string", "value": "Every param type.\nSecond line of the notes."},
        {"path": "sys/tags", "type": "string_set", "value": ["baseline", "tag with space", "ünïcode"]},
        {"path": "sys/group_tags", "type": "string_set", "value": ["group-a"]},
        {"path": "sys/owner", "type": "string", "value": "corpus-bot"},
        {"path": "sys/failed", "type": "bool", "value": False},
        {"path": "config/float", "type": "float", "value": 0.1},
        {"path": "config/float_negative", "type": "float", "value": -2.5e-7},
        {"path": "config/float_integral", "type": "float", "value": 3.0},
        {"path": "config/int", "type": "int", "value": 42},
        {"path": "config/int_zero", "type": "int", "value": 0},
        {"path": "config/int_negative", "type": "int", "value": -17},
        {"path": "config/int32_max", "type": "int", "value": 2**31 - 1},
        {"path": "config/int32_min", "type": "int", "value": -(2**31)},
        {"path": "config/int_above_2_53", "type": "int", "value": 2**53 + 1},
        {"path": "config/int64_max", "type": "int", "value": 2**63 - 1},
        {"path": "config/string", "type": "string", "value": "adam"},
        {"path": "config/string_empty", "type": "string", "value": ""},
        {"path": "config/string_numeric", "type": "string", "value": "0.001"},
        {"path": "config/bool_true", "type": "bool", "value": True},
        {"path": "config/bool_false", "type": "bool", "value": False},
        {"path": "config/datetime", "type": "datetime", "value": BASE_MS - 86_400_000 + 45_296_789},
        {"path": "config/datetime_epoch", "type": "datetime", "value": 0},
        {"path": "config/string_set", "type": "string_set", "value": ["alpha", "beta", "gamma"]},
        {"path": "config/string_set_empty", "type": "string_set", "value": []},
    ]
    return c.run([c.params(rows)])


def _case_nested_config(c: _Ctx) -> CorpusRun:
    rows = c.sys_rows() + [
        {"path": "config/optimizer/lr", "type": "float", "value": 0.001},
        {"path": "config/optimizer/name", "type": "string", "value": "adamw"},
        {"path": "config/optimizer/betas/0", "type": "float", "value": 0.9},
        {"path": "config/optimizer/betas/1", "type": "float", "value": 0.999},
        {"path": "config/optimizer/weight_decay", "type": "float", "value": 0.01},
        {"path": "config/optimizer/schedule/warmup_steps", "type": "int", "value": 500},
        {"path": "config/optimizer/schedule/kind", "type": "string", "value": "cosine"},
        {"path": "config/model/layers", "type": "int", "value": 12},
        {"path": "config/model/hidden", "type": "int", "value": 768},
        {"path": "config/model/dropout", "type": "float", "value": 0.1},
        {"path": "config/model/attention/heads", "type": "int", "value": 12},
        {"path": "config/model/attention/flash", "type": "bool", "value": True},
        {"path": "config/data/augment/flip", "type": "bool", "value": True},
        {"path": "config/data/augment/crop/size", "type": "int", "value": 224},
        {"path": "config/data/sources", "type": "string_set", "value": ["imagenet", "coco"]},
        {"path": "summary/best/accuracy", "type": "float", "value": 0.9375},
    ]
    return c.run([c.params(rows)])


def _case_unicode_keys(c: _Ctx) -> CorpusRun:
    rng = c.rng
    prefix = "config/long_key/"
    long_key = prefix + ("segment-" * 40)[: 300 - len(prefix)]
    assert len(long_key) == 300
    rows = c.sys_rows() + [
        {"path": "config/a b/c:d", "type": "string", "value": "space and colon"},
        {"path": "config/a..b", "type": "float", "value": 1.5},
        {"path": "config/日本語/キー", "type": "string", "value": "値"},
        {"path": "config/emoji 🚀", "type": "int", "value": 7},
        {"path": "config/special !#$%&()*+,;=@[]^`{|}~'\"", "type": "string", "value": "punctuation"},
        {"path": "config/back\\slash", "type": "bool", "value": True},
        {"path": "config/Ünïcödé value", "type": "string", "value": "Grüße, 世界 🌍"},
        {"path": long_key, "type": "int", "value": 300},
    ]
    n = 20
    ts = increasing_ms(rng, c.created_ms, n)
    loss = 2.0 - np.arange(n) * 0.05 + rng.random(n) * 0.01
    return c.run([
        c.params(rows),
        c.series("metrics/ümlaut loss", "float_series", loss, None, ts),
        c.series("metrics/acc@1 (top-1)", "float_series", rng.random(5), None, ts[:5]),
        c.series("metrics/a..b/x", "float_series", rng.random(3), None, ts[:3]),
    ])


def _long_text(rng: np.random.Generator, n: int, alphabet: str) -> str:
    chars = list(alphabet)
    idx = rng.integers(0, len(chars), size=n)
    return "".join(chars[i] for i in idx)


def _case_long_values(c: _Ctx) -> CorpusRun:
    rng = c.rng
    ascii_abc = "abcdefghijklmnopqrstuvwxyz0123456789 "
    mixed_abc = ascii_abc + "äöüß€漢字🚀"
    rows = c.sys_rows() + [
        {"path": "config/long_string", "type": "string", "value": _long_text(rng, 10_000, mixed_abc)},
        {"path": "config/str_200", "type": "string", "value": _long_text(rng, 200, ascii_abc)},
        {"path": "config/str_201", "type": "string", "value": _long_text(rng, 201, ascii_abc)},
        {"path": "config/str_6000", "type": "string", "value": _long_text(rng, 6000, ascii_abc)},
        {"path": "config/str_6001", "type": "string", "value": _long_text(rng, 6001, ascii_abc)},
        {"path": "sys/description", "type": "string", "value": _long_text(rng, 3000, mixed_abc)},
    ]
    lengths = [12, 1500, 999, 1000, 1001, 40]
    lines = [_long_text(rng, k, mixed_abc) for k in lengths]
    ts = increasing_ms(rng, c.created_ms, len(lines))
    return c.run([c.params(rows), c.series("logs/long_lines", "string_series", lines, None, ts)])


def _case_nan_inf(c: _Ctx) -> CorpusRun:
    rng = c.rng
    rows = c.sys_rows() + [
        {"path": "config/nan", "type": "float", "value": float("nan")},
        {"path": "config/pos_inf", "type": "float", "value": float("inf")},
        {"path": "config/neg_inf", "type": "float", "value": float("-inf")},
        {"path": "config/neg_zero", "type": "float", "value": -0.0},
    ]
    values = np.array(
        [0.0, np.nan, 1.0, np.inf, 2.0, -np.inf, -0.0, 5e-324, 1.7976931348623157e308, 3.0],
        dtype=np.float64,
    )
    ts = increasing_ms(rng, c.created_ms, len(values))
    all_nan = np.full(3, np.nan)
    return c.run([
        c.params(rows),
        c.series("metrics/nan_inf", "float_series", values, None, ts),
        c.series("metrics/all_nan", "float_series", all_nan, None, ts[:3]),
    ])


def _case_steps(c: _Ctx) -> CorpusRun:
    rng = c.rng
    fractional = micro_steps(["0.000001", "0.5", "1.25", "1000000.125", "123456789.000001"])
    sparse = micro_steps([0, 1, 2, 5, 10, 100, 1000, 10_000, 999_999])
    int_edges = micro_steps([0, 2**31 - 1, 2**31, 10**11])
    near_dupes = micro_steps(["7", "7.000001", "7.5", "8"])
    tables = [c.params(c.sys_rows())]
    for path, steps in (
        ("metrics/fractional", fractional),
        ("metrics/sparse", sparse),
        ("metrics/int32_edges", int_edges),
        ("metrics/close_steps", near_dupes),
    ):
        ts = increasing_ms(rng, c.created_ms, len(steps))
        tables.append(c.series(path, "float_series", rng.random(len(steps)), steps, ts))
    ts = increasing_ms(rng, c.created_ms, 3)
    tables.append(c.series("logs/fractional", "string_series", ["a", "b", "c"], micro_steps(["0.5", "1.5", "2.25"]), ts))
    return c.run(tables)


def _case_big_series(c: _Ctx) -> CorpusRun:
    rng = c.rng
    n = 100_000 if c.big else 2_000
    ts = increasing_ms(rng, c.created_ms, n, 1, 20)
    walk = 1.0 + np.cumsum(rng.standard_normal(n) * 0.01)
    return c.run([
        c.params(c.sys_rows(int(ts[-1] - c.created_ms))),
        c.series("metrics/big_series", "float_series", walk, None, ts),
    ])


def _case_string_series(c: _Ctx) -> CorpusRun:
    rng = c.rng
    out = [f"epoch {i // 10} step {i}: loss={1.0 / (1 + i):.6f}" for i in range(40)]
    out[3] = ""
    out[7] = "tab\tseparated\tline"
    out[11] = "ünïcode output ✓ 日本語"
    out[13] = "   leading and trailing spaces   "
    err = [f"WARNING: retry {i} after timeout" for i in range(12)]
    err[5] = 'Traceback (most recent call last): File "train.py", line 1'
    ts_out = increasing_ms(rng, c.created_ms, len(out), 10, 500)
    ts_err = increasing_ms(rng, c.created_ms, len(err), 10, 2000)
    cpu = np.round(rng.random(30) * 100, 1)
    ts_cpu = increasing_ms(rng, c.created_ms, len(cpu), 1000, 1001)
    return c.run([
        c.params(c.sys_rows()),
        c.series("monitoring/cpu", "float_series", cpu, None, ts_cpu),
        c.series("monitoring/stdout", "string_series", out, None, ts_out),
        c.series("monitoring/stderr", "string_series", err, None, ts_err),
    ])


def _histogram(edges: Sequence[float], values: Sequence[float]) -> dict:
    return {"type": "COUNTING", "edges": [float(e) for e in edges], "values": [float(v) for v in values]}


def _case_histograms(c: _Ctx) -> CorpusRun:
    rng = c.rng
    uniform_edges = [-1.0 + 0.25 * i for i in range(9)]
    hists = [_histogram(uniform_edges, rng.integers(0, 100, 8)) for _ in range(3)]
    hists.append(_histogram([-10.0, -1.0, -0.5, 0.0, 0.1, 2.0, 100.0], rng.integers(0, 50, 6)))
    ts = increasing_ms(rng, c.created_ms, len(hists), 100, 1000)
    nonuniform = [
        _histogram([0.0, 1.0, 10.0, 100.0, 1000.0], [5, 4, 3, 2]),
        _histogram([0.0, 0.001, 0.5, 1.0], [0, 12.5, 3]),
    ]
    ts2 = increasing_ms(rng, c.created_ms, 2, 100, 1000)
    return c.run([
        c.params(c.sys_rows()),
        c.series("metrics/weights_hist", "histogram_series", hists, None, ts),
        c.series("metrics/grad_hist", "histogram_series", nonuniform, micro_steps([0, 10]), ts2),
    ])


def _case_files(c: _Ctx) -> CorpusRun:
    rng = c.rng
    p, r = c.project_id, c.run_id
    files: dict[str, bytes] = {}

    ckpt = file_path(p, r, "files/model_checkpoint")
    files[ckpt] = rng.integers(0, 256, size=4096, dtype=np.uint8).tobytes()
    req = file_path(p, r, "source_code/requirements")
    files[req] = b"numpy==2.0\npyarrow>=14\n"

    series_dir = file_path(p, r, "images/samples")
    series_rows = []
    for step in range(3):
        path = f"{series_dir}/{step}.png"
        files[path] = png_bytes(step)
        series_rows.append({"path": "images/samples", "type": "file_series", "value": path, "step": step})

    fileset_dir = file_path(p, r, "source_code/files")
    files[f"{fileset_dir}/train.py"] = b"print('training')\n"
    files[f"{fileset_dir}/lib/helpers.py"] = b"def helper():\n    return 42\n"

    artifact_dir = file_path(p, r, "artifacts/dataset")
    train_csv = b"x,y\n1,2\n3,4\n"
    listing = [
        {
            "filePath": "data/train.csv",
            "fileHash": "sha1-" + zlib.crc32(train_csv).to_bytes(4, "big").hex(),
            "type": "S3",
            "size": len(train_csv),
            "metadata": {"location": "s3://trackport-tests/data/train.csv", "last_modified": "2024-05-01 00:00:00"},
        }
    ]
    artifact_json = f"{artifact_dir}/files_list.json"
    files[artifact_json] = json.dumps(listing).encode("utf-8")

    rows = [
        {"path": "files/model_checkpoint", "type": "file", "value": ckpt},
        {"path": "source_code/requirements", "type": "file", "value": req},
        *series_rows,
        {"path": "source_code/files", "type": "file_set", "value": fileset_dir},
        {"path": "artifacts/dataset", "type": "artifact", "value": artifact_json},
    ]
    return c.run([c.params(c.sys_rows()), c.params(rows)], files)


_FORK_STEP = 50


def _loss_curve(rng: np.random.Generator, steps: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + 0.05 * steps) + rng.random(len(steps)) * 0.01


def _case_fork_parent(c: _Ctx) -> CorpusRun:
    rng = c.rng
    steps = np.arange(100, dtype=np.int64)
    ts = increasing_ms(rng, c.created_ms, len(steps), 100, 200)
    return c.run([
        c.params(c.sys_rows()),
        c.series("metrics/loss", "float_series", _loss_curve(rng, steps), steps * _STEP_DENOM, ts),
    ])


def _case_fork_child(c: _Ctx, parent_run_id: str) -> CorpusRun:
    rng = c.rng
    steps = np.arange(_FORK_STEP + 1, 151, dtype=np.int64)
    ts = increasing_ms(rng, c.created_ms, len(steps), 100, 200)
    rows = c.sys_rows() + [
        {"path": "sys/forking/parent", "type": "string", "value": parent_run_id},
        {"path": "sys/forking/step", "type": "float", "value": float(_FORK_STEP)},
    ]
    return c.run([
        c.params(rows),
        c.series("metrics/loss", "float_series", _loss_curve(rng, steps), steps * _STEP_DENOM, ts),
    ])


def _case_empty(c: _Ctx) -> CorpusRun:
    """The empty run: one row, `sys/name`.

    A run with zero rows cannot exist in the exporter layout: neptune-exporter
    opens a run's part file on its first batch, so a run without data leaves no
    `_part_0.parquet` and is simply not in the export (and a real Neptune run
    always has `sys/*` attributes).  The emptiest run a layout reader can see is
    therefore a run with nothing but its name: no params, no series, no files.
    """
    return c.run([c.params([{"path": "sys/name", "type": "string", "value": f"corpus-{c.case}"}])])


CASES: tuple[str, ...] = (
    "scalars",
    "nested_config",
    "unicode_keys",
    "long_values",
    "nan_inf",
    "steps",
    "big_series",
    "string_series",
    "histograms",
    "files",
    "fork_parent",
    "fork_child",
    "empty",
)

_BUILDERS: dict[str, Callable[..., CorpusRun]] = {
    "scalars": _case_scalars,
    "nested_config": _case_nested_config,
    "unicode_keys": _case_unicode_keys,
    "long_values": _case_long_values,
    "nan_inf": _case_nan_inf,
    "steps": _case_steps,
    "big_series": _case_big_series,
    "string_series": _case_string_series,
    "histograms": _case_histograms,
    "files": _case_files,
    "fork_parent": _case_fork_parent,
    "empty": _case_empty,
}


def corpus_run_id(case: str) -> str:
    """Neptune-style run id of a case: CORP-1 ... CORP-13, in CASES order."""
    return f"CORP-{CASES.index(case) + 1}"


def build_corpus(big: bool = True) -> list[CorpusRun]:
    """One CorpusRun per case, in CASES order.  `big=False` shrinks big_series to 2,000 points."""
    runs = []
    for index, case in enumerate(CASES, start=1):
        ctx = _Ctx(CORPUS_PROJECT, corpus_run_id(case), index, case, big)
        if case == "fork_child":
            run = _case_fork_child(ctx, corpus_run_id("fork_parent"))
        else:
            run = _BUILDERS[case](ctx)
        runs.append(run)
    return runs


def corpus_case(runs: Iterable[CorpusRun], case: str) -> CorpusRun:
    for run in runs:
        if run.case == case:
            return run
    raise KeyError(case)
