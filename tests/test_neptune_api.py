"""The `neptune2://` and `neptune3://` API sources.

3.x: the REAL neptune-query 1.14 client talks to tests/neptune_api_server.py
(protobuf/JSON over HTTP on 127.0.0.1): listing runs, attribute values,
metrics, string / histogram / file series and file downloads.
2.x: the hosted 2.x API (swagger, served by Neptune) cannot run here; the
mapping is tested with the client's own types (neptune.internal.backends.
api_model point values, attribute objects of a real `neptune` run in its
in-memory "debug" mode), and the file-series step fix through the 3.x series
endpoint of the local server.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path

import pyarrow as pa
import pytest

from neptune_api_server import FakeNeptune, FakeRun

from trackport.core.errors import RunError, TransientError, UsageError
from trackport.core.model import Selection
from trackport.core.pipeline import Pipeline, PipelineOptions
from trackport.core.registry import ParsedUri, open_sink
from trackport.core.report import CommandReport

from trackport.connectors.neptune.api import mapping as am

PROJECT = "ws/proj"
T0 = 1_700_000_000_000          # epoch ms, 2023-11-14T22:13:20Z


def utc(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc)


# -- the local 3.x service ------------------------------------------------------------
def _populate(fake: FakeNeptune) -> None:
    fake.add(PROJECT, FakeRun(
        "PRJ-1", "run-a",
        atoms={"config/lr": ("float", 0.1), "config/n": ("int", 3), "config/on": ("bool", True),
               "config/name": ("string", "ünï/code"), "sys/creation_time": ("datetime", T0 + 123),
               "sys/tags": ("string_set", ["b", "a"]),
               "model/ckpt": ("file", ("ws/proj/blob-1", b"weights", "application/octet-stream"))},
        metrics={"train/loss": [(T0 + i, i * 0.5, 1.0 / (i + 1), False) for i in range(5)]
                 + [(T0 + 99, 2.25, 42.0, True)]},       # a preview point
        series={"logs/stdout": ("string_series", [(T0 + 1, 1.0, "epoch 1"), (T0 + 2, 2.0, "epoch 2")]),
                "eval/hist": ("histogram_series", [(T0 + 3, 4.0, ("linear", [0.0, 1.0, 2.0], [3.0, 5.0]))]),
                "eval/images": ("file_series", [(T0 + 5, 3.0, ("ws/proj/img-3", b"png-3", "image/png")),
                                                (T0 + 6, 7.5, ("ws/proj/img-7", b"png-7", "image/png"))])}))
    # A fork without custom_run_id: its own points only; lineage as the service records it.
    fake.add(PROJECT, FakeRun(
        "PRJ-2", None,
        atoms={"config/lr": ("float", 0.2), "sys/forking/parent": ("string", "run-a"),
               "sys/forking/step": ("float", 1.0)},
        metrics={"train/loss": [(T0 + 500, 10.0, 0.05, False), (T0 + 501, 11.0, 0.04, False)]},
        fork_parent="PRJ-1", fork_step=1.0))
    fake.add(PROJECT, FakeRun("PRJ-3", "archived-run", trashed=True, atoms={"config/lr": ("float", 0.3)}))
    fake.add("ws/other", FakeRun("OTH-1", "other-run"))
    fake.add("ws/skipme", FakeRun("SKP-1", "skipped-run"))


@pytest.fixture
def fake(monkeypatch):
    server = FakeNeptune().start()
    try:
        _populate(server)
        monkeypatch.setenv("NEPTUNE_API_TOKEN", server.token())
        monkeypatch.setenv("NEPTUNE_QUERY_RETRY_SOFT_TIMEOUT", "1")
        monkeypatch.setenv("NEPTUNE_QUERY_RETRY_HARD_TIMEOUT", "3")
        yield server
    finally:
        server.stop()


def source3(uri: str = f"neptune3://{PROJECT}", **options):
    from trackport.connectors.neptune.api.source3 import open_api3_source

    scheme, rest = uri.split(":", 1)
    return open_api3_source(ParsedUri(scheme, rest, uri), options)


def read_all(source, ref, select=None) -> pa.Table:
    return pa.concat_tables(list(source.read_run(ref, select or Selection())))


def rows_of(table: pa.Table, path: str) -> list[dict]:
    return [r for r in table.to_pylist() if r["attribute_path"] == path]


def refs_by_id(source, select=None) -> dict:
    return {r.run_id: r for r in source.list_runs(select or Selection())}


def test_api3_lists_runs_without_custom_run_id_and_leaves_archived_out(fake):
    src = source3()
    refs = refs_by_id(src)
    # the run without sys/custom_run_id is listed under its sys/id; the trashed one is not listed
    assert sorted(refs) == ["PRJ-2", "run-a"]
    assert refs["run-a"].locator.sys_id == "PRJ-1"
    archived = refs_by_id(source3(neptune_archived=True))
    assert sorted(archived) == ["PRJ-2", "archived-run", "run-a"]
    # a run read through a workspace URI has the same origin as through its project URI
    assert source3("neptune3://ws").origin(refs["run-a"]) == src.origin(refs["run-a"])
    assert src.origin(refs["run-a"]).uri == "neptune3://ws/proj"
    # the run regex is the core's, on the canonical run id
    assert sorted(refs_by_id(src, Selection(run_pattern=re.compile(r"^PRJ-")))) == ["PRJ-2"]


def test_api3_nql_is_passed_to_the_server(fake):
    src = source3(neptune_nql='`config/lr`:float > 0.15')
    list(src.list_runs(Selection()))
    queries = [body["query"]["query"] for method, path, body in fake.requests
               if path.endswith("/entries/search/") and body.get("query")]
    assert queries == ['(`config/lr`:float > 0.15) AND (`sys/trashed`:bool = false)']


def test_api3_every_class_maps_to_canonical_rows(fake):
    src = source3()
    ref = refs_by_id(src)["run-a"]
    table = read_all(src, ref)
    assert table.schema.equals(am.SCHEMA)
    assert set(table.column("project_id").to_pylist()) == {PROJECT}
    assert set(table.column("run_id").to_pylist()) == {"run-a"}
    assert rows_of(table, "config/lr")[0]["float_value"] == 0.1
    assert rows_of(table, "config/n")[0]["int_value"] == 3
    assert rows_of(table, "config/on")[0]["bool_value"] is True
    assert rows_of(table, "config/name")[0]["string_value"] == "ünï/code"
    assert rows_of(table, "sys/creation_time")[0]["datetime_value"] == utc(T0 + 123)
    assert rows_of(table, "sys/tags")[0]["string_set_value"] == ["a", "b"]

    loss = sorted(rows_of(table, "train/loss"), key=lambda r: r["step"])
    assert [r["step"] for r in loss] == [Decimal("0"), Decimal("0.5"), Decimal("1"), Decimal("1.5"), Decimal("2")]
    assert [r["timestamp"] for r in loss] == [utc(T0 + i) for i in range(5)]
    assert [r["float_value"] for r in loss] == [1.0 / (i + 1) for i in range(5)]   # the preview point is left out

    stdout = rows_of(table, "logs/stdout")
    assert [(r["step"], r["string_value"], r["timestamp"]) for r in stdout] == [
        (Decimal("1"), "epoch 1", utc(T0 + 1)), (Decimal("2"), "epoch 2", utc(T0 + 2))]
    hist = rows_of(table, "eval/hist")[0]
    assert hist["histogram_value"] == {"type": "linear", "edges": [0.0, 1.0, 2.0], "values": [3.0, 5.0]}
    assert hist["step"] == Decimal("4")

    files = src.files(ref)
    ckpt = rows_of(table, "model/ckpt")[0]
    assert ckpt["attribute_type"] == "file" and ckpt["step"] is None
    assert files.local_path(ckpt["file_value"]["path"]).read_bytes() == b"weights"
    images = sorted(rows_of(table, "eval/images"), key=lambda r: r["step"])
    assert [r["step"] for r in images] == [Decimal("3"), Decimal("7.5")]
    assert [r["timestamp"] for r in images] == [utc(T0 + 5), utc(T0 + 6)]
    assert [files.local_path(r["file_value"]["path"]).read_bytes() for r in images] == [b"png-3", b"png-7"]
    src.close()


def test_api3_fork_holds_only_its_own_points_and_its_lineage(fake):
    src = source3()
    table = read_all(src, refs_by_id(src)["PRJ-2"])
    loss = rows_of(table, "train/loss")
    assert sorted(r["step"] for r in loss) == [Decimal("10"), Decimal("11")]   # none of the parent's steps 0..1
    assert rows_of(table, "sys/forking/parent")[0]["string_value"] == "run-a"
    assert rows_of(table, "sys/forking/step")[0]["float_value"] == 1.0
    lineages = {body["requests"][0]["series"]["lineage"] for method, path, body in fake.requests
                if path.endswith("/series/float")}
    assert lineages == {"NONE"}
    # the same server hands the parent's points to a reader asking for the full lineage
    from neptune_query.internal import identifiers as ids
    from neptune_query.internal.retrieval import metrics, search

    fork = ids.RunAttributeDefinition(ids.RunIdentifier(ids.ProjectIdentifier(PROJECT), ids.SysId("PRJ-2")),
                                      ids.AttributeDefinition("train/loss", "float_series"))
    full = metrics.fetch_multiple_series_values(src.reader.client, [fork], include_inherited=True,
                                                container_type=search.ContainerType.RUN, include_preview=False)
    assert [p[1] for p in full[fork]] == [0.0, 0.5, 1.0, 10.0, 11.0]


def test_api3_public_query_api_cannot_list_a_run_without_custom_run_id(fake):
    """Why api3.py reads through neptune-query's retrieval layer: its public `runs.list_runs`
    fails on such a run (search.RunSysAttrs.from_dict indexes sys/custom_run_id)."""
    import neptune_query as nq
    from neptune_query import runs as nq_runs

    nq.set_api_token(fake.token())
    with pytest.raises(KeyError, match="sys/custom_run_id"):
        nq_runs.list_runs(project=PROJECT)


def test_api3_metric_previews_on_request(fake):
    src = source3(neptune_metric_previews=True)
    table = read_all(src, refs_by_id(src)["run-a"])
    steps = sorted(r["step"] for r in rows_of(table, "train/loss"))
    assert Decimal("2.25") in steps and len(steps) == 6


def test_api3_attribute_regex_and_classes_filter_before_fetching(fake):
    src = source3()
    ref = refs_by_id(src)["run-a"]
    before = len(fake.requests)
    select = Selection(attribute_pattern=re.compile(r"^train/"), classes=frozenset({"metrics"}))
    table = read_all(src, ref, select)
    assert set(table.column("attribute_path").to_pylist()) == {"train/loss"}
    paths = [path for _, path, _ in fake.requests[before:]]
    assert not any(p.endswith("/attributes/series") or "signedUrl" in p for p in paths)   # nothing else fetched

    params = read_all(src, ref, Selection(attribute_pattern=re.compile(r"^config/l"), classes=frozenset({"params"})))
    assert set(params.column("attribute_path").to_pylist()) == {
        "config/lr", "sys/creation_time", "sys/custom_run_id", "sys/id", "sys/tags"}


def test_api3_a_failing_class_fails_the_run_and_nothing_is_exported(fake, tmp_path):
    fake.fail["/api/leaderboard/v1/proto/attributes/series"] = [400] * 50   # string/histogram/file series
    src = source3()
    ref = refs_by_id(src)["run-a"]
    with pytest.raises(RunError) as info:
        read_all(src, ref)
    assert info.value.run_id == "run-a" and "class series" in str(info.value)

    sink = open_sink(f"parquet:{tmp_path / 'out'}", {})
    report = CommandReport("export", src.uri, sink.uri)
    Pipeline(source3(), sink, PipelineOptions(workers=1, max_attempts=1), report).run()
    status = {r.run_id: r.status for r in report.runs}
    assert status["run-a"] == "failed" and status["PRJ-2"] == "moved"
    failed = next(r for r in report.runs if r.run_id == "run-a")
    assert "class series" in failed.error
    assert sink.find_run(src.origin(ref)) is None               # no completion mark for the failed run


def test_api3_server_errors_are_transient_and_bad_tokens_are_usage_errors(fake, monkeypatch):
    fake.fail["/api/leaderboard/v1/proto/attributes/series/float"] = [503] * 100
    src = source3()
    ref = refs_by_id(src)["run-a"]
    with pytest.raises(TransientError):
        read_all(src, ref, Selection(classes=frozenset({"metrics"})))

    wrong = fake.token(api_key="not-the-right-key")
    monkeypatch.setenv("NEPTUNE_API_TOKEN", wrong)
    with pytest.raises(UsageError) as info:
        list(source3().list_runs(Selection()))
    assert "NEPTUNE_API_TOKEN" in str(info.value) and wrong not in str(info.value)

    monkeypatch.delenv("NEPTUNE_API_TOKEN")
    with pytest.raises(UsageError, match="NEPTUNE_API_TOKEN"):
        source3()


def test_project_discovery_with_include_and_exclude():
    target = am.parse_target("neptune3", "//ws")
    found = ["ws/proj", "ws/other", "ws/skipme", "elsewhere/proj"]
    assert am.choose_projects(target, found, None, None) == ["ws/other", "ws/proj", "ws/skipme"]
    assert am.choose_projects(target, found, ["o"], ["^other$"]) == ["ws/proj"]
    assert am.choose_projects(target, found, None, "skip") == ["ws/other", "ws/proj"]
    with pytest.raises(UsageError):
        am.choose_projects(am.parse_target("neptune2", "//ws/proj"), [], ["x"], None)
    with pytest.raises(UsageError):
        am.parse_target("neptune2", "//ws/proj/extra")
    with pytest.raises(UsageError, match="NEPTUNE_API_TOKEN"):
        am.parse_target("neptune2", "//token@ws/proj")


# -- 2.x: the client's own types ------------------------------------------------------------
def test_api2_points_keep_steps_and_utc_timestamps_from_the_client_types():
    from neptune.internal.backends.api_model import FloatPointValue, StringPointValue

    points = [FloatPointValue(timestampMillis=T0 + i, step=0.1 * i, value=float(i)) for i in range(4)]
    table = am.points_2x(PROJECT, "SAN-1", "train/acc", "float_series", points)
    assert table.column("step").to_pylist() == [Decimal("0"), Decimal("0.1"), Decimal("0.2"), Decimal("0.3")]
    assert table.column("timestamp").to_pylist() == [utc(T0 + i) for i in range(4)]
    texts = am.points_2x(PROJECT, "SAN-1", "monitoring/stdout", "string_series",
                         [StringPointValue(timestampMillis=T0, step=5.0, value="hello")])
    assert texts.to_pylist()[0]["string_value"] == "hello" and texts.to_pylist()[0]["step"] == Decimal("5")


def test_api2_points_without_a_step_are_numbered_as_neptune_numbers_them():
    """A point the server returns without a step (the client's api_model allows it) is numbered
    from the series' previous step + 1 (0 first), not exported with a null step."""
    from neptune.internal.backends.api_model import FloatPointValue

    points = [FloatPointValue(timestampMillis=T0 + i, step=s, value=float(i))
              for i, s in enumerate([None, None, 7.5, None])]
    table = am.points_2x(PROJECT, "SAN-1", "train/acc", "float_series", points)
    assert table.column("step").to_pylist() == [Decimal("0"), Decimal("1"), Decimal("7.5"), Decimal("8.5")]
    assert table.column("step").null_count == 0
    assert am.step_less_count(points) == 3


def test_api2_naive_local_times_become_utc_under_another_time_zone():
    """Under TZ=Asia/Kolkata (UTC+5:30) the client's `fetch_values` conversion is naive local
    time; our points keep the server's UTC instant and a naive datetime value is read as local."""
    code = textwrap.dedent(f"""
        import time
        from datetime import datetime, timezone
        from neptune.internal.backends.api_model import FloatPointValue
        from trackport.connectors.neptune.api import mapping as am
        time.tzset()
        ms = {T0}
        naive = datetime.fromtimestamp(ms / 1000)          # what FetchableSeries.fetch_values builds
        assert naive.tzinfo is None and naive.hour == 3 and naive.minute == 43, naive
        assert am.to_utc(naive) == datetime.fromtimestamp(ms / 1000, tz=timezone.utc)
        table = am.points_2x("w/p", "R-1", "m", "float_series", [FloatPointValue(ms, 1.0, 2.0)])
        assert table.column("timestamp").to_pylist()[0] == datetime.fromtimestamp(ms / 1000, tz=timezone.utc)
        row = am.scalar_table("w/p", "R-1", [("sys/creation_time", "datetime", naive)]).to_pylist()[0]
        assert row["datetime_value"] == datetime(2023, 11, 14, 22, 13, 20, tzinfo=timezone.utc), row
        print("ok")
    """)
    env = dict(os.environ, TZ="Asia/Kolkata")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def test_api2_file_series_steps_are_the_logged_steps_not_indices():
    assert am.file_series_steps_2x(3, [10.0, 0.5, 2.0], "x") == [0.5, 2.0, 10.0]
    with pytest.raises(ValueError, match="logged steps"):
        am.file_series_steps_2x(2, None, "file series eval/images")
    with pytest.raises(ValueError, match="2 files but 1"):
        am.file_series_steps_2x(2, [1.0], "x")


def test_api2_file_series_steps_come_from_the_series_endpoint(fake):
    from trackport.connectors.neptune.api.reader2 import file_series_points

    run = am.ApiRun(PROJECT, "PRJ-1", "PRJ-1")
    assert file_series_points(fake.token(), run, "eval/images") == [(3.0, T0 + 5), (7.5, T0 + 6)]


def test_api2_session_reads_real_client_attributes(tmp_path):
    """A real `neptune` run in its in-memory debug mode: the attribute classes, values and file
    downloads of the client go through attribute_list / params / metrics / files."""
    import neptune
    from neptune.types import File

    from trackport.connectors.neptune.api.reader2 import Api2Reader, Api2Session

    handle = neptune.init_run(mode="debug", project=PROJECT, capture_stdout=False, capture_stderr=False,
                              capture_hardware_metrics=False, capture_traceback=False, git_ref=False,
                              source_files=[])
    try:
        handle["config/lr"] = 0.1
        handle["config/n"] = 3
        handle["config/when"] = datetime(2024, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
        handle["sys/tags"].add(["b", "a"])
        for i in range(3):
            handle["train/loss"].append(1.0 / (i + 1), step=i)
        handle["model/ckpt"].upload(File.from_content(b"weights", extension="bin"))
        handle.wait()
        reader = Api2Reader("unused-in-debug-mode", {})
        run = am.ApiRun(PROJECT, "SAN-7", "SAN-7")
        select = Selection(classes=frozenset({"params", "metrics"}))
        session = Api2Session(reader, run, select, handle)
        assert session.classes() == {"params": session.classes()["params"], "metrics": 1}
        params = session.read("params", tmp_path).__next__()
        values = {r["attribute_path"]: r for r in params.to_pylist()}
        assert values["config/lr"]["float_value"] == 0.1
        assert values["config/n"]["int_value"] == 3
        assert values["config/when"]["datetime_value"] == datetime(2024, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
        assert values["sys/tags"]["string_set_value"] == ["a", "b"]
        metrics = pa.concat_tables(list(session.read("metrics", tmp_path)))
        # (the debug backend numbers points 0..n-1 and stamps them 42342 ms: it is the client's own mock)
        assert metrics.column("float_value").to_pylist() == [1.0, 0.5, 1.0 / 3]
        assert "model/ckpt" not in {p for p, _, _ in session.attributes}   # files class not selected

        with_files = Api2Session(reader, run, Selection(attribute_pattern=re.compile(r"^model/"),
                                                        classes=frozenset({"files"})), handle)
        assert [p for p, _, _ in with_files.attributes] == ["model/ckpt"]
        row = pa.concat_tables(list(with_files.read("files", tmp_path))).to_pylist()[0]
        assert row["attribute_type"] == "file" and row["file_value"]["path"] == "SAN-7/model/ckpt.bin"
        assert (tmp_path / row["file_value"]["path"]).read_bytes() == b"weights"
    finally:
        handle.stop()


def test_no_sdk_is_imported_by_the_mapping_or_the_entry_points():
    code = ("import sys; import trackport.connectors.neptune.api.mapping, "
            "trackport.connectors.neptune.api.source2, trackport.connectors.neptune.api.source3; "
            "print(sorted(m for m in ('neptune', 'neptune_query', 'neptune_api', 'pandas') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).parent)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_cli_export_from_neptune3_then_rerun_skips_and_the_token_stays_out(fake, tmp_path):
    from support import read_plain_export, run_cli, runs_by_id

    out = tmp_path / "export"
    code, report, output = run_cli("export", f"neptune3://{PROJECT}", str(out))
    assert code == 0, output
    runs = runs_by_id(report)
    assert {k: v["status"] for k, v in runs.items()} == {"run-a": "moved", "PRJ-2": "moved"}
    tables = read_plain_export(out)
    loss = tables[(PROJECT, "PRJ-2")].filter(pa.compute.equal(tables[(PROJECT, "PRJ-2")].column("attribute_path"),
                                                              "train/loss"))
    assert loss.num_rows == 2
    code, report, output = run_cli("export", f"neptune3://{PROJECT}", str(out))
    assert code == 0 and {v["status"] for v in runs_by_id(report).values()} == {"skipped"}
    token = fake.token()
    assert token not in output and "secret-api-key" not in output
    for path in out.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert token.encode() not in data and b"secret-api-key" not in data, path


def test_download_paths_stay_distinct_and_inside_the_root():
    assert am.local_file_path("run-a", "eval/images", 3.0, ".png") == "run-a/eval/images/step_3.png"
    assert am.local_file_path("run-a", "eval/images", 7.5) == "run-a/eval/images/step_7.5"
    one, two = am.local_file_path("r", "a b/c"), am.local_file_path("r", "a_b/c")
    assert one != two and ".." not in am.local_file_path("r", "../../etc/passwd").split("/")
