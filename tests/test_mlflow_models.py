"""MLflow 3 logged models, MLflow -> MLflow and through a parquet export (issue 20 item 2,
"logged models"): each LoggedModel with its name, type, status, tags, params, metrics (step,
time, the run they were logged from), files, the link to its source run (the destination's
copy of that run), and a registered version made from `models:/<model id>` pointing at the
destination's copy of the model.

The source store is written once by the real SDK (`mlflow.pyfunc.log_model` with a tiny
PythonModel, in a run); every test reads it and checks it is unchanged byte for byte.
Compared through MlflowClient, what a user of the destination sees.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from support import read_plain_export, run_cli, runs_by_id

EXPERIMENT = "train"
MODEL_NAME = "clf"
REGISTERED = "clf-registered"


def _fingerprint(root: Path) -> dict[str, tuple]:
    out = {}
    for path in [root, *root.rglob("*")]:
        st = path.lstat()
        rel = str(path.relative_to(root))
        if path.is_dir():
            out[rel] = ("dir", st.st_mtime_ns)
        else:
            out[rel] = ("file", st.st_size, st.st_mtime_ns, hashlib.sha256(path.read_bytes()).hexdigest())
    return out


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A run logging a pyfunc model (params, tags, model_type; metrics of the model at two
    steps); the model registered as version 1 of `clf-registered` (source `models:/<id>`); a
    second, external model without a run, FAILED."""
    import mlflow
    import mlflow.pyfunc
    from mlflow.tracking._tracking_service import utils as tracking_utils

    root = tmp_path_factory.mktemp("models-src")
    uri = f"sqlite:///{root / 'src.db'}"
    before_uri, before_env = tracking_utils._tracking_uri, os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    try:
        client = MlflowClient(uri)
        eid = client.create_experiment(EXPERIMENT, artifact_location=(root / "art").as_uri())

        class Echo(mlflow.pyfunc.PythonModel):
            def predict(self, context, model_input, params=None):
                return model_input

        with mlflow.start_run(experiment_id=eid, run_name="fit") as run:
            mlflow.log_param("lr", "0.1")
            mlflow.log_metric("loss", 0.7, step=0)
            info = mlflow.pyfunc.log_model(name=MODEL_NAME, python_model=Echo(), model_type="toy",
                                           tags={"team": "vision"}, params={"depth": "3"},
                                           pip_requirements=["numpy"], registered_model_name=REGISTERED)
            for step, acc in ((1, 0.8), (2, 0.9)):
                mlflow.log_metric("acc", acc, step=step, timestamp=10_000 + step, model_id=info.model_id)
        client.set_logged_model_tags(info.model_id, {"stage": "dev"})
        external = client.create_logged_model(eid, name="external", tags={"kind": "ext"}, model_type="ext")
        weights = root / "ext-files"
        (weights / "sub").mkdir(parents=True)
        (weights / "sub" / "weights.bin").write_bytes(bytes(range(256)) * 64)
        client.log_model_artifacts(external.model_id, str(weights))
        client.finalize_logged_model(external.model_id, "FAILED")
        client._tracking_client.store.engine.dispose()
    finally:
        tracking_utils._tracking_uri = before_uri
        if before_env is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = before_env
    return {"uri": uri, "root": root, "run": run.info.run_id, "model": info.model_id,
            "external": external.model_id, "fingerprint": _fingerprint(root)}


def _artifacts(client: MlflowClient, model, tmp: Path) -> dict[str, str]:
    """Relative path -> sha256 of a logged model's files, as MLflow hands them out."""
    import mlflow.artifacts

    out = tmp / f"dl-{model.model_id}"
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=model.artifact_location, dst_path=str(out),
                                                     tracking_uri=client.tracking_uri))
    return {str(p.relative_to(local)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(local.rglob("*")) if p.is_file()}


def _metrics(model) -> list[tuple]:
    return sorted((m.key, m.step, m.timestamp, m.value) for m in model.metrics or [])


def _check_copy(source: dict, dst_uri: str, tmp: Path) -> None:
    src, dst = MlflowClient(source["uri"]), MlflowClient(dst_uri)
    exp = dst.get_experiment_by_name(EXPERIMENT)
    (dest_run,) = dst.search_runs([exp.experiment_id])
    assert dest_run.data.tags["trackport.origin.run_id"] == source["run"]
    models = dst.search_logged_models([exp.experiment_id])
    assert len(models) == 2, models                 # each logged model once
    by_origin = {m.tags["trackport.origin.run_id"]: m for m in models}
    for src_id in (source["model"], source["external"]):
        a, b = src.get_logged_model(src_id), by_origin[src_id]
        assert b.model_id != a.model_id and b.tags["trackport.complete"] == "true"
        assert (b.name, b.model_type, str(b.status)) == (a.name, a.model_type, str(a.status))
        assert {k: v for k, v in b.tags.items() if not k.startswith("trackport.")} == a.tags
        assert b.params == a.params
        assert _metrics(b) == _metrics(a)
        files = _artifacts(dst, b, tmp)
        assert files and files == _artifacts(src, a, tmp)
    copy = by_origin[source["model"]]
    assert copy.source_run_id == dest_run.info.run_id            # linked to the copy of its run
    assert {m.run_id for m in copy.metrics} == {dest_run.info.run_id}
    assert [m.value for m in dst.get_metric_history(dest_run.info.run_id, "acc")] == [0.8, 0.9]
    assert by_origin[source["external"]].source_run_id is None
    # the registered version points at the destination's copy of the model
    (version,) = dst.search_model_versions(f"name = '{REGISTERED}'")
    assert version.source == f"models:/{copy.model_id}"
    assert version.run_id == dest_run.info.run_id
    assert dst.get_model_version_download_uri(REGISTERED, version.version) == copy.artifact_location
    # the destination's files are its own (not links to the source's)
    local = Path(copy.artifact_location.removeprefix("file://"))
    assert local.is_dir() and not any(p.is_symlink() for p in local.rglob("*"))


def _unchanged(source: dict) -> None:
    assert _fingerprint(source["root"]) == source["fingerprint"], "the source store changed"


def test_mlflow_to_mlflow_keeps_each_logged_model_once_and_links_the_version(source, tmp_path):
    dst_uri = f"sqlite:///{tmp_path / 'dst.db'}"
    code, report, out = run_cli("copy", f"mlflow:{source['uri']}", f"mlflow:{dst_uri}")
    assert code == 0, out
    runs = runs_by_id(report)
    assert {r["project_id"] for r in report["runs"]} == {
        EXPERIMENT, f"mlflow-models/{EXPERIMENT}", f"mlflow-registry/{REGISTERED}"}
    model = runs[source["model"]]
    assert model["status"] == "moved" and model["files"] >= 4, model
    assert {"logged_model_new_id", "logged_model_times_in_tag"} <= set(model["transformations"])
    assert "model_version_source_relocated" in runs["1"]["transformations"]
    _check_copy(source, dst_uri, tmp_path)

    code, report, out = run_cli("verify", f"mlflow:{source['uri']}", f"mlflow:{dst_uri}")
    assert code == 0, out
    code, report, out = run_cli("copy", f"mlflow:{source['uri']}", f"mlflow:{dst_uri}")
    assert code == 0, out
    assert {r["status"] for r in report["runs"]} == {"skipped"}, out
    dst = MlflowClient(dst_uri)
    assert len(dst.search_logged_models([dst.get_experiment_by_name(EXPERIMENT).experiment_id])) == 2
    _unchanged(source)


def test_mlflow_to_parquet_to_mlflow_gives_the_same(source, tmp_path):
    export = tmp_path / "export"
    code, report, out = run_cli("export", f"mlflow:{source['uri']}", str(export))
    assert code == 0, out
    # a format extension: one folder down, where neptune-exporter's readers do not look
    assert list((export / "data").glob("mlflow-models_train-*/extensions/*_part_0.parquet"))
    assert not list((export / "data").glob("mlflow-models_train-*/*_part_0.parquet"))
    assert not any(p[0].startswith("mlflow-models/") for p in read_plain_export(export))
    entries = read_plain_export(export, extensions=True)
    table = entries[(f"mlflow-models/{EXPERIMENT}", source["model"])]
    got = dict(zip(table.column("attribute_path").to_pylist(), table.column("string_value").to_pylist()))
    assert got["mlflow/logged_model/name"] == MODEL_NAME and got["mlflow/logged_model/status"] == "READY"
    assert got["mlflow/logged_model/source_run/run_id"] == source["run"]
    assert got["mlflow/logged_model/params/depth"] == "3" and got["mlflow/logged_model/tags/stage"] == "dev"
    assert '"key":"acc"' in got["mlflow/logged_model/metrics"]

    dst_uri = f"sqlite:///{tmp_path / 'dst.db'}"
    code, report, out = run_cli("load", str(export), f"mlflow:{dst_uri}")
    assert code == 0, out
    _check_copy(source, dst_uri, tmp_path)
    code, report, out = run_cli("verify", str(export), f"mlflow:{dst_uri}")
    assert code == 0, out
    code, report, out = run_cli("load", str(export), f"mlflow:{dst_uri}")
    assert code == 0 and {r["status"] for r in report["runs"]} == {"skipped"}, out
    # A direct copy into the same store afterwards finds the same models (one origin).
    code, report, out = run_cli("copy", f"mlflow:{source['uri']}", f"mlflow:{dst_uri}")
    assert code == 0 and {r["status"] for r in report["runs"]} == {"skipped"}, out
    _unchanged(source)


def test_classes_select_logged_models_as_artifacts(source, tmp_path):
    dst_uri = f"sqlite:///{tmp_path / 'dst.db'}"
    code, report, out = run_cli("copy", f"mlflow:{source['uri']}", f"mlflow:{dst_uri}",
                                "--classes", "params,metrics,series,files")
    assert code == 0, out
    assert {r["project_id"] for r in report["runs"]} == {EXPERIMENT}, out
    dst = MlflowClient(dst_uri)
    assert dst.search_logged_models([dst.get_experiment_by_name(EXPERIMENT).experiment_id]) == []
    code, report, out = run_cli("plan", f"mlflow:{source['uri']}", f"mlflow:{dst_uri}", "--classes", "artifacts")
    assert code == 0, out
    assert {r["project_id"] for r in report["runs"]} == {
        f"mlflow-models/{EXPERIMENT}", f"mlflow-registry/{REGISTERED}"}, out
    assert all(r["files"] > 0 for r in report["runs"]), out   # an entry moves whole
    _unchanged(source)


def test_logged_model_whose_run_is_not_copied_fails_naming_the_run_and_the_fix(source, tmp_path):
    dst_uri = f"sqlite:///{tmp_path / 'dst.db'}"
    code, report, out = run_cli("copy", f"mlflow:{source['uri']}", f"mlflow:{dst_uri}",
                                "--project", f"mlflow-models/{EXPERIMENT}")
    assert code == 1, out
    runs = runs_by_id(report)
    assert runs[source["model"]]["status"] == "failed"
    assert f"{EXPERIMENT}/{source['run']}" in runs[source["model"]]["error"]
    assert "--project" in runs[source["model"]]["error"]
    assert runs[source["external"]]["status"] == "moved"     # no run to link to
    code, report, out = run_cli("copy", f"mlflow:{source['uri']}", f"mlflow:{dst_uri}")
    assert code == 0, out
    _check_copy(source, dst_uri, tmp_path)
    code, report, out = run_cli("verify", f"mlflow:{source['uri']}", f"mlflow:{dst_uri}")
    assert code == 0, out
    _unchanged(source)


def test_file_store_keeps_every_metric_point_both_ways(source, tmp_path, monkeypatch):
    """A file store's LoggedModel carries only each metric's latest point; its metric files
    hold them all, and trackport reads and writes them all (SQLite -> file store -> SQLite)."""
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    store = tmp_path / "mlruns"
    code, report, out = run_cli("copy", f"mlflow:{source['uri']}", f"mlflow:{store}")
    assert code == 0, out
    code, report, out = run_cli("verify", f"mlflow:{source['uri']}", f"mlflow:{store}")
    assert code == 0, out
    dst_uri = f"sqlite:///{tmp_path / 'dst.db'}"
    code, report, out = run_cli("copy", f"mlflow:{store}", f"mlflow:{dst_uri}")
    assert code == 0, out
    code, report, out = run_cli("verify", f"mlflow:{store}", f"mlflow:{dst_uri}")
    assert code == 0, out
    src, dst = MlflowClient(source["uri"]), MlflowClient(dst_uri)
    (copy,) = [m for m in dst.search_logged_models([dst.get_experiment_by_name(EXPERIMENT).experiment_id])
               if m.tags["trackport.origin.run_id"] == source["model"]]
    assert _metrics(copy) == _metrics(src.get_logged_model(source["model"]))
    assert len(copy.metrics) > len({m.key for m in copy.metrics})   # more than the latest points
    _unchanged(source)
