"""The conformance corpus, the neptune-exporter layout writer and the shipped sample export."""

from __future__ import annotations

import importlib.util
import json
import math
from collections import defaultdict
from decimal import Decimal
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from trackport.connectors.parquet.layout import PART_RE, safe
from trackport.core.schema import SCHEMA, VALUE_COLUMN
from trackport.testing import (
    CASES,
    CORPUS_PROJECT,
    CorpusRun,
    build_corpus,
    corpus_case,
    same_value,
    table_differences,
    write_exporter_export,
)

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "examples" / "sample-export"


@pytest.fixture(scope="module")
def corpus() -> list[CorpusRun]:
    return build_corpus(big=True)


@pytest.fixture(scope="module")
def small_corpus() -> list[CorpusRun]:
    return build_corpus(big=False)


def _rows(run: CorpusRun, path: str) -> list[dict]:
    t = run.table.filter(pc.equal(run.table.column("attribute_path"), path))
    return t.to_pylist()


def _value(run: CorpusRun, path: str):
    rows = _rows(run, path)
    assert len(rows) == 1, path
    row = rows[0]
    return row[VALUE_COLUMN[row["attribute_type"]]]


def read_layout(root: Path) -> dict[tuple[str, str], pa.Table]:
    """A reader that knows only the layout: data/<dir>/<stem>_part_<n>.parquet, grouped by stem."""
    runs: dict[tuple[str, str], pa.Table] = {}
    for project_dir in sorted(p for p in (root / "data").iterdir() if p.is_dir()):
        groups: dict[str, list[tuple[int, Path]]] = defaultdict(list)
        for f in project_dir.iterdir():
            m = PART_RE.match(f.name)
            if m:
                groups[m["stem"]].append((int(m["n"]), f))
        for stem, parts in groups.items():
            parts.sort()
            assert [n for n, _ in parts] == list(range(len(parts))), f"{project_dir.name}/{stem}: part numbers"
            tables = []
            for _, f in parts:
                t = pq.read_table(f)
                assert t.schema.equals(SCHEMA, check_metadata=False), f"{f}: {t.schema}"
                tables.append(t)
            runs[(project_dir.name, stem)] = pa.concat_tables(tables)
    return runs


def check_layout(root: Path) -> dict[tuple[str, str], pa.Table]:
    """Every run is found under the directory names safe() gives, and every file it references exists."""
    assert not (root / "trackport.json").exists()
    assert not list(root.rglob("*.run.json")), "neptune-exporter writes no run manifests"
    assert not list(root.rglob("*.tmp")), "no temporary parts left"
    runs = read_layout(root)
    referenced: set[Path] = set()
    for (project_dir, stem), table in runs.items():
        projects = pc.unique(table.column("project_id")).to_pylist()
        run_ids = pc.unique(table.column("run_id")).to_pylist()
        assert len(projects) == 1 and len(run_ids) == 1, (project_dir, stem)
        assert safe(projects[0]) == project_dir
        assert safe(run_ids[0]) == stem
        files_root = root / "files" / project_dir
        file_rows = table.filter(pc.is_valid(table.column("file_value")))
        for row in file_rows.select(["attribute_type", "file_value", "step"]).to_pylist():
            rel = row["file_value"]["path"]
            target = files_root / rel
            assert target.resolve().is_relative_to(files_root.resolve())
            kind = row["attribute_type"]
            if kind == "file_set":
                assert target.is_dir(), rel
                members = [p for p in target.rglob("*") if p.is_file()]
                assert members, rel
                referenced.update(members)
            else:
                assert target.is_file(), rel
                referenced.add(target)
            if kind == "artifact":
                assert target.name == "files_list.json"
                assert isinstance(json.loads(target.read_text()), list)
            if kind == "file_series":
                assert row["step"] is not None
                assert Decimal(Path(rel).stem) == row["step"], "file_series files are named <step>.<ext>"
            else:
                assert row["step"] is None
    on_disk = {p for p in (root / "files").rglob("*") if p.is_file()} if (root / "files").exists() else set()
    assert on_disk == referenced, "files on disk that no row references"
    return runs


# ---------------------------------------------------------------------------
# The corpus itself
# ---------------------------------------------------------------------------


def test_one_run_per_case(corpus):
    assert [r.case for r in corpus] == list(CASES)
    assert len({r.run_id for r in corpus}) == len(corpus)
    for run in corpus:
        assert run.project_id == CORPUS_PROJECT
        assert run.table.schema.equals(SCHEMA, check_metadata=True), run.case
        assert run.table.column("project_id").to_pylist() == [run.project_id] * run.num_rows
        assert run.table.column("run_id").to_pylist() == [run.run_id] * run.num_rows
        assert _value(run, "sys/name") == f"corpus-{run.case}"


def test_deterministic():
    a, b = build_corpus(big=False), build_corpus(big=False)
    for x, y in zip(a, b):
        assert table_differences(x.table, y.table) == []
        assert x.files == y.files


def test_big_flag(corpus, small_corpus):
    big = _rows(corpus_case(corpus, "big_series"), "metrics/big_series")
    small = _rows(corpus_case(small_corpus, "big_series"), "metrics/big_series")
    assert len(big) == 100_000 and len(small) == 2_000
    for a, b in zip(corpus, small_corpus):
        if a.case != "big_series":
            assert table_differences(a.table, b.table) == [], a.case


def test_single_values_have_no_step_or_timestamp(corpus):
    series = {"float_series", "string_series", "histogram_series"}
    for run in corpus:
        t = run.table
        kinds = t.column("attribute_type").to_pylist()
        steps = t.column("step").is_valid().to_pylist()
        stamps = t.column("timestamp").is_valid().to_pylist()
        for kind, has_step, has_ts in zip(kinds, steps, stamps):
            assert has_step == (kind in series or kind == "file_series"), (run.case, kind)
            assert has_ts == (kind in series), (run.case, kind)


def test_scalars(corpus):
    run = corpus_case(corpus, "scalars")
    kinds = set(run.table.column("attribute_type").to_pylist())
    assert {"float", "int", "string", "bool", "datetime", "string_set"} <= kinds
    assert _value(run, "config/int_above_2_53") == 2**53 + 1
    assert _value(run, "config/int32_max") == 2**31 - 1
    assert _value(run, "config/int32_min") == -(2**31)
    assert _value(run, "config/int64_max") == 2**63 - 1
    assert _value(run, "config/datetime").microsecond == 789_000
    assert _value(run, "config/string_set_empty") == []
    assert _value(run, "config/bool_false") is False
    for key in ("sys/name", "sys/creation_time", "sys/modification_time", "sys/description", "sys/tags"):
        assert _rows(run, key), key
    assert _value(run, "sys/creation_time") < _value(run, "sys/modification_time")


def test_nested_and_unicode_keys(corpus):
    nested = corpus_case(corpus, "nested_config")
    assert _value(nested, "config/optimizer/lr") == 0.001
    assert _value(nested, "config/data/augment/crop/size") == 224
    uni = corpus_case(corpus, "unicode_keys")
    paths = set(uni.table.column("attribute_path").to_pylist())
    assert {"metrics/ümlaut loss", "config/a b/c:d", "config/a..b"} <= paths
    assert any(len(p) == 300 for p in paths)


def test_long_values(corpus):
    run = corpus_case(corpus, "long_values")
    assert len(_value(run, "config/long_string")) == 10_000
    assert [len(_value(run, f"config/str_{n}")) for n in (200, 201, 6000, 6001)] == [200, 201, 6000, 6001]
    lines = [r["string_value"] for r in _rows(run, "logs/long_lines")]
    assert max(map(len, lines)) == 1500


def test_nan_inf(corpus):
    run = corpus_case(corpus, "nan_inf")
    values = [r["float_value"] for r in _rows(run, "metrics/nan_inf")]
    assert any(math.isnan(v) for v in values)
    assert math.inf in values and -math.inf in values
    assert math.isnan(_value(run, "config/nan"))
    assert _value(run, "config/pos_inf") == math.inf and _value(run, "config/neg_inf") == -math.inf
    assert math.copysign(1.0, _value(run, "config/neg_zero")) == -1.0


def test_steps(corpus):
    run = corpus_case(corpus, "steps")
    steps = [r["step"] for r in _rows(run, "metrics/fractional")]
    for s in ("0.5", "1.25", "1000000.125", "0.000001", "123456789.000001"):
        assert Decimal(s) in steps
    sparse = [r["step"] for r in _rows(run, "metrics/sparse")]
    assert sparse == sorted(sparse) and any(b - a > 1 for a, b in zip(sparse, sparse[1:]))


def test_series_timestamps_increase(corpus):
    for run in corpus:
        t = run.table.filter(pc.is_valid(run.table.column("timestamp")))
        for path in pc.unique(t.column("attribute_path")).to_pylist():
            s = t.filter(pc.equal(t.column("attribute_path"), path))
            ms = s.column("timestamp").cast(pa.int64()).to_numpy()
            assert np.all(np.diff(ms) > 0), (run.case, path)
            steps = [Decimal(x) for x in s.column("step").to_pylist()]
            assert steps == sorted(steps) and len(set(steps)) == len(steps), (run.case, path)
    big = corpus_case(corpus, "big_series").table
    assert big.column("timestamp").type == pa.timestamp("ms", tz="UTC")


def test_string_series_and_histograms(corpus):
    run = corpus_case(corpus, "string_series")
    assert len(_rows(run, "monitoring/stdout")) > 10 and len(_rows(run, "monitoring/stderr")) > 5
    hist = corpus_case(corpus, "histograms")
    values = [r["histogram_value"] for r in hist.table.to_pylist() if r["histogram_value"]]
    assert len(values) >= 4
    nonuniform = 0
    for h in values:
        assert h["type"] == "COUNTING"
        assert len(h["edges"]) == len(h["values"]) + 1
        widths = np.diff(h["edges"])
        nonuniform += not np.allclose(widths, widths[0])
    assert nonuniform >= 1


def test_files_and_forks(corpus):
    run = corpus_case(corpus, "files")
    kinds = [r["attribute_type"] for r in run.table.to_pylist() if r["file_value"]]
    assert sorted(set(kinds)) == ["artifact", "file", "file_series", "file_set"]
    assert kinds.count("file_series") == 3
    for row in run.table.to_pylist():
        if row["file_value"]:
            assert row["file_value"]["path"].startswith(f"{run.project_id}/{run.run_id}/{row['attribute_path']}")
    parent = corpus_case(corpus, "fork_parent")
    child = corpus_case(corpus, "fork_child")
    assert _value(child, "sys/forking/parent") == parent.run_id
    fork_step = _value(child, "sys/forking/step")
    assert isinstance(fork_step, float)
    assert Decimal(fork_step) in [r["step"] for r in _rows(parent, "metrics/loss")]
    assert min(r["step"] for r in _rows(child, "metrics/loss")) > Decimal(fork_step)


def test_empty_run(corpus):
    run = corpus_case(corpus, "empty")
    assert run.num_rows == 1 and run.table.column("attribute_path").to_pylist() == ["sys/name"]
    assert run.files == {}


def test_same_value():
    assert same_value(float("nan"), float("nan"))
    assert not same_value(0.0, -0.0)
    assert same_value({"a": [1.0, float("nan")]}, {"a": [1.0, float("nan")]})
    assert not same_value(1, True)


# ---------------------------------------------------------------------------
# The exporter layout
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(("part_rows", "big"), [(None, True), (30_000, True), (7, False)])
def test_written_parts_read_back(tmp_path, request, part_rows, big):
    corpus = request.getfixturevalue("corpus" if big else "small_corpus")
    write_exporter_export(tmp_path, corpus, part_rows=part_rows)
    project = tmp_path / "data" / safe(CORPUS_PROJECT)
    for run in corpus:
        parts = sorted(project.glob(f"{safe(run.run_id)}_part_*.parquet"), key=lambda p: int(PART_RE.match(p.name)["n"]))
        expected_parts = 1 if part_rows is None else math.ceil(run.num_rows / part_rows)
        assert len(parts) == expected_parts, run.case
        tables = []
        for f in parts:
            assert pq.ParquetFile(f).metadata.row_group(0).column(0).compression == "SNAPPY"
            t = pq.read_table(f)
            assert t.schema.equals(SCHEMA, check_metadata=False)
            assert part_rows is None or t.num_rows <= part_rows
            tables.append(t)
        assert table_differences(run.table, pa.concat_tables(tables)) == [], run.case


def test_layout_reader_finds_every_run_and_file(tmp_path, corpus):
    write_exporter_export(tmp_path, corpus, part_rows=5_000)
    runs = check_layout(tmp_path)
    assert set(runs) == {(safe(r.project_id), safe(r.run_id)) for r in corpus}
    for run in corpus:
        found = runs[(safe(run.project_id), safe(run.run_id))]
        assert table_differences(run.table, found) == [], run.case
        for rel, data in run.files.items():
            assert (tmp_path / "files" / safe(run.project_id) / rel).read_bytes() == data


def test_rewriting_a_run_replaces_its_parts(tmp_path, small_corpus):
    run = corpus_case(small_corpus, "big_series")
    write_exporter_export(tmp_path, [run], part_rows=500)
    project = tmp_path / "data" / safe(run.project_id)
    assert len(list(project.glob("*_part_*.parquet"))) == 5
    write_exporter_export(tmp_path, [run])
    assert [p.name for p in project.iterdir()] == [f"{safe(run.run_id)}_part_0.parquet"]


def test_zero_row_run_leaves_nothing(tmp_path):
    run = CorpusRun("p/q", "R-1", SCHEMA.empty_table())
    write_exporter_export(tmp_path, [run])
    assert not (tmp_path / "data").exists() or not list((tmp_path / "data").rglob("*.parquet"))


def test_writer_rejects_bad_runs(tmp_path, small_corpus):
    files = corpus_case(small_corpus, "files")
    with pytest.raises(ValueError, match="no bytes"):
        write_exporter_export(tmp_path, [CorpusRun(files.project_id, files.run_id, files.table, {})])
    bad = CorpusRun("p", "r", pa.table({"x": [1]}))
    with pytest.raises(ValueError, match="SCHEMA"):
        write_exporter_export(tmp_path, [bad])
    scalars = corpus_case(small_corpus, "scalars")
    with pytest.raises(ValueError, match="run_id"):
        write_exporter_export(tmp_path, [CorpusRun(scalars.project_id, "other", scalars.table)])


def test_writer_is_byte_deterministic(tmp_path, small_corpus):
    write_exporter_export(tmp_path / "a", small_corpus, part_rows=100)
    write_exporter_export(tmp_path / "b", small_corpus, part_rows=100)
    a = {p.relative_to(tmp_path / "a"): p.read_bytes() for p in (tmp_path / "a").rglob("*") if p.is_file()}
    b = {p.relative_to(tmp_path / "b"): p.read_bytes() for p in (tmp_path / "b").rglob("*") if p.is_file()}
    assert a == b


# ---------------------------------------------------------------------------
# The shipped sample export
# ---------------------------------------------------------------------------


def _load_script():
    spec = importlib.util.spec_from_file_location("make_sample_export", REPO / "scripts" / "make_sample_export.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_sample_export_is_what_the_script_writes(tmp_path):
    assert SAMPLE.is_dir(), "run: python scripts/make_sample_export.py"
    _load_script().build_sample(tmp_path / "sample")
    fresh = tmp_path / "sample"
    shipped_files = sorted(p.relative_to(SAMPLE) for p in SAMPLE.rglob("*") if p.is_file())
    fresh_files = sorted(p.relative_to(fresh) for p in fresh.rglob("*") if p.is_file())
    assert shipped_files == fresh_files
    for rel in shipped_files:
        if rel.suffix == ".parquet":
            diffs = table_differences(pq.read_table(fresh / rel), pq.read_table(SAMPLE / rel))
            assert diffs == [], f"{rel}: {diffs} -- regenerate with python scripts/make_sample_export.py"
        else:
            assert (SAMPLE / rel).read_bytes() == (fresh / rel).read_bytes(), rel


def test_sample_export_shape():
    size = sum(p.stat().st_size for p in SAMPLE.rglob("*") if p.is_file())
    assert size < 1_000_000
    runs = check_layout(SAMPLE)
    tables = list(runs.values())
    assert len({stem for stem, _ in runs}) == 2 and len(runs) == 5
    assert any(len(list((SAMPLE / "data" / d).glob(f"{s}_part_*.parquet"))) > 1 for d, s in runs)
    all_rows = pa.concat_tables(tables)
    kinds = set(all_rows.column("attribute_type").to_pylist())
    assert {"float_series", "string_series", "histogram_series", "file", "file_series"} <= kinds
    steps = all_rows.column("step").drop_null().to_pylist()
    assert any(s != s.to_integral_value() for s in steps), "one run has fractional steps"
    assert all_rows.num_rows > 2_000


def test_table_differences_is_exact():
    a = pa.table({"x": [1.0, float("nan"), 0.0], "s": ["a", "b", None]})
    assert table_differences(a, a) == []
    assert table_differences(a, pa.table({"x": [1.0, float("nan"), -0.0], "s": ["a", "b", None]}))
    assert table_differences(a, pa.table({"x": [1.0, 2.0, 0.0], "s": ["a", "b", None]}))
    assert table_differences(a, pa.table({"x": [1.0, float("nan"), 0.0], "s": ["a", "b", ""]}))
    assert table_differences(a, a.slice(0, 2))
