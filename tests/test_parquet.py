"""The parquet connector and the pipeline, through the real CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from support import canonical_rows, read_plain_export, run_cli, runs_by_id
from trackport.connectors.parquet import layout
from trackport.core.schema import SCHEMA, rows_to_table
from trackport.testing.corpus import CORPUS_PROJECT, build_corpus, corpus_run_id
from trackport.testing.exporter_layout import write_exporter_export


@pytest.fixture(scope="module")
def corpus():
    return build_corpus(big=False)


@pytest.fixture
def exporter_export(tmp_path, corpus):
    root = tmp_path / "neptune-export"
    write_exporter_export(root, corpus, part_rows=700)  # multi-part runs
    return root


def test_neptune_exporter_export_round_trips_through_our_export(tmp_path, corpus, exporter_export):
    out = tmp_path / "ours"
    code, report, _ = run_cli("export", str(exporter_export), str(out))
    assert code == 0, report
    assert report["totals"]["moved"] == len(corpus)
    # readable by a reader that knows only neptune-exporter's schema and layout
    plain = read_plain_export(out)
    assert set(plain) == {(r.project_id, r.run_id) for r in corpus}
    for run in corpus:
        table = plain[(run.project_id, run.run_id)]
        assert table.schema.equals(SCHEMA)
        assert canonical_rows(table) == canonical_rows(run.table), run.case
        for rel, data in run.files.items():
            assert (layout.project_files_dir(out, run.project_id) / rel).read_bytes() == data
    # and our manifests say what is there
    manifest = json.loads((out / "trackport.json").read_text())
    # the origin of a neptune-exporter export is its runs' own ids, not the folder it lies in
    assert manifest["format_version"] == 1 and manifest["sources"] == ["parquet:neptune-exporter"]
    assert len(manifest["id"]) == 32
    big = json.loads(layout.run_manifest_path(out, CORPUS_PROJECT, corpus_run_id("big_series")).read_text())
    assert big["attributes"]["metrics/big_series"]["rows"] == 2000
    code, report, _ = run_cli("verify", str(exporter_export), str(out))
    assert code == 0 and report["totals"]["verified"] == len(corpus), report


def test_rerun_skips_and_a_partial_run_is_repaired(tmp_path, corpus, exporter_export):
    out = tmp_path / "ours"
    assert run_cli("export", str(exporter_export), str(out))[0] == 0
    code, report, _ = run_cli("export", str(exporter_export), str(out))
    assert code == 0 and report["totals"]["skipped"] == len(corpus)
    # A crash before the manifest: the run is partial, and a stale .tmp part lies around.
    victim = corpus_run_id("big_series")
    layout.run_manifest_path(out, CORPUS_PROJECT, victim).unlink()
    stale = layout.part_path(out, CORPUS_PROJECT, victim, 7).with_suffix(".parquet.tmp")
    stale.write_bytes(b"half a part")
    code, report, _ = run_cli("export", str(exporter_export), str(out))
    assert code == 0
    assert runs_by_id(report)[victim]["status"] == "repaired"
    assert report["totals"]["skipped"] == len(corpus) - 1
    assert not stale.exists()
    assert run_cli("verify", str(exporter_export), str(out))[0] == 0


def test_incomplete_runs_of_a_source_export_are_noted(tmp_path, corpus, exporter_export):
    # The parquet source says so through the generic Source.source_notes() hook.
    out = tmp_path / "ours"
    assert run_cli("export", str(exporter_export), str(out))[0] == 0
    victim = corpus_run_id("big_series")
    layout.run_manifest_path(out, CORPUS_PROJECT, victim).unlink()
    code, report, _ = run_cli("export", str(out), str(tmp_path / "again"))
    assert code == 1 and runs_by_id(report)[victim]["status"] == "failed"
    assert f"1 run(s) incomplete in the source export were not moved: {CORPUS_PROJECT}/{victim}" in report["notes"]


def test_parts_roll_over_at_the_size_set(tmp_path, exporter_export):
    out = tmp_path / "ours"
    code, _, _ = run_cli("export", str(exporter_export), str(out), "--part-size", "4000", "--run", "CORP-7$")
    assert code == 0
    parts = sorted(layout.project_data_dir(out, CORPUS_PROJECT).glob("*_part_*.parquet"))
    assert len(parts) > 1
    assert sum(pq.read_metadata(p).num_rows for p in parts) == 2003  # series + sys values


def test_incomplete_runs_are_not_read(tmp_path, corpus):
    root = tmp_path / "exp"
    write_exporter_export(root, corpus[:2])
    # neptune-exporter crashed mid-run: only a .tmp part and a later part exist
    data_dir = layout.project_data_dir(root, CORPUS_PROJECT)
    part0 = layout.part_path(root, CORPUS_PROJECT, corpus[1].run_id, 0)
    part0.rename(part0.with_name(part0.name.replace("_part_0", "_part_1")))
    code, report, _ = run_cli("export", str(root), str(tmp_path / "out"))
    assert code == 1
    run = runs_by_id(report)[corpus[1].run_id]
    assert run["status"] == "failed" and "incomplete" in run["error"]
    assert runs_by_id(report)[corpus[0].run_id]["status"] == "moved"
    assert any("incomplete" in n for n in report["notes"])
    assert data_dir.exists()


def _one_run_export(root: Path, run_id: str, rows: list[dict], files: dict[str, bytes] | None = None):
    table = rows_to_table(rows, extra={"project_id": "ws/p", "run_id": run_id})
    path = layout.part_path(root, "ws/p", run_id, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    for rel, data in (files or {}).items():
        target = layout.project_files_dir(root, "ws/p") / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    return path


def _name(run_id):
    return {"attribute_path": "sys/name", "attribute_type": "string", "string_value": run_id}


def _file(attr, path):
    return {"attribute_path": attr, "attribute_type": "file", "file_value": {"path": path}}


def test_bad_input_fails_only_its_own_run(tmp_path):
    root = tmp_path / "hostile"
    _one_run_export(root, "GOOD", [_name("GOOD"), _file("files/a.txt", "a.txt"),
                                   {"attribute_path": "x", "attribute_type": "float", "float_value": float("nan")}],
                    {"a.txt": b"fine"})
    _one_run_export(root, "EMPTY", [_name("EMPTY")])
    corrupt = _one_run_export(root, "CORRUPT", [_name("CORRUPT")])
    corrupt.write_bytes(corrupt.read_bytes()[:40])
    _one_run_export(root, "MISSING", [_name("MISSING"), _file("files/gone.bin", "gone.bin")])
    (tmp_path / "outside.txt").write_text("secret")
    _one_run_export(root, "ESCAPE", [_name("ESCAPE"), _file("files/evil", "../../../outside.txt")])
    _one_run_export(root, "WEIRD", [_name("WEIRD"), {"attribute_path": "q", "attribute_type": "quaternion"}])

    out = tmp_path / "out"
    code, report, _ = run_cli("export", str(root), str(out))
    assert code == 1
    runs = runs_by_id(report)
    assert runs["GOOD"]["status"] == "moved" and runs["GOOD"]["files"] == 1
    assert runs["EMPTY"]["status"] == "moved"
    assert runs["MISSING"]["status"] == "failed"
    assert "gone.bin" in runs["MISSING"]["error"] and "MISSING" in runs["MISSING"]["error"]
    assert "--allow-drops" in runs["MISSING"]["error"]
    assert runs["ESCAPE"]["status"] == "failed" and "escapes" in runs["ESCAPE"]["error"]
    assert "quaternion" in runs["WEIRD"]["error"] and "_part_0.parquet" in runs["WEIRD"]["error"]
    bad = [r for r in report["runs"] if r["status"] == "failed" and r not in (runs["MISSING"], runs["ESCAPE"], runs["WEIRD"])]
    assert len(bad) == 1 and "_part_0.parquet" in bad[0]["error"]  # the corrupt one, named by its file
    assert not (out / "files" / "outside.txt").exists()

    # With --allow-drops the missing file is dropped, reported, and the exit code accepts it.
    code, report, _ = run_cli("export", str(root), str(out), "--allow-drops", "--run", "MISSING|ESCAPE")
    assert code == 0
    runs = runs_by_id(report)
    assert runs["MISSING"]["status"] == "moved" and runs["MISSING"]["drops"] == {"missing_file": 1}
    assert runs["ESCAPE"]["drops"] == {"missing_file": 1}
    tables = read_plain_export(out)
    assert "files/gone.bin" not in tables[("ws/p", "MISSING")].column("attribute_path").to_pylist()


def test_filters_select_classes_attributes_and_runs(tmp_path, corpus, exporter_export):
    out = tmp_path / "ours"
    code, report, _ = run_cli("export", str(exporter_export), str(out), "--classes", "metrics",
                              "--run", "CORP-(1|7)$")
    assert code == 0 and report["totals"]["runs"] == 2
    tables = read_plain_export(out)
    types = set(tables[(CORPUS_PROJECT, "CORP-7")].column("attribute_type").to_pylist())
    assert types == {"float_series"}
    out2 = tmp_path / "ours2"
    code, report, _ = run_cli("export", str(exporter_export), str(out2), "--attribute", "^metrics/big_series$",
                              "--run", "CORP-7$")
    paths = set(read_plain_export(out2)[(CORPUS_PROJECT, "CORP-7")].column("attribute_path").to_pylist())
    assert "metrics/big_series" in paths and all(p == "metrics/big_series" or p.startswith("sys/") for p in paths)


def test_usage_errors_exit_2(tmp_path, exporter_export):
    code, _, output = run_cli("copy", "nosuchtracker://x/y", str(tmp_path / "o"))
    assert code == 2 and "unknown scheme" in output and "trackport connectors" in output
    code, _, output = run_cli("export", str(exporter_export), str(tmp_path / "o"), "--classes", "pictures")
    assert code == 2 and "pictures" in output
    code, _, output = run_cli("export", str(tmp_path / "nowhere"), str(tmp_path / "o"))
    assert code == 2 and "does not exist" in output


def test_inspect_counts_rows_and_disk_bytes(tmp_path, corpus, exporter_export):
    result = run_cli("inspect", str(exporter_export))
    summary = json.loads(result[2])
    assert result[0] == 0
    assert summary["totals"]["runs"] == len(corpus)
    assert summary["totals"]["rows"] == sum(r.num_rows for r in corpus)
    on_disk = sum(p.stat().st_size for p in (exporter_export / "data").rglob("*.parquet"))
    assert summary["totals"]["data_bytes"] == on_disk
    project = summary["projects"][0]
    assert project["attribute_types"]["histogram_series"] > 0
    assert project["min_step"] is not None
    assert _inspected(project) == _expected_summary(corpus)


def _expected_summary(runs) -> dict:
    """What inspect must say of a project holding `runs`, computed from the tables in memory."""
    import pyarrow as pa
    import pyarrow.compute as pc

    table = pa.concat_tables([r.table for r in runs])
    types = pc.value_counts(table.column("attribute_type")).to_pylist()
    lo, hi = (str(v.as_py()) for v in pc.min_max(table.column("step")).values())
    return {"rows": table.num_rows, "attribute_types": {t["values"]: t["counts"] for t in types},
            "attributes": len(pc.unique(table.column("attribute_path"))), "min_step": lo, "max_step": hi}


def _inspected(project: dict) -> dict:
    return {k: project[k] for k in ("rows", "attribute_types", "attributes", "min_step", "max_step")}


@pytest.mark.parametrize("layout_kind", ["no-statistics", "one-type-row-groups"])
def test_inspect_trusts_statistics_only_where_exact(tmp_path, corpus, exporter_export, layout_kind):
    # Parts rewritten so that inspect must read the columns (no statistics at all), or
    # can take most row groups from their statistics (sorted by type and path: most
    # row groups hold one attribute, one type); either way the same summary.
    for part in (exporter_export / "data").rglob("*.parquet"):
        table = pq.read_table(part)
        if layout_kind == "no-statistics":
            pq.write_table(table, part, row_group_size=64, write_statistics=False)
        else:
            order = [("attribute_type", "ascending"), ("attribute_path", "ascending")]
            pq.write_table(table.sort_by(order), part, row_group_size=50)
    code, _, output = run_cli("inspect", str(exporter_export))
    assert code == 0, output
    assert _inspected(json.loads(output)["projects"][0]) == _expected_summary(corpus)


def test_inspect_reports_unreadable_parts_and_sums_the_rest(tmp_path, corpus, exporter_export):
    import pyarrow as pa

    garbage = layout.part_path(exporter_export, CORPUS_PROJECT, "BAD-1", 0)
    garbage.write_bytes(b"PAR1 not a parquet file")
    text_steps = layout.part_path(exporter_export, CORPUS_PROJECT, "BAD-2", 0)
    pq.write_table(pa.table({"project_id": [CORPUS_PROJECT], "run_id": ["BAD-2"], "attribute_path": ["x"],
                             "attribute_type": ["float_series"], "step": ["7"]}), text_steps)
    code, _, output = run_cli("inspect", str(exporter_export))
    project = json.loads(output)["projects"][0]
    assert code == 1   # something could not be read
    assert _inspected(project) == _expected_summary(corpus)   # the readable parts, whole
    assert sorted(Path(line.split(": ")[0]).name for line in project["unreadable"]) == sorted(
        [garbage.name, text_steps.name])
    assert any("column step is string" in line for line in project["unreadable"])


def test_inspect_streams_a_long_run_in_bounded_memory(tmp_path):
    # One run of 1M points in a single row group written without statistics, so every
    # row must be read: Arrow's peak stays near one batch, not the run (whole columns
    # would take over 30 MB).  Measured in a fresh process, whose Arrow peak is its own.
    import subprocess
    import sys

    import numpy as np

    from trackport.testing.corpus import series_table

    n = 1_000_000
    table = series_table("bench/long", "LONG-1", "train/loss", "float_series", np.linspace(0, 1, n),
                         steps_micro=np.arange(n, dtype=np.int64) * 1_000_000)
    part = layout.part_path(tmp_path / "long", "bench/long", "LONG-1", 0)
    part.parent.mkdir(parents=True)
    pq.write_table(table, part, row_group_size=n, write_statistics=False)
    code = (
        "import json, sys, pyarrow as pa\n"
        "from pathlib import Path\n"
        "from trackport.connectors.parquet.source import ParquetSource\n"
        "from trackport.connectors.parquet.summary import inspect_export\n"
        "from trackport.core.model import Selection\n"
        "summary = inspect_export(ParquetSource(Path(sys.argv[1]), {}), Selection())\n"
        "print(json.dumps([summary['projects'][0], pa.default_memory_pool().max_memory()]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "long")],
                         capture_output=True, text=True, check=True)
    project, arrow_peak = json.loads(out.stdout)
    assert project["rows"] == n and project["attribute_types"] == {"float_series": n}
    assert (project["min_step"], project["max_step"]) == ("0.000000", f"{n - 1}.000000")
    assert arrow_peak < 12 * 2**20, arrow_peak


def test_plan_writes_nothing_and_tells_the_multiplier(tmp_path, exporter_export):
    db = tmp_path / "plan.db"
    code, report, _ = run_cli("plan", str(exporter_export), f"mlflow:sqlite:///{db}", "--run", "CORP-6$")
    assert code == 0, report
    run = report["runs"][0]
    assert run["status"] == "planned" and run["details"]["step_multiplier"] == 10**6
    assert run["transformations"]["step_scaled"] == run["points"]
    assert any("integers only" in line for line in report["destination_capabilities"])
    # every transformation the destination will apply is shown, with examples, before any write
    code, report, _ = run_cli("plan", str(exporter_export), f"mlflow:sqlite:///{db}", "--run", "CORP-(3|4)$")
    runs = runs_by_id(report)
    assert runs["CORP-3"]["transformations"]["key_sanitized"] >= 3
    assert any("config/emoji" in e for e in runs["CORP-3"]["examples"]["key_sanitized"])
    assert runs["CORP-4"]["transformations"]["param_to_artifact"] >= 1
    assert report["totals"]["transformations"]["series_to_artifact"] >= 1
    assert not db.exists()



def test_two_source_runs_with_one_identity_are_reported_not_raced(tmp_path):
    root = tmp_path / "dup"
    part = _one_run_export(root, "SAME", [_name("SAME")])
    shutil.copyfile(part, part.with_name("copied-by-hand_part_0.parquet"))
    code, report, _ = run_cli("export", str(root), str(tmp_path / "out"), "--workers", "4")
    assert code == 1
    statuses = sorted(r["status"] for r in report["runs"])
    assert statuses == ["failed", "moved"]
    failed = next(r for r in report["runs"] if r["status"] == "failed")
    assert "same project and run id" in failed["error"]


# -- conformance (trackport.testing.conformance) ------------------------------------------------
def test_conformance_round_trip(tmp_path):
    from trackport.testing import conformance

    conformance.round_trip(conformance.Target(f"parquet:{tmp_path / 'dest-export'}"), tmp_path)


def test_conformance_run_times(tmp_path):
    from trackport.testing import conformance

    conformance.run_times(conformance.Target(f"parquet:{tmp_path / 'dest-export'}"), tmp_path)


def test_conformance_sigkill_heals(tmp_path):
    from trackport.testing import conformance

    conformance.sigkill_heals(conformance.Target(f"parquet:{tmp_path / 'dest-export'}"), tmp_path)


def test_a_url_no_store_serves_is_a_usage_error_not_a_local_folder(tmp_path, monkeypatch):
    """`parquet:s3://...` once wrote a local folder literally named `parquet:s3:/bucket/...`.
    Exports on object storage now work (tests/test_object_storage.py); a URL whose protocol no
    file system serves is still refused, and never becomes a local folder."""
    src = tmp_path / "src"
    write_exporter_export(src, build_corpus()[:1])
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    for args in (("export", str(src), "parquet:foo://bucket/exp"), ("export", str(src), "foo://bucket/exp"),
                 ("copy", str(src), "parquet:foo://bucket/exp"), ("load", "foo://bucket/exp"),
                 ("inspect", "parquet:foo://container/exp")):
        code, _, out = run_cli(*args)
        assert code == 2, (args, out)
        assert "foo:// is neither a local folder nor a storage protocol" in out or "unknown scheme 'foo'" in out, out
        assert not [p for p in work.rglob("*") if ":" in p.name], args


def test_models_and_model_versions_of_export_models_move_as_runs_with_their_type(tmp_path):
    """neptune-exporter's `export-models` writes a project's Neptune models and model versions
    into data/<project>/models/ and model_versions/ (they were once silently left out)."""
    from trackport.testing.corpus import CorpusRun, micro_steps, rows_table, series_table

    project = "ws/proj"
    src = tmp_path / "src"
    write_exporter_export(src, build_corpus()[:1])
    model = CorpusRun(project, "PROJ-MOD", rows_table(project, "PROJ-MOD", [
        {"path": "sys/name", "type": "string", "value": "resnet"},
        {"path": "model/signature", "type": "file", "value": "models/PROJ-MOD/model/signature"}]),
        files={"models/PROJ-MOD/model/signature": b"signature bytes"})
    version = CorpusRun(project, "PROJ-MOD-1", pa.concat_tables([
        rows_table(project, "PROJ-MOD-1", [{"path": "sys/model_id", "type": "string", "value": "PROJ-MOD"},
                                           {"path": "sys/stage", "type": "string", "value": "production"}]),
        series_table(project, "PROJ-MOD-1", "val/acc", "float_series", [0.5, 0.75], micro_steps([0, 1]),
                     [1_714_521_600_000, 1_714_521_601_000])]))
    write_exporter_export(src, [model], entity_scope="models")
    write_exporter_export(src, [version], entity_scope="model_versions")

    code, report, out = run_cli("export", str(src), str(tmp_path / "out"))
    assert code == 0, out
    got = runs_by_id(report)
    assert got["PROJ-MOD"]["transformations"] == {"container_as_run": 1}
    assert got["PROJ-MOD-1"]["points"] == 2 and got["PROJ-MOD-1"]["transformations"] == {"container_as_run": 1}
    tables = read_plain_export(tmp_path / "out")

    def value(run_id, path):
        rows = [r for r in tables[(project, run_id)].to_pylist() if r["attribute_path"] == path]
        return rows[0]["string_value"] if rows else None

    assert value("PROJ-MOD", "sys/container_type") == "model" and value("PROJ-MOD-1", "sys/container_type") == "model_version"
    assert value("PROJ-MOD-1", "sys/stage") == "production"
    (sig,) = [r for r in tables[(project, "PROJ-MOD")].to_pylist() if r["attribute_path"] == "model/signature"]
    (copied,) = (tmp_path / "out" / "files").glob(f"*/{sig['file_value']['path']}")
    assert copied.read_bytes() == b"signature bytes"
    assert run_cli("verify", str(src), str(tmp_path / "out"))[0] == 0
