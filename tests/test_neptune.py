"""Neptune offline data (2.x and 3.x clients) as a source, Neptune offline as a destination.

Everything runs for real: runs are written by the `neptune` and
`neptune-scale` SDKs in their offline modes into tmp_path, read back by the
`neptune:` source, copied into the session's MLflow server, and written by
trackport's Neptune sinks in offline mode (what `neptune sync` uploads).
"""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from neptune_support import expected_table, write_sdk2_run, write_sdk3_runs
from support import canonical_rows, run_cli, runs_by_id
from trackport.connectors.neptune import mapping as mp
from trackport.core.model import Selection
from trackport.core.registry import open_source
from trackport.core.schema import FILE_TYPES, SCHEMA


def _read_all(uri: str, options: dict | None = None) -> dict[tuple[str, str], tuple[pa.Table, dict]]:
    """(project, run) -> (canonical rows, {file path: bytes}) through the real source."""
    source = open_source(uri, options or {})
    try:
        out = {}
        for ref in source.list_runs(Selection()):
            tables = list(source.read_run(ref, Selection()))
            table = pa.concat_tables(tables) if tables else SCHEMA.empty_table()
            files = source.files(ref)
            contents = {}
            paths = pc.struct_field(table.column("file_value"), "path").to_pylist()
            for path in filter(None, paths):
                local = files.local_path(path)
                contents[path] = (sorted(p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file())
                                  if local.is_dir() else local.read_bytes())
            out[(ref.project_id, ref.run_id)] = (table, contents)
        return out
    finally:
        source.close()


def _without(table: pa.Table, paths: set[str], types: frozenset[str] = frozenset()) -> pa.Table:
    keep = pc.invert(pc.or_(pc.is_in(table.column("attribute_path"), value_set=pa.array(sorted(paths) or [""])),
                            pc.is_in(table.column("attribute_type"), value_set=pa.array(sorted(types) or [""]))))
    return table.filter(keep)


def _files_of(table: pa.Table, contents: dict) -> dict[tuple[str, str], object]:
    rows = table.filter(pc.is_in(table.column("attribute_type"), value_set=pa.array(sorted(FILE_TYPES))))
    out = {}
    for row in rows.to_pylist():
        step = None if row["step"] is None else str(row["step"].normalize())
        out[(row["attribute_path"], row["attribute_type"], step)] = contents[row["file_value"]["path"]]
    return out


@pytest.fixture(scope="module")
def sdk_data(tmp_path_factory):
    """Both SDKs' offline runs, written once for the module."""
    root = tmp_path_factory.mktemp("neptune-sdk")
    import os

    before = os.environ.get("NEPTUNE_DATA_DIRECTORY")
    try:
        rows2 = write_sdk2_run(root / "sdk2" / ".neptune", root / "files2")
    finally:
        if before is None:
            os.environ.pop("NEPTUNE_DATA_DIRECTORY", None)
        else:
            os.environ["NEPTUNE_DATA_DIRECTORY"] = before
    rows3 = write_sdk3_runs(root / "sdk3" / ".neptune", root / "files3")
    return root, rows2, rows3


# -- the neptune: source ---------------------------------------------------------------
def test_sdk2_offline_run_reads_back_exactly(sdk_data):
    root, rows2, _ = sdk_data
    runs = _read_all(f"neptune:{root / 'sdk2' / '.neptune'}", {"neptune_project": "ws/proj"})
    assert len(runs) == 1
    (project_id, run_id), (table, contents) = next(iter(runs.items()))
    # offline, the 2.x client drops custom_run_id: the run is named by its container id
    assert project_id == "ws/proj" and len(run_id) == 36
    # written by init_run itself: the queue's creation time and the entry point
    assert table.filter(pc.equal(table.column("attribute_path"), "sys/creation_time")).num_rows == 1
    got = _without(table, {"sys/creation_time", "source_code/entrypoint"}, FILE_TYPES)
    assert canonical_rows(got) == canonical_rows(expected_table(project_id, run_id, rows2))
    files = _files_of(table, contents)
    assert files[("files/model", "file", None)] == b"\x00weights" * 50
    assert files[("images/sample", "file_series", "3")][:8] == b"\x89PNG\r\n\x1a\n"
    assert files[("source_code/files", "file_set", None)] == ["pkg/util.py", "train.py"]


def test_sdk3_offline_runs_and_fork_read_back_exactly(sdk_data):
    root, _, rows3 = sdk_data
    runs = _read_all(f"neptune:{root / 'sdk3'}")
    assert sorted(runs) == [("ws/proj3", "sdk3-child"), ("ws/proj3", "sdk3-parent")]
    for run_id, rows in rows3.items():
        table, contents = runs[("ws/proj3", run_id)]
        got = _without(table, set(), FILE_TYPES)
        assert canonical_rows(got) == canonical_rows(expected_table("ws/proj3", run_id, rows)), run_id
    table, contents = runs[("ws/proj3", "sdk3-parent")]
    files = _files_of(table, contents)
    assert files == {("files/weights", "file", None): b"\x01\x02" * 100,
                     ("images/frame", "file_series", "2"): (root / "files3" / "frame.png").read_bytes()}


def test_torn_last_line_is_read_up_to_the_tear_and_a_torn_middle_fails(sdk_data, tmp_path, caplog):
    import shutil

    root, rows2, _ = sdk_data
    data = tmp_path / ".neptune"
    shutil.copytree(root / "sdk2" / ".neptune", data)
    log = next(data.rglob("data-1.log"))
    good = log.read_bytes()
    log.write_bytes(good + b'{"obj": {"type": "AssignString", "path": ["config", "late"], "val')
    (table, _), = _read_all(f"neptune:{data}").values()
    assert "config/late" not in table.column("attribute_path").to_pylist()
    assert "config/lr" in table.column("attribute_path").to_pylist()
    assert any("torn last line" in r.message for r in caplog.records)
    code, report, out = run_cli("export", f"neptune:{data}", str(tmp_path / "torn-out"))
    assert code == 0, out
    (run,) = report["runs"]
    assert any("data-1.log: torn last line" in w for w in run["warnings"]), run   # in the run's report too

    lines = good.split(b"\n")
    lines[3] = lines[3][:20]
    log.write_bytes(b"\n".join(lines))
    code, report, out = run_cli("export", f"neptune:{data}", str(tmp_path / "out"))
    assert code == 1
    (run,) = report["runs"]
    assert run["status"] == "failed" and "line 4" in run["error"] and "data-1.log" in run["error"]


def test_missing_uploaded_file_fails_that_run_naming_it(sdk_data, tmp_path):
    import shutil

    root, _, _ = sdk_data
    data = tmp_path / "n3"
    shutil.copytree(root / "sdk3", data)
    files = tmp_path / "f3"
    shutil.copytree(root / "files3", files)
    # point the parent's upload request at a file that is gone
    import sqlite3

    db = next(p for p in data.rglob("run_operations.sqlite3") if "parent" in str(p))
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE file_upload_requests SET source_path = ? WHERE source_path LIKE '%weights.bin'",
                     (str(files / "gone.bin"),))
    code, report, out = run_cli("export", f"neptune:{data}", str(tmp_path / "out"))
    assert code == 1
    runs = runs_by_id(report)
    assert runs["sdk3-child"]["status"] == "moved"
    assert runs["sdk3-parent"]["status"] == "failed"
    assert "gone.bin" in runs["sdk3-parent"]["error"] and "files/weights" in runs["sdk3-parent"]["error"]


# -- Neptune offline -> MLflow ------------------------------------------------------------
def test_offline_runs_of_both_clients_copy_into_mlflow_with_every_point(sdk_data, tmp_path, mlflow_server):
    from mlflow.tracking import MlflowClient

    root, rows2, rows3 = sdk_data
    dest = f"mlflow+{mlflow_server}"
    exp = ["--mlflow-experiment", f"{tmp_path.name}-{{project}}"]
    src = f"neptune:{root / 'sdk3'}"
    code, report, out = run_cli("copy", src, dest, *exp)
    assert code == 0, out
    assert report["totals"]["moved"] == 2
    client = MlflowClient(tracking_uri=mlflow_server)
    experiment = client.get_experiment_by_name(f"{tmp_path.name}-ws/proj3")
    runs = {r.data.tags["trackport.origin.run_id"]: r for r in client.search_runs([experiment.experiment_id])}
    history = client.get_metric_history(runs["sdk3-parent"].info.run_id, "train/loss")
    # decimal steps 0.5 .. 2.000001 scaled by 10**6, original ms timestamps
    assert sorted((m.step, m.timestamp, m.value) for m in history) == [
        (500000, 1714521600000, 1.0), (1000000, 1714521601123, 0.5),
        (1250000, 1714521602246, 1.0 / 3), (2000001, 1714521603369, 0.25)]
    assert runs["sdk3-child"].data.tags.get("mlflow.parentRunId") == runs["sdk3-parent"].info.run_id
    assert run_cli("verify", src, dest, *exp)[0] == 0
    code, report, out = run_cli("copy", src, dest, *exp)
    assert code == 0 and report["totals"]["skipped"] == 2
    assert len(client.search_runs([experiment.experiment_id])) == 2
    assert len(client.get_metric_history(runs["sdk3-parent"].info.run_id, "train/loss")) == 4

    src2 = f"neptune:{root / 'sdk2' / '.neptune'}"
    code, report, out = run_cli("copy", src2, dest, *exp, "--neptune-project", "ws/proj")
    assert code == 0, out
    assert run_cli("verify", src2, dest, *exp, "--neptune-project", "ws/proj")[0] == 0
    code, report, out = run_cli("copy", src2, dest, *exp, "--neptune-project", "ws/proj")
    assert code == 0 and report["totals"]["skipped"] == 1


# -- the sinks -------------------------------------------------------------------------------
def test_a_run_that_grew_is_copied_again_once_and_an_unchanged_one_is_skipped(sdk_data, tmp_path):
    """Neptune 2.x offline (real client) -> neptune2:// offline: the first copy sees the queue
    as it was while the training wrote (its operation log cut at a line), the second the whole
    log: run_version changed, the destination run is written again in place with every point
    once; a third copy skips it."""
    import shutil

    root, _, _ = sdk_data
    src = tmp_path / "src"
    shutil.copytree(root / "sdk2" / ".neptune", src)
    (log,) = src.rglob("data-1.log")
    whole = log.read_bytes()
    lines = whole.split(b"\n")
    log.write_bytes(b"\n".join(lines[: len(lines) // 2]) + b"\n")
    data = tmp_path / "data"
    args = ["--neptune-project", "ws/proj", "--neptune-mode", "offline", "--neptune-data-dir", str(data)]
    code, report, out = run_cli("copy", f"neptune:{src}", "neptune2://ws/proj", *args)
    assert code == 0 and report["totals"]["moved"] == 1, out
    first = report["totals"]["points"]
    log.write_bytes(whole)                                    # the training wrote the rest
    code, report, out = run_cli("copy", f"neptune:{src}", "neptune2://ws/proj", *args)
    assert code == 0, out
    (run,) = report["runs"]
    assert run["status"] == "repaired" and run["details"]["source_changed"] is True, out
    assert report["totals"]["points"] > first

    def series(table):
        rows = table.filter(pc.is_valid(table.column("step")))
        return sorted((r["attribute_path"], str(r["step"])) for r in
                      rows.select(["attribute_path", "step"]).to_pylist())

    (want, _), = _read_all(f"neptune:{src}", {"neptune_project": "ws/proj"}).values()
    (got, _), = _read_all(f"neptune:{data}").values()
    assert series(got) == series(want) and len(set(series(got))) == len(series(got))   # each point once
    assert len(list(data.rglob("data-1.log"))) == 1                                       # one run
    code, report, out = run_cli("copy", f"neptune:{src}", "neptune2://ws/proj", *args)
    assert code == 0 and report["totals"]["skipped"] == 1, out


def test_sink_ids_projects_and_wandb_exclusions_are_deterministic():
    assert mp.custom_run_id("short-id") == ("short-id", False)
    long_id = "x" * 37
    cid, hashed = mp.custom_run_id(long_id)
    assert hashed and len(cid) <= 36 and cid == mp.custom_run_id(long_id)[0] and cid != mp.custom_run_id("y" * 37)[0]
    assert mp.project_name("my_wandb_project") == "my-wandb-project"
    assert mp.wandb_excluded("summary/_runtime", "float", None)
    assert mp.wandb_excluded("files/media/images/a.png", "file", "p/r/files/media/images/a.png")
    assert mp.wandb_excluded("files/config.yaml", "file", "x/config.yaml")
    assert mp.wandb_excluded("files/wandb-metadata.json", "file", "x/wandb-metadata.json")
    assert mp.wandb_excluded("files/artifact/x.bin", "file", None)
    assert mp.wandb_excluded("config/lr", "float", None) is None
    assert mp.wandb_excluded("files/model.ckpt", "file", "x/model.ckpt") is None


@pytest.mark.parametrize("generation", ["2", "3"])
def test_partial_offline_run_is_repaired_without_duplicates(generation, tmp_path):
    from trackport.testing.corpus import build_corpus
    from trackport.testing.exporter_layout import write_exporter_export

    corpus = [r for r in build_corpus(big=False) if r.case in ("scalars", "steps")]
    src = tmp_path / "src"
    write_exporter_export(src, corpus)
    data = tmp_path / "data"
    args = ["--neptune-mode", "offline", "--neptune-data-dir", str(data)]
    dest = f"neptune{generation}://ws/proj"
    code, report, out = run_cli("copy", str(src), dest, *args)
    assert code == 0, out
    # kill the completion mark of one run: it is now a partial run
    if generation == "2":
        queue = next(q.parent for q in data.rglob("data-1.log") if b"CORP-6" in q.read_bytes())
        log = queue / "data-1.log"
        log.write_bytes(b"\n".join(l for l in log.read_bytes().split(b"\n") if b"trackport\", \"complete" not in l))
    else:
        import sqlite3

        db = next(d for d in data.rglob("run_operations.sqlite3") if "CORP-6" in str(d))
        with sqlite3.connect(db) as conn:
            seqs = [row[0] for row in conn.execute("SELECT sequence_id, operation FROM run_operations")
                    if b"trackport/complete" in row[1]]
            conn.executemany("DELETE FROM run_operations WHERE sequence_id = ?", [(s,) for s in seqs])
    code, report, out = run_cli("copy", str(src), dest, *args)
    assert code == 0, out
    statuses = {r["run_id"]: r["status"] for r in report["runs"]}
    assert statuses == {"CORP-1": "skipped", "CORP-6": "repaired"}
    runs = _read_all(f"neptune:{data}")
    assert sorted(runs) == [("trackport-tests/corpus", "CORP-1"), ("trackport-tests/corpus", "CORP-6")]
    n_stores = len(list(data.rglob("data-1.log"))) if generation == "2" else len(list(data.rglob("*.sqlite3")))
    assert n_stores == 2
    assert run_cli("verify", str(src), dest, *args)[0] == 0
    projects = json.loads((data / "trackport-projects.json").read_text())
    # the description names the source by its origin (an export's own identity, not its path)
    assert projects["ws/proj"]["visibility"] == "priv" and "parquet:" in projects["ws/proj"]["description"]


def test_long_custom_run_id_is_hashed_and_the_identity_survives_offline(tmp_path):
    from trackport.testing.corpus import rows_table
    from trackport.testing.exporter_layout import write_exporter_export
    from trackport.testing.corpus import CorpusRun

    long_id = "run-" + "z" * 60
    table = rows_table("team/my_project", long_id, [{"path": "sys/name", "type": "string", "value": "n"},
                                                     {"path": "config/a", "type": "int", "value": 1}])
    src = tmp_path / "src"
    write_exporter_export(src, [CorpusRun("team/my_project", long_id, table)])
    data = tmp_path / "data"
    code, report, out = run_cli("copy", str(src), "neptune2://ws", "--neptune-mode", "offline",
                                "--neptune-data-dir", str(data))
    assert code == 0, out
    (run,) = report["runs"]
    assert run["transformations"]["custom_run_id_hashed"] == 1
    assert run["transformations"]["project_name_dashes"] == 1
    assert len(run["dest_id"]) <= 36
    # the 2.x queue does not hold custom_run_id offline; trackport/origin/* names the run
    ops = [json.loads(l)["obj"] for l in next(data.rglob("data-1.log")).read_text().splitlines() if l]
    paths = {"/".join(o["path"]): o.get("value") for o in ops if o["type"] == "AssignString"}
    assert paths[mp.ORIGIN_RUN] == long_id and paths[mp.ORIGIN_PROJECT] == "team/my_project"
    assert "sys/custom_run_id" not in paths
    back = _read_all(f"neptune:{data}")
    assert list(back) == [("team/my_project", long_id)]
    assert "my-project" in (data / "trackport-projects.json").read_text()


# -- W&B -> Neptune (docs/neptune.md) -----------------------------------------------------
def test_wandb_offline_runs_copy_into_neptune_offline_with_the_scripts_mapping(tmp_path):
    import wandb_offline_support as wb

    from neptune_support import sorted_string_sets

    wb.make_runs(tmp_path / "w")
    src = f"wandb:{tmp_path / 'w' / 'wandb'}"
    data = tmp_path / "nep"
    args = ["--neptune-mode", "offline", "--neptune-data-dir", str(data)]
    code, report, out = run_cli("copy", src, "neptune2://ws", *args)
    assert code == 0, out
    runs = runs_by_id(report)
    rich = runs[wb.RICH_ID]
    # the default exclusions of the original script, declared and reported with examples
    assert rich["transformations"]["excluded_by_wandb_mapping"] > 0
    examples = " | ".join(rich["examples"]["excluded_by_wandb_mapping"])
    assert "key starts with '_'" in examples and "artifact/ or media/" in examples
    assert (data / "trackport-projects.json").exists()
    assert "ws/vision" in json.loads((data / "trackport-projects.json").read_text())

    back = _read_all(f"neptune:{data}")
    wandb_rows = _read_all(src)
    for run_id in (wb.RICH_ID, wb.SPARSE_ID):
        key = next(k for k in back if k[1] == run_id)
        got, got_files = back[key]
        want, want_files = wandb_rows[(key[0], run_id)]
        # what the W&B source read, minus exactly the script's exclusions, is what Neptune holds
        keep = [mp.wandb_excluded(p, t, (f or {}).get("path")) is None for p, t, f in zip(
            want.column("attribute_path").to_pylist(), want.column("attribute_type").to_pylist(),
            want.column("file_value").to_pylist())]
        want = want.filter(pa.array(keep))
        assert canonical_rows(got) == canonical_rows(sorted_string_sets(want)), run_id
        for path in pc.struct_field(got.column("file_value"), "path").to_pylist():
            if path:
                assert got_files[path] == want_files[path]

    got = {r["attribute_path"]: r for r in back[next(k for k in back if k[1] == wb.RICH_ID)][0].to_pylist()
           if r["step"] is None}
    value = lambda p: next(v for c, v in got[p].items() if c.endswith("_value") and v is not None)  # noqa: E731
    assert value("sys/name") == "rich run"
    assert value("sys/custom_run_id") == wb.RICH_ID
    assert value("sys/description") == "notes ✓"
    assert sorted(value("sys/tags")) == ["baseline", "ünï"]
    assert value("sys/group_tags") == ["grp"]
    assert value("config/optimizer/lr") == 0.001 and value("config/epochs") == 10
    assert value("summary/best") == 0.75
    assert got["checkpoints/model.ckpt"]["attribute_type"] == "file"
    assert got["files/notes.txt"]["attribute_type"] == "file"
    assert not any(p.startswith("wandb/files/config.yaml") or "/_" in p for p in got)
    series = back[next(k for k in back if k[1] == wb.RICH_ID)][0]
    loss = series.filter(pc.equal(series.column("attribute_path"), "loss"))
    assert [int(s) for s in loss.column("step").to_pylist()] == [0, 1, 5, 17, 1000]
    stdout = series.filter(pc.equal(series.column("attribute_path"), "monitoring/stdout"))
    assert stdout.column("string_value").to_pylist()[: len(wb.STDOUT_LINES)] == wb.STDOUT_LINES
    sparse = back[next(k for k in back if k[1] == wb.SPARSE_ID)][0]
    assert any(p.startswith("monitoring/") for p in sparse.column("attribute_path").to_pylist())

    code, report, out = run_cli("copy", src, "neptune2://ws", *args)
    assert code == 0 and report["totals"]["skipped"] == wb.ENTRIES
    assert len(list(data.rglob("data-1.log"))) == wb.ENTRIES
    # --neptune-keep-all keeps what the script leaves out
    code, report, out = run_cli("copy", src, "neptune2://ws", "--neptune-mode", "offline",
                                "--neptune-data-dir", str(tmp_path / "all"), "--neptune-keep-all")
    assert code == 0 and "excluded_by_wandb_mapping" not in report["totals"]["transformations"]
    assert run_cli("verify", src, "neptune2://ws", "--neptune-mode", "offline",
                   "--neptune-data-dir", str(tmp_path / "all"))[0] == 0


def test_unsupported_destinations_are_usage_errors(tmp_path):
    from trackport.core.errors import UsageError
    from trackport.core.registry import open_sink

    with pytest.raises(UsageError, match="offline only"):
        open_sink("neptune3://ws/proj", {"neptune_mode": "async"})
    with pytest.raises(UsageError, match="source only"):
        open_sink(f"neptune:{tmp_path}", {})
    with pytest.raises(UsageError, match="WORKSPACE"):
        open_sink("neptune2://", {"neptune_mode": "offline", "neptune_data_dir": str(tmp_path)})


# -- 2.x queues as real clients leave them: async, older layouts, step-less points ------
@pytest.fixture(scope="module")
def async_data(tmp_path_factory):
    from neptune_support import write_sdk2_async

    root = tmp_path_factory.mktemp("neptune-async")
    write_sdk2_async(root / ".neptune")
    return root / ".neptune"


def _queue_lines(queue) -> list[dict]:
    return [json.loads(line) for line in (queue / "data-1.log").read_text().splitlines() if line.strip()]


def _series(table: pa.Table, path: str) -> tuple[list, list, list]:
    rows = table.filter(pc.equal(table.column("attribute_path"), path)).to_pylist()
    return ([None if r["step"] is None else r["step"].normalize() for r in rows],
            [r["timestamp"] and int(r["timestamp"].timestamp() * 1000) for r in rows],
            [r["float_value"] if r["float_value"] is not None else r["string_value"] for r in rows])


def _expected_ms(queues, path: list[str]) -> list[int]:
    """What the client sends for each point of `path`: int(ts * 1000) of the queued float."""
    out = []
    for q in queues:
        for entry in _queue_lines(q):
            if entry["obj"].get("path") == path and entry["obj"]["type"] == "LogFloats":
                out += [int(v["ts"] * 1000) for v in entry["obj"]["values"]]
    return out


def test_async_queues_of_the_real_client_move_as_neptune_holds_them(async_data, tmp_path):
    from decimal import Decimal

    run_dirs = sorted(async_data.glob("async/run__*"), key=lambda q: json.loads((q / "metadata.json").read_text())["createdAt"])
    container = run_dirs[0].name.split("__")[1]
    model_version = next(async_data.glob("async/model_version__*")).name.split("__")[1]
    runs = _read_all(f"neptune:{async_data}")
    # two executions of one run are one run, named by the container id; the model version is its own
    assert sorted(r for _, r in runs) == sorted([container, model_version])
    table, contents = runs[("offline", container)]
    steps, stamps, values = _series(table, "train/loss")
    # step-less points numbered as Neptune does: per series from its last step, across executions
    assert steps == [Decimal(s) for s in ("0", "1", "2", "10", "11", "12")]
    assert values == [1.0, 0.5, 1.0 / 3, 9.0, 8.0, 7.0]
    assert stamps == _expected_ms(run_dirs, ["train", "loss"])       # the client's int(ts * 1000)
    assert _series(table, "monitoring/stdout")[0] == [Decimal(0)]
    paths = table.column("attribute_path").to_pylist()
    assert "files/sent" not in paths and "params/lr" in paths          # acknowledged upload: bytes gone
    pending = _files_of(table, contents)[("files/pending", "file", None)]
    assert pending == b"pending bytes"
    mv_table, _ = runs[("offline", model_version)]
    assert _series(mv_table, "val/acc")[0] == [Decimal(0), Decimal(1)]
    kind = mv_table.filter(pc.equal(mv_table.column("attribute_path"), mp.CONTAINER_TYPE))
    assert kind.column("string_value").to_pylist() == ["model_version"]

    code, report, out = run_cli("export", f"neptune:{async_data}", str(tmp_path / "refused"))
    assert code == 1, out                      # a drop, not allowed by default: the run is not written
    refused = runs_by_id(report)[container]
    assert refused["status"] == "failed" and "upload_already_sent" in refused["error"], refused
    code, report, out = run_cli("export", f"neptune:{async_data}", str(tmp_path / "out"), "--allow-drops")
    assert code == 0, out
    got = runs_by_id(report)
    run = got[container]
    assert run["status"] == "moved" and run["points"] == 7 and run["drops"] == {"upload_already_sent": 1}
    assert run["transformations"]["step_less_points_numbered"] == 6
    assert "files/sent" in run["examples"]["upload_already_sent"][0]
    assert "no longer on disk" in run["examples"]["upload_already_sent"][0]
    assert got[model_version]["points"] == 2 and got[model_version]["transformations"]["container_as_run"] == 1
    code, report, out = run_cli("plan", f"neptune:{async_data}", "neptune2://ws/proj", "--neptune-mode", "offline",
                                "--neptune-data-dir", str(tmp_path / "plan-data"))
    assert runs_by_id(report)[container]["points"] == 7

    # copies verify clean, and a rerun moves nothing
    data = tmp_path / "copy"
    args = ["--neptune-mode", "offline", "--neptune-data-dir", str(data), "--allow-drops"]
    code, report, out = run_cli("copy", f"neptune:{async_data}", "neptune2://ws/proj", *args)
    assert code == 0, out
    code, report, out = run_cli("verify", f"neptune:{async_data}", "neptune2://ws/proj", *args)
    assert code == 0, out
    assert runs_by_id(report)[container]["points"] == 7
    code, report, out = run_cli("copy", f"neptune:{async_data}", "neptune2://ws/proj", *args)
    assert code == 0 and {r["status"] for r in report["runs"]} == {"skipped"}, out
    code, report, out = run_cli("verify", f"neptune:{async_data}", str(tmp_path / "out"), "--allow-drops")
    assert code == 0, out


def test_a_pending_upload_whose_file_is_missing_drops_that_attribute_only(async_data, tmp_path):
    import shutil

    data = tmp_path / ".neptune"
    shutil.copytree(async_data, data)
    (pending,) = data.rglob("files_pending-*.bin")
    pending.unlink()
    code, report, out = run_cli("export", f"neptune:{data}", str(tmp_path / "refused"))
    assert code == 1, out                      # a drop, not allowed by default: the run is not written
    assert {r["status"] for r in report["runs"] if "upload_file_missing" in (r.get("error") or "")} == {"failed"}
    code, report, out = run_cli("export", f"neptune:{data}", str(tmp_path / "out"), "--allow-drops")
    assert code == 0, out
    run = next(r for r in report["runs"] if r["drops"].get("upload_file_missing"))
    assert run["status"] == "moved" and run["points"] == 7
    assert run["drops"] == {"upload_already_sent": 1, "upload_file_missing": 1}
    example = run["examples"]["upload_file_missing"][0]
    assert "files/pending" in example and pending.name in example and "restore" in example


def _legacy_line(version: int, op: dict) -> str:
    """A queue line as neptune-client 0.9 writes it (neptune/new/internal/containers/disk_queue.py:
    `json.dumps({"obj": op.to_dict(), "version": version})` + newline; no "at")."""
    return json.dumps({"obj": op, "version": version})


def test_every_older_layout_gives_the_container_id_and_merges_executions(async_data, tmp_path):
    import shutil
    from decimal import Decimal

    root = tmp_path / ".neptune"
    # neptune 1.4 - 1.8: async/run__<id>/exec-<epoch>-<date>-<pid>/, no metadata.json
    for q in async_data.glob("async/run__*"):
        meta = json.loads((q / "metadata.json").read_text())
        from datetime import datetime

        when = datetime.fromisoformat(meta["createdAt"])
        target = root / "async" / f"run__{meta['containerId']}" / (
            f"exec-{when.timestamp()}-{when.strftime('%Y-%m-%d_%H.%M.%S.%f')}-{q.name.split('__')[2]}")
        shutil.copytree(q, target)
        (target / "metadata.json").unlink()
    # neptune-client 0.9: async/<uuid>/exec-<n>-<local date>/, lines without "at"; offline/<uuid>/;
    # a 0-byte queue
    legacy = "4e0bfd51-7f1c-4d3b-9d6e-1b4e5f0a2c11"
    first = root / "async" / legacy / "exec-0-2021-04-23_12.38.54.066327"
    second = root / "async" / legacy / "exec-1-2021-04-23_13.02.10.000100"
    ts = 1619181534.0663271
    ops1 = [{"type": "AssignFloat", "path": ["params", "lr"], "value": 0.5},
            {"type": "LogFloats", "path": ["loss"], "values": [{"value": 1.5, "step": None, "ts": ts},
                                                               {"value": 1.25, "step": None, "ts": ts + 0.0005}]}]
    ops2 = [{"type": "LogFloats", "path": ["loss"], "values": [{"value": 1.0, "step": None, "ts": ts + 1500.5}]},
            {"type": "LogStrings", "path": ["monitoring", "stdout"], "values": [{"value": "x", "step": 4, "ts": ts}]}]
    for queue, ops, acked in ((first, ops1, 2), (second, ops2, 0)):
        queue.mkdir(parents=True)
        (queue / "data-1.log").write_text("".join(_legacy_line(i + 1, op) + "\n" for i, op in enumerate(ops)))
        (queue / "last_put_version").write_text(str(len(ops)))
        (queue / "last_ack_version").write_text(str(acked))
    empty = root / "offline" / "9f1c2d3e-0000-4000-8000-000000000001"
    empty.mkdir(parents=True)
    (empty / "data-1.log").write_bytes(b"")

    runs = _read_all(f"neptune:{root}")
    container = next(async_data.glob("async/run__*")).name.split("__")[1]
    assert sorted(r for _, r in runs) == sorted([container, legacy, empty.name])
    table, _ = runs[("offline", container)]
    assert _series(table, "train/loss")[0] == [Decimal(s) for s in ("0", "1", "2", "10", "11", "12")]
    table, _ = runs[("offline", legacy)]
    steps, stamps, values = _series(table, "loss")
    assert steps == [Decimal(0), Decimal(1), Decimal(2)] and values == [1.5, 1.25, 1.0]
    assert stamps == [int(t * 1000) for t in (ts, ts + 0.0005, ts + 1500.5)]
    assert _series(table, "monitoring/stdout")[0] == [Decimal(4)]
    code, report, out = run_cli("export", f"neptune:{root}", str(tmp_path / "out"), "--allow-drops")
    assert code == 0, out
    got = runs_by_id(report)
    assert got[legacy]["points"] == 4 and got[empty.name]["status"] == "moved"


def test_a_series_row_without_a_step_counts_as_a_point_everywhere(tmp_path):
    """neptune-exporter writes the server's step for every point (the API always has one), so the
    parquet source does not invent steps; a series row without one is still a point."""
    from trackport.testing.corpus import CorpusRun, rows_table, series_table
    from trackport.testing.exporter_layout import write_exporter_export

    table = pa.concat_tables([
        rows_table("ws/p", "R-1", [{"path": "config/lr", "type": "float", "value": 0.1}]),
        series_table("ws/p", "R-1", "train/loss", "float_series", [0.5, 0.25, 0.125], [None, None, None],
                     [1_700_000_000_000, 1_700_000_000_001, 1_700_000_000_002]),
    ])
    src = tmp_path / "src"
    write_exporter_export(src, [CorpusRun("ws/p", "R-1", table)])
    code, report, out = run_cli("plan", str(src), "neptune2://ws/p", "--neptune-mode", "offline",
                                "--neptune-data-dir", str(tmp_path / "d"))
    assert report["runs"][0]["points"] == 3, out
    code, report, out = run_cli("export", str(src), str(tmp_path / "out"))
    assert code == 0 and report["runs"][0]["points"] == 3, out
    code, report, out = run_cli("verify", str(src), str(tmp_path / "out"))
    assert code == 0 and report["runs"][0]["points"] == 3, out


# -- conformance (trackport.testing.conformance) ------------------------------------------------
@pytest.mark.parametrize("generation", ["2", "3"])
def test_conformance_round_trip(generation, tmp_path):
    import neptune_support
    from trackport.testing import conformance

    conformance.round_trip(neptune_support.conformance_target(tmp_path, generation), tmp_path)


@pytest.mark.parametrize("generation", ["2", "3"])
def test_conformance_run_times(generation, tmp_path):
    import neptune_support
    from trackport.testing import conformance

    conformance.run_times(neptune_support.conformance_target(tmp_path, generation), tmp_path)


@pytest.mark.parametrize("generation", ["2", "3"])
def test_conformance_files_and_bytes(generation, tmp_path):
    import neptune_support
    from trackport.testing import conformance

    conformance.files_and_bytes(neptune_support.conformance_target(tmp_path, generation), tmp_path)
