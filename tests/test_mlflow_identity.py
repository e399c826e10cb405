"""MLflow -> MLflow is the identity (issue 25 item 2), and names that collide in an MLflow
run lose nothing (issue 15 item 13).

Everything goes through the real CLI into real stores (SQLite, and the session's tracking
server), and is compared with MlflowClient: what a user of the destination sees.
"""

from __future__ import annotations

import os
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path

import pytest
from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from support import canonical_rows, read_plain_export, run_cli, runs_by_id
from trackport.connectors.mlflow.mapping import CAPABILITIES as MLFLOW_CAPABILITIES
from trackport.connectors.mlflow.manifest import MANIFEST_PATH, Manifest
from trackport.connectors.mlflow.tags import TAG_MANIFEST, origin_key_tag
from trackport.core.layout import safe
from trackport.core.schema import rows_to_table
from trackport.testing.corpus import CorpusRun
from trackport.testing.exporter_layout import write_exporter_export

# What the destination adds to a run trackport wrote, and why (docs/mlflow.md): the origin
# (how a rerun finds the run), the step multiplier, the completion mark, and the source's
# version of the run (for refreshing changed runs).
TRACKPORT_TAGS = {"trackport.origin.uri", "trackport.origin.project", "trackport.origin.run_id",
                  "trackport.step_multiplier", "trackport.complete", "trackport.source_version",
                  "trackport.fork.parent_run_id", "trackport.fork.step", "trackport.attributes"}


def _source_store(tmp_path) -> tuple[str, dict[str, str]]:
    """A foreign MLflow store: a parent run (with a dataset input and a system metric), a
    nested child, a killed run, with MLflow's own system tags as `mlflow.start_run` sets them."""
    uri = f"sqlite:///{tmp_path / 'src.db'}"
    client = MlflowClient(uri)
    eid = client.create_experiment("exp", artifact_location=(tmp_path / "src-art").as_uri(),
                                   tags={"team": "nlp"})   # read as mlflow/experiment/tags/team: never a param
    system = {"mlflow.user": "ann", "mlflow.source.name": "train.py", "mlflow.source.type": "LOCAL",
              "mlflow.source.git.commit": "abc123"}
    parent = client.create_run(eid, start_time=1_000, run_name="parent", tags={**system, "team": "nlp"})
    pid = parent.info.run_id
    client.log_batch(pid, params=[Param("lr", "0.01"), Param("sys/name", "a user param"),
                                  Param("mlflow/tags/x", "also a user param")],
                     metrics=[Metric("loss", 1.0 / (i + 1), 1_000 + i, i) for i in range(5)]
                     + [Metric("system/cpu_utilization_percentage", 10.0 + i, 1_000 + i, i) for i in range(3)])
    client.log_inputs(pid, datasets=[DatasetInput(
        Dataset(name="train", digest="d1", source_type="local", source='{"uri": "/data/train.csv"}',
                schema='{"cols": ["x"]}', profile='{"rows": 10}'),
        tags=[InputTag("mlflow.data.context", "training")])])
    client.set_terminated(pid, "FINISHED", end_time=8_000)
    child = client.create_run(eid, start_time=2_000, run_name="child",
                              tags={**system, "mlflow.parentRunId": pid, "mlflow.note.content": "notes",
                                    "flagged": "", "stage": "eval"})
    cid = child.info.run_id
    client.log_batch(cid, params=[Param("layers", "3"), Param("lr", "0.02")],
                     metrics=[Metric("acc", 0.1 * i, 2_000 + i, i) for i in range(7)])
    f = tmp_path / "model.txt"
    f.write_text("weights")
    client.log_artifact(cid, str(f), "model")
    client.set_terminated(cid, "FAILED", end_time=9_000)
    killed = client.create_run(eid, start_time=3_000, run_name="killed", tags=system)
    kid = killed.info.run_id
    client.log_param(kid, "epochs", "10")
    client.set_terminated(kid, "KILLED", end_time=4_000)
    return uri, {"parent": pid, "child": cid, "killed": kid}


def _dest_runs(client: MlflowClient, experiment: str) -> dict[str, object]:
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None
    runs = client.search_runs([exp.experiment_id])
    return {r.data.tags["trackport.origin.run_id"]: r for r in runs}


@pytest.fixture(params=["sqlite", "server"])
def destination(request, tmp_path):
    """(trackport URI, MlflowClient URI, experiment name, extra CLI args)."""
    if request.param == "sqlite":
        uri = f"sqlite:///{tmp_path / 'dst.db'}"
        return f"mlflow:{uri}", uri, "exp", []
    server = request.getfixturevalue("mlflow_server")
    name = f"identity-{os.getpid()}-{os.urandom(3).hex()}"
    return f"mlflow+{server}", server, name, ["--mlflow-experiment", name]


def test_mlflow_to_mlflow_is_the_identity(tmp_path, destination):
    src_uri, ids = _source_store(tmp_path)
    dest, dest_client_uri, experiment, args = destination
    code, report, out = run_cli("copy", f"mlflow:{src_uri}", dest, *args)
    assert code == 0, out
    src, dst = MlflowClient(src_uri), MlflowClient(dest_client_uri)
    copies = _dest_runs(dst, experiment)
    assert set(copies) == set(ids.values())
    for name, rid in ids.items():
        a, b = src.get_run(rid), copies[rid]
        assert b.data.params == a.data.params, name
        src_tags = dict(a.data.tags)
        dst_tags = dict(b.data.tags)
        added = set(dst_tags) - set(src_tags)
        # and the origin's key tag, by which the look for other writers' copies finds them
        key = origin_key_tag(dst_tags["trackport.origin.uri"], dst_tags["trackport.origin.project"], rid)
        assert added - TRACKPORT_TAGS == {key} and dst_tags[key] == "1", (name, added)
        if "mlflow.parentRunId" in src_tags:   # the parent's copy, not the source's parent
            assert dst_tags.pop("mlflow.parentRunId") == copies[src_tags.pop("mlflow.parentRunId")].info.run_id
        assert {k: v for k, v in dst_tags.items() if k not in added} == src_tags, name
        for field in ("run_name", "start_time", "end_time", "status", "user_id"):
            assert getattr(b.info, field) == getattr(a.info, field), (name, field)
        assert set(b.data.metrics) == set(a.data.metrics)
        for key in a.data.metrics:
            assert ([(m.step, m.timestamp, m.value) for m in dst.get_metric_history(b.info.run_id, key)]
                    == [(m.step, m.timestamp, m.value) for m in src.get_metric_history(rid, key)])
        assert ([(i.dataset.to_dictionary(), [(t.key, t.value) for t in i.tags]) for i in b.inputs.dataset_inputs]
                == [(i.dataset.to_dictionary(), [(t.key, t.value) for t in i.tags]) for i in a.inputs.dataset_inputs])
        user_artifacts = {f.path for f in dst.list_artifacts(b.info.run_id) if f.path != "trackport"}
        assert user_artifacts == {f.path for f in src.list_artifacts(rid)}

    code, report, out = run_cli("verify", f"mlflow:{src_uri}", dest, *args)
    assert code == 0, out

    # A param added by hand in the destination is a difference, named.
    dst.log_param(copies[ids["child"]].info.run_id, "added_by_hand", "1")
    code, report, out = run_cli("verify", f"mlflow:{src_uri}", dest, *args)
    assert code == 1, out
    child = runs_by_id(report)[ids["child"]]
    assert "added_by_hand" in child["error"], child


# ---------------------------------------------------------------------------
# names that collide in an MLflow run (issue 15 item 13)


def _file(path: str, source: str, attribute_type: str = "file", step=None) -> dict:
    return {"attribute_path": path, "attribute_type": attribute_type, "step": step,
            "file_value": {"path": source}}


_P, _R = "ws/proj", "RUN-1"
_BIG_MANIFEST = b'{"format": "trackport.mlflow.attributes", "version": 1, "attributes": {}}' + b" " * 300_000

# case -> (rows, files, how many attributes get renamed)
COLLISIONS = {
    # `a` takes the extension of its file: a.txt, which is also attribute `a.txt`'s artifact
    "extension": ([_file("a", f"{_P}/{_R}/a/model.txt"), _file("a.txt", f"{_P}/{_R}/a.txt")],
                  {f"{_P}/{_R}/a/model.txt": b"from a", f"{_P}/{_R}/a.txt": b"from a.txt"}, 1),
    # a file attribute on the artifact of the string series `log`
    "series": ([_file("series/log", f"{_P}/{_R}/series/log.jsonl")]
               + [{"attribute_path": "log", "attribute_type": "string_series", "step": Decimal(i),
                   "timestamp": datetime(2024, 1, 1, tzinfo=timezone.utc), "string_value": f"line {i}"}
                  for i in range(3)],
               {f"{_P}/{_R}/series/log.jsonl": b'{"step": "0", "timestamp": 0, "value": "planted"}\n'}, 1),
    # a (large) file attribute on trackport's own manifest
    "manifest": ([_file("trackport/attributes", f"{_P}/{_R}/trackport/attributes.json"),
                  {"attribute_path": "config/lr", "attribute_type": "float", "float_value": 0.1}],
                 {f"{_P}/{_R}/trackport/attributes.json": _BIG_MANIFEST}, 1),
    # a file inside another attribute's file_set folder, and one where a file series has a folder
    "inside": ([_file("files/set", f"{_P}/{_R}/set", "file_set"),
                _file("files/set/extra.txt", f"{_P}/{_R}/extra.txt"),
                _file("imgs", f"{_P}/{_R}/imgs"),      # no extension: artifact `imgs`, a file
                _file("imgs/x", f"{_P}/{_R}/x/0.png", "file_series", Decimal(0))],
               {f"{_P}/{_R}/set/a.txt": b"A", f"{_P}/{_R}/set/sub/b.txt": b"BB",
                f"{_P}/{_R}/extra.txt": b"extra", f"{_P}/{_R}/imgs": b"png",
                f"{_P}/{_R}/x/0.png": b"step 0"}, 2),
}


@pytest.mark.parametrize("case", sorted(COLLISIONS))
def test_colliding_artifact_names_lose_nothing(case, tmp_path):
    rows, files, renamed = COLLISIONS[case]
    table = rows_to_table(rows, {"project_id": _P, "run_id": _R})
    src = tmp_path / "src"
    write_exporter_export(src, [CorpusRun(_P, _R, table, files, case)])
    db = tmp_path / "dst.db"
    dest = f"mlflow:sqlite:///{db}"

    code, report, out = run_cli("plan", str(src), dest)   # shown before anything is written
    assert code == 0, out
    assert report["totals"]["transformations"].get("file_path_collision_renamed") == renamed, report

    code, report, out = run_cli("copy", str(src), dest)
    assert code == 0, out
    assert report["totals"]["transformations"].get("file_path_collision_renamed") == renamed, report
    assert "file_path_collision_renamed" in MLFLOW_CAPABILITIES.transformations

    # What MLflow holds: every file under its own artifact, trackport's manifest intact.
    client = MlflowClient(f"sqlite:///{db}")
    run = client.search_runs([client.get_experiment_by_name(_P).experiment_id])[0]
    assert run.data.tags["trackport.complete"] == "true"
    text = run.data.tags.get(TAG_MANIFEST) or Path(
        client.download_artifacts(run.info.run_id, MANIFEST_PATH, str(tmp_path))).read_text()
    manifest = Manifest.loads(text)
    artifacts = [f[3] for e in manifest.attributes.values() for f in e.files]
    assert len(set(artifacts)) == len(artifacts) and not any(a.startswith("trackport/") for a in artifacts)

    # Read back through the MLflow source: the exact attribute paths and bytes.
    back = tmp_path / "back"
    code, _, out = run_cli("export", dest, str(back))
    assert code == 0, out
    got = read_plain_export(back)[(_P, _R)]
    assert canonical_rows(got) == canonical_rows(table)
    project_files = back / "files" / safe(_P)
    for rel, data in files.items():
        assert (project_files / rel).read_bytes() == data, rel

    code, report, out = run_cli("verify", str(src), dest)
    assert code == 0, out


def test_artifact_layout_renames_deterministically():
    from trackport.connectors.mlflow.artifacts import ArtifactLayout
    from trackport.connectors.mlflow.keys import KeyMap, short_hash

    files = [("trackport/attributes", "file", None, "x/attributes.json"),
             ("a", "file", None, "x/model.txt"), ("a.txt", "file", None, "x/a.txt"),
             ("series/log", "file", None, "x/log.jsonl"), ("imgs", "file_series", Decimal("1.5"), "x/0.png")]
    paths = [f[0] for f in files] + ["log"]
    for order in (files, files[::-1]):
        layout = ArtifactLayout.of_scan(KeyMap(paths), ["log"], order)
        assert layout.renamed == {"a": f"a--{short_hash('a')}",
                                  "series/log": f"series/log--{short_hash('series/log')}",
                                  "trackport/attributes": f"trackport--{short_hash('trackport/attributes')}/attributes"}
        assert layout.roots["a.txt"] == "a.txt" and layout.roots["imgs"] == "imgs"


def test_an_empty_run_name_is_shown_as_the_run_id_declared_and_read_back_empty(tmp_path):
    """MLflow gives a nameless run a random name: trackport shows the source run id instead,
    counts it, and reads the empty name back exactly."""
    from trackport.testing.corpus import CorpusRun, rows_table
    from trackport.testing.exporter_layout import write_exporter_export

    export = tmp_path / "export"
    write_exporter_export(export, [CorpusRun("p", "NAMELESS", rows_table("p", "NAMELESS", [
        {"path": "sys/name", "type": "string", "value": ""},
        {"path": "config/lr", "type": "float", "value": 0.1}]))])
    dest = f"mlflow:sqlite:///{tmp_path / 'dest.db'}"
    code, report, out = run_cli("plan", str(export), dest)
    assert report["runs"][0]["transformations"].get("run_name_from_id") == 1, out
    code, report, out = run_cli("copy", str(export), dest)
    assert code == 0, out
    assert report["runs"][0]["transformations"].get("run_name_from_id") == 1
    from mlflow.tracking import MlflowClient

    (run,) = MlflowClient(dest.split(":", 1)[1]).search_runs(
        [e.experiment_id for e in MlflowClient(dest.split(":", 1)[1]).search_experiments()])
    assert run.info.run_name == "NAMELESS"
    code, report, out = run_cli("verify", str(export), dest)
    assert code == 0, out
