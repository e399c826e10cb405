"""The MLflow source on stores other people wrote (issue 25, items 1, 3, 4 and 5).

Stores are written by their real writers: MLflow 1.30 in a venv of its own
(old_mlflow.py) for an old SQLite schema and an old, git-shaped file store; the
installed MLflow 3 (directly and through a real `mlflow server`) for dataset
inputs, logged models and `mlflow-artifacts:/` URIs; MLflow's own alembic
migrations for a PostgreSQL / MariaDB store at an older schema revision.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import time
from pathlib import Path

import pyarrow.compute as pc
import pytest

from databases import database
from mlflow_server import start_mlflow_server, stop_mlflow_server
from old_mlflow import OLD_REVISION, run_old_mlflow, write_old_stores
from support import read_plain_export, run_cli, runs_by_id
from test_source_readonly import _diff, fingerprint


@pytest.fixture(scope="module")
def old_stores(tmp_path_factory):
    root = tmp_path_factory.mktemp("old-mlflow")
    ids = write_old_stores(root)
    return root, ids


def _copy_stores(old_stores, tmp_path: Path) -> tuple[Path, dict]:
    root, ids = old_stores
    dst = tmp_path / "stores"
    shutil.copytree(root, dst, copy_function=shutil.copy2)
    return dst, ids


def _singles(table) -> dict[str, object]:
    out = {}
    for row in table.to_pylist():
        if row["step"] is None:
            col = {"string": "string_value", "bool": "bool_value", "datetime": "datetime_value",
                   "string_set": "string_set_value", "file": "file_value"}.get(row["attribute_type"])
            out[row["attribute_path"]] = row[col] if col else row
    return out


def _export(src: str, dest: Path, *args: str) -> tuple[int, dict, str, dict]:
    code, report, out = run_cli("export", src, str(dest), "--state-dir", str(dest) + "-state", *args)
    tables = read_plain_export(dest) if (dest / "data").exists() else {}
    return code, report, out, {run_id: table for (_, run_id), table in tables.items()}


# -- item 1: an old SQLite store is read from a private copy ------------------------------------

def test_old_sqlite_store_is_read_from_an_upgraded_private_copy(old_stores, tmp_path):
    stores, ids = _copy_stores(old_stores, tmp_path)
    db = stores / "old.db"
    before = fingerprint(stores)
    code, report, out, tables = _export(f"mlflow:sqlite:///{db}", tmp_path / "export")
    assert code == 0, out
    assert _diff(before, fingerprint(stores)) == []
    with sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True) as conn:
        assert conn.execute("SELECT version_num FROM alembic_version").fetchall() == [(OLD_REVISION,)]
    assert any("private copy" in n and OLD_REVISION in n for n in report["notes"]), report["notes"]
    # MLflow 1.30 still opens its own file and finds every run it wrote there.
    out = run_old_mlflow("import sys\nfrom mlflow.tracking import MlflowClient\n"
                         "from mlflow.entities import ViewType\n"
                         "c = MlflowClient(tracking_uri=sys.argv[1])\n"
                         "print(len(c.search_runs(['1', '2'], run_view_type=ViewType.ALL)))\n",
                         f"sqlite:///{db}", cwd=tmp_path)
    assert out.split()[-1] == "6"

    sq = ids["sqlite"]
    assert sorted(tables) == sorted([sq["finished"], sq["killed"], sq["running"], sq["unnamed"]])
    finished = _singles(tables[sq["finished"]])
    assert finished["sys/name"] == "finished" and finished["lr"] == "0.1"
    assert finished["mlflow/experiment/tags/team"] == "cv"
    assert finished["model/weights.txt"] == {"path": f"{sq['finished']}/model/weights.txt"}
    loss = tables[sq["finished"]].filter(pc.equal(tables[sq["finished"]].column("attribute_path"), "loss"))
    assert loss.num_rows == 5
    # a run with no name (MLflow < 1.29) keeps its empty name: no id stands in for it
    assert _singles(tables[sq["unnamed"]])["sys/name"] == ""


@pytest.mark.parametrize("kind", ["postgresql", "mysql"])
def test_server_database_at_an_older_revision_is_refused_and_left_alone(kind, tmp_path):
    import sqlalchemy
    from alembic import command
    from mlflow.store.db.utils import _get_alembic_config
    from mlflow.store.tracking.dbmodels.initial_models import Base as InitialBase

    uri, drop = database(kind, "tp_src")
    try:
        # MLflow's own migrations build the schema MLflow 1.30 had.
        engine = sqlalchemy.create_engine(uri)
        InitialBase.metadata.create_all(engine)
        with engine.begin() as conn:
            config = _get_alembic_config(uri)
            config.attributes["connection"] = conn
            command.upgrade(config, OLD_REVISION)
        with engine.connect() as conn:
            tables = set(sqlalchemy.inspect(conn).get_table_names())
        engine.dispose()

        for command_name in ("plan", "export"):
            args = [command_name, f"mlflow:{uri}"] + ([str(tmp_path / "x")] if command_name == "export" else [])
            code, _, out = run_cli(*args)
            assert code == 2, out
            assert OLD_REVISION in out and "mlflow db upgrade" in out and "never changes a source" in out

        engine = sqlalchemy.create_engine(uri)
        with engine.connect() as conn:
            assert [r[0] for r in conn.exec_driver_sql("SELECT version_num FROM alembic_version")] == [OLD_REVISION]
            assert set(sqlalchemy.inspect(conn).get_table_names()) == tables
        engine.dispose()
    finally:
        drop()


# -- item 5: a file store that went through git --------------------------------------------------

def test_git_shaped_file_store_runs_are_read_with_a_warning(old_stores, tmp_path):
    stores, ids = _copy_stores(old_stores, tmp_path)
    fs = ids["file"]
    run_dir = stores / "mlruns" / fs["experiments"]["vision"] / fs["running"]
    assert not (run_dir / "metrics").exists() and not (run_dir / "artifacts").exists()
    code, report, out, tables = _export(f"mlflow:{stores / 'mlruns'}", tmp_path / "export")
    assert code == 0, out
    runs = runs_by_id(report)
    assert {r["status"] for r in runs.values()} == {"moved"}, out
    assert _singles(tables[fs["running"]])["p"] == "1"
    assert any("no metrics/" in w and "artifacts/" in w and "read as empty" in w
               for w in runs[fs["running"]]["warnings"]), runs[fs["running"]]
    assert runs[fs["finished"]]["warnings"] == []
    assert _singles(tables[fs["unnamed"]])["sys/name"] == ""


# -- item 4: deleted runs ------------------------------------------------------------------------

@pytest.mark.parametrize("store", ["sqlite", "file"])
def test_deleted_runs_are_counted_and_moved_with_include_deleted(store, old_stores, tmp_path):
    stores, ids = _copy_stores(old_stores, tmp_path)
    src = f"mlflow:sqlite:///{stores / 'old.db'}" if store == "sqlite" else f"mlflow:{stores / 'mlruns'}"
    mine = ids[store]
    deleted = {mine["deleted_run"], mine["in_deleted_exp"]}

    code, report, out = run_cli("plan", src, f"mlflow:sqlite:///{tmp_path / 'd.db'}")
    assert code == 0, out
    (note,) = [n for n in report["notes"] if "deleted MLflow run" in n]
    assert note.startswith("2 deleted") and "--include-deleted" in note
    if store == "file":   # the .trash experiment whose meta.yaml still says active
        assert "1 of them in experiments under mlruns/.trash" in note
    assert not deleted & set(runs_by_id(report))

    code, report, out, tables = _export(src, tmp_path / "export", "--include-deleted")
    assert code == 0, out
    assert deleted <= set(tables) and len(tables) == 6
    assert not [n for n in report["notes"] if "deleted MLflow run" in n]
    for run_id, table in tables.items():
        assert _singles(table).get("sys/trashed") is (True if run_id in deleted else None), run_id


# -- item 4: what MLflow 2/3 keep beside params, metrics and tags -------------------------------

def test_dataset_inputs_logged_models_and_experiment_tags_move(tmp_path):
    from mlflow.entities import Dataset, DatasetInput, InputTag
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'm3.db'}"
    client = MlflowClient(tracking_uri=uri)
    eid = client.create_experiment("m3", artifact_location=(tmp_path / "arts").as_uri(),
                                   tags={"project": "demo"})
    run = client.create_run(eid, start_time=1_000, run_name="trainer")
    rid = run.info.run_id
    client.log_inputs(rid, datasets=[DatasetInput(
        Dataset(name="train", digest="abc123", source_type="local", source='{"uri": "/data/train.csv"}',
                schema='{"cols": ["x"]}', profile='{"rows": 10}'),
        tags=[InputTag("mlflow.data.context", "training")])])
    client.log_metric(rid, "system/cpu_utilization_percentage", 12.5, timestamp=2_000, step=0)
    model = client.create_logged_model(eid, name="clf", source_run_id=rid, params={"depth": "3"},
                                       tags={"stage": "dev"}, model_type="sklearn")
    weights = tmp_path / "model-dir"
    weights.mkdir()
    (weights / "MLmodel").write_text("flavors: {}\n")
    (weights / "model.pkl").write_bytes(b"\x80\x04pickle")
    client.log_model_artifacts(model.model_id, str(weights))
    client.finalize_logged_model(model.model_id, "READY")
    client.set_terminated(rid, "FINISHED", end_time=5_000)
    client._tracking_client.store.engine.dispose()

    code, report, out, tables = _export(f"mlflow:{uri}", tmp_path / "export")
    assert code == 0, out
    table = tables[rid]
    got = _singles(table)
    assert got["mlflow/experiment/tags/project"] == "demo"
    (dataset,) = json.loads(got["mlflow/inputs/datasets"])
    assert dataset["name"] == "train" and dataset["digest"] == "abc123"
    assert dataset["source"] == '{"uri": "/data/train.csv"}' and dataset["profile"] == '{"rows": 10}'
    assert dataset["tags"] == {"mlflow.data.context": "training"}
    cpu = table.filter(pc.equal(table.column("attribute_path"), "monitoring/cpu_utilization_percentage"))
    assert cpu.column("float_value").to_pylist() == [12.5]   # MLflow's system/ metrics
    # The logged model is an entry of its own (project mlflow-models/<experiment>, in the
    # export's extensions/ folder; tests/test_mlflow_models.py), not attributes of its run.
    assert not [p for p in got if p.startswith("mlflow/models/")]
    entries = read_plain_export(tmp_path / "export", extensions=True)
    entry = entries[("mlflow-models/m3", model.model_id)]
    meta = dict(zip(entry.column("attribute_path").to_pylist(), entry.column("string_value").to_pylist()))
    assert meta["mlflow/logged_model/name"] == "clf" and meta["mlflow/logged_model/params/depth"] == "3"
    assert meta["mlflow/logged_model/tags/stage"] == "dev" and meta["mlflow/logged_model/source_run/run_id"] == rid
    root = tmp_path / "export" / "files"
    for name, data in (("MLmodel", b"flavors: {}\n"), ("model.pkl", b"\x80\x04pickle")):
        assert f"files/{name}" in meta, name
        (found,) = list(root.rglob(f"*{name}"))
        assert found.read_bytes() == data


def test_a_run_that_grew_is_exported_again_once_and_an_unchanged_one_is_skipped(tmp_path):
    """MLflow (SQLite, real MLflow) -> parquet: run_version follows each metric's latest point,
    status and end time; a run logging more steps after an export is exported again with every
    point once, a run that did not change is skipped."""
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'grow.db'}"
    client = MlflowClient(tracking_uri=uri)
    eid = client.create_experiment("grow", artifact_location=(tmp_path / "arts").as_uri())
    growing = client.create_run(eid, start_time=1_000, run_name="growing").info.run_id
    done = client.create_run(eid, start_time=2_000, run_name="done").info.run_id
    for rid in (growing, done):
        client.log_batch(rid, metrics=[Metric("loss", 1.0 / (s + 1), 1_000 + s, s) for s in range(3)])
    client.set_terminated(done, "FINISHED", end_time=5_000)
    client._tracking_client.store.engine.dispose()
    code, report, out, _ = _export(f"mlflow:{uri}", tmp_path / "export")
    assert code == 0 and report["totals"]["moved"] == 2, out

    client.log_batch(growing, metrics=[Metric("loss", 1.0 / (s + 1), 1_000 + s, s) for s in range(3, 5)]
                     + [Metric("acc", 0.5, 1_004, 4)])
    client.set_terminated(growing, "FINISHED", end_time=6_000)
    client._tracking_client.store.engine.dispose()
    code, report, out, tables = _export(f"mlflow:{uri}", tmp_path / "export")
    assert code == 0, out
    by_id = runs_by_id(report)
    assert by_id[growing]["status"] == "repaired" and by_id[growing]["details"]["source_changed"] is True
    assert by_id[done]["status"] == "skipped", out
    loss = tables[growing].filter(pc.equal(tables[growing].column("attribute_path"), "loss"))
    assert sorted(loss.column("step").to_pylist()) == [0, 1, 2, 3, 4]          # each point once
    assert tables[growing].filter(pc.equal(tables[growing].column("attribute_path"), "acc")).num_rows == 1
    assert tables[done].filter(pc.equal(tables[done].column("attribute_path"), "loss")).num_rows == 3
    code, report, out, _ = _export(f"mlflow:{uri}", tmp_path / "export")
    assert code == 0 and report["totals"]["skipped"] == 2, out


# -- item 3: runs logged through a server, read from its store ----------------------------------

def test_mlflow_artifacts_uris_are_a_counted_drop_unless_resolved(tmp_path):
    from mlflow.tracking import MlflowClient

    srv = tmp_path / "server"
    proc, url = start_mlflow_server(srv, workers=1)
    try:
        client = MlflowClient(tracking_uri=url)
        eid = client.create_experiment("proxied")
        run = client.create_run(eid, start_time=1_000, run_name="through-server")
        rid = run.info.run_id
        assert run.info.artifact_uri.startswith("mlflow-artifacts:/")
        client.log_param(rid, "lr", "0.5")
        for i in range(3):
            client.log_metric(rid, "loss", 1.0 / (i + 1), timestamp=2_000 + i, step=i)
        client.log_text(rid, "checkpoint bytes", "ckpt/model.txt")
        client.set_terminated(rid, "FINISHED", end_time=3_000)
        src = f"mlflow:sqlite:///{srv / 'm.db'}"

        # No way to reach the artifacts: the run moves, its artifacts are a counted drop, fast.
        start = time.monotonic()
        code, report, out, tables = _export(src, tmp_path / "refused")
        elapsed = time.monotonic() - start
        assert code == 1, out   # a drop the user did not allow: the run is not written
        (entry,) = report["runs"]
        assert entry["status"] == "failed" and "artifacts_unreachable" in entry["error"], entry
        assert elapsed < 40, f"took {elapsed:.0f} s: a permanent error was retried"
        code, report, out, tables = _export(src, tmp_path / "plain", "--allow-drops")
        assert code == 0, out
        (entry,) = report["runs"]
        assert entry["status"] == "moved" and entry["error"] is None, entry
        assert entry["drops"] == {"artifacts_unreachable": 1}
        assert "--mlflow-artifacts-root" in entry["examples"]["artifacts_unreachable"][0]
        got = _singles(tables[rid])
        assert got["lr"] == "0.5" and "ckpt/model.txt" not in got
        assert tables[rid].filter(pc.equal(tables[rid].column("attribute_path"), "loss")).num_rows == 3

        # The server's --artifacts-destination folder, or the server itself, resolves them.
        for name, root in (("folder", str(srv / "art")), ("server", url)):
            code, report, out, tables = _export(src, tmp_path / name, "--mlflow-artifacts-root", root)
            assert code == 0, out
            assert _singles(tables[rid])["ckpt/model.txt"] == {"path": f"{rid}/ckpt/model.txt"}
            (found,) = list((tmp_path / name / "files").rglob("model.txt"))
            assert found.read_text() == "checkpoint bytes"
    finally:
        stop_mlflow_server(proc)
