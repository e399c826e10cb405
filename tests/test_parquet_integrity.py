"""A parquet export is checked, not trusted: its run manifests against its parts, its part
numbering, where its folders lead, what its files are; and its runs keep one identity
wherever the export lies.  Real exports, the real CLI, the real MLflow SQLite store."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from support import run_cli, runs_by_id
from trackport.connectors.parquet import layout
from trackport.testing.corpus import BASE_MS, concat, micro_steps, rows_table, series_table

PROJECT = "ws/integrity"


def _run_tables(run_id: str, start: int, n: int) -> pa.Table:
    steps = range(start, start + n)
    return series_table(PROJECT, run_id, "metrics/loss", "float_series", np.linspace(2.0, 0.1, n),
                        micro_steps(steps), BASE_MS + np.arange(start, start + n, dtype=np.int64) * 1000)


def _exporter_run(root: Path, run_id: str, parts: list[tuple[int, int]], files: dict[str, bytes] | None = None,
                  file_type: str = "file", refs: list[str] | None = None) -> list[Path]:
    """A run in neptune-exporter's layout (no manifests): one part per (first step, points);
    it references `refs` (default: each of `files`) as `file_type` attributes."""
    folder = layout.project_data_dir(root, PROJECT)
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for n, (start, count) in enumerate(parts):
        tables = [_run_tables(run_id, start, count)]
        if n == 0:
            rows = [{"path": "sys/name", "type": "string", "value": run_id}]
            rows += [{"path": f"files/{i}", "type": file_type, "value": rel}
                     for i, rel in enumerate(refs if refs is not None else list(files or {}))]
            tables.insert(0, rows_table(PROJECT, run_id, rows))
        path = layout.part_path(root, PROJECT, run_id, n)
        pq.write_table(concat(tables), path)
        out.append(path)
    for rel, data in (files or {}).items():
        target = layout.project_files_dir(root, PROJECT) / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    return out


def _mlflow_runs(db: Path) -> dict[str, list]:
    """MLflow runs by origin run id: every one, so a duplicate shows."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{db}")
    out: dict[str, list] = {}
    for exp in client.search_experiments():
        for run in client.search_runs([exp.experiment_id]):
            out.setdefault(run.data.tags.get("trackport.origin.run_id"), []).append(run)
    return out


def _history(db: Path, run) -> list[int]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{db}")
    return sorted(m.step for m in client.get_metric_history(run.info.run_id, "metrics/loss"))


# -- item 5: a complete mark is checked -------------------------------------------------------


def test_a_part_short_of_its_manifest_rows_or_checksum_is_a_damaged_run_everywhere(tmp_path):
    source = tmp_path / "neptune"
    _exporter_run(source, "CUT", [(0, 20_000)])
    _exporter_run(source, "FINE", [(0, 50)])
    ours = tmp_path / "ours"
    assert run_cli("export", str(source), str(ours))[0] == 0
    part = layout.part_path(ours, PROJECT, "CUT", 0)
    table = pq.read_table(part)
    pq.write_table(table.slice(0, table.num_rows - 5_000), part)      # 5,000 rows lost, still valid parquet
    db = tmp_path / "mlflow.db"

    for command, dest in (("load", f"mlflow:sqlite:///{db}"), ("copy", f"parquet:{tmp_path / 'again'}")):
        code, report, output = run_cli(command, str(ours), dest)
        assert code == 1 and "Traceback" not in output, output
        runs = runs_by_id(report)
        cut = runs["CUT"]
        assert cut["status"] == "failed", cut
        assert "15,001 rows where the run manifest recorded 20,001" in cut["error"] and "damaged" in cut["error"]
        assert f"run {PROJECT}/CUT" in cut["error"] and "Fix: export the run again" in cut["error"]
        assert runs["FINE"]["status"] == "moved"
    assert "CUT" not in _mlflow_runs(db)                          # nothing of it was written
    assert not layout.run_manifest_path(tmp_path / "again", PROJECT, "CUT").exists()

    code, summary, output = run_cli("inspect", str(ours))
    assert code == 1, output
    (project,) = summary["projects"]
    assert len(project["damaged_runs"]) == 1 and "ws/integrity/CUT" in project["damaged_runs"][0]
    code, report, _ = run_cli("verify", str(source), str(ours))
    assert code == 1 and runs_by_id(report)["CUT"]["status"] == "failed"
    assert "in the destination: the parts hold 15,001 rows" in runs_by_id(report)["CUT"]["error"]
    assert runs_by_id(report)["FINE"]["status"] == "verified"

    # Same row count, one value changed: the footers agree, the checksum does not.
    assert run_cli("export", str(source), str(ours))[0] == 0                 # repaired
    assert run_cli("inspect", str(ours))[0] == 0
    loaded = f"mlflow:sqlite:///{tmp_path / 'loaded.db'}"
    assert run_cli("load", str(ours), loaded)[0] == 0
    table = pq.read_table(part)
    values = table.column("float_value").to_numpy(zero_copy_only=False).copy()
    values[-1] = 42.0
    table = table.set_column(table.schema.get_field_index("float_value"), "float_value", pa.array(values))
    pq.write_table(table, part, compression="snappy", write_page_checksum=True)
    assert pq.ParquetFile(part).metadata.num_rows == 20_001
    code, report, _ = run_cli("load", str(ours), f"mlflow:sqlite:///{tmp_path / 'check.db'}", "--check")
    assert code == 1
    cut = runs_by_id(report)["CUT"]
    assert cut["status"] == "failed" and "checksum" in cut["error"] and "damaged" in cut["error"], cut
    code, summary, _ = run_cli("inspect", str(ours), "--check")
    assert code == 1 and "checksum" in summary["projects"][0]["damaged_runs"][0]
    assert run_cli("inspect", str(ours))[0] == 0          # without --check: footers only, as documented
    code, report, _ = run_cli("verify", str(ours), loaded)   # verify always checks
    assert code == 1 and "checksum" in runs_by_id(report)["CUT"]["error"]


# -- item 6: gaps in part numbers ----------------------------------------------------------------


@pytest.mark.parametrize("layout_kind", ["neptune-exporter", "trackport"])
def test_a_gap_in_part_numbers_is_a_damaged_run(tmp_path, layout_kind):
    source = tmp_path / "neptune"
    _exporter_run(source, "GAP", [(0, 10), (10, 10), (20, 10)])
    _exporter_run(source, "FINE", [(0, 10)])
    root = source
    if layout_kind == "trackport":
        root = tmp_path / "ours"
        assert run_cli("export", str(source), str(root), "--part-size", "1")[0] == 0
        assert layout.part_path(root, PROJECT, "GAP", 2).exists()
    layout.part_path(root, PROJECT, "GAP", 1).unlink()
    code, report, output = run_cli("export", str(root), str(tmp_path / "out"))
    assert code == 1 and "Traceback" not in output
    gap = runs_by_id(report)["GAP"]
    assert gap["status"] == "failed" and "_part_1 missing" in gap["error"] and "damaged" in gap["error"], gap
    assert runs_by_id(report)["FINE"]["status"] == "moved"
    code, summary, _ = run_cli("inspect", str(root))
    assert code == 1 and "_part_1 missing" in summary["projects"][0]["damaged_runs"][0]


# -- item 7: a run that grew is copied again ---------------------------------------------------------


def test_a_run_given_a_new_part_after_a_copy_is_copied_again_incrementally(tmp_path):
    source = tmp_path / "neptune"
    _exporter_run(source, "LIVE", [(0, 30)])
    _exporter_run(source, "DONE", [(0, 5)])
    db = tmp_path / "mlflow.db"
    dest = f"mlflow:sqlite:///{db}"
    assert run_cli("copy", str(source), dest)[0] == 0
    # the exporter went on: a new part with the next points
    pq.write_table(_run_tables("LIVE", 30, 20), layout.part_path(source, PROJECT, "LIVE", 1))
    code, report, _ = run_cli("copy", str(source), dest)
    assert code == 0, report
    live, done = runs_by_id(report)["LIVE"], runs_by_id(report)["DONE"]
    assert live["status"] == "repaired" and live["details"]["source_changed"] is True, live
    assert done["status"] == "skipped"
    runs = _mlflow_runs(db)
    assert len(runs["LIVE"]) == 1 and _history(db, runs["LIVE"][0]) == list(range(50))   # once each
    code, report, _ = run_cli("copy", str(source), dest)
    assert code == 0 and report["totals"]["skipped"] == 2
    assert run_cli("verify", str(source), dest)[0] == 0

    # into a parquet export too: the grown run is written again, whole
    ours = tmp_path / "ours"
    assert run_cli("export", str(source), str(ours))[0] == 0
    pq.write_table(_run_tables("LIVE", 50, 5), layout.part_path(source, PROJECT, "LIVE", 2))
    code, report, _ = run_cli("export", str(source), str(ours))
    assert code == 0 and runs_by_id(report)["LIVE"]["status"] == "repaired"
    assert json.loads(layout.run_manifest_path(ours, PROJECT, "LIVE").read_text())["rows"] == 56
    assert run_cli("verify", str(source), str(ours))[0] == 0


# -- item 3: origin identity survives moving an export --------------------------------------------


def test_a_moved_or_copied_export_finds_its_runs_and_earlier_loads_are_not_duplicated(tmp_path):
    source = tmp_path / "neptune"
    _exporter_run(source, "R1", [(0, 10)])
    _exporter_run(source, "R2", [(0, 10)])
    db = tmp_path / "mlflow.db"
    dest = f"mlflow:sqlite:///{db}"
    assert run_cli("copy", str(source), dest)[0] == 0
    moved = tmp_path / "elsewhere" / "neptune-copy"
    shutil.copytree(source, moved)
    code, report, _ = run_cli("copy", str(moved), dest)
    assert code == 0 and report["totals"]["skipped"] == 2, report
    assert {k: len(v) for k, v in _mlflow_runs(db).items()} == {"R1": 1, "R2": 1}
    assert run_cli("verify", str(moved), dest)[0] == 0
    origin = _mlflow_runs(db)["R1"][0].data.tags["trackport.origin.uri"]
    assert origin == "parquet:neptune-exporter" and str(tmp_path) not in origin

    # A trackport export of it keeps that identity, wherever the export goes.
    ours = tmp_path / "ours"
    assert run_cli("export", str(source), str(ours))[0] == 0
    shutil.move(str(ours), str(tmp_path / "ours-moved"))
    code, report, _ = run_cli("load", str(tmp_path / "ours-moved"), dest)
    assert code == 0 and report["totals"]["skipped"] == 2, report

    # Loads made by earlier releases recorded the export's absolute path as the origin: an
    # export those releases wrote carries it in its run manifests.  Such a destination is still
    # found by a copy from the export at that path, and not loaded a second time.
    old = tmp_path / "old-release"
    assert run_cli("export", str(source), str(old))[0] == 0
    for manifest_path in layout.project_data_dir(old, PROJECT).glob("*" + layout.RUN_MANIFEST_SUFFIX):
        manifest = json.loads(manifest_path.read_text())
        manifest["origin"]["uri"] = f"parquet:{source}"
        manifest_path.write_text(json.dumps(manifest))
    legacy_db = tmp_path / "legacy.db"
    legacy = f"mlflow:sqlite:///{legacy_db}"
    assert run_cli("load", str(old), legacy)[0] == 0
    assert _mlflow_runs(legacy_db)["R1"][0].data.tags["trackport.origin.uri"] == f"parquet:{source}"
    code, report, _ = run_cli("copy", str(source), legacy)
    assert code == 0 and report["totals"]["skipped"] == 2, report
    assert {k: len(v) for k, v in _mlflow_runs(legacy_db).items()} == {"R1": 1, "R2": 1}
    code, report, _ = run_cli("verify", str(source), legacy)
    assert code == 0 and report["totals"]["verified"] == 2, report


# -- item 10: no hangs on a named pipe ----------------------------------------------------------------


def _cli_subprocess(*args: str, timeout: float = 120) -> tuple[int, dict]:
    """The CLI in its own process, bounded: a hang fails the test instead of stalling it."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).parent.parent / "src"),
                                                                     os.environ.get("PYTHONPATH", "")]))}
    try:
        done = subprocess.run([sys.executable, "-m", "trackport", *args, "--json", "--no-progress"],
                              capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        pytest.fail(f"trackport {' '.join(args)} hung for {timeout} s")
    return done.returncode, json.loads(done.stdout) if done.stdout.strip().startswith("{") else {}


def test_a_named_pipe_among_the_files_fails_its_run_at_once_instead_of_hanging(tmp_path):
    source = tmp_path / "neptune"
    _exporter_run(source, "PIPE", [(0, 5)], {"PIPE/model.bin": b"x"})
    _exporter_run(source, "PIPE-IN-SET", [(0, 5)], {"PIPE-IN-SET/code/train.py": b"print()"},
                  file_type="file_set", refs=["PIPE-IN-SET/code"])
    _exporter_run(source, "FINE", [(0, 5)], {"FINE/model.bin": b"weights"})
    files = layout.project_files_dir(source, PROJECT)
    (files / "PIPE/model.bin").unlink()
    os.mkfifo(files / "PIPE/model.bin")
    os.mkfifo(files / "PIPE-IN-SET/code/fifo")

    db = tmp_path / "mlflow.db"
    code, report = _cli_subprocess("copy", str(source), f"mlflow:sqlite:///{db}")
    assert code == 1, report
    runs = runs_by_id(report)
    assert "is a named pipe, not a regular file" in runs["PIPE"]["error"], runs["PIPE"]
    assert "'fifo', a named pipe" in runs["PIPE-IN-SET"]["error"], runs["PIPE-IN-SET"]
    assert runs["PIPE"]["status"] == runs["PIPE-IN-SET"]["status"] == "failed"
    assert runs["FINE"]["status"] == "moved"
    code, report = _cli_subprocess("verify", str(source), f"mlflow:sqlite:///{db}", "--run", "FINE")
    assert code == 0, report
    # with --allow-drops the runs move without those files, and say so
    code, report = _cli_subprocess("copy", str(source), f"mlflow:sqlite:///{db}", "--allow-drops")
    assert code == 0, report
    for run_id in ("PIPE", "PIPE-IN-SET"):
        assert runs_by_id(report)[run_id]["drops"] == {"missing_file": 1}, report


# -- item 12: nothing read outside the export root ----------------------------------------------------


def test_a_symlinked_project_folder_reads_nothing_outside_the_export(tmp_path):
    secret = b"root:x:0:0:root:/root:/bin/bash\n"
    outside = tmp_path / "etc"
    outside.mkdir()
    (outside / "passwd").write_bytes(secret)
    source = tmp_path / "neptune"
    _exporter_run(source, "THIEF", [(0, 5)])
    part = layout.part_path(source, PROJECT, "THIEF", 0)
    pq.write_table(concat([pq.read_table(part), rows_table(PROJECT, "THIEF", [
        {"path": "files/passwd", "type": "file", "value": "passwd"}])]), part)
    (source / "files").mkdir()
    layout.project_files_dir(source, PROJECT).symlink_to(outside, target_is_directory=True)
    # and a project whose data folder is another export's, linked in
    other = tmp_path / "other"
    _exporter_run(other, "FOREIGN", [(0, 5)])
    (source / "data" / layout.safe("ws/linked")).symlink_to(layout.project_data_dir(other, PROJECT),
                                                             target_is_directory=True)

    db = tmp_path / "mlflow.db"
    code, report, output = run_cli("copy", str(source), f"mlflow:sqlite:///{db}")
    assert code == 1 and "Traceback" not in output, output
    thief = runs_by_id(report)["THIEF"]
    assert thief["status"] == "failed" and "leads outside the export root" in thief["error"], thief
    assert "files/" + layout.safe(PROJECT) in thief["error"] and "file passwd" in thief["error"]
    (linked,) = [r for r in report["runs"] if r["run_id"] != "THIEF"]
    assert linked["status"] == "failed" and "leads outside the export root" in linked["error"], linked
    # named by its file name only: not even the footer that holds its run id was read
    assert linked["run_id"] == f"?{layout.safe('FOREIGN')}", linked
    for f in (p for p in tmp_path.rglob("*") if p.is_file() and outside not in p.parents):
        assert secret not in f.read_bytes(), f
    code, report, _ = run_cli("copy", str(source), f"mlflow:sqlite:///{db}", "--allow-drops", "--run", "THIEF")
    assert code == 0 and runs_by_id(report)["THIEF"]["drops"] == {"missing_file": 1}
    for f in (p for p in tmp_path.rglob("*") if p.is_file() and outside not in p.parents):
        assert secret not in f.read_bytes(), f
