"""MLflow model registry, MLflow -> MLflow and through a parquet export (issue 20 item 2,
MLflow part): every registered model version with its aliases, legacy stage, tags,
description, files and the link to its source run (the destination's copy of that run).

Real stores (SQLite, made here with MlflowClient), the real CLI; compared through
MlflowClient, what a user of the destination sees.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from support import read_plain_export, run_cli, runs_by_id

MODEL = "clf"


def _source_store(tmp_path: Path) -> tuple[str, str]:
    """A run with a model folder; model `clf` with a description and tags, version 1 made from
    the run (alias `champion`, stage Production, tags, description) and version 2 from a
    folder outside any run (alias `challenger`)."""
    uri = f"sqlite:///{tmp_path / 'src.db'}"
    client = MlflowClient(uri)
    eid = client.create_experiment("train", artifact_location=(tmp_path / "src-art").as_uri())
    run = client.create_run(eid, start_time=1_000, run_name="fit")
    rid = run.info.run_id
    client.log_batch(rid, params=[Param("lr", "0.1")], metrics=[Metric("loss", 0.5, 1_000, 0)])
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "MLmodel").write_text("flavors: {}\n")
    (model_dir / "weights.bin").write_bytes(bytes(range(256)) * 40)
    client.log_artifacts(rid, str(model_dir), "model")
    client.set_terminated(rid, "FINISHED", end_time=5_000)
    loose = tmp_path / "loose"
    loose.mkdir()
    (loose / "MLmodel").write_text("flavors: {python_function: {}}\n")

    client.create_registered_model(MODEL, tags={"team": "vision"}, description="the classifier")
    v1 = client.create_model_version(MODEL, f"{run.info.artifact_uri}/model", run_id=rid,
                                     tags={"quality": "good"}, description="first")
    v2 = client.create_model_version(MODEL, loose.as_uri(), tags={"quality": "better"})
    assert (str(v1.version), str(v2.version)) == ("1", "2")
    client.create_registered_model("empty")   # no version: named in the notes, not moved
    client.set_registered_model_alias(MODEL, "champion", "1")
    client.set_registered_model_alias(MODEL, "challenger", "2")
    client.transition_model_version_stage(MODEL, "1", "Production")
    return uri, rid


def _files(client: MlflowClient, version: str, tmp_path: Path) -> dict[str, str]:
    """Relative path -> sha256 of a model version's files, as MLflow hands them out."""
    import mlflow.artifacts

    out = tmp_path / f"dl-{hashlib.sha1(client.tracking_uri.encode()).hexdigest()[:6]}-{version}"
    uri = client.get_model_version_download_uri(MODEL, version)
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(out),
                                                     tracking_uri=client.tracking_uri))
    return {str(p.relative_to(local)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(local.rglob("*")) if p.is_file()}


def _check_copy(src_uri: str, dst_uri: str, src_run: str, tmp_path: Path) -> None:
    src, dst = MlflowClient(src_uri), MlflowClient(dst_uri)
    model = dst.get_registered_model(MODEL)
    assert model.description == "the classifier"
    assert {k: v for k, v in model.tags.items()} == {"team": "vision"}
    assert {k: str(v) for k, v in model.aliases.items()} == {"champion": "1", "challenger": "2"}
    versions = {str(v.version): v for v in dst.search_model_versions(f"name = '{MODEL}'")}
    assert sorted(versions) == ["1", "2"]          # every version, under its own number, once
    copy_of_run = dst.search_runs([dst.get_experiment_by_name("train").experiment_id])
    assert len(copy_of_run) == 1
    dest_run = copy_of_run[0]
    assert dest_run.data.tags["trackport.origin.run_id"] == src_run
    for number in ("1", "2"):
        a, b = src.get_model_version(MODEL, number), dst.get_model_version(MODEL, number)
        assert b.description == a.description
        user_tags = {k: v for k, v in b.tags.items() if not k.startswith("trackport.")}
        assert user_tags == a.tags
        assert b.tags["trackport.complete"] == "true"
        assert b.current_stage == a.current_stage
        assert sorted(b.aliases) == sorted(a.aliases)
        assert _files(dst, number, tmp_path) == _files(src, number, tmp_path)
    # Version 1 links to the destination's copy of its run, not to the source's run id.
    assert versions["1"].run_id == dest_run.info.run_id
    assert versions["1"].current_stage == "Production"
    assert not versions["2"].run_id


def test_mlflow_to_mlflow_keeps_every_version_alias_tag_and_link(tmp_path):
    src_uri, src_run = _source_store(tmp_path)
    dst_uri = f"sqlite:///{tmp_path / 'dst.db'}"
    code, report, out = run_cli("plan", f"mlflow:{src_uri}", f"mlflow:{dst_uri}")
    assert code == 0, out
    planned = runs_by_id(report)["1"]
    assert "model_version_source_relocated" in planned["transformations"], planned
    assert not Path(tmp_path / "dst.db").exists()   # plan writes nothing
    # --classes: `artifacts` alone selects the model versions, the run classes the runs
    code, report, out = run_cli("plan", f"mlflow:{src_uri}", f"mlflow:{dst_uri}", "--classes", "artifacts")
    assert code == 0 and {r["project_id"] for r in report["runs"]} == {f"mlflow-registry/{MODEL}"}, out
    assert all(r["files"] > 0 for r in report["runs"]), out     # a version moves whole
    code, report, out = run_cli("plan", f"mlflow:{src_uri}", f"mlflow:{dst_uri}", "--classes", "params,metrics")
    assert code == 0 and {r["project_id"] for r in report["runs"]} == {"train"}, out
    code, report, out = run_cli("copy", f"mlflow:{src_uri}", f"mlflow:{dst_uri}")
    assert code == 0, out
    runs = runs_by_id(report)
    assert {r["project_id"] for r in report["runs"]} == {"train", f"mlflow-registry/{MODEL}"}
    assert runs["1"]["status"] == "moved" and runs["2"]["status"] == "moved"
    assert runs["1"]["files"] == 2 and runs["2"]["files"] == 1
    transformed = runs["1"]["transformations"]
    assert "model_version_source_relocated" in transformed and "registry_times_in_tag" in transformed
    assert "model_version_renumbered" not in transformed
    assert any("'empty' has no version" in note for note in report["notes"]), report["notes"]
    _check_copy(src_uri, dst_uri, src_run, tmp_path)

    code, report, out = run_cli("copy", f"mlflow:{src_uri}", f"mlflow:{dst_uri}")
    assert code == 0, out
    assert {r["status"] for r in report["runs"]} == {"skipped"}, out
    assert len(MlflowClient(dst_uri).search_model_versions(f"name = '{MODEL}'")) == 2

    code, report, out = run_cli("verify", f"mlflow:{src_uri}", f"mlflow:{dst_uri}")
    assert code == 0, out


def test_mlflow_to_parquet_to_mlflow_gives_the_same(tmp_path):
    src_uri, src_run = _source_store(tmp_path)
    export = tmp_path / "export"
    code, report, out = run_cli("export", f"mlflow:{src_uri}", str(export))
    assert code == 0, out
    # a format extension: one folder down, where neptune-exporter's readers do not look
    assert list((export / "data").glob("mlflow-registry_clf-*/extensions/*_part_0.parquet"))
    assert not list((export / "data").glob("mlflow-registry_clf-*/*_part_0.parquet"))
    assert not any(p[0].startswith("mlflow-registry/") for p in read_plain_export(export))
    dst_uri = f"sqlite:///{tmp_path / 'dst.db'}"
    code, report, out = run_cli("load", str(export), f"mlflow:{dst_uri}")
    assert code == 0, out
    _check_copy(src_uri, dst_uri, src_run, tmp_path)
    code, report, out = run_cli("load", str(export), f"mlflow:{dst_uri}")
    assert code == 0, out
    assert {r["status"] for r in report["runs"]} == {"skipped"}, out
    code, report, out = run_cli("verify", str(export), f"mlflow:{dst_uri}")
    assert code == 0, out
    # A direct copy into the same store afterwards finds the same versions (one origin).
    code, report, out = run_cli("copy", f"mlflow:{src_uri}", f"mlflow:{dst_uri}")
    assert code == 0, out
    assert {r["status"] for r in report["runs"]} == {"skipped"}, out


def test_version_whose_run_is_not_copied_fails_naming_the_run_and_the_fix(tmp_path):
    src_uri, src_run = _source_store(tmp_path)
    dst_uri = f"sqlite:///{tmp_path / 'dst.db'}"
    code, report, out = run_cli("copy", f"mlflow:{src_uri}", f"mlflow:{dst_uri}",
                                "--project", f"mlflow-registry/{MODEL}")
    assert code == 1, out
    runs = runs_by_id(report)
    assert runs["1"]["status"] == "failed"
    assert f"train/{src_run}" in runs["1"]["error"] and "--project" in runs["1"]["error"]
    assert runs["2"]["status"] == "moved"
    # Copying the run, then the same command again, makes version 1 linked to it.
    code, report, out = run_cli("copy", f"mlflow:{src_uri}", f"mlflow:{dst_uri}")
    assert code == 0, out
    dst = MlflowClient(dst_uri)
    versions = {str(v.version): v for v in dst.search_model_versions(f"name = '{MODEL}'")}
    assert sorted(versions) == ["1", "2"]
    # Version 2 went first this time, so MLflow numbered the source's version 1 as 2: declared.
    linked = [v for v in versions.values() if v.tags["trackport.origin.run_id"] == "1"][0]
    assert str(linked.version) == "2"
    renumbered = runs_by_id(report)["1"]["transformations"]["model_version_renumbered"]
    assert renumbered == 1, renumbered
    assert linked.run_id == dst.search_runs([dst.get_experiment_by_name("train").experiment_id])[0].info.run_id
    code, report, out = run_cli("verify", f"mlflow:{src_uri}", f"mlflow:{dst_uri}")
    assert code == 0, out


def test_file_store_registry_is_read_without_changing_the_store(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    store = tmp_path / "mlruns"
    client = MlflowClient(store.as_uri())
    eid = client.create_experiment("train")
    run = client.create_run(eid, start_time=1_000, run_name="fit")
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "MLmodel").write_text("flavors: {}\n")
    client.log_artifacts(run.info.run_id, str(tmp_path / "m"), "model")
    client.set_terminated(run.info.run_id, "FINISHED", end_time=2_000)
    client.create_registered_model(MODEL, description="from a file store")
    client.create_model_version(MODEL, f"{run.info.artifact_uri}/model", run_id=run.info.run_id,
                                description="only")
    client.set_registered_model_alias(MODEL, "champion", "1")
    before = {str(p.relative_to(store)): p.stat().st_mtime_ns for p in store.rglob("*")}

    dst_uri = f"sqlite:///{tmp_path / 'dst.db'}"
    code, report, out = run_cli("copy", f"mlflow:{store}", f"mlflow:{dst_uri}")
    assert code == 0, out
    assert {str(p.relative_to(store)): p.stat().st_mtime_ns for p in store.rglob("*")} == before
    dst = MlflowClient(dst_uri)
    got = dst.get_model_version(MODEL, "1")
    assert got.description == "only" and list(got.aliases) == ["champion"]
    assert got.run_id == dst.search_runs([dst.get_experiment_by_name("train").experiment_id])[0].info.run_id
    assert dst.get_registered_model(MODEL).description == "from a file store"
    code, report, out = run_cli("verify", f"mlflow:{store}", f"mlflow:{dst_uri}")
    assert code == 0, out
