"""The `neptune2://` source's model registry: models and model versions, moved as runs.

The REAL `neptune` 1.x client does the work: `init_project(...).fetch_models_table`,
`init_model(with_id=..., mode="read-only").fetch_model_versions_table`, `init_model` /
`init_model_version` read-only handles and their attributes (values, series, file downloads),
its `Table` / `to_pandas` and its NQL building.  What stands in for the hosted 2.x service is
`Registry` below: the client's own in-memory backend (neptune/internal/backends/
neptune_backend_mock.py, what `mode="debug"` uses), shared by every handle of a test and given
what the mock lacks: `search_leaderboard_entries` (the mock returns nothing), lookup of a
container by its `sys/id`, and model version ids of the form `<model id>-<n>` with
`sys/model_id` set to the model's id (the mock names every version `...-None-<n>` under a fixed
model).  The client is pointed at it the way tests/neptune_support.py points its async writer
at the mock: by replacing the backend factory the containers call.  Neither the swagger HTTP
protocol nor the service's NQL evaluation is exercised (only the queries the client builds are
recorded and checked).
"""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from trackport.core.model import Selection
from trackport.core.registry import ParsedUri
from trackport.core.report import RunReport

from trackport.connectors.neptune.api import mapping as am

PROJECT = "ws/proj"


# -- the stand-in for the 2.x service ----------------------------------------------------
def _registry_backend():
    from neptune.exceptions import ModelNotFound, ModelVersionNotFound, RunNotFound
    from neptune.internal.backends.api_model import (
        ApiExperiment,
        AttributeType,
        AttributeWithProperties,
        LeaderboardEntry,
    )
    from neptune.internal.backends.neptune_backend_mock import NeptuneBackendMock
    from neptune.internal.container_type import ContainerType
    from neptune.internal.id_formats import SysId, UniqueId
    from neptune.internal.types.file_types import FileType
    from neptune.types.atoms.file import File
    from neptune.types.atoms.string import String

    not_found = {ContainerType.MODEL: ModelNotFound, ContainerType.MODEL_VERSION: ModelVersionNotFound}

    class Registry(NeptuneBackendMock):
        WORKSPACE_NAME = "ws"
        PROJECT_NAME = "proj"
        PROJECT_KEY = SysId("PROJ")

        def __init__(self):
            super().__init__()
            self.searches: list[tuple[list[str], str]] = []   # (container types, NQL) as the client sent them
            self.trashed: set[str] = set()

        def _sys_id(self, container) -> str:
            return container.get(["sys", "id"]).value

        def get_metadata_container(self, container_id, expected_container_type):
            sys_id = str(container_id).rsplit("/", 1)[-1]
            for (uid, kind), container in self._containers.items():
                if kind == expected_container_type and self._sys_id(container) == sys_id:
                    return ApiExperiment(id=uid, type=kind, sys_id=SysId(sys_id), workspace=self.WORKSPACE_NAME,
                                         project_name=self.PROJECT_NAME, trashed=sys_id in self.trashed)
            raise not_found.get(expected_container_type, RunNotFound)(container_id)

        def create_model_version(self, project_id, model_id):
            model_sys_id = self._sys_id(self._containers[(model_id, ContainerType.MODEL)])
            sys_id = SysId(f"{model_sys_id}-{self._next_model_version[model_id]}")
            self._next_model_version[model_id] += 1
            uid = UniqueId(str(uuid.uuid4()))
            self._create_container(uid, ContainerType.MODEL_VERSION, sys_id=sys_id)
            self._containers[(uid, ContainerType.MODEL_VERSION)].set(["sys", "model_id"], String(model_sys_id))
            return ApiExperiment(id=uid, type=ContainerType.MODEL_VERSION, sys_id=sys_id,
                                 workspace=self.WORKSPACE_NAME, project_name=self.PROJECT_NAME, trashed=False)

        def _execute_operation(self, container_id, container_type, op, operation_storage):
            # a server keeps an upload's bytes; the mock keeps the path of the client's temporary
            # copy, which the client removes when the handle stops
            super()._execute_operation(container_id, container_type, op, operation_storage)
            container = self._containers[(container_id, container_type)]
            held = container.get(op.path)
            if isinstance(held, File) and held.file_type is FileType.LOCAL_FILE:
                container.set(op.path, File.from_content(Path(held.path).read_bytes(), extension=held.extension))

        def search_leaderboard_entries(self, project_id, types=None, query=None, columns=None, limit=None,
                                       sort_by="sys/creation_time", ascending=False, progress_bar=None):
            nql = str(query)
            self.searches.append(([t.value for t in types or []], nql))
            trashed_only_live = "`sys/trashed`:bool = false" in nql
            for (uid, kind), container in list(self._containers.items()):
                if types and kind not in types:
                    continue
                sys_id = self._sys_id(container)
                if trashed_only_live and sys_id in self.trashed:
                    continue
                if kind == ContainerType.MODEL_VERSION:
                    model_id = container.get(["sys", "model_id"]).value
                    if f'`sys/model_id`:string = "{model_id}"' not in nql:
                        continue
                created = container.get(["sys", "creation_time"]).value
                yield LeaderboardEntry(uid, [
                    AttributeWithProperties("sys/id", AttributeType.STRING, {"value": sys_id}),
                    AttributeWithProperties("sys/creation_time", AttributeType.DATETIME,
                                            {"value": created.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"})])

    return Registry()


@pytest.fixture
def registry(monkeypatch):
    """A project with one run, two models and three versions, written by the real client."""
    pytest.importorskip("neptune")
    import neptune
    import neptune.metadata_containers.metadata_container as mc
    from neptune.types import File

    server = _registry_backend()
    monkeypatch.setattr(mc, "get_backend", lambda mode, api_token=None, proxies=None: server)
    monkeypatch.setenv("NEPTUNE_API_TOKEN", "token-of-the-test")
    quiet = dict(project=PROJECT, mode="debug")
    run = neptune.init_run(capture_stdout=False, capture_stderr=False, capture_hardware_metrics=False,
                           capture_traceback=False, git_ref=False, source_files=[], **quiet)
    run["params/lr"] = 0.1
    run.stop()
    model = neptune.init_model(key="MOD", **quiet)
    model["sys/name"] = "resnet"
    model["params/framework"] = "torch"
    model["signature"].upload(File.from_content(b'{"inputs": 3}', extension="json"))
    model.stop()
    neptune.init_model(key="OLD", **quiet).stop()
    for i in range(2):
        version = neptune.init_model_version(model="PROJ-MOD", **quiet)
        version["run/id"] = "PROJ-1"                       # the user's link to the training run
        version["model/ckpt"].upload(File.from_content(f"weights {i}".encode(), extension="bin"))
        for step, acc in enumerate((0.5, 0.75)):
            version["val/acc"].append(acc + i, step=step)
        if i == 0:
            version.change_stage("production")
        version.stop()
    neptune.init_model_version(model="PROJ-OLD", **quiet).stop()
    server.trashed.add("PROJ-OLD")
    return server


def source2(**options):
    from trackport.connectors.neptune.api.source2 import open_api2_source

    uri = f"neptune2://{PROJECT}"
    return open_api2_source(ParsedUri("neptune2", uri.split(":", 1)[1], uri), options)


def read_all(source, ref, select=None) -> pa.Table:
    return pa.concat_tables(list(source.read_run(ref, select or Selection())))


def value(table: pa.Table, path: str):
    rows = [r for r in table.to_pylist() if r["attribute_path"] == path]
    assert len(rows) == 1, (path, rows)
    row = rows[0]
    return next(row[c] for c in ("string_value", "float_value", "int_value", "bool_value", "datetime_value",
                                 "string_set_value", "file_value") if row[c] is not None)


# -- pure mapping -------------------------------------------------------------------------------
def test_registry_entities_from_a_table_frame_keep_their_neptune_ids():
    got = am.entities_from_table(PROJECT, am.MODEL_VERSION, ["PROJ-MOD-2", None, float("nan"), "PROJ-MOD-10"])
    assert [(e.run_id, e.sys_id, e.container) for e in got] == [("PROJ-MOD-2", "PROJ-MOD-2", "model_version"),
                                                                 ("PROJ-MOD-10", "PROJ-MOD-10", "model_version")]
    with pytest.raises(ValueError):
        am.entities_from_table(PROJECT, "run", ["PROJ-1"])
    kind = am.container_type_table(PROJECT, "PROJ-MOD", am.MODEL).to_pylist()
    assert [(r["attribute_path"], r["attribute_type"], r["string_value"]) for r in kind] == [
        ("sys/container_type", "string", "model")]
    assert am.local_file_path("PROJ-MOD-1", "model/ckpt", suffix=".bin", container=am.MODEL_VERSION) == \
        "model_versions/PROJ-MOD-1/model/ckpt.bin"


# -- listing through the real client ------------------------------------------------------------
def test_models_then_versions_are_listed_after_the_runs_and_trashed_models_left_out(registry):
    source = source2()
    refs = list(source.list_runs(Selection()))
    assert [(r.run_id, r.locator.container) for r in refs] == [
        ("PROJ-1", None), ("PROJ-MOD", "model"), ("PROJ-MOD-1", "model_version"), ("PROJ-MOD-2", "model_version")]
    # what the client asked: models not trashed, then the versions of each listed model
    model_searches = [q for types, q in registry.searches if types == ["model"]]
    version_searches = [q for types, q in registry.searches if types == ["model_version"]]
    assert model_searches == ["(`sys/trashed`:bool = false)"]
    assert version_searches == ['((`sys/trashed`:bool = false) AND (`sys/model_id`:string = "PROJ-MOD"))']


def test_archived_models_are_listed_on_request(registry):
    refs = [r.run_id for r in source2(neptune_archived=True).list_runs(Selection())]
    assert refs == ["PROJ-1", "PROJ-MOD", "PROJ-OLD", "PROJ-MOD-1", "PROJ-MOD-2", "PROJ-OLD-1"]
    assert [q for types, q in registry.searches if types == ["model"]] == [""]


def test_the_registry_is_read_with_the_artifacts_class_and_run_filters_apply(registry):
    no_registry = Selection(classes=frozenset({"params", "metrics", "series", "files"}))
    assert [r.run_id for r in source2().list_runs(no_registry)] == ["PROJ-1"]
    assert not [t for t, _ in registry.searches if t != ["run"]]          # not even listed
    only = Selection(run_pattern=re.compile(r"MOD-2$"))
    assert [r.run_id for r in source2().list_runs(only)] == ["PROJ-MOD-2"]


# -- reading through the real client ------------------------------------------------------------
def test_a_model_version_reads_as_a_run_with_its_type_model_link_run_link_and_files(registry):
    source = source2()
    refs = {r.run_id: r for r in source.list_runs(Selection())}
    table = read_all(source, refs["PROJ-MOD-1"])
    assert set(table.column("project_id").to_pylist()) == {PROJECT}
    assert set(table.column("run_id").to_pylist()) == {"PROJ-MOD-1"}
    assert value(table, "sys/container_type") == "model_version"
    assert value(table, "sys/model_id") == "PROJ-MOD"                   # version -> model
    assert value(table, "sys/stage") == "production"
    assert value(table, "run/id") == "PROJ-1"                           # the user's link, as it is
    acc = table.filter(pc.equal(table.column("attribute_path"), "val/acc"))
    assert acc.column("float_value").to_pylist() == [0.5, 0.75]
    assert [str(s) for s in acc.column("step").to_pylist()] == ["0.000000", "1.000000"]
    ckpt = value(table, "model/ckpt")["path"]
    assert ckpt == "model_versions/PROJ-MOD-1/model/ckpt.bin"
    assert source.files(refs["PROJ-MOD-1"]).open(ckpt).read() == b"weights 0"
    report = RunReport(PROJECT, "PROJ-MOD-1")
    source.account(refs["PROJ-MOD-1"], report)
    assert dict(report.transformations) == {"container_as_run": 1}

    model = read_all(source, refs["PROJ-MOD"])
    assert value(model, "sys/container_type") == "model" and value(model, "sys/name") == "resnet"
    assert value(model, "params/framework") == "torch"
    assert source.files(refs["PROJ-MOD"]).open(value(model, "signature")["path"]).read() == b'{"inputs": 3}'
    run_report = RunReport(PROJECT, "PROJ-1")
    source.account(refs["PROJ-1"], run_report)
    assert "sys/container_type" not in read_all(source, refs["PROJ-1"]).column("attribute_path").to_pylist()
    assert not run_report.transformations
    source.close()


def test_class_and_attribute_filters_apply_to_registry_entries_as_to_runs(registry):
    source = source2()
    ref = {r.run_id: r for r in source.list_runs(Selection())}["PROJ-MOD-1"]
    metrics = read_all(source, ref, Selection(classes=frozenset({"metrics", "artifacts"})))
    assert set(metrics.column("attribute_path").to_pylist()) == {"val/acc"}
    named = read_all(source, ref, Selection(attribute_pattern=re.compile(r"^run/")))
    paths = set(named.column("attribute_path").to_pylist())
    assert "run/id" in paths and "sys/container_type" in paths and "val/acc" not in paths


def test_an_entry_named_only_by_its_id_is_found_and_a_missing_one_fails_alone(registry):
    from trackport.core.errors import RunError
    from trackport.core.model import RunRef

    source = source2()
    table = read_all(source, RunRef(PROJECT, "PROJ-MOD-2", None))      # no locator: looked up by id
    assert value(table, "sys/container_type") == "model_version" and value(table, "model/ckpt")
    gone = RunRef(PROJECT, "PROJ-MOD-9", am.ApiRun(PROJECT, "PROJ-MOD-9", "PROJ-MOD-9", None, am.MODEL_VERSION))
    with pytest.raises(RunError) as failed:
        read_all(source, gone)
    assert failed.value.run_id == "PROJ-MOD-9" and "PROJ-MOD-9" in str(failed.value)


# -- the same canonical shape as neptune-exporter's export-models, read by the parquet source ------
def _as_export_models(root: Path, tables: dict, files_of) -> None:
    """Write what neptune-exporter's `export-models` writes for these entities: the rows without
    sys/container_type (Neptune holds none), each file at `<folder>/<id>/<attribute path>` of
    files/<safe(project)>/ (neptune-exporter exporters/neptune2.py `_container_file_worker`)."""
    from trackport.testing.corpus import CorpusRun
    from trackport.testing.exporter_layout import write_exporter_export

    for (project_id, run_id, container), table in tables.items():
        table = table.filter(pc.not_equal(table.column("attribute_path"), am.CONTAINER_TYPE))
        files, paths = {}, []
        for row in table.to_pylist():
            if row["file_value"] is None:
                paths.append(None)
                continue
            theirs = f"{am.ENTITY_SCOPE[container]}/{run_id}/{row['attribute_path']}"
            files[theirs] = files_of(run_id).open(row["file_value"]["path"]).read()
            paths.append({"path": theirs})
        column = table.schema.get_field_index("file_value")
        table = table.set_column(column, "file_value", pa.array(paths, table.schema.field("file_value").type))
        write_exporter_export(root, [CorpusRun(project_id, run_id, table, files=files)],
                              entity_scope=am.ENTITY_SCOPE[container])


def test_api_entries_and_export_models_entries_are_interchangeable(registry, tmp_path):
    """The same model and versions from the API and from an `export-models` export: same project,
    run ids, attributes, values, points and file contents (trackport verify's own comparison)."""
    from trackport.connectors.parquet.source import ParquetSource
    from trackport.core.verify import compare, summarize

    api = source2()
    api_refs = {r.run_id: r for r in api.list_runs(Selection()) if r.locator.container}
    api_tables = {(r.project_id, r.run_id, r.locator.container): read_all(api, r) for r in api_refs.values()}
    _as_export_models(tmp_path / "exported", api_tables, lambda run_id: api.files(api_refs[run_id]))

    parquet = ParquetSource(tmp_path / "exported", {})
    parquet_refs = {r.run_id: r for r in parquet.list_runs(Selection())}
    assert {(r.project_id, r.run_id) for r in parquet_refs.values()} == \
        {(r.project_id, r.run_id) for r in api_refs.values()} == \
        {(PROJECT, "PROJ-MOD"), (PROJECT, "PROJ-MOD-1"), (PROJECT, "PROJ-MOD-2")}
    for run_id, ref in api_refs.items():
        mine, theirs = api_tables[(PROJECT, run_id, ref.locator.container)], read_all(parquet, parquet_refs[run_id])
        assert set(zip(mine.column("attribute_path").to_pylist(), mine.column("attribute_type").to_pylist())) == \
            set(zip(theirs.column("attribute_path").to_pylist(), theirs.column("attribute_type").to_pylist()))
        diffs, checked = compare(summarize(iter([mine])), summarize(iter([theirs])), api.files(ref),
                                 parquet.files(parquet_refs[run_id]))
        assert diffs == [], (run_id, diffs)
        assert checked["files"] == 1 and checked["values"] >= 8, (run_id, checked)
        a, b = RunReport(PROJECT, run_id), RunReport(PROJECT, run_id)
        api.account(ref, a)
        parquet.account(parquet_refs[run_id], b)
        assert dict(a.transformations) == dict(b.transformations) == {"container_as_run": 1}


def test_cli_export_of_the_registry_then_verify_and_rerun(registry, tmp_path):
    from support import read_plain_export, run_cli, runs_by_id

    out = tmp_path / "export"
    code, report, output = run_cli("export", f"neptune2://{PROJECT}", str(out))
    assert code == 0, output
    runs = runs_by_id(report)
    assert {k: v["status"] for k, v in runs.items()} == {k: "moved" for k in
                                                         ("PROJ-1", "PROJ-MOD", "PROJ-MOD-1", "PROJ-MOD-2")}
    assert runs["PROJ-MOD-2"]["transformations"] == {"container_as_run": 1} and runs["PROJ-MOD-2"]["points"] == 2
    tables = read_plain_export(out)       # registry entries are runs of the project, where readers look
    assert value(tables[(PROJECT, "PROJ-MOD-2")], "sys/container_type") == "model_version"
    assert value(tables[(PROJECT, "PROJ-MOD-2")], "sys/stage") == "none"
    code, report, output = run_cli("verify", f"neptune2://{PROJECT}", str(out))
    assert code == 0, output
    verified = runs_by_id(report)
    assert {k: v["status"] for k, v in verified.items()} == {k: "verified" for k in runs}
    assert verified["PROJ-MOD-1"]["points"] == 2 and verified["PROJ-MOD-1"]["details"]["files_compared"] == 1
    code, report, output = run_cli("export", f"neptune2://{PROJECT}", str(out))
    assert code == 0 and {v["status"] for v in runs_by_id(report).values()} == {"skipped"}, output
