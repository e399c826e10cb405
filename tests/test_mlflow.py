"""MLflow connector: pure mapping units, then real round trips through a real
`mlflow server` (REST) and a direct SQLite store, driving the Sink/Source
classes with hand-built RunPlans (no mocks of trackport code)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import threading
from collections import Counter
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from trackport.core.connector import FileAccess, RunPlan, RunScan, SeriesStats
from trackport.core.errors import RunError
from trackport.core.layout import resolve_inside
from trackport.core.model import Origin, RunRef, Selection
from trackport.core.registry import parse_uri
from trackport.core.report import RunReport
from trackport.core.schema import DEST_STEP, PARAM_TYPES, SCHEMA, STEPPED_TYPES, rows_to_table
from trackport.core.steps import StepConverter, decimal_steps
from trackport.connectors.mlflow.artifacts import (
    file_artifact, file_series_artifact, long_param_artifact, series_artifact,
)
from trackport.connectors.mlflow.batching import (
    MAX_BATCH_BYTES, MAX_METRICS_PER_BATCH, MAX_PARAMS_TAGS_PER_BATCH, HeldBatch, batches,
    json_size,
)
from trackport.connectors.mlflow.keys import KeyMap, is_valid_key, sanitize_key, short_hash
from trackport.connectors.mlflow.manifest import Manifest
from trackport.connectors.mlflow.points import (
    FLOAT_MAX, PointIndex, point_identity, unscaled_from_dest,
)
from trackport.connectors.mlflow.tags import (
    TAG_COMPLETE, TAG_FORK_PARENT, TAG_FORK_STEP, TAG_MULTIPLIER, TAG_NOTE, TAG_ORIGIN_RUN,
    TAG_ORIGIN_URI, TAG_PARENT, tag_plan,
)
from trackport.connectors.mlflow.values import (
    datetime_from_ms, param_text, param_value, step_texts, unscaled_from_text,
)

from support import run_cli

UTC = timezone.utc
ORIGIN_URI = "parquet:/data/export"


# ---------------------------------------------------------------------------
# mapping: pure units


@pytest.mark.parametrize(
    "path, key",
    [
        ("train/loss", "train/loss"),
        ("a b:c-d.e_f", "a b:c-d.e_f"),
        ("métriques/perte", "métriques/perte"),
        ("x?y#z", "x_y_z"),
        ("a//b/", "a/b"),
        ("/lead", "lead"),
        ("a/./b", "a/_/b"),
        ("a/../b", "a/__/b"),
        ("..hidden", "_.hidden"),
        ("", "_"),
        ("line\nbreak", "line_break"),
    ],
)
def test_sanitize_key(path, key):
    assert sanitize_key(path) == key
    assert is_valid_key(key)


def test_sanitize_key_long_is_cut_with_hash_of_original():
    path = "p/" + "x" * 400
    key = sanitize_key(path)
    assert len(key) == 250 and is_valid_key(key)
    assert key.endswith("--" + short_hash(path))
    assert sanitize_key("p/" + "x" * 401) != key


def test_key_map_collisions_are_deterministic_and_keep_clean_paths():
    paths = ["a?b", "a_b", "a!b", "plain"]
    one = KeyMap(paths)
    two = KeyMap(list(reversed(paths)))
    assert {p: one.key(p) for p in paths} == {p: two.key(p) for p in paths}
    assert one.key("a_b") == "a_b" and not one.info("a_b").renamed
    assert one.key("plain") == "plain"
    # "a!b" sorts before "a?b": it is placed first, then "a?b" is renamed.
    assert one.key("a!b") == "a_b--" + short_hash("a!b")
    assert one.key("a?b") == "a_b--" + short_hash("a?b")
    assert one.info("a?b").sanitized and one.info("a?b").renamed
    assert len({one.key(p) for p in paths}) == 4
    assert all(is_valid_key(one.key(p)) for p in paths)


@pytest.mark.parametrize(
    "attribute_type, value, text",
    [
        ("int", 32, "32"),
        ("int", -(2**62), str(-(2**62))),
        ("float", 0.1, "0.1"),
        ("float", 32.0, "32.0"),
        ("float", float("inf"), "inf"),
        ("float", float("-inf"), "-inf"),
        ("bool", True, "True"),
        ("bool", False, "False"),
        ("string", "héllo", "héllo"),
        ("datetime", datetime(2024, 1, 2, 3, 4, 5, 678000, tzinfo=UTC), "2024-01-02T03:04:05.678Z"),
        ("string_set", ["b", "a"], '["b", "a"]'),
    ],
)
def test_param_text_round_trip(attribute_type, value, text):
    assert param_text(attribute_type, value) == text
    assert param_value(attribute_type, text) == value
    assert type(param_value(attribute_type, text)) is type(value)


def test_param_text_nan():
    assert param_text("float", float("nan")) == "nan"
    assert math.isnan(param_value("float", "nan"))


def test_steps_exact():
    steps = pa.array([Decimal("7.5"), None, Decimal("-120.01"), Decimal("100")], pa.decimal128(18, 6))
    texts = step_texts(steps)
    assert texts == ["7.5", None, "-120.01", "100"]
    assert [unscaled_from_text(t) for t in ("7.5", "-120.01", "100", "0.000001")] == [
        7_500_000, -120_010_000, 100_000_000, 1]
    back = unscaled_from_dest(np.array([750, -12001, 10_000]), 100)
    assert back.tolist() == [7_500_000, -120_010_000, 100_000_000]
    arr = decimal_steps(back, np.array([True, True, False]))
    assert arr.to_pylist() == [Decimal("7.5"), Decimal("-120.01"), None]
    assert arr.type == pa.decimal128(18, 6)


def test_point_index_matches_what_the_store_keeps():
    existing = point_identity(np.array([1, 2, 3]), np.array([10, 0, 30]),
                                 np.array([float("nan"), FLOAT_MAX, 0.5]))
    index = PointIndex(existing)
    probe = point_identity(np.array([1, 2, 3, 3]), np.array([10, 0, 30, 31]),
                              np.array([float("nan"), float("inf"), 0.5, 0.5]))
    assert index.contains(probe).tolist() == [True, True, True, False]


def test_artifact_names():
    assert file_artifact("files/model", "x/weights.ckpt") == ("files/model.ckpt", True)
    assert file_artifact("files/model.bin", "x/weights.ckpt") == ("files/model.bin", False)
    assert file_series_artifact("imgs", "7.5", "a/b/c d.png") == "imgs/step_7.5/c d.png"
    assert series_artifact("monitoring/stdout") == "series/monitoring/stdout.jsonl"
    assert long_param_artifact("cfg/x") == "trackport/params/cfg/x.txt"


def test_tag_plan_reserved_and_sanitised():
    tags, hits = tag_plan({
        "sys/tags": ("string_set", ["good", "bad?tag", "trackport.complete", "mlflow.runName"]),
        "sys/description": ("string", "d" * 9000),
        "mlflow/tags/team": ("string", "vision"),
        "sys/forking/parent": ("string", "RUN-1"),
        "sys/forking/step": ("float", 12.5),
    })
    assert tags["good"] == "" and tags["bad_tag"] == "" and tags["team"] == "vision"
    assert len(tags[TAG_NOTE]) == 8000
    assert tags[TAG_FORK_PARENT] == "RUN-1" and tags[TAG_FORK_STEP] == "12.5"
    assert "trackport.complete" not in tags and "mlflow.runName" not in tags
    assert tags["_trackport.complete"] == "" and tags["_mlflow.runName"] == ""
    assert hits["tag_truncated"] == ["sys/description"]
    assert "bad?tag" in hits["key_sanitized"]
    assert sorted(hits["key_collision_renamed"]) == ["mlflow.runName", "trackport.complete"]


def test_batches_respect_count_and_size():
    items = list(range(10))
    assert [len(b) for b in batches(items, [1] * 10, 4)] == [4, 4, 2]
    assert [len(b) for b in batches(items, [300] * 10, 100, max_bytes=1000)] == [3, 3, 3, 1]
    assert list(batches([1], [5000], 100, max_bytes=1000)) == [[1]]   # one oversized item alone
    assert json_size("é" * 10) == len('"' + "\\u00e9" * 10 + '"')


def test_held_batch_holds_until_a_limit_and_take_empties_it():
    held = HeldBatch()
    assert not held and held.fits(metrics=MAX_METRICS_PER_BATCH)
    held.add(metrics=["m"] * (MAX_METRICS_PER_BATCH - 1), params=["p"], size=100)
    assert held and held.fits()   # exactly the entity limit: 999 metrics + 1 param
    assert not held.fits(metrics=1)                      # over 1,000 metrics
    assert not held.fits(tags=1)                         # over 1,000 entities in all
    assert not held.fits(size=MAX_BATCH_BYTES - 99)      # over the byte budget
    assert held.fits(size=MAX_BATCH_BYTES - 100)
    metrics, params = held.take()
    assert len(metrics) == MAX_METRICS_PER_BATCH - 1 and params == ["p"]
    assert not held and held.size == 0 and held.take() == ([], [])
    assert not held.fits(params=MAX_PARAMS_TAGS_PER_BATCH + 1)
    assert not held.fits(tags=MAX_PARAMS_TAGS_PER_BATCH + 1)


def test_manifest_round_trip():
    m = Manifest("parquet:/x", "ws/p", "R-1", 100)
    e = m.entry("a?b", "float_series", "metric", "a_b")
    e.inf = True
    e.count("inf_to_float_max", 2)
    f = m.entry("files/x", "file_series", "file", "files/x")
    f.files.append(["1.5", 1000, "p/x.png", "files/x/step_1.5/x.png"])
    p = m.entry("cfg", "string", "param", "cfg")
    p.artifact = "trackport/params/cfg.txt"
    m.tags = ["t1"]
    back = Manifest.loads(m.dumps())
    assert back.to_json() == m.to_json()
    assert back.file_map() == {"p/x.png": "files/x/step_1.5/x.png"}
    assert back.metric_keys() == {"a_b"} and back.param_keys() == {"cfg"}
    assert back.attributes["a?b"].inf and back.step_multiplier == 100
    with pytest.raises(ValueError):
        Manifest.from_json({"format": "other"})


def test_import_stays_sdk_free():
    code = ("import sys, trackport, trackport.connectors.mlflow, trackport.connectors.mlflow.mapping, "
            "trackport.connectors.mlflow.keys, trackport.connectors.mlflow.values, "
            "trackport.connectors.mlflow.tags, trackport.connectors.mlflow.artifacts, "
            "trackport.connectors.mlflow.points, trackport.connectors.mlflow.manifest, "
            "trackport.connectors.mlflow.batching; "
            "assert 'mlflow' not in sys.modules, 'mlflow imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_uri_resolution(tmp_path, monkeypatch):
    from trackport.connectors.mlflow import resolve

    monkeypatch.chdir(tmp_path)
    t = resolve(parse_uri("mlflow:sqlite:///x.db"))
    assert t.tracking_uri == f"sqlite:///{tmp_path}/x.db" and t.uri == f"mlflow:sqlite:///{tmp_path}/x.db"
    assert t.artifact_root == (tmp_path / "mlartifacts").as_uri()
    t = resolve(parse_uri("mlflow+http://user:secret@127.0.0.1:5000/"))
    assert t.tracking_uri == "http://127.0.0.1:5000" and "secret" not in t.uri
    t = resolve(parse_uri("mlflow:./mlruns"))
    assert t.kind == "file" and t.uri == f"mlflow:{tmp_path}/mlruns"


# ---------------------------------------------------------------------------
# helpers for connector tests


class DirFiles(FileAccess):
    """Files under one root, as an export's files directory."""

    def __init__(self, root: Path):
        self.root = root

    def local_path(self, path):
        local = resolve_inside(self.root, path)
        if not local.exists():
            raise FileNotFoundError(path)
        return local

    def open(self, path):
        return open(self.local_path(path), "rb")


def ts(seconds: float) -> datetime:
    return datetime_from_ms(round(seconds * 1000))


def scan_table(table: pa.Table) -> RunScan:
    scan = RunScan(rows=table.num_rows)
    from trackport.core.schema import VALUE_COLUMN

    rows = table.to_pylist()
    for row in rows:
        t = row["attribute_type"]
        scan.rows_by_type[t] += 1
        if t in PARAM_TYPES and row["step"] is None:
            scan.values[row["attribute_path"]] = (t, row[VALUE_COLUMN[t]])
        if t in STEPPED_TYPES:
            stats = scan.series.setdefault(row["attribute_path"], SeriesStats(t, 0))
            stats.count += 1
        if t in ("file", "file_series", "file_set", "artifact"):
            scan.files.append((row["attribute_path"], t, row["step"], row["file_value"]["path"]))
        if row["timestamp"] is not None:
            if scan.first_timestamp is None or row["timestamp"] < scan.first_timestamp:
                scan.first_timestamp = row["timestamp"]
            if scan.last_timestamp is None or row["timestamp"] > scan.last_timestamp:
                scan.last_timestamp = row["timestamp"]
    return scan


def make_plan(table: pa.Table, files_root: Path | None, multiplier: int = 1, **options) -> RunPlan:
    project, run = table.column("project_id")[0].as_py(), table.column("run_id")[0].as_py()
    return RunPlan(
        ref=RunRef(project, run),
        origin=Origin(ORIGIN_URI, project, run),
        scan=scan_table(table),
        files=DirFiles(files_root) if files_root else DirFiles(Path("/nonexistent")),
        report=RunReport(project, run),
        steps=StepConverter(multiplier),
        options=options,
    )


def with_dest_steps(table: pa.Table, multiplier: int) -> pa.Table:
    dest, _ = StepConverter(multiplier).convert(table.column("step"))
    return table.append_column(DEST_STEP, dest)


def load(sink, table: pa.Table, files_root: Path | None = None, multiplier: int = 1,
         chunk: int = 7, stop_after: int | None = None, **options):
    """What the pipeline does: find, begin (or resume), write in pieces, commit."""
    plan = make_plan(table, files_root, multiplier, **options)
    dest = sink.find_run(plan.origin)
    writer = sink.begin_run(plan, dest if dest is not None and not dest.complete else None)
    full = with_dest_steps(table, multiplier)
    try:
        for n, start in enumerate(range(0, full.num_rows, chunk)):
            if stop_after is not None and n >= stop_after:
                writer._drain()   # what was sent reached the store; then the attempt dies
                writer.abort()
                return plan, None
            writer.write(full.slice(start, chunk))
        return plan, writer.commit()
    except BaseException:
        writer.abort()
        raise


def read_back(sink, dest, origin: Origin, select: Selection | None = None) -> pa.Table:
    source = sink.as_source()
    ref = sink.dest_ref(dest, origin)
    tables = [t.select(SCHEMA.names) for t in source.read_run(ref, select or Selection())]
    return pa.concat_tables(tables) if tables else SCHEMA.empty_table()


def normal(table: pa.Table) -> list[tuple]:
    """Rows as comparable tuples (NaN made equal), sorted."""
    out = []
    for row in table.select(SCHEMA.names).to_pylist():
        items = []
        for name in SCHEMA.names:
            v = row[name]
            if isinstance(v, float):
                v = repr(v)                    # -0.0 differs from 0.0; every NaN is "nan"
            if isinstance(v, dict):
                v = json.dumps(v, sort_keys=True)
            if isinstance(v, list):
                v = tuple(v)
            items.append(v)
        out.append(tuple(items))
    return sorted(out, key=repr)


def corpus(project: str, run: str, files_root: Path) -> pa.Table:
    """The conformance corpus in one run: scalars, odd keys, long values, NaN/inf,
    sparse and fractional steps, string series, histograms, files."""
    (files_root / "ckpt").mkdir(parents=True, exist_ok=True)
    (files_root / "ckpt" / "model.bin").write_bytes(os.urandom(3000))
    (files_root / "imgs").mkdir(exist_ok=True)
    for i in range(3):
        (files_root / "imgs" / f"img {i}.png").write_bytes(b"png" * (i + 1))
    (files_root / "set" / "sub").mkdir(parents=True, exist_ok=True)
    (files_root / "set" / "a.txt").write_text("A")
    (files_root / "set" / "sub" / "b.txt").write_text("BB")
    (files_root / "files_list.json").write_text('["x"]')
    t0 = 1_700_000_000.0
    rows = [
        {"attribute_path": "sys/name", "attribute_type": "string", "string_value": "my run"},
        {"attribute_path": "sys/description", "attribute_type": "string", "string_value": "notes ✓"},
        {"attribute_path": "sys/tags", "attribute_type": "string_set", "string_set_value": ["b-tag", "a tag", "odd?tag"] + [f"t{i}" for i in range(150)]},
        {"attribute_path": "sys/creation_time", "attribute_type": "datetime", "datetime_value": ts(t0)},
        {"attribute_path": "sys/modification_time", "attribute_type": "datetime", "datetime_value": ts(t0 + 600.5)},
        {"attribute_path": "sys/failed", "attribute_type": "bool", "bool_value": False},
        {"attribute_path": "config/batch_size", "attribute_type": "int", "int_value": 32},
        {"attribute_path": "config/big", "attribute_type": "int", "int_value": 2**62 + 1},
        {"attribute_path": "config/lr", "attribute_type": "float", "float_value": 0.1},
        {"attribute_path": "config/whole", "attribute_type": "float", "float_value": 3.0},
        {"attribute_path": "config/nan", "attribute_type": "float", "float_value": float("nan")},
        {"attribute_path": "config/flag", "attribute_type": "bool", "bool_value": True},
        {"attribute_path": "config/when", "attribute_type": "datetime", "datetime_value": ts(t0 - 1.25)},
        {"attribute_path": "config/set", "attribute_type": "string_set", "string_set_value": ["x", "y"]},
        {"attribute_path": "config/empty", "attribute_type": "string", "string_value": ""},
        {"attribute_path": "config/null", "attribute_type": "string", "string_value": None},
        {"attribute_path": "config/long", "attribute_type": "string", "string_value": "L" * 9999 + "Z"},
        {"attribute_path": "paramètres/unicodé", "attribute_type": "string", "string_value": "ünï"},
        {"attribute_path": "odd?key", "attribute_type": "string", "string_value": "q"},
        {"attribute_path": "odd!key", "attribute_type": "string", "string_value": "e"},
        {"attribute_path": "deep//slash/", "attribute_type": "int", "int_value": 7},
        {"attribute_path": "mlflow/tags/team", "attribute_type": "string", "string_value": "vision"},
        {"attribute_path": "files/model", "attribute_type": "file", "file_value": {"path": "ckpt/model.bin"}},
        {"attribute_path": "files/set", "attribute_type": "file_set", "file_value": {"path": "set"}},
        {"attribute_path": "files/listing", "attribute_type": "artifact", "file_value": {"path": "files_list.json"}},
    ]
    for i in range(40):
        step = Decimal(i) / 4                      # fractional: 0, 0.25, ... -> multiplier 100
        rows.append({"attribute_path": "train/loss", "attribute_type": "float_series",
                     "step": step, "timestamp": ts(t0 + i), "float_value": 1.0 / (i + 1)})
    special = [float("nan"), float("inf"), float("-inf"), 0.0, -0.0, 1e-300, 2.5, FLOAT_MAX, 5e-324]
    for i, v in enumerate(special):
        rows.append({"attribute_path": "train/special", "attribute_type": "float_series",
                     "step": Decimal(i * 10), "timestamp": None if i % 2 else ts(t0 + i), "float_value": v})
    for i in range(5):                               # sparse steps, unicode key
        rows.append({"attribute_path": "évaluation/précision", "attribute_type": "float_series",
                     "step": Decimal(1000 * i) + Decimal("0.01"), "timestamp": ts(t0 + 100 + i), "float_value": float(i)})
    for i in range(6):
        rows.append({"attribute_path": "monitoring/stdout", "attribute_type": "string_series",
                     "step": Decimal(i) / 2, "timestamp": ts(t0 + i), "string_value": f"line {i} \"quoted\" ✓"})
    rows.append({"attribute_path": "monitoring/stdout", "attribute_type": "string_series",
                 "step": Decimal(9), "timestamp": None, "string_value": None})
    for i in range(3):
        rows.append({"attribute_path": "weights/hist", "attribute_type": "histogram_series",
                     "step": Decimal(i), "timestamp": ts(t0 + i),
                     "histogram_value": {"type": "COUNTING", "edges": [0.0, 0.5, 1.0], "values": [float(i), 2.0]}})
    for i in range(3):
        rows.append({"attribute_path": "imgs/samples", "attribute_type": "file_series",
                     "step": Decimal(i) + Decimal("0.5"), "timestamp": ts(t0 + i),
                     "file_value": {"path": f"imgs/img {i}.png"}})
    return rows_to_table(rows, {"project_id": project, "run_id": run})


# ---------------------------------------------------------------------------
# connector tests against real stores


@pytest.fixture(scope="module")
def server_sink(mlflow_server):
    from trackport.connectors.mlflow import open_sink

    sink = open_sink(parse_uri(f"mlflow+{mlflow_server}"), {"workers": 4})
    yield sink
    sink.close()


@pytest.fixture(params=["server", "sqlite"])
def sink(request, mlflow_sqlite_uri):
    from trackport.connectors.mlflow import open_sink

    if request.param == "server":
        yield request.getfixturevalue("server_sink")
        return
    s = open_sink(parse_uri(f"mlflow:{mlflow_sqlite_uri}"), {})
    yield s
    s.close()


def unique(name: str) -> str:
    return f"{name}-{os.getpid()}-{threading.get_ident() % 10000}-{os.urandom(3).hex()}"


def test_round_trip_corpus(sink, tmp_path):
    project = unique("ws/proj")
    table = corpus(project, "RUN-1", tmp_path / "files")
    plan, dest = load(sink, table, tmp_path / "files", multiplier=100)
    assert dest.complete
    report = plan.report
    back = read_back(sink, dest, plan.origin)
    assert normal(back) == normal(table)

    # Declared transformations only, each counted.
    declared = set(sink.capabilities.transformations)
    assert set(report.transformations) <= declared
    assert report.transformations["param_to_artifact"] == 1
    assert report.transformations["inf_to_float_max"] == 2
    assert report.transformations["timestamp_filled"] == 4
    assert "step_scaled" in declared        # counted by the pipeline, which picks the multiplier
    assert report.transformations["key_collision_renamed"] >= 1
    assert report.transformations["key_sanitized"] >= 3
    assert report.drops == Counter()
    assert report.files == 1 + 2 + 1 + 3
    assert report.bytes == 3000 + 1 + 2 + 5 + 3 + 6 + 9

    # What MLflow itself shows.
    client = sink.tracking.client
    run = client.get_run(dest.id)
    assert run.info.run_name == "my run"
    assert run.info.status == "FINISHED"
    assert run.info.start_time == 1_700_000_000_000
    assert run.info.end_time == 1_700_000_600_500
    params = run.data.params
    assert params["config/batch_size"] == "32"
    assert params["config/lr"] == "0.1"
    assert params["config/flag"] == "True"
    assert params["config/when"] == "2023-11-14T22:13:18.750Z"
    assert params["config/set"] == '["x", "y"]'
    assert params["config/long"] == "trackport-artifact:trackport/params/config/long.txt"
    assert params["paramètres/unicodé"] == "ünï"
    assert params["deep/slash"] == "7"
    tags = run.data.tags
    assert tags["mlflow.note.content"] == "notes ✓"
    assert tags["a tag"] == "" and tags["b-tag"] == "" and tags["odd_tag"] == ""
    assert all(tags[f"t{i}"] == "" for i in range(150))          # more than one batch of tags
    assert tags["team"] == "vision"
    assert tags[TAG_ORIGIN_URI] == ORIGIN_URI and tags[TAG_ORIGIN_RUN] == "RUN-1"
    assert tags[TAG_MULTIPLIER] == "100" and tags[TAG_COMPLETE] == "true"
    steps = [m.step for m in client.get_metric_history(dest.id, "train/loss")]
    assert sorted(steps) == [25 * i for i in range(40)]
    special = {m.step: m.value for m in client.get_metric_history(dest.id, "train/special")}
    assert math.isnan(special[0]) and special[1000] == FLOAT_MAX and special[2000] == -FLOAT_MAX
    arts = {f.path for f in client.list_artifacts(dest.id, "files")}
    assert {"files/model.bin", "files/set", "files/listing"} <= arts
    series = {f.path for f in client.list_artifacts(dest.id, "series/monitoring")}
    assert series == {"series/monitoring/stdout.jsonl"}

    # Files come back with their content, under the source's paths.
    src = sink.as_source()
    files = src.files(sink.dest_ref(dest, plan.origin))
    assert files.open("ckpt/model.bin").read() == (tmp_path / "files/ckpt/model.bin").read_bytes()
    assert (files.local_path("set") / "sub" / "b.txt").read_text() == "BB"
    assert files.open("imgs/img 2.png").read() == b"pngpngpng"

    # Found again through the destination alone.
    from trackport.connectors.mlflow import open_sink

    again = open_sink(parse_uri(sink.uri), {})
    found = again.find_run(plan.origin)
    assert found is not None and found.complete and found.id == dest.id
    assert again.find_run(Origin(ORIGIN_URI, project, "RUN-2")) is None
    assert again.find_run(Origin("parquet:/elsewhere", project, "RUN-1")) is None


def test_selection_on_read(server_sink, tmp_path):
    project = unique("sel")
    table = corpus(project, "R", tmp_path / "files")
    plan, dest = load(server_sink, table, tmp_path / "files", multiplier=100, chunk=50)
    import re

    select = Selection(classes=frozenset({"metrics"}), attribute_pattern=re.compile("^train/"))
    back = read_back(server_sink, dest, plan.origin, select)
    assert set(back.column("attribute_path").to_pylist()) == {"train/loss", "train/special"}
    assert back.num_rows == 49


def test_empty_run_and_fork(sink, tmp_path):
    project = unique("forks")
    t0 = 1_700_000_000.0
    empty = rows_to_table([], {"project_id": project, "run_id": "EMPTY"})
    plan = make_plan(rows_to_table([{"attribute_path": "x", "attribute_type": "int", "int_value": 1}],
                                   {"project_id": project, "run_id": "EMPTY"}), None)
    plan.scan = RunScan()
    writer = sink.begin_run(plan, None)
    dest = writer.commit()
    assert dest.complete
    assert read_back(sink, dest, plan.origin).num_rows == 0
    run = sink.tracking.client.get_run(dest.id)
    assert run.info.run_name == "EMPTY" and run.data.tags[TAG_COMPLETE] == "true"
    assert empty.num_rows == 0

    def run_rows(run_id, parent=None):
        rows = [{"attribute_path": "m", "attribute_type": "float_series", "step": Decimal(i),
                 "timestamp": ts(t0 + i), "float_value": float(i)} for i in range(3)]
        if parent:
            rows += [{"attribute_path": "sys/forking/parent", "attribute_type": "string", "string_value": parent},
                     {"attribute_path": "sys/forking/step", "attribute_type": "float", "float_value": 1.0}]
        return rows_to_table(rows, {"project_id": project, "run_id": run_id})

    # Child loaded BEFORE its parent: linked when the parent commits.
    child_plan, child = load(sink, run_rows("CHILD", parent="PARENT"))
    assert TAG_PARENT not in sink.tracking.client.get_run(child.id).data.tags
    parent_plan, parent = load(sink, run_rows("PARENT"))
    tags = sink.tracking.client.get_run(child.id).data.tags
    assert tags[TAG_PARENT] == parent.id
    assert tags[TAG_FORK_PARENT] == "PARENT" and tags[TAG_FORK_STEP] == "1.0"
    # Child loaded AFTER its parent: linked at once.
    _, child2 = load(sink, run_rows("CHILD2", parent="PARENT"))
    assert sink.tracking.client.get_run(child2.id).data.tags[TAG_PARENT] == parent.id
    back = read_back(sink, child, child_plan.origin)
    assert normal(back) == normal(run_rows("CHILD", parent="PARENT"))


def test_fork_parent_linked_on_close(mlflow_sqlite_uri):
    from trackport.connectors.mlflow import open_sink

    uri = parse_uri(f"mlflow:{mlflow_sqlite_uri}")
    rows = lambda run, parent=None: rows_to_table(  # noqa: E731
        [{"attribute_path": "a", "attribute_type": "int", "int_value": 1}]
        + ([{"attribute_path": "sys/forking/parent", "attribute_type": "string", "string_value": parent}]
           if parent else []),
        {"project_id": "p", "run_id": run})
    first = open_sink(uri, {})
    _, child = load(first, rows("C", parent="P"))
    other = open_sink(uri, {})          # another process loads the parent
    _, parent = load(other, rows("P"))
    other.close()
    assert TAG_PARENT not in first.tracking.client.get_run(child.id).data.tags
    first.close()
    assert first.tracking.client.get_run(child.id).data.tags[TAG_PARENT] == parent.id


def test_resume_twice_without_duplicates(sink, tmp_path):
    project = unique("resume")
    t0 = 1_700_000_000.0
    rows = [{"attribute_path": "config/a", "attribute_type": "int", "int_value": 5},
            {"attribute_path": "log", "attribute_type": "string_series", "step": Decimal(0),
             "timestamp": ts(t0), "string_value": "hello"}]
    rows += [{"attribute_path": f"m{k}", "attribute_type": "float_series", "step": Decimal(i),
              "timestamp": None if i == 3 else ts(t0 + i),
              "float_value": float("nan") if i == 5 else float(i * k)}
             for i in range(1200) for k in range(3)]
    table = rows_to_table(rows, {"project_id": project, "run_id": "R"})
    # First attempt dies after some batches (nothing committed).
    plan, dest = load(sink, table, chunk=1000, stop_after=2)
    assert dest is None
    from trackport.connectors.mlflow import open_sink

    fresh = open_sink(parse_uri(sink.uri), {})
    found = fresh.find_run(plan.origin)
    assert found is not None and not found.complete
    partial = fresh.tracking.client.get_metric_history(found.id, "m1")
    assert 0 < len(partial) < 1200
    # Second attempt also dies, later; third finishes.  All reuse the same run.
    plan2, dest2 = load(fresh, table, chunk=1000, stop_after=3)
    assert dest2 is None
    plan3, dest3 = load(fresh, table, chunk=999)
    assert dest3.id == found.id and dest3.complete
    client = fresh.tracking.client
    for k in range(3):
        hist = client.get_metric_history(found.id, f"m{k}")
        assert len(hist) == 1200
        assert len({(m.step, m.timestamp) for m in hist}) == 1200
    exp = client.get_run(found.id).info.experiment_id
    assert len(client.search_runs([exp])) == 1
    assert normal(read_back(fresh, dest3, plan3.origin)) == normal(table)
    # Complete now: a new sink sees it complete.
    assert open_sink(parse_uri(sink.uri), {}).find_run(plan.origin).complete


def test_a_small_manifest_rides_in_a_tag_and_a_big_one_is_an_artifact(sink):
    """The manifest of a small run is the tag `trackport.attributes` (set with the completion
    mark: one request fewer per run); one over a tag value's 8,000 characters is the artifact
    `trackport/attributes.json`, and a resumed run whose manifest outgrew the tag loses the
    tag.  Both read back exactly."""
    from trackport.connectors.mlflow import open_sink
    from trackport.connectors.mlflow.manifest import MANIFEST_PATH
    from trackport.connectors.mlflow.tags import TAG_MANIFEST

    project = unique("manifest")
    small = rows_to_table([{"attribute_path": "config/a", "attribute_type": "int", "int_value": 5},
                           {"attribute_path": "loss", "attribute_type": "float_series", "step": Decimal(1),
                            "timestamp": ts(1_700_000_000.0), "float_value": 0.5}],
                          {"project_id": project, "run_id": "R"})
    plan, dest = load(sink, small)
    client = sink.tracking.client
    run = client.get_run(dest.id)
    assert Manifest.loads(run.data.tags[TAG_MANIFEST]).attributes.keys() == {"config/a", "loss"}
    assert MANIFEST_PATH not in {f.path for f in client.list_artifacts(dest.id, "trackport")}
    assert normal(read_back(sink, dest, plan.origin)) == normal(small)

    # The same run again with 300 more attributes (the source changed): resumed in place, its
    # manifest now too big for a tag.
    big = pa.concat_tables([small, rows_to_table(
        [{"attribute_path": f"config/key_{i:03d}", "attribute_type": "string", "string_value": "v"}
         for i in range(300)], {"project_id": project, "run_id": "R"})])
    fresh = open_sink(parse_uri(sink.uri), {})
    found = fresh.find_run(plan.origin)
    writer = fresh.begin_run(make_plan(big, None), found)
    writer.write(with_dest_steps(big, 1))
    dest2 = writer.commit()
    assert dest2.id == dest.id
    run = client.get_run(dest.id)
    assert TAG_MANIFEST not in run.data.tags
    assert MANIFEST_PATH in {f.path for f in client.list_artifacts(dest.id, "trackport")}
    assert normal(read_back(open_sink(parse_uri(sink.uri), {}), dest2, plan.origin)) == normal(big)


def test_store_deduplicates_identical_points_and_params(sink):
    """What resuming relies on, checked on the real store (REST server and direct SQLite):
    identical metric rows (key, timestamp, step, value, is_nan) are kept once, and a param
    sent again with the same value is accepted."""
    from mlflow.entities import Metric, Param

    tracking = sink.tracking
    eid = tracking.experiment_id(unique("dedup"), create=True)
    run_id = tracking.client.create_run(eid).info.run_id
    points = [Metric("m", v, 5, i) for i, v in enumerate([1.0, float("nan"), float("inf"), 0.0])]
    for _ in range(2):
        tracking.log_batch(run_id, points, [Param("p", "32")], [])
    history = tracking.client.get_metric_history(run_id, "m")
    assert len(history) == 4
    assert tracking.client.get_run(run_id).data.params == {"p": "32"}


def test_store_sets_no_tag_of_a_batch_whose_data_fails(sink):
    """What sending the completion mark with the last data relies on, on the real store:
    a log_batch whose params or metrics are refused sets none of its tags."""
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.exceptions import MlflowException

    tracking = sink.tracking
    eid = tracking.experiment_id(unique("mark-order"), create=True)
    run_id = tracking.client.create_run(eid).info.run_id
    tracking.log_batch(run_id, [], [Param("p", "1")], [])
    with pytest.raises((RunError, MlflowException)):   # MLflow cannot change a param
        tracking.log_batch(run_id, [Metric("m", 1.0, 5, 0)], [Param("p", "2")], [RunTag(TAG_COMPLETE, "true")])
    run = tracking.client.get_run(run_id)
    assert TAG_COMPLETE not in run.data.tags
    assert run.data.params == {"p": "1"}


def test_resume_with_other_multiplier_is_refused(server_sink):
    project = unique("mult")
    table = rows_to_table([{"attribute_path": "m", "attribute_type": "float_series", "step": Decimal(i),
                            "timestamp": ts(1e9 + i), "float_value": 1.0} for i in range(10)],
                          {"project_id": project, "run_id": "R"})
    load(server_sink, table, multiplier=1, chunk=5, stop_after=1)
    with pytest.raises(RunError, match="multiplier"):
        load(server_sink, table, multiplier=10)


def test_missing_file_is_a_run_error(server_sink, tmp_path):
    project = unique("missing")
    table = rows_to_table([{"attribute_path": "f", "attribute_type": "file", "file_value": {"path": "nope.bin"}},
                           {"attribute_path": "g", "attribute_type": "file", "file_value": {"path": "../etc/passwd"}}],
                          {"project_id": project, "run_id": "R"})
    (tmp_path / "root").mkdir()
    with pytest.raises(RunError) as info:
        load(server_sink, table.slice(0, 1), tmp_path / "root")
    assert info.value.file == "nope.bin" and info.value.run_id == "R"
    with pytest.raises(RunError) as info:
        load(server_sink, table.slice(1, 1), tmp_path / "root")
    assert info.value.file == "../etc/passwd"


def test_big_series_streams_in_parallel(server_sink):
    project = unique("big")
    n = 20_000
    t0 = 1_700_000_000_000
    table = pa.table({
        "project_id": pa.array([project] * n), "run_id": pa.array(["R"] * n),
        "attribute_path": pa.array(["loss"] * n), "attribute_type": pa.array(["float_series"] * n),
        "step": decimal_steps(np.arange(n, dtype=np.int64) * 10**6),
        "timestamp": pa.array(np.arange(n) + t0, pa.int64()).cast(pa.timestamp("ms", tz="UTC")),
        "float_value": pa.array(np.random.default_rng(1).random(n)),
    })
    from trackport.core.schema import conform

    table = conform(table)
    plan, dest = load(server_sink, table, chunk=5000)
    back = read_back(server_sink, dest, plan.origin)
    assert back.num_rows == n
    got = back.sort_by([("step", "ascending")])
    assert got.column("float_value").equals(table.column("float_value"))
    assert got.column("timestamp").equals(table.column("timestamp"))


# ---------------------------------------------------------------------------
# reading runs trackport did not write


def _foreign_run(client, tmp_path, experiment="foreign-exp"):
    from mlflow.entities import Metric, Param

    eid = client.create_experiment(experiment, artifact_location=(tmp_path / "arts").as_uri()) \
        if not client.tracking_uri.startswith("http") else client.create_experiment(experiment)
    parent = client.create_run(eid, start_time=1_000, run_name="parent")
    run = client.create_run(eid, start_time=2_000, run_name="child",
                            tags={"mlflow.parentRunId": parent.info.run_id, "mlflow.note.content": "hi",
                                  "team": "nlp", "flagged": "", "mlflow.user": "ann"})
    rid = run.info.run_id
    client.log_batch(rid, metrics=[Metric("acc", 0.5 * i, 5_000 + i, i) for i in range(30)],
                     params=[Param("lr", "0.01"), Param("layers", "3")])
    f = tmp_path / "model.txt"
    f.write_text("weights")
    client.log_artifact(rid, str(f), "model")
    client.set_terminated(rid, "FAILED", end_time=9_000)
    return eid, parent.info.run_id, rid


def test_foreign_run_read(mlflow_sqlite_uri, tmp_path):
    from trackport.connectors.mlflow import open_source

    from mlflow.tracking import MlflowClient

    eid, parent_id, rid = _foreign_run(MlflowClient(mlflow_sqlite_uri), tmp_path)
    src = open_source(parse_uri(f"mlflow:{mlflow_sqlite_uri}"), {})
    refs = list(src.list_runs(Selection()))
    assert [(r.project_id, r.run_id) for r in refs] == [("foreign-exp", parent_id), ("foreign-exp", rid)]
    assert list(src.list_runs(Selection(projects=("other",)))) == []
    table = pa.concat_tables(src.read_run(refs[1], Selection()))
    rows = {(r["attribute_path"], r["attribute_type"]): r for r in table.to_pylist()}
    assert rows[("sys/name", "string")]["string_value"] == "child"
    assert rows[("sys/creation_time", "datetime")]["datetime_value"] == datetime.fromtimestamp(2, UTC)
    assert rows[("sys/modification_time", "datetime")]["datetime_value"] == datetime.fromtimestamp(9, UTC)
    assert rows[("sys/failed", "bool")]["bool_value"] is True
    assert rows[("sys/description", "string")]["string_value"] == "hi"
    assert rows[("sys/forking/parent", "string")]["string_value"] == parent_id
    assert rows[("sys/tags", "string_set")]["string_set_value"] == ["flagged"]
    assert rows[("mlflow/tags/team", "string")]["string_value"] == "nlp"
    assert rows[("mlflow/tags/mlflow.user", "string")]["string_value"] == "ann"
    assert rows[("lr", "string")]["string_value"] == "0.01"
    assert rows[("model/model.txt", "file")]["file_value"] == {"path": f"{rid}/model/model.txt"}
    acc = table.filter(pc.equal(table.column("attribute_path"), "acc")).sort_by("step")
    assert acc.num_rows == 30
    assert acc.column("step").to_pylist() == [Decimal(i) for i in range(30)]
    assert acc.column("float_value").to_pylist() == [0.5 * i for i in range(30)]
    assert src.files(refs[1]).open(f"{rid}/model/model.txt").read() == b"weights"
    assert table.schema.equals(SCHEMA)


def test_runs_of_one_experiment_with_one_artifact_path_export_their_own_files(mlflow_sqlite_uri, tmp_path):
    """Two MLflow runs of one experiment both log `model/w.txt`: each export file is its own."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(mlflow_sqlite_uri)
    eid = client.create_experiment("shared", artifact_location=(tmp_path / "art").as_uri())
    for content in (b"first", b"second"):
        run = client.create_run(eid)
        local = tmp_path / content.decode() / "w.txt"
        local.parent.mkdir()
        local.write_bytes(content)
        client.log_artifact(run.info.run_id, str(local), "model")
        client.set_terminated(run.info.run_id)
    export = tmp_path / "export"
    code, report, out = run_cli("export", f"mlflow:{mlflow_sqlite_uri}", str(export), "--workers", "2")
    assert code == 0, out
    exported = sorted(p.read_bytes() for p in (export / "files").rglob("w.txt"))
    assert exported == [b"first", b"second"]
    code, report, out = run_cli("verify", f"mlflow:{mlflow_sqlite_uri}", str(export))
    assert code == 0, out


def test_foreign_run_through_server_and_back(server_sink, mlflow_server, tmp_path):
    """MLflow (foreign) -> canonical -> MLflow: tags, params, metrics, files survive."""
    from trackport.connectors.mlflow import open_source

    src = open_source(parse_uri(f"mlflow+{mlflow_server}"), {})
    name = unique("foreign")
    eid, parent_id, rid = _foreign_run(src.tracking.client, tmp_path, name)
    ref = next(r for r in src.list_runs(Selection(projects=(name,))) if r.run_id == rid)
    table = pa.concat_tables(src.read_run(ref, Selection()))
    files = src.files(ref)

    class Files(FileAccess):
        def local_path(self, path):
            return files.local_path(path)

        def open(self, path):
            return files.open(path)

    plan = make_plan(table, None, 1)
    plan.origin = src.origin(ref)
    plan.files = Files()
    dest_sink = server_sink
    writer = dest_sink.begin_run(plan, None)
    writer.write(with_dest_steps(table, 1))
    dest = writer.commit()
    copied = dest_sink.tracking.client.get_run(dest.id)
    assert copied.info.run_name == "child" and copied.info.status == "FAILED"
    assert copied.info.start_time == 2_000 and copied.info.end_time == 9_000
    assert copied.data.tags["team"] == "nlp" and copied.data.tags["flagged"] == ""
    assert copied.data.tags["mlflow.user"] == "ann" and copied.data.tags["mlflow.note.content"] == "hi"
    assert copied.data.params["lr"] == "0.01"
    assert len(dest_sink.tracking.client.get_metric_history(dest.id, "acc")) == 30
    assert normal(read_back(dest_sink, dest, plan.origin)) == normal(table)
    # The copy claims the foreign run's identity as its origin, but the foreign run
    # itself lives on this server too: every listed identity must stay unique.
    refs = list(dest_sink.as_source().list_runs(Selection()))
    assert len({(r.project_id, r.run_id) for r in refs}) == len(refs)


def test_file_store_source(tmp_path, monkeypatch):
    from trackport.connectors.mlflow import open_source

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    (tmp_path / "mlruns").mkdir()
    src = open_source(parse_uri("mlflow:./mlruns"), {})
    assert os.environ["MLFLOW_ALLOW_FILE_STORE"] == "true"
    client = src.tracking.client
    eid = client.create_experiment("fs")
    run = client.create_run(eid, start_time=5, run_name="r")
    client.log_param(run.info.run_id, "p", "1")
    client.log_metric(run.info.run_id, "m", 2.0, timestamp=7, step=3)
    refs = list(src.list_runs(Selection(projects=("fs",))))
    assert len(refs) == 1
    rows = pa.concat_tables(src.read_run(refs[0], Selection())).to_pylist()
    got = {r["attribute_path"]: r for r in rows}
    assert got["p"]["string_value"] == "1"
    assert got["m"]["step"] == Decimal(3) and got["m"]["float_value"] == 2.0


def test_sqlite_artifacts_beside_the_database_and_quoted_origins(mlflow_sqlite_uri, tmp_path):
    """Artifacts of a direct SQLite store land in <db dir>/mlartifacts (what `mlflow ui` opens);
    an origin URI with quotes is still found (and never loaded twice)."""
    from trackport.connectors.mlflow import open_sink

    sink = open_sink(parse_uri(f"mlflow:{mlflow_sqlite_uri}"), {"mlflow_experiment": "exp-{project}"})
    table = rows_to_table([{"attribute_path": "a", "attribute_type": "int", "int_value": 1}],
                          {"project_id": "p", "run_id": "R"})
    plan = make_plan(table, None)
    plan.origin = Origin("parquet:/data/it's \"here\"", "p", "R")
    writer = sink.begin_run(plan, None)
    writer.write(with_dest_steps(table, 1))
    dest = writer.commit()
    run = sink.tracking.client.get_run(dest.id)
    assert run.info.artifact_uri.startswith((Path(mlflow_sqlite_uri[len("sqlite:///"):]).parent / "mlartifacts").as_uri())
    assert sink.tracking.client.get_experiment(run.info.experiment_id).name == "exp-p"
    assert open_sink(parse_uri(f"mlflow:{mlflow_sqlite_uri}"), {"mlflow_experiment": "exp-{project}"}
                     ).find_run(plan.origin).id == dest.id
    # begin_run without find_run (a stale cache elsewhere) still reuses the run.
    plan2 = make_plan(table, None)
    plan2.origin = plan.origin
    other = open_sink(parse_uri(f"mlflow:{mlflow_sqlite_uri}"), {"mlflow_experiment": "exp-{project}"})
    writer = other.begin_run(plan2, None)
    assert writer.run_id == dest.id
    writer.abort()


def test_errors_are_classified(monkeypatch):
    """MLflow's own exceptions -> TransientError (retry) or RunError (this run only)."""
    from mlflow.exceptions import MlflowException, RestException

    from trackport.connectors.mlflow.client import classify
    from trackport.core.errors import TransientError

    from mlflow.protos import databricks_pb2 as codes

    refused = classify(MlflowException("x", error_code=codes.INVALID_PARAMETER_VALUE), "p", "r")
    assert isinstance(refused, RunError) and refused.run_id == "r"
    assert isinstance(classify(RestException({"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "no"})),
                      RunError)
    assert isinstance(classify(RestException({"error_code": "REQUEST_LIMIT_EXCEEDED", "message": "slow"})),
                      TransientError)
    assert isinstance(classify(RestException({"error_code": "503", "message": "down"})), TransientError)
    # A server's INTERNAL_ERROR may pass; one raised in this process (an mlflow-artifacts:/ URI
    # with no server to resolve it) never does: retrying it only wastes minutes.
    assert isinstance(classify(RestException({"error_code": "INTERNAL_ERROR", "message": "oops"})),
                      TransientError)
    assert isinstance(classify(MlflowException("boom", error_code=codes.INTERNAL_ERROR)), RunError)
    assert isinstance(classify(MlflowException("gone", error_code=codes.TEMPORARILY_UNAVAILABLE)),
                      TransientError)


def test_unreachable_server_is_transient(monkeypatch):
    import socket

    from trackport.connectors.mlflow import open_sink
    from trackport.core.errors import TransientError

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    sink = open_sink(parse_uri(f"mlflow+http://127.0.0.1:{port}"), {})
    with pytest.raises(TransientError):
        sink.find_run(Origin(ORIGIN_URI, "p", "r"))


# -- conformance (trackport.testing.conformance) ------------------------------------------------
@pytest.mark.parametrize("store", ["sqlite", "bulk", "server"])
def test_conformance_round_trip(store, tmp_path, request):
    from trackport.testing import conformance

    if store == "server":
        server = request.getfixturevalue("mlflow_server")
        # one server for the session: a per-test experiment keeps tests apart
        target = conformance.Target(f"mlflow+{server}", ["--mlflow-experiment", f"{tmp_path.name}-{{project}}"])
    else:
        target = conformance.Target(f"mlflow:sqlite:///{tmp_path / 'dest.db'}",
                                    ["--mlflow-bulk"] if store == "bulk" else [])
    conformance.round_trip(target, tmp_path)


@pytest.mark.parametrize("kind", ["postgresql", "mysql"])
def test_conformance_round_trip_server_on_a_database(kind, tmp_path):
    """An MLflow server whose --backend-store-uri is a PostgreSQL / MariaDB database (MLflow
    creating the schema): the conformance corpus (without its long runs, to keep this short)
    round-trips through it."""
    from databases import database
    from mlflow_server import start_mlflow_server, stop_mlflow_server

    from trackport.testing import conformance

    uri, drop = database(kind, "tp_srv")
    try:
        proc, url = start_mlflow_server(tmp_path / "server", workers=1, backend_store_uri=uri)
        try:
            conformance.round_trip(conformance.Target(f"mlflow+{url}"), tmp_path, big=False)
        finally:
            stop_mlflow_server(proc)
    finally:
        drop()


def test_dataset_inputs_and_system_metrics_from_a_canonical_run(tmp_path):
    """canonical -> MLflow: `monitoring/<name>` is metric `system/<name>`; the dataset list of
    `mlflow/inputs/datasets` becomes the run's dataset inputs, other text stays only in the
    manifest (`dataset_inputs_not_logged`); verify reads both back exactly."""
    from mlflow.tracking import MlflowClient

    from trackport.testing.corpus import CorpusRun, rows_table, series_table
    from trackport.testing.exporter_layout import write_exporter_export

    good = json.dumps([{"name": "train", "digest": "d1", "source_type": "local", "source": "/data/train.csv",
                        "schema": None, "profile": '{"rows": 3}', "tags": {"mlflow.data.context": "training"}}])
    runs = [CorpusRun("ws/p", rid, pa.concat_tables([
        rows_table("ws/p", rid, [{"path": "mlflow/inputs/datasets", "type": "string", "value": text}]),
        series_table("ws/p", rid, "monitoring/cpu", "float_series", [10.0, 20.0], None, [1_000, 2_000])]))
        for rid, text in (("R-GOOD", good), ("R-BAD", "not a dataset list"))]
    write_exporter_export(tmp_path / "src", runs)
    uri = f"sqlite:///{tmp_path / 'dest.db'}"
    code, report, out = run_cli("copy", str(tmp_path / "src"), f"mlflow:{uri}")
    assert code == 0, out
    assert report["totals"]["transformations"] == {"dataset_inputs_not_logged": 1}, out
    client = MlflowClient(uri)
    got = {r.data.tags["trackport.origin.run_id"]: r
           for r in client.search_runs([client.get_experiment_by_name("ws/p").experiment_id])}
    (ds,) = got["R-GOOD"].inputs.dataset_inputs
    assert (ds.dataset.name, ds.dataset.digest, ds.dataset.source, ds.dataset.profile) == (
        "train", "d1", "/data/train.csv", '{"rows": 3}')
    assert [(t.key, t.value) for t in ds.tags] == [("mlflow.data.context", "training")]
    assert not got["R-BAD"].inputs.dataset_inputs
    for run in got.values():
        assert set(run.data.metrics) == {"system/cpu"}
    code, report, out = run_cli("verify", str(tmp_path / "src"), f"mlflow:{uri}")
    assert code == 0 and report["totals"]["verified"] == 2, out


def test_conformance_run_times(tmp_path):
    from trackport.testing import conformance

    conformance.run_times(conformance.Target(f"mlflow:sqlite:///{tmp_path / 'dest.db'}"), tmp_path)


@pytest.mark.parametrize("bulk", [False, True], ids=["sqlite", "bulk"])
def test_conformance_sigkill_heals(bulk, tmp_path):
    from trackport.testing import conformance

    conformance.sigkill_heals(conformance.Target(f"mlflow:sqlite:///{tmp_path / 'dest.db'}",
                                                 ["--mlflow-bulk"] if bulk else []), tmp_path)
