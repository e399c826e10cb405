"""W&B connector: offline source (`wandb:PATH`), `.wandb` reader, W&B sink (offline), pluto trap.

Real offline runs are written by the real wandb SDK in a child process
(wandb_offline_support.py); the source reads them back; the sink writes real offline runs
that the source reads again.  The MLflow end-to-end test uses the session's real
`mlflow server`.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import threading
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest

import wandb_offline_support as wos
from support import copy_verify_rerun, read_plain_export, run_cli, runs_by_id
from wandb_server import wandb_server  # noqa: F401  (fixture)
from trackport.connectors.wandb import mapping as mp
from trackport.connectors.wandb.datastore import BLOCK_SIZE, LogReader, write_log
from trackport.testing.corpus import build_corpus
from trackport.testing.exporter_layout import write_exporter_export

REPO = Path(__file__).resolve().parent.parent


class _AnyDigest(str):
    """Compares equal to any 32-hex artifact digest (sorts after the runs' ids)."""

    def __eq__(self, other):
        return isinstance(other, str) and len(other) == 32 and all(c in "0123456789abcdef" for c in other)

    __hash__ = str.__hash__


ANY_DIGEST = _AnyDigest("~digest")


@pytest.fixture(scope="module")
def offline_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("wandb-runs")
    wos.make_runs(root)
    return root


def _run_dir(root: Path, run_id: str) -> Path:
    (found,) = sorted((root / "wandb").glob(f"offline-run-*-{run_id}"))
    return found


def _export(src: str, dest: Path, *args: str) -> dict[tuple[str, str], pa.Table]:
    code, report, out = run_cli("export", src, str(dest), *args)
    assert code == 0, out
    return read_plain_export(dest, extensions=True)


def _series(table: pa.Table, path: str) -> list[tuple]:
    rows = table.filter(pc.equal(table.column("attribute_path"), path)).to_pylist()
    out = []
    for r in sorted(rows, key=lambda r: r["step"]):
        value = r["float_value"] if r["attribute_type"] == "float_series" else r["string_value"]
        ms = None if r["timestamp"] is None else int(r["timestamp"].timestamp() * 1000 + 0.5)
        out.append((int(r["step"]), ms, value))
    return out


def _singles(table: pa.Table) -> dict[str, tuple[str, object]]:
    single = table.filter(pc.is_null(table.column("step"))).to_pylist()
    out = {}
    for r in single:
        col = {"int": "int_value", "float": "float_value", "string": "string_value", "bool": "bool_value",
               "datetime": "datetime_value", "string_set": "string_set_value", "file": "file_value"}[r["attribute_type"]]
        out[r["attribute_path"]] = (r["attribute_type"], r[col])
    return out


def _same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


# ---------------------------------------------------------------------------
# the offline source


def test_offline_runs_arrive_with_every_point_step_and_timestamp(offline_root, tmp_path):
    tables = _export(f"wandb:{offline_root}", tmp_path / "export")
    rich = tables[(f"{wos.ENTITY}/{wos.PROJECT}", wos.RICH_ID)]
    sparse = tables[(f"{wos.ENTITY}/{wos.PROJECT}", wos.SPARSE_ID)]

    # every history point, with its _step and its _timestamp (ms)
    expected: dict[str, list] = {}
    for step, values, ts in wos.HISTORY:
        for key, value in values.items():
            expected.setdefault(key, []).append((step, round(ts * 1000), float(value) if key != "text" else value))
    for key, points in expected.items():
        got = _series(rich, key)
        assert len(got) == len(points), key
        for g, e in zip(got, points):
            assert g[:2] == e[:2] and _same(g[2], e[2]), (key, g, e)
    types = dict(zip(rich.column("attribute_path").to_pylist(), rich.column("attribute_type").to_pylist()))
    assert types["text"] == "string_series" and types["lr/ünï"] == "float_series"
    assert _series(sparse, "x") == [(3, round((wos.BASE_S + 3) * 1000), 1.0), (301, round((wos.BASE_S + 301) * 1000), 3.0)]
    assert _series(sparse, "y") == [(300, round((wos.BASE_S + 300) * 1000), 2.0)]
    assert len(_series(rich, mp.RUNTIME_SERIES)) == len(wos.HISTORY) + 1
    # system metrics (stats records) under monitoring/, stepped 0, 1, 2, ... with their times
    cpu = _series(sparse, "monitoring/cpu")
    assert len(cpu) >= 2 and [s for s, _, _ in cpu] == list(range(len(cpu)))
    assert all(ms is not None for _, ms, _ in cpu) and [ms for _, ms, _ in cpu] == sorted(ms for _, ms, _ in cpu)

    # config and summary keep their types; lists and None as declared JSON text
    single = _singles(rich)
    assert single["config/optimizer/lr"] == ("float", 0.001)
    assert single["config/optimizer/nested/deep"] == ("int", 3)
    assert single["config/optimizer/betas"] == ("string", "[0.9,0.999]")
    assert single["config/epochs"] == ("int", 10)
    assert single["config/flag"] == ("bool", True)
    assert single["config/nothing"] == ("string", "null")
    assert single["config/ünï code"] == ("string", "välue")
    assert single["summary/best"] == ("float", 0.75)
    assert single["summary/best_epoch"] == ("int", 7)
    assert single["summary/_step"] == ("int", wos.MEDIA_STEP)
    # run metadata
    assert single["sys/name"] == ("string", "rich run")
    assert single["sys/custom_run_id"] == ("string", wos.RICH_ID)
    assert single["sys/description"] == ("string", "notes ✓")
    assert single["sys/tags"] == ("string_set", ["baseline", "ünï"])
    assert single["sys/group_tags"] == ("string_set", ["grp"])
    assert single["wandb/job_type"] == ("string", "train")
    assert single["wandb/state"] == ("string", "finished") and single["sys/failed"] == ("bool", False)
    assert single["sys/creation_time"][0] == "datetime"
    assert _singles(sparse)["wandb/exit_code"] == ("int", 3)
    assert _singles(sparse)["sys/failed"] == ("bool", True)

    # console lines with their stream
    assert [v for _, _, v in _series(rich, "monitoring/stdout")] == wos.STDOUT_LINES
    assert [v for _, _, v in _series(rich, "monitoring/stderr")][: len(wos.STDERR_LINES)] == wos.STDERR_LINES
    assert all(ms is not None for _, ms, _ in _series(rich, "monitoring/stdout"))

    # media: image and table files, the histogram, saved files
    def at(path):
        return rich.filter(pc.equal(rich.column("attribute_path"), path)).to_pylist()

    (img,) = at("samples/img")
    assert img["attribute_type"] == "file_series" and int(img["step"]) == wos.MEDIA_STEP
    assert img["timestamp"] == datetime.fromtimestamp(wos.BASE_S + 2000, tz=timezone.utc)
    files_root = next(p for p in (tmp_path / "export" / "files").iterdir() if p.name.startswith("acme_vision"))
    assert (files_root / img["file_value"]["path"]).read_bytes().startswith(b"\x89PNG")
    (tab,) = at("tab")
    assert tab["attribute_type"] == "file_series"
    assert json.loads((files_root / tab["file_value"]["path"]).read_text())["columns"] == ["a", "b"]
    (hist,) = at("weights")
    assert hist["histogram_value"] == {"type": "COUNTING", "edges": [0.0, 1.0, 2.5, 4.0], "values": [1.0, 2.0, 3.0]}
    (ckpt,) = at("checkpoints/model.ckpt")
    assert (files_root / ckpt["file_value"]["path"]).read_bytes() == b"checkpoint bytes"
    (saved,) = at("files/notes.txt")
    assert (files_root / saved["file_value"]["path"]).read_text() == "a saved text file"
    assert at("source_code/requirements") and at("wandb/files/output.log")

    # what the source changed on the way is counted in the run's report, under declared kinds
    code, report, out = run_cli("export", f"wandb:{offline_root}", str(tmp_path / "again"))
    assert code == 0, out
    for run_id, run in runs_by_id(report).items():
        kinds = run["transformations"]
        assert set(kinds) - {"step_scaled"} <= set(mp.SOURCE_TRANSFORMATIONS)
        if run_id == wos.RICH_ID:
            assert kinds["value_to_json"] >= 2 and kinds["media_to_file"] == 2
            assert kinds["console_lines"] >= len(wos.STDOUT_LINES) + len(wos.STDERR_LINES)
        elif run_id == wos.SPARSE_ID:
            assert kinds["system_metric_index_step"] >= 1
        else:                           # the wandb.Table's artifact: moved as the SDK staged it
            assert kinds == {} and run["project_id"] == "wandb-artifacts/acme/vision/run-rich0001-tab"


def test_one_run_directory_and_a_folder_holding_wandb_are_sources(offline_root, tmp_path):
    one = _export(f"wandb:{_run_dir(offline_root, wos.SPARSE_ID)}", tmp_path / "one")
    assert list(one) == [(f"{wos.ENTITY}/{wos.PROJECT}", wos.SPARSE_ID)]
    both = _export(f"wandb:{offline_root / 'wandb'}", tmp_path / "both")
    # the two runs, and the artifact the SDK made of the rich run's wandb.Table
    assert sorted(both) == [("acme/vision", wos.RICH_ID), ("acme/vision", wos.SPARSE_ID),
                            ("wandb-artifacts/acme/vision/run-rich0001-tab", ANY_DIGEST)]


def test_a_log_cut_mid_record_is_read_to_the_tear_and_reported(offline_root, tmp_path):
    run_dir = tmp_path / "wandb" / _run_dir(offline_root, wos.SPARSE_ID).name
    shutil.copytree(_run_dir(offline_root, wos.SPARSE_ID), run_dir, symlinks=True)
    (log_file,) = run_dir.glob("*.wandb")
    data = log_file.read_bytes()
    # cut inside the record that holds the last history row (step 301)
    from trackport.connectors.wandb.client import internal_pb2

    pb = internal_pb2()
    for payload in LogReader(log_file):
        record = pb.Record()
        record.ParseFromString(payload)
        if record.WhichOneof("record_type") == "history" and record.history.step.num == 301:
            break
    else:
        raise AssertionError("no history record for step 301")
    cut = data.index(payload) + len(payload) // 2
    log_file.write_bytes(data[:cut])
    reader = LogReader(log_file)
    assert sum(1 for _ in reader) > 0 and reader.tear is not None

    code, report, out = run_cli("export", f"wandb:{tmp_path}", str(tmp_path / "export"))
    assert code == 0, out
    (run,) = report["runs"]
    assert any(str(log_file) in w for w in run["warnings"]), run      # the run's report says so
    assert set(run["transformations"]) - {"step_scaled"} <= set(mp.SOURCE_TRANSFORMATIONS)
    table = read_plain_export(tmp_path / "export")[(f"{wos.ENTITY}/{wos.PROJECT}", wos.SPARSE_ID)]
    single = _singles(table)
    kind, text = single["wandb/transaction_log_tear"]
    assert str(log_file) in text and "tear" in text
    assert single["wandb/state"] == ("string", "crashed")
    assert [s for s, _, _ in _series(table, "x")] == [3]          # step 301 was past the tear
    assert [s for s, _, _ in _series(table, "y")] == [300]


def test_reader_follows_records_across_blocks_and_stops_at_a_bad_checksum(tmp_path):
    payloads = [b"a" * 10, os.urandom(BLOCK_SIZE + 100), b"", os.urandom(BLOCK_SIZE * 3), b"tail"]
    path = tmp_path / "run.wandb"
    write_log(path, payloads)
    reader = LogReader(path)
    assert list(reader) == payloads and reader.tear is None

    data = bytearray(path.read_bytes())
    data[-2] ^= 0xFF                     # corrupt the last payload
    path.write_bytes(bytes(data))
    reader = LogReader(path)
    assert list(reader) == payloads[:-1]
    assert reader.tear is not None and reader.tear.reason == "checksum mismatch"


def test_a_dangling_run_save_symlink_fails_the_run_naming_the_file(offline_root, tmp_path):
    root = tmp_path / "runs"
    run_dir = root / "wandb" / _run_dir(offline_root, wos.RICH_ID).name
    shutil.copytree(_run_dir(offline_root, wos.RICH_ID), run_dir, symlinks=True)
    link = run_dir / "files" / "model.ckpt"
    assert link.is_symlink()
    link.unlink()
    link.symlink_to(tmp_path / "gone" / "model.ckpt")

    code, report, out = run_cli("export", f"wandb:{root}", str(tmp_path / "export"))
    assert code == 1
    run = runs_by_id(report)[wos.RICH_ID]
    assert run["status"] == "failed" and "model.ckpt" in run["error"] and "dangling symlink" in run["error"]
    assert report["totals"]["failed"] == 1      # its table's artifact still moves

    code, report, out = run_cli("export", f"wandb:{root}", str(tmp_path / "export2"), "--allow-drops")
    assert code == 0, out
    assert runs_by_id(report)[wos.RICH_ID]["drops"] == {"missing_file": 1}


def test_offline_runs_to_mlflow_verify_clean_and_a_rerun_adds_nothing(offline_root, tmp_path, mlflow_server):
    dest = f"mlflow+{mlflow_server}"
    args = ["--mlflow-experiment", f"{tmp_path.name}-{{project}}"]
    code, report, out = run_cli("copy", f"wandb:{offline_root}", dest, *args)
    assert code == 0, out
    assert report["totals"]["moved"] == 3           # two runs and the artifact of a wandb.Table
    rich = runs_by_id(report)[wos.RICH_ID]
    assert rich["points"] > sum(len(v) for _, v, _ in wos.HISTORY)

    code, report, out = run_cli("verify", f"wandb:{offline_root}", dest, *args)
    assert code == 0, out
    assert report["totals"]["verified"] == 3

    code, report, out = run_cli("copy", f"wandb:{offline_root}", dest, *args)
    assert code == 0, out
    assert report["totals"]["skipped"] == 3 and report["totals"]["points"] == 0


# -- artifacts the runs logged (docs/wandb.md, "Artifacts") -----------------------------
@pytest.fixture(scope="module")
def artifact_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("wandb-artifacts")
    return root, wos.make_artifact_run(root)


def test_artifacts_of_offline_runs_move_as_versions_with_their_bytes(artifact_root, tmp_path, monkeypatch):
    from trackport.connectors.wandb import artifacts as am

    root, staging = artifact_root
    before = sorted((p.relative_to(staging).as_posix(), p.read_bytes()) for p in staging.rglob("*") if p.is_file())
    runs = _export(f"wandb:{root}", tmp_path / "out")
    producer = f"{wos.ENTITY}/{wos.PROJECT}"
    versions = {project: (run_id, table) for (project, run_id), table in runs.items() if am.is_artifact_project(project)}
    assert sorted(versions) == sorted(am.project_of(wos.ENTITY, wos.PROJECT, n) for n in wos.ARTIFACTS)
    assert (producer, wos.ARTIFACT_RUN_ID) in runs
    for name, (kind, files, aliases, description, metadata) in wos.ARTIFACTS.items():
        run_id, table = versions[am.project_of(wos.ENTITY, wos.PROJECT, name)]
        single = _singles(table)
        assert single[am.DIGEST][1] == run_id and len(run_id) == 32
        assert single[am.NAME][1] == name and single[am.TYPE][1] == kind
        assert set(single[am.ALIASES][1]) == {*aliases, "latest"}
        assert single[am.PRODUCER_PROJECT][1] == producer and single[am.PRODUCER_RUN][1] == wos.ARTIFACT_RUN_ID
        assert (single.get(am.DESCRIPTION) or (None, ""))[1] == description
        assert json.loads(single[am.METADATA][1]) == metadata if metadata else am.METADATA not in single
        manifest = json.loads(single[am.MANIFEST][1])
        assert [(e["path"], e["size"]) for e in manifest] == sorted((p, len(b)) for p, b in files.items())
        file_rows = table.filter(pc.equal(table.column("attribute_type"), "file")).to_pylist()
        assert sorted(r["attribute_path"] for r in file_rows) == sorted(am.FILES + p for p in files)
        for r in file_rows:        # byte-identical, under the artifact's own paths
            (got,) = (tmp_path / "out" / "files").glob(f"*/{r['file_value']['path']}")
            assert got.read_bytes() == files[r["attribute_path"][len(am.FILES):]]
    # the source is read-only: the staged files are untouched
    assert sorted((p.relative_to(staging).as_posix(), p.read_bytes()) for p in staging.rglob("*") if p.is_file()) == before

    # into MLflow: verify clean, a rerun moves nothing
    db = f"mlflow:sqlite:///{tmp_path / 'm.db'}"
    copy_verify_rerun(f"wandb:{root}", db, runs=3)
    # into W&B (offline): logged again as artifacts beside the runs, with the same digest
    # (same names and bytes), type, aliases and metadata; verify clean; a rerun moves nothing
    monkeypatch.setenv("WANDB_DATA_DIR", str(tmp_path / "sink-data"))    # where the SDK stages them
    args = ("wandb://ent/proj", "--wandb-mode", "offline", "--wandb-dir", str(tmp_path / "wb"))
    copy_verify_rerun(f"wandb:{root}", *args, runs=3)
    from trackport.connectors.wandb.client import internal_pb2
    from trackport.connectors.wandb.offline_artifacts import scan

    logged = [loc.artifact for log in sorted((tmp_path / "wb" / "wandb").glob("offline-run-*/*.wandb"))
              for loc in scan(internal_pb2(), log, "-", "-")]
    assert sorted(a.name for a in logged) == sorted(wos.ARTIFACTS)
    for art in logged:
        kind, files, aliases, description, metadata = wos.ARTIFACTS[art.name]
        assert (art.entity, art.project, art.type) == ("ent", "proj", kind)
        assert art.digest == versions[am.project_of(wos.ENTITY, wos.PROJECT, art.name)][0]
        assert set(art.aliases) == {*aliases, "latest"} and art.description == description
        assert (json.loads(art.metadata) if art.metadata else {}) == metadata
        assert {e.path: Path(e.local_path).read_bytes() for e in art.entries} == files
    # W&B -> MLflow -> W&B: the same artifacts again (digest, aliases, bytes)
    code, report, out = run_cli("copy", db, "wandb://ent/proj", "--wandb-mode", "offline",
                                "--wandb-dir", str(tmp_path / "wb2"))
    assert code == 0 and report["totals"]["moved"] == 3, out
    again = {loc.artifact.name: loc.artifact for log in sorted((tmp_path / "wb2" / "wandb").glob("offline-run-*/*.wandb"))
             for loc in scan(internal_pb2(), log, "-", "-")}
    assert {a.name: (a.digest, sorted(a.aliases)) for a in logged} == {
        n: (a.digest, sorted(a.aliases)) for n, a in again.items()}
    assert all(Path(e.local_path).read_bytes() == wos.ARTIFACTS[n][1][e.path] for n, a in again.items() for e in a.entries)
    # the destination read as a source lists each version once (the run carrying it is it)
    code, report, out = run_cli("plan", f"wandb:{tmp_path / 'wb'}", str(tmp_path / "again"))
    assert code == 0 and sorted(r["project_id"] for r in report["runs"]) == sorted(
        [f"{wos.ENTITY}/{wos.PROJECT}"] + [am.project_of(wos.ENTITY, wos.PROJECT, n) for n in wos.ARTIFACTS])

    # one artifact alone, selected by its project
    code, report, out = run_cli("plan", f"wandb:{root}", str(tmp_path / "one"),
                                "--project", am.project_of(wos.ENTITY, wos.PROJECT, "resnet"))
    assert code == 0 and [r["project_id"] for r in report["runs"]] == [am.project_of(wos.ENTITY, wos.PROJECT, "resnet")]


def test_classes_artifacts_selects_the_versions_and_plan_shows_their_sizes_first(artifact_root, tmp_path):
    from click.testing import CliRunner

    from trackport.cli import cli
    from trackport.connectors.wandb import artifacts as am

    root, _ = artifact_root
    wanted = sorted(am.project_of(wos.ENTITY, wos.PROJECT, n) for n in wos.ARTIFACTS)
    size = sum(len(b) for _, files, *_ in wos.ARTIFACTS.values() for b in files.values())
    # `artifacts` alone: the versions, whole (their params and files too), and no run
    code, report, out = run_cli("plan", f"wandb:{root}", str(tmp_path / "a"), "--classes", "artifacts")
    assert code == 0, out
    assert sorted(r["project_id"] for r in report["runs"]) == wanted
    assert report["totals"]["bytes"] == size and all(r["params"] > 0 for r in report["runs"])
    # the run classes alone: the runs, no version
    code, report, out = run_cli("plan", f"wandb:{root}", str(tmp_path / "b"), "--classes", "params,metrics,series,files")
    assert code == 0, out
    assert [r["project_id"] for r in report["runs"]] == [f"{wos.ENTITY}/{wos.PROJECT}"]
    # copied with `artifacts` alone into MLflow, the versions verify whole
    db = f"mlflow:sqlite:///{tmp_path / 'm.db'}"
    code, report, out = run_cli("copy", f"wandb:{root}", db, "--classes", "artifacts")
    assert code == 0 and report["totals"]["moved"] == len(wanted) and report["totals"]["bytes"] == size, out
    code, report, out = run_cli("verify", f"wandb:{root}", db, "--classes", "artifacts")
    assert code == 0 and report["totals"]["verified"] == len(wanted), out
    # the plan's text leads with what the versions weigh, before the table of runs
    result = CliRunner().invoke(cli, ["plan", f"wandb:{root}", str(tmp_path / "c"), "--no-progress"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    sizes = next(i for i, line in enumerate(lines) if line.startswith("artifact and model versions: "))
    assert lines[sizes].startswith(f"artifact and model versions: {len(wanted)}, "
                                   f"{sum(len(f) for _, f, *_ in wos.ARTIFACTS.values())} files, {size / 1000:,.1f} KB")
    assert sizes < next(i for i, line in enumerate(lines) if "project" in line and "run" in line)


def test_a_manifest_the_sdk_wrote_to_a_file_is_read_from_it(artifact_root, tmp_path):
    """Over 100,000 entries, the SDK writes the manifest to a gzipped JSON-lines file and
    records only its path (wandb/sdk/interface/interface.py, `_make_artifact_manifest`)."""
    import gzip

    from trackport.connectors.wandb import artifacts as am
    from trackport.connectors.wandb.client import internal_pb2

    src, _ = artifact_root
    pb = internal_pb2()
    (log,) = (src / "wandb").glob("offline-run-*/*.wandb")
    run_dir = tmp_path / "wandb" / log.parent.name
    run_dir.mkdir(parents=True)
    payloads = []
    for payload in LogReader(log):
        record = pb.Record()
        record.ParseFromString(payload)
        if record.WhichOneof("record_type") == "artifact" and record.artifact.name == "resnet":
            manifest = record.artifact.manifest
            lines = [json.dumps({"path": c.path, "digest": c.digest, "size": c.size, "local_path": c.local_path})
                     for c in manifest.contents]
            listed = tmp_path / "manifest_contents.jl.gz"
            with gzip.open(listed, "wt") as fh:
                fh.write("\n".join(lines) + "\n")
            del manifest.contents[:]
            manifest.manifest_file_path = str(listed)
            payload = record.SerializeToString()
        payloads.append(payload)
    write_log(run_dir / log.name, payloads)
    runs = _export(f"wandb:{tmp_path}", tmp_path / "out")
    (table,) = [t for (p, _), t in runs.items() if p == am.project_of(wos.ENTITY, wos.PROJECT, "resnet")]
    files = {r["attribute_path"]: r["file_value"]["path"] for r in table.to_pylist() if r["attribute_type"] == "file"}
    assert sorted(files) == sorted(am.FILES + p for p in wos.ARTIFACTS["resnet"][1])
    for path, rel in files.items():
        (got,) = (tmp_path / "out" / "files").glob(f"*/{rel}")
        assert got.read_bytes() == wos.ARTIFACTS["resnet"][1][path[len(am.FILES):]]

    (tmp_path / "manifest_contents.jl.gz").unlink()       # gone (deleted after `wandb sync`)
    code, report, out = run_cli("export", f"wandb:{tmp_path}", str(tmp_path / "again"))
    assert code == 1, out
    (failed,) = [r for r in report["runs"] if r["status"] == "failed"]
    assert "manifest file cannot be read" in failed["error"] and "manifest_contents" in failed["error"], failed


def test_an_artifact_of_a_type_wandb_reserves_is_written_to_wandb_as_a_run(offline_root, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_DATA_DIR", str(tmp_path / "sink-data"))
    args = ("wandb://ent/proj", "--wandb-mode", "offline", "--wandb-dir", str(tmp_path / "wb"))
    code, report, out = run_cli("copy", f"wandb:{offline_root}", *args)
    assert code == 0, out
    (table,) = [r for r in report["runs"] if r["project_id"].startswith("wandb-artifacts/")]
    # the run_table artifact the SDK made of a wandb.Table: wandb.Artifact refuses that type
    assert table["status"] == "moved" and table["transformations"] == {"artifact_kept_as_run": 1}, table
    assert run_cli("verify", f"wandb:{offline_root}", *args)[0] == 0


def test_an_artifact_file_whose_staged_copy_is_gone_is_refused_or_dropped(artifact_root, tmp_path):
    from trackport.connectors.wandb import artifacts as am

    src, staging = artifact_root
    root = tmp_path / "src"
    shutil.copytree(src, root)
    # the copied run still names the original staging folder: point it at a copy of that folder
    # whose weights file is gone, as after `wandb sync` (the SDK deletes what it uploaded)
    gone = wos.ARTIFACTS["resnet"][1]["weights.bin"]
    (staged,) = [p for p in staging.rglob("*") if p.is_file() and p.read_bytes() == gone]
    moved = staged.with_name(staged.name + ".away")
    staged.rename(moved)
    try:
        code, report, out = run_cli("export", f"wandb:{root}", str(tmp_path / "refused"))
        assert code == 1, out
        failed = [r for r in report["runs"] if r["status"] == "failed"]
        assert [r["project_id"] for r in failed] == [am.project_of(wos.ENTITY, wos.PROJECT, "resnet")]
        assert "file missing" in failed[0]["error"] and "--allow-drops" in failed[0]["error"]
        assert any("wandb sync" in w for w in failed[0]["warnings"]), failed[0]
        assert report["totals"]["moved"] == 2           # the run and the other artifact
        code, report, out = run_cli("export", f"wandb:{root}", str(tmp_path / "out"), "--allow-drops")
        assert code == 0, out
        (resnet,) = [r for r in report["runs"] if r["project_id"] == am.project_of(wos.ENTITY, wos.PROJECT, "resnet")]
        assert resnet["status"] == "moved" and resnet["drops"] == {"missing_file": 1}
    finally:
        moved.rename(staged)


def _series_rows(table: pa.Table) -> pa.Table:
    return table.filter(pc.match_substring(table.column("attribute_type"), "_series"))


def test_stats_of_old_and_new_sdks_keep_the_names_wandb_gives_them(tmp_path):
    """wandb 0.10-0.12 stats records hold `network: {sent, recv}` (W&B's server flattens it to
    system.network.sent / .recv); a wandb 0.21 key `system.powerWatts` is
    `system.system.powerWatts` at W&B, so `monitoring/system.powerWatts` here.  Every point has a
    step and counts as a point in plan and export."""
    wos.write_proto_run(tmp_path / "runs")
    code, report, out = run_cli("export", f"wandb:{tmp_path / 'runs'}", str(tmp_path / "export"))
    assert code == 0, out
    (run,) = report["runs"]
    assert run["drops"] == {}
    assert run["transformations"]["system_metric_nested_key"] == len(wos.STATS)
    table = read_plain_export(tmp_path / "export")[(f"{wos.ENTITY}/{wos.PROJECT}", wos.PROTO_ID)]
    monitoring = {p for p in table.column("attribute_path").to_pylist() if p.startswith("monitoring/")}
    assert monitoring == set(wos.STATS_PATHS)
    for path, key in wos.STATS_PATHS.items():
        want = []
        for step, (ts, items) in enumerate(wos.STATS):
            value = items[key[0]][key[1]] if isinstance(key, tuple) else items[key]
            want.append((step, round(ts * 1000), float(value)))
        assert _series(table, path) == want, path

    series = _series_rows(table)
    assert series.column("step").null_count == 0
    assert run["points"] == series.num_rows == len(wos.PROTO_HISTORY) + len(wos.STATS) * len(wos.STATS_PATHS)
    code, plan, out = run_cli("plan", f"wandb:{tmp_path / 'runs'}", str(tmp_path / "planned"))
    assert code == 0, out
    assert plan["runs"][0]["points"] == run["points"]


def test_a_history_row_without_a_step_is_a_declared_drop(tmp_path):
    """Every W&B history row carries `_step`; one that has none cannot be placed in a series:
    it is counted as a drop (exit 1 unless --allow-drops), as the API source does, never put
    at step 0."""
    wos.write_proto_run(tmp_path / "runs", stats=[], stepless=[{"loss": 7.0, "other": 1.0}])
    code, report, out = run_cli("export", f"wandb:{tmp_path / 'runs'}", str(tmp_path / "export"))
    assert code == 1, out
    (run,) = report["runs"]
    assert run["drops"] == {"history_row_without_step": 1}
    code, report, out = run_cli("export", f"wandb:{tmp_path / 'runs'}", str(tmp_path / "export2"),
                                "--allow-drops")
    assert code == 0, out
    table = read_plain_export(tmp_path / "export2")[(f"{wos.ENTITY}/{wos.PROJECT}", wos.PROTO_ID)]
    assert _series(table, "loss") == [(s, round(ts * 1000), v["loss"]) for s, v, ts in wos.PROTO_HISTORY]
    assert _series(table, "other") == []
    assert _series_rows(table).column("step").null_count == 0


@pytest.fixture(scope="module")
def resumed_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("wandb-resumed")
    wos.make_resumed_runs(root)
    return root


def test_folders_of_one_run_id_are_merged_in_time_order(resumed_root, tmp_path):
    """A run resumed offline and a run a sweep agent started twice leave two folders of one
    run id (real SDK).  They are one run, as at W&B: history once per step (the earlier
    folder's point kept at a step logged again, a declared drop), the later config, summary
    and files winning, the merge in the run's report."""
    folders = {run_id: sorted((resumed_root / "wandb").glob(f"offline-run-*-{run_id}"))
               for run_id in (wos.RESUMED_ID, wos.STUB_ID)}
    assert all(len(dirs) == 2 for dirs in folders.values())
    src = f"wandb:{resumed_root}"
    code, report, out = run_cli("export", src, str(tmp_path / "strict"))
    assert code == 1, out                                  # the repeated step is a drop
    by_id = runs_by_id(report)
    assert set(by_id) == {wos.RESUMED_ID, wos.STUB_ID}
    resumed, stub = by_id[wos.RESUMED_ID], by_id[wos.STUB_ID]
    # a drop the user did not allow leaves that run unwritten; the other run moves
    assert resumed["status"] == "failed" and "resumed_step_repeated 2" in resumed["error"], resumed
    assert stub["status"] == "moved" and stub["drops"] == {}

    code, report, out = run_cli("export", src, str(tmp_path / "export"), "--allow-drops")
    assert code == 0, out
    by_id = runs_by_id(report)
    assert all(r["status"] == "moved" for r in by_id.values())
    assert by_id[wos.RESUMED_ID]["drops"] == {"resumed_step_repeated": 2}      # loss and _runtime at step 2
    for run_id, run in by_id.items():
        assert run["transformations"]["resumed_runs_merged"] == 1
        assert run["details"]["source"]["merged_run_dirs"] == [d.name for d in folders[run_id]]
    tables = _export(src, tmp_path / "export2", "--allow-drops")
    table = tables[(f"{wos.ENTITY}/{wos.PROJECT}", wos.RESUMED_ID)]
    (first_config, first, _, _), (later_config, later, _, _) = wos.RESUMED_FOLDERS
    want = {}
    for rows in (later, first):              # the earlier folder's point wins at a repeated step
        for step, values, ts in rows:
            if "loss" in values:
                want[step] = (step, round(ts * 1000), values["loss"])
    assert _series(table, "loss") == sorted(want.values())
    assert [s for s, _, _ in _series(table, mp.RUNTIME_SERIES)] == [0, 1, 2, 3, 4]
    assert _series(table, "acc") == [(3, round((wos.BASE_S + 51) * 1000), 0.5)]
    single = _singles(table)
    assert single["config/lr"] == ("float", later_config["lr"])          # the later config wins
    assert single["config/epochs"] == ("int", first_config["epochs"])    # ... over what it did not set
    assert single["summary/best"] == ("float", 0.5)
    assert single["wandb/state"] == ("string", "finished") and single["wandb/exit_code"] == ("int", 0)
    assert json.loads(single["wandb/offline_run_dirs"][1]) == [d.name for d in folders[wos.RESUMED_ID]]
    # each run file once, from the later folder
    files = [r for r in table.to_pylist() if r["attribute_type"] == "file"]
    assert len({r["attribute_path"] for r in files}) == len(files)
    assert all(r["file_value"]["path"].startswith(folders[wos.RESUMED_ID][1].name) for r in files)

    stub = tables[(f"{wos.ENTITY}/{wos.PROJECT}", wos.STUB_ID)]
    (stub_config, _, _, _), (stub_later, rows, _, _) = wos.STUB_FOLDERS
    assert _series(stub, "m") == [(s, round(ts * 1000), v["m"]) for s, v, ts in rows]
    assert _singles(stub)["config/a"] == ("int", 2) and _singles(stub)["config/only_first"] == ("string", "x")

    # one folder named alone is that folder only
    one = _export(f"wandb:{folders[wos.STUB_ID][1]}", tmp_path / "one")
    assert [s for s, _, _ in _series(one[(f"{wos.ENTITY}/{wos.PROJECT}", wos.STUB_ID)], "m")] == [0, 1]


def test_a_run_that_grew_is_copied_again_once_and_an_unchanged_one_is_skipped(resumed_root, tmp_path):
    """W&B offline -> W&B offline: a run resumed offline (a second folder of its id, real SDK)
    after the first copy has a new run_version; the copy rewrites it (one W&B run, every point
    once), and a copy with nothing changed skips it."""
    src = tmp_path / "src" / "wandb"
    src.mkdir(parents=True)
    for run_id in (wos.RESUMED_ID, wos.STUB_ID):
        shutil.copytree(sorted((resumed_root / "wandb").glob(f"offline-run-*-{run_id}"))[0],
                        src / sorted((resumed_root / "wandb").glob(f"offline-run-*-{run_id}"))[0].name)
    dest = ["wandb://team/proj", "--wandb-mode", "offline", "--wandb-dir", str(tmp_path / "wb"), "--allow-drops"]
    code, report, out = run_cli("copy", f"wandb:{src.parent}", *dest)
    assert code == 0 and report["totals"]["moved"] == 2, out
    assert _series(_export(f"wandb:{tmp_path / 'wb'}", tmp_path / "e1")[
        (f"{wos.ENTITY}/{wos.PROJECT}", wos.RESUMED_ID)], "loss")[-1][0] == 2
    later = sorted((resumed_root / "wandb").glob(f"offline-run-*-{wos.RESUMED_ID}"))[1]
    shutil.copytree(later, src / later.name)                  # the run grew: resumed, steps 2..4
    code, report, out = run_cli("copy", f"wandb:{src.parent}", *dest)
    assert code == 0, out
    by_id = runs_by_id(report)
    assert by_id[wos.RESUMED_ID]["status"] == "repaired" and by_id[wos.STUB_ID]["status"] == "skipped", out
    assert by_id[wos.RESUMED_ID]["details"]["source_changed"] is True
    back = _export(f"wandb:{tmp_path / 'wb'}", tmp_path / "e2")[(f"{wos.ENTITY}/{wos.PROJECT}", wos.RESUMED_ID)]
    assert [s for s, _, _ in _series(back, "loss")] == [0, 1, 2, 3, 4]      # each point once
    assert [s for s, _, _ in _series(back, "acc")] == [3]
    assert len(list((tmp_path / "wb" / "wandb").glob(f"offline-run-*-*"))) == 2   # no second run
    code, report, out = run_cli("copy", f"wandb:{src.parent}", *dest)
    assert code == 0 and report["totals"]["skipped"] == 2, out


def test_a_grown_run_gets_only_its_new_steps_online(resumed_root, tmp_path, wandb_server):
    """W&B offline -> W&B online (stand-in server): the completion mark records the source's
    run_version, last step and point count; once the source run grew (resumed offline, real
    SDK), the next copy resumes the W&B run and logs only the steps after its last one: one
    run, every step once, nothing sent again; unchanged runs are skipped."""
    src = tmp_path / "src" / "wandb"
    src.mkdir(parents=True)
    folders = {run_id: sorted((resumed_root / "wandb").glob(f"offline-run-*-{run_id}"))
               for run_id in (wos.RESUMED_ID, wos.STUB_ID)}
    for dirs in folders.values():
        shutil.copytree(dirs[0], src / dirs[0].name)
    dest = ["wandb://entity/grow", "--wandb-dir", str(tmp_path / "wd"), "--allow-drops"]
    code, report, out = run_cli("copy", f"wandb:{src.parent}", *dest)
    assert code == 0 and report["totals"]["moved"] == 2, out
    (run,) = [r for r in wandb_server.entities["entity"]["grow"]
              if mp.origin_from_config(r.config)[1] == wos.RESUMED_ID]
    assert [row["_step"] for row in run.history] == [0, 1, 2]
    sent = run.history_lines_received
    shutil.copytree(folders[wos.RESUMED_ID][1], src / folders[wos.RESUMED_ID][1].name)   # it grew
    code, report, out = run_cli("copy", f"wandb:{src.parent}", *dest)
    assert code == 0, out
    by_id = runs_by_id(report)
    assert by_id[wos.RESUMED_ID]["status"] == "repaired" and by_id[wos.STUB_ID]["status"] == "skipped", out
    assert len(wandb_server.entities["entity"]["grow"]) == 2                       # no second run
    assert [row["_step"] for row in run.history] == [0, 1, 2, 3, 4]                # each step once
    assert [row.get("loss") for row in run.history] == [3.0, 2.0, 1.5, 1.0, 0.5]
    assert run.history_lines_received == sent + 2                                   # only steps 3, 4
    assert mp.is_complete(run.config) and run.config[mp.TRACKPORT_KEY]["last_step"] == 4
    code, report, out = run_cli("copy", f"wandb:{src.parent}", *dest)
    assert code == 0 and report["totals"]["skipped"] == 2, out
    code, report, out = run_cli("verify", f"wandb:{src.parent}", *dest)
    assert code == 0 and report["totals"]["verified"] == 2, out


# ---------------------------------------------------------------------------
# the sink (offline mode)


def _small_corpus(tmp_path: Path):
    corpus = [r for r in build_corpus(big=False) if r.case in ("scalars", "nan_inf", "steps", "files", "fork_child")]
    src = tmp_path / "src"
    write_exporter_export(src, corpus, part_rows=7)     # many small parts: series arrive in pieces
    return corpus, src


def test_sink_merges_steps_across_batches_and_reruns_skip_or_repair(tmp_path):
    corpus, src = _small_corpus(tmp_path)
    wb = tmp_path / "wb"
    args = ["--wandb-mode", "offline", "--wandb-dir", str(wb)]
    code, report, out = run_cli("copy", str(src), "wandb://team/proj", *args)
    assert code == 0, out
    assert report["totals"]["moved"] == len(corpus)
    assert set(report["totals"]["transformations"]) <= set(mp.SINK_TRANSFORMATIONS) | {"step_scaled"}

    # one W&B history row per step, steps increasing, every series point in it
    steps_run = next(r for r in corpus if r.case == "steps")
    from trackport.core.registry import open_source

    from trackport.core.model import Selection

    source = open_source(str(src), {})
    ref = next(r for r in source.list_runs(Selection()) if r.run_id == steps_run.run_id)
    run_id = mp.dest_run_id(source.origin(ref).uri, steps_run.project_id, steps_run.run_id)
    (run_dir,) = (wb / "wandb").glob(f"offline-run-*-{run_id}")
    from trackport.connectors.wandb.client import internal_pb2

    pb = internal_pb2()
    history_steps = []
    for payload in LogReader(next(run_dir.glob("*.wandb"))):
        record = pb.Record()
        record.ParseFromString(payload)
        if record.WhichOneof("record_type") == "history":
            history_steps.append(record.history.step.num)
    assert history_steps == sorted(set(history_steps))
    stepped = steps_run.table.filter(pc.is_valid(steps_run.table.column("step")))
    assert len(history_steps) == len(set(stepped.column("step").to_pylist()))

    back = _export(f"wandb:{wb}", tmp_path / "back")
    for run in corpus:
        got = back[(run.project_id, run.run_id)]
        assert got.num_rows == run.table.num_rows, run.case

    # a rerun skips; a run whose completion mark is missing is written again, once
    code, report, out = run_cli("copy", str(src), "wandb://team/proj", *args)
    assert code == 0 and report["totals"]["skipped"] == len(corpus), out
    log_file = next(run_dir.glob("*.wandb"))
    data = log_file.read_bytes()
    log_file.write_bytes(data[: data.rindex(b'"complete":true') - 40])   # torn before the mark
    code, report, out = run_cli("copy", str(src), "wandb://team/proj", *args)
    assert code == 0, out
    assert report["totals"]["repaired"] == 1 and report["totals"]["skipped"] == len(corpus) - 1
    assert len(list((wb / "wandb").glob(f"offline-run-*-{run_id}"))) == 1
    code, report, out = run_cli("verify", str(src), "wandb://team/proj", *args)
    assert code == 0 and report["totals"]["verified"] == len(corpus), out


# ---------------------------------------------------------------------------
# the pluto-ml trap (docs/wandb.md)


class _Recorder(BaseHTTPRequestHandler):
    hits: list[str] = []

    def _any(self):
        type(self).hits.append(f"{self.command} {self.path}")
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b"{}")

    do_GET = do_POST = do_PUT = do_PATCH = _any

    def log_message(self, *args):
        pass


@pytest.fixture
def pluto_env(tmp_path):
    _Recorder.hits = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "PLUTO_"))}
    env.update({"PLUTO_API_KEY": "test-key-not-real", "PLUTO_URL_APP": url, "PLUTO_URL_API": url,
                "PLUTO_URL_INGEST": url, "PLUTO_URL_PY": url, "PLUTO_PROJECT": "leak",
                "HOME": str(tmp_path / "home"), "WANDB_SILENT": "true",
                "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO / "tests")])})
    yield env
    server.shutdown()
    server.server_close()


_CHECK = """
import sys, json
{setup}
from trackport.connectors.wandb.client import import_wandb
wandb = import_wandb()
from wandb.sdk import wandb_init
print(json.dumps({{"original": wandb.init is wandb_init.init,
                  "finder": any(type(f).__name__ == "_PlutoWandbFinder" for f in sys.meta_path)}}))
"""


def _python(env, code: str) -> dict:
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_pluto_hook_is_neutralised_and_a_wandb_copy_sends_nothing_to_pluto(pluto_env, tmp_path):
    # the trap is real: a plain `import wandb` with Pluto credentials gets a patched wandb.init
    plain = _python(pluto_env, "import json, wandb\nfrom wandb.sdk import wandb_init\n"
                               "print(json.dumps({'original': wandb.init is wandb_init.init}))")
    assert plain == {"original": False}
    # our client removes the hook before importing wandb ...
    assert _python(pluto_env, _CHECK.format(setup="")) == {"original": True, "finder": False}
    # ... and restores wandb if something imported (and patched) it first
    assert _python(pluto_env, _CHECK.format(setup="import wandb")) == {"original": True, "finder": False}

    # a real copy into W&B (offline) in a fresh process with Pluto credentials: nothing reaches Pluto
    corpus = [r for r in build_corpus(big=False) if r.case in ("scalars", "string_series")]
    src = tmp_path / "src"
    write_exporter_export(src, corpus, part_rows=1000)
    wb = tmp_path / "wb"
    out = subprocess.run([sys.executable, "-m", "trackport", "copy", str(src), "wandb://team/proj",
                          "--wandb-mode", "offline", "--wandb-dir", str(wb), "--json", "--no-progress"],
                         env=pluto_env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["totals"]["moved"] == len(corpus)
    assert len(list((wb / "wandb").glob("offline-run-*"))) == len(corpus)
    assert _Recorder.hits == []


def test_online_find_run_only_reads_the_server(tmp_path, monkeypatch):
    """Online mode's find_run asks the real `wandb.Api` (at a local server of the API helper's)."""
    from trackport.core.model import Origin
    from trackport.core.registry import open_sink
    from wandb_server import FakeRun, WandbServer

    done = Origin("parquet:/exports/a", "team/p", "run-1")
    partial = Origin("parquet:/exports/a", "team/p", "run-2")
    absent = Origin("parquet:/exports/a", "team/p", "run-3")

    def fake(origin, complete):
        return FakeRun(id=mp.dest_run_id(origin.uri, origin.project_id, origin.run_id), display_name="x",
                       config={mp.TRACKPORT_KEY: {"origin": {"uri": origin.uri, "project_id": origin.project_id,
                                                             "run_id": origin.run_id}, "complete": complete}})

    key = "tp-test-wandb-key-0123456789abcdef0123456789"
    server = WandbServer(key, {"acme": {"dest": [fake(done, True), fake(partial, False)]}}).start()
    monkeypatch.setenv("WANDB_BASE_URL", server.url)
    monkeypatch.setenv("WANDB_API_KEY", key)
    try:
        sink = open_sink("wandb://acme/dest", {"wandb_mode": "online"})
        found = sink.find_run(done)
        assert found is not None and found.complete and found.id == fake(done, True).id
        found = sink.find_run(partial)
        assert found is not None and not found.complete
        assert sink.find_run(absent) is None
        operations = server.operations()
        assert "Run" in operations
        assert not any(op.startswith(("Upsert", "Create", "Delete", "Update")) for op in operations), operations
    finally:
        server.stop()


# ---------------------------------------------------------------------------
# the pure mapping, with payloads as W&B writes them


def test_mapping_of_values_keys_and_files():
    hits: dict[str, int] = {}
    rows = mp.config_rows(mp.unwrap_api_config({"opt": {"value": {"lr": 0.1, "n": 2**70}, "desc": None},
                                                "_wandb": {"value": {"cli_version": "0.31.0"}}}), hits)
    assert rows == [mp.Row("config/opt/lr", "float", 0.1), mp.Row("config/opt/n", "string", str(2**70)),
                    mp.Row("wandb/config/_wandb/cli_version", "string", "0.31.0")]
    assert hits == {"int_to_string": 1}

    hits = {}
    packed = {"_type": "histogram", "values": [1, 2], "packedBins": {"min": 0.0, "size": 0.5, "count": 2}}
    assert mp.history_points("h", packed, hits) == [
        mp.HistoryPoint("h", "histogram_series", {"type": "COUNTING", "edges": [0.0, 0.5, 1.0], "values": [1.0, 2.0]})]
    image = {"_type": "image-file", "path": "media/images/a_1_x.png", "width": 2}
    points = mp.history_points("img", image, hits)
    assert points[0] == mp.HistoryPoint("img", "file_series", "media/images/a_1_x.png")
    assert points[1].path == "wandb/media/img" and json.loads(points[1].value) == image
    assert mp.history_points("n", {"a": {"b": True}}, hits) == [mp.HistoryPoint("n.a.b", "float_series", 1.0)]
    assert mp.history_points("_runtime", 1.5, hits) == [mp.HistoryPoint(mp.RUNTIME_SERIES, "float_series", 1.5)]
    assert mp.history_points("x", None, hits) == []
    assert mp.history_points("l", [1, "a"], hits) == [mp.HistoryPoint("l", "string_series", '[1,"a"]')]
    assert hits == {"media_to_file": 1, "history_nested_key": 2, "bool_to_float": 1,
                    "history_null_skipped": 1, "history_json_value": 1}

    assert mp.system_metric_path("system.gpu.0.temp") == "monitoring/gpu.0.temp"
    assert mp.system_metric_path("cpu") == "monitoring/cpu"
    # only the one `system.` W&B adds is removed; an offline stats key gets it added first
    assert mp.system_metric_path("system.system.powerWatts") == "monitoring/system.powerWatts"
    assert mp.system_metric_path(mp.stats_metric_name("system.powerWatts")) == "monitoring/system.powerWatts"
    hits = {}
    assert mp.system_metric_points("system.network", {"sent": 1, "recv": 2}, hits) == [
        mp.HistoryPoint("monitoring/network.sent", "float_series", 1.0),
        mp.HistoryPoint("monitoring/network.recv", "float_series", 2.0)]
    assert hits == {"system_metric_nested_key": 1}
    assert mp.classify_file("requirements.txt") == ("source_code/requirements", "file")
    assert mp.classify_file("code/train.py") == ("source_code/files/train.py", "file")
    assert mp.classify_file("model.ckpt") == ("checkpoints/model.ckpt", "file")
    assert mp.classify_file("wandb-metadata.json") == ("wandb/files/wandb-metadata.json", "file")
    assert mp.classify_file("out/plot.png") == ("files/out/plot.png", "file")

    run_id = mp.dest_run_id("parquet:/x", "ws/p", "RUN-1")
    assert run_id == mp.dest_run_id("parquet:/x", "ws/p", "RUN-1") != mp.dest_run_id("parquet:/y", "ws/p", "RUN-1")
    assert len(run_id) == 16 and set(run_id) <= set(mp.RUN_ID_ALPHABET)
    assert mp.ms_from_seconds(1714521600.001) == 1714521600001


def test_a_moved_offline_folder_finds_the_runs_it_loaded(offline_root, tmp_path):
    """The origin of an offline run is its entity/project and run id, not the folder it lies in."""
    db = tmp_path / "mlflow.db"
    dest = f"mlflow:sqlite:///{db}"
    assert run_cli("copy", f"wandb:{offline_root}", dest)[0] == 0
    moved = tmp_path / "elsewhere" / "runs"
    shutil.copytree(offline_root, moved, symlinks=True)
    code, report, out = run_cli("copy", f"wandb:{moved}", dest)
    assert code == 0 and report["totals"]["skipped"] == 3, out      # two runs, one artifact
    code, report, out = run_cli("verify", f"wandb:{moved}", dest)
    assert code == 0 and report["totals"]["verified"] == 3, out
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{db}")
    runs = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
    assert len(runs) == 3 and {r.data.tags["trackport.origin.uri"] for r in runs} == {"wandb:offline"}


# -- conformance (trackport.testing.conformance) ------------------------------------------------
def test_conformance_round_trip(tmp_path):
    import wandb_offline_support
    from trackport.testing import conformance

    conformance.round_trip(wandb_offline_support.conformance_target(tmp_path), tmp_path)


def test_conformance_run_times(tmp_path):
    import wandb_offline_support
    from trackport.testing import conformance

    conformance.run_times(wandb_offline_support.conformance_target(tmp_path), tmp_path)


def test_conformance_files_and_bytes(tmp_path):
    import wandb_offline_support
    from trackport.testing import conformance

    conformance.files_and_bytes(wandb_offline_support.conformance_target(tmp_path), tmp_path)
