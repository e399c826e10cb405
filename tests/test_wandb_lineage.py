"""W&B artifacts through the API source, with their lineage and registry links (issue 20).

Runs are written by the real wandb SDK 0.31 ONLINE against tests/wandb_server.py (history,
a `define_metric(..., step_metric="epoch")` axis); the artifact versions they logged and used
are held by that server as W&B would after `log_artifact` / `use_artifact` / `link_artifact`
(files, manifest, W&B's digest of it, aliases, the consumer run, the registry link), read by
the real `wandb.Api` (RunOutputArtifacts, RunInputArtifacts, FetchArtifactManifest,
GetArtifactMembershipFileUrls, FetchLinkedArtifacts and the file downloads).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pyarrow.compute as pc
import pytest

from support import copy_verify_rerun, read_plain_export, run_cli
from trackport.connectors.wandb import artifacts as am
from trackport.connectors.wandb.client import internal_pb2
from trackport.connectors.wandb.offline_artifacts import scan
from wandb_server import FakeArtifact, wandb_server  # noqa: F401  (fixture)

ENTITY, PROJECT = "acme", "lineage"
PRODUCER, CONSUMER = "prod0001", "cons0001"
REGISTRY = f"{ENTITY}/model-registry/resnet-models"
MODEL_FILES = {"weights.bin": bytes(range(256)) * 40, "conf/config.json": b'{"depth": 50}'}
DATA_FILES = {"train.csv": b"x,y\n1,2\n", "test.csv": b"x,y\n3,4\n"}
AXIS = '{"step_metric":"epoch","step_sync":true}'

_CHILD = textwrap.dedent('''
    import sys
    from trackport.connectors.wandb.client import import_wandb
    wandb = import_wandb()
    root, run_id, axis = sys.argv[1], sys.argv[2], sys.argv[3] == "axis"
    settings = wandb.Settings(mode="online", x_disable_meta=True, save_code=False, x_disable_stats=True,
                              console="off", silent=True)
    run = wandb.init(project="PROJECT", entity="ENTITY", id=run_id, dir=root, settings=settings)
    if axis:
        run.define_metric("val/acc", step_metric="epoch")
    for i in range(4):
        run.log({"loss": 1.0 / (i + 1), "epoch": i // 2, "val/acc": 0.5 + i / 10}, step=i)
    run.finish()
''').replace("PROJECT", PROJECT).replace("ENTITY", ENTITY)


def _write_run(root: Path, run_id: str, axis: bool) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "PLUTO_"))}
    env.update({k: os.environ[k] for k in ("WANDB_BASE_URL", "WANDB_API_KEY")})
    env["WANDB_SILENT"] = "true"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).parent.parent / "src"),
                                                      env.get("PYTHONPATH", "")]))
    subprocess.run([sys.executable, "-c", _CHILD, str(root), run_id, "axis" if axis else "-"], check=True,
                   env=env, timeout=120, capture_output=True)


def _model() -> FakeArtifact:
    return FakeArtifact(ENTITY, PROJECT, "resnet", "model", dict(MODEL_FILES), PRODUCER,
                        aliases=["latest", "best"], description="the best checkpoint",
                        metadata={"acc": 0.91}, links=[(REGISTRY, ["production"])])


def _dataset() -> FakeArtifact:
    return FakeArtifact(ENTITY, PROJECT, "cifar", "dataset", dict(DATA_FILES), PRODUCER, consumers=[CONSUMER])


@pytest.fixture
def lineage_project(wandb_server, tmp_path):  # noqa: F811
    """A producer run (custom axis) logging a model and a dataset, a consumer of the dataset,
    the model linked into a registry collection."""
    _write_run(tmp_path / "sdk", PRODUCER, axis=True)
    _write_run(tmp_path / "sdk", CONSUMER, axis=False)
    wandb_server.artifacts += [_model(), _dataset()]
    return wandb_server


def _singles(table) -> dict:
    rows = table.filter(pc.is_null(table.column("step"))).to_pylist()
    return {r["attribute_path"]: r for r in rows if r["attribute_type"] not in ("file",)}


def _value(row: dict):
    return row["string_set_value"] if row["attribute_type"] == "string_set" else row[
        {"string": "string_value", "int": "int_value"}.get(row["attribute_type"], "string_value")]


def _assert_canonical(tables: dict, files_root: Path) -> None:
    """The entries, their bytes and lineage, the consumer's used artifacts, the axis."""
    model, data = _model(), _dataset()
    producer = f"{ENTITY}/{PROJECT}"
    for art, files in ((model, MODEL_FILES), (data, DATA_FILES)):
        table = tables[(am.project_of(ENTITY, PROJECT, art.name), art.digest)]
        single = {p: _value(r) for p, r in _singles(table).items()}
        assert (single[am.NAME], single[am.TYPE], single[am.DIGEST]) == (art.name, art.type, art.digest)
        assert set(single[am.ALIASES]) == set(art.aliases)
        assert (single[am.PRODUCER_PROJECT], single[am.PRODUCER_RUN]) == (producer, PRODUCER)
        file_rows = table.filter(pc.equal(table.column("attribute_type"), "file")).to_pylist()
        assert sorted(r["attribute_path"] for r in file_rows) == sorted(am.FILES + p for p in files)
        for r in file_rows:   # byte-identical
            (got,) = files_root.glob(f"*/{r['file_value']['path']}")
            assert got.read_bytes() == files[r["attribute_path"][len(am.FILES):]]
        if art is model:
            assert json.loads(single[am.METADATA]) == {"acc": 0.91}
            assert single[am.DESCRIPTION] == "the best checkpoint"
            assert am.links_of(single[am.LINKS]) == [am.Link(REGISTRY, ("production",))]
        else:
            assert am.LINKS not in single
    consumer = {p: _value(r) for p, r in _singles(tables[(producer, CONSUMER)]).items()}
    assert consumer[am.USED_ARTIFACTS] == [am.version_ref(ENTITY, PROJECT, "cifar", data.digest)]
    prod = {p: _value(r) for p, r in _singles(tables[(producer, PRODUCER)]).items()}
    assert am.USED_ARTIFACTS not in prod
    assert prod["wandb/define_metric/val/acc"] == AXIS


def test_the_api_source_reads_logged_and_used_artifacts_and_links(lineage_project, tmp_path):
    out = tmp_path / "export"
    code, report, text = run_cli("export", f"wandb://{ENTITY}/{PROJECT}", str(out))
    assert code == 0, text
    tables = read_plain_export(out, extensions=True)
    assert len(tables) == 4, sorted(tables)          # two runs, two versions
    _assert_canonical(tables, out / "files")
    ops = lineage_project.operations()
    assert {"RunOutputArtifacts", "RunInputArtifacts", "FetchArtifactManifest", "GetArtifactMembershipFileUrls",
            "FetchLinkedArtifacts"} <= set(ops)
    assert ops.count("artifact:files/weights.bin") == 1      # downloaded once

    # `--classes artifacts`: the versions alone, and plan shows what they weigh first
    code, report, text = run_cli("plan", f"wandb://{ENTITY}/{PROJECT}", str(tmp_path / "p"), "--classes", "artifacts")
    assert code == 0, text
    assert sorted(r["project_id"] for r in report["runs"]) == sorted(
        am.project_of(ENTITY, PROJECT, n) for n in ("resnet", "cifar"))
    from click.testing import CliRunner

    from trackport.cli import cli

    result = CliRunner().invoke(cli, ["plan", f"wandb://{ENTITY}/{PROJECT}", str(tmp_path / "q"), "--no-progress"])
    assert result.exit_code == 0, result.output
    size = sum(map(len, MODEL_FILES.values())) + sum(map(len, DATA_FILES.values()))
    lines = result.output.splitlines()
    sizes = next(i for i, line in enumerate(lines) if line.startswith("artifact and model versions: "))
    assert lines[sizes].startswith(f"artifact and model versions: 2, 4 files, {size / 1000:,.1f} KB"), lines[sizes]
    assert sizes < next(i for i, line in enumerate(lines) if "project" in line and "run" in line)


def test_a_project_with_artifacts_a_registry_link_and_an_axis_goes_to_mlflow_and_back_to_wandb(
        lineage_project, tmp_path, mlflow_sqlite_uri, monkeypatch):
    """Issue 20's "done when", W&B parts: W&B (API) -> MLflow -> W&B offline, and -> W&B ONLINE
    (the stand-in server takes wandb-core's artifact write path: real log/use/link)."""
    src = f"wandb://{ENTITY}/{PROJECT}"
    mlflow = f"mlflow:{mlflow_sqlite_uri}"
    copy_verify_rerun(src, mlflow, runs=4)
    back = tmp_path / "from-mlflow"
    code, report, text = run_cli("export", mlflow, str(back))
    assert code == 0, text
    _assert_canonical(read_plain_export(back, extensions=True), back / "files")

    monkeypatch.setenv("WANDB_DATA_DIR", str(tmp_path / "sink-data"))   # where the SDK stages artifacts
    dest = ("wandb://ent/copied", "--wandb-mode", "offline", "--wandb-dir", str(tmp_path / "wb"))
    report = copy_verify_rerun(mlflow, *dest, runs=4)
    transformed = {r["run_id"]: r.get("transformations", {}) for r in report["runs"]}
    assert transformed[CONSUMER].get("artifact_use_recorded") == 1
    assert transformed[_model().digest].get("artifact_link_recorded") == 1
    # W&B logged the versions again: same names, digests, aliases and bytes
    logged = {loc.artifact.name: loc.artifact for log in sorted((tmp_path / "wb" / "wandb").glob("offline-run-*/*.wandb"))
              for loc in scan(internal_pb2(), log, "-", "-")}
    for art, files in ((_model(), MODEL_FILES), (_dataset(), DATA_FILES)):
        got = logged[art.name]
        assert (got.type, got.digest, set(got.aliases)) == (art.type, art.digest, set(art.aliases))
        assert {e.path: Path(e.local_path).read_bytes() for e in got.entries} == files
    # read back: lineage, link and axis as the source had them
    again = tmp_path / "again"
    code, report, text = run_cli("export", f"wandb:{tmp_path / 'wb'}", str(again))
    assert code == 0, text
    _assert_canonical(read_plain_export(again, extensions=True), again / "files")

    # -> W&B ONLINE: the versions logged again, the consumer's use and the registry link made
    # by the real SDK (CreateArtifact ... CommitArtifact, UseArtifact, LinkArtifact)
    lineage_project.requests.clear()
    report = copy_verify_rerun(mlflow, "wandb://ent/copied", "--wandb-dir", str(tmp_path / "wbo"), runs=4)
    for run in report["runs"]:
        assert not {"artifact_use_recorded", "artifact_link_recorded"} & set(run.get("transformations", {})), run
    assert lineage_project.operations(400) == [] and lineage_project.operations(404) == []
    assert {"CreateArtifact", "CreateArtifactManifest", "CreateArtifactFiles", "CommitArtifact", "UseArtifact",
            "LinkArtifact"} <= set(lineage_project.operations(200))
    _assert_online_lineage(tmp_path / "dl")


def _assert_online_lineage(download: Path) -> None:
    """What `wandb.Api` reads of `ent/copied`: the versions (digests, aliases, bytes), the
    consumer's used version, the model's registry link."""
    from trackport.connectors.wandb import mapping as mp
    from trackport.connectors.wandb.client import import_wandb

    api = import_wandb().Api()
    runs = {mp.origin_from_config(r.config): r for r in api.runs("ent/copied")}
    logged = {a.source_name.split(":")[0]: a for r in runs.values() for a in r.logged_artifacts()}
    assert sorted(logged) == ["cifar", "resnet"]
    for art, files in ((_model(), MODEL_FILES), (_dataset(), DATA_FILES)):
        got = logged[art.name]
        assert (got.type, got.digest, set(got.aliases)) == (art.type, art.digest, set(art.aliases))
        assert (got.source_entity, got.source_project) == ("ent", "copied")
        root = Path(got.download(root=str(download / art.name), skip_cache=True))
        assert {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()} == files
        # the carrying run is the version's entry: it logged it
        assert mp.origin_from_config(next(r for r in runs.values() if any(
            a.digest == art.digest for a in r.logged_artifacts())).config) == (
            am.project_of(ENTITY, PROJECT, art.name), art.digest)
    consumer = runs[(f"{ENTITY}/{PROJECT}", CONSUMER)]
    assert [(a.source_name.split(":")[0], a.digest) for a in consumer.used_artifacts()] == [
        ("cifar", _dataset().digest)]
    assert not list(runs[(f"{ENTITY}/{PROJECT}", PRODUCER)].used_artifacts())
    model = logged["resnet"]
    assert model.metadata == {"acc": 0.91} and model.description == "the best checkpoint"
    links = [(f"{link.entity}/{link.project}/{link.name.split(':')[0]}",
              sorted(a for a in link.aliases if not a.startswith("v"))) for link in model.linked_artifacts]
    assert links == [("ent/model-registry/resnet-models", ["production"])]
    assert not list(logged["cifar"].linked_artifacts)


def test_online_wandb_records_a_use_copied_before_its_version_and_counts_one_never_copied(lineage_project, tmp_path):
    """W&B (API) -> W&B ONLINE, one run at a time, the consumer first: its version is not in the
    destination yet, so its use is recorded once the version is logged (the public API's
    `Run.use_artifact` on the consumer's copy).  A copy without the versions keeps the use a value."""
    runs = lineage_project.entities[ENTITY][PROJECT]
    runs.sort(key=lambda r: r.id != CONSUMER)
    src = f"wandb://{ENTITY}/{PROJECT}"
    report = copy_verify_rerun(src, "wandb://ent/copied", "--workers", "1", "--wandb-dir", str(tmp_path / "wbo"),
                               runs=4)
    assert [r["run_id"] for r in report["runs"]][0] == CONSUMER
    for run in report["runs"]:
        assert not {"artifact_use_recorded", "artifact_link_recorded"} & set(run.get("transformations", {})), run
    # recorded by the public API's Run.use_artifact, which names the use (wandb/apis/public/runs.py:1517)
    (use,) = [u for u in lineage_project.uses if u["entityName"] == "ent"]
    assert use["usedAs"] == "cifar:v0"
    _assert_online_lineage(tmp_path / "dl")

    code, report, text = run_cli("copy", src, "wandb://ent/runs-only", "--project", f"{ENTITY}/{PROJECT}",
                                 "--wandb-dir", str(tmp_path / "wbo"))
    assert code == 0 and report["totals"]["moved"] == 2, text
    transformed = {r["run_id"]: r.get("transformations", {}) for r in report["runs"]}
    assert transformed[CONSUMER].get("artifact_use_recorded") == 1
    assert not transformed[PRODUCER].get("artifact_use_recorded")

