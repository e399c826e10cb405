"""Pluto connector against the local Pluto server (tests/pluto_server.py).

Every assertion reads what the server stored: points with their steps and
times, config types, tags, histograms, logs, files.  The SDK code paths used
are the real pluto-ml 0.0.29 ones (settings, URL rules, request bodies).
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import subprocess
import sys
from collections import Counter
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path

import pyarrow.compute as pc
import pytest

from pluto_server import PLANTED_KEY
from support import run_cli
from trackport.connectors.pluto import mapping as mp
from trackport.testing.corpus import build_corpus, corpus_case
from trackport.testing.exporter_layout import write_exporter_export

PROJECT = "proj"


@pytest.fixture(scope="module")
def corpus():
    return build_corpus(big=False)


@pytest.fixture
def export(tmp_path, corpus):
    src = tmp_path / "export"
    write_exporter_export(src, corpus, part_rows=700)   # big_series spans several parts
    return src


def _by_name(server):
    return {r.name: r for r in server.project_runs(PROJECT)}


def _source_points(run, kind):
    t = run.table
    return t.filter(pc.equal(t.column("attribute_type"), kind))


def _multiplier(run) -> int:
    steps = _source_points(run, "float_series").column("step").to_pylist()
    steps += [s for s in run.table.column("step").to_pylist() if s is not None]
    places = max((max(0, -Decimal(s).normalize().as_tuple().exponent) for s in steps), default=0)
    return 10 ** places


def _ms(ts) -> int:
    return int(ts.replace(tzinfo=timezone.utc).timestamp() * 1000) if ts.tzinfo is None else \
        int(round(ts.timestamp() * 1000))


def _assert_stored_exactly(server, corpus, resent: frozenset = frozenset()):
    """Every source point, param, series point and file is on the server, once.

    Runs named in `resent` were resumed: their metric points may have been sent
    twice, which the server's replace-by-time keeps as one point each.
    """
    stored = _by_name(server)
    assert len(stored) == len(corpus)
    for run in corpus:
        name = run.table.filter(pc.equal(run.table.column("attribute_path"), "sys/name")).column("string_value")[0].as_py()
        dest = stored[name]
        assert dest.status == "COMPLETED" and mp.TAG_COMPLETE in dest.tags, run.case
        assert f"import_project:{run.project_id}" in dest.tags and "import:neptune" in dest.tags
        m = _multiplier(run)
        # metrics: every finite point at step x multiplier with its own time, nothing else
        metrics = _source_points(run, "float_series")
        expected = {}
        for path, step, ts, value in zip(*(metrics.column(c).to_pylist() for c in
                                           ("attribute_path", "step", "timestamp", "float_value"))):
            if math.isfinite(value):
                expected[(path, int(Decimal(step) * m), _ms(ts))] = value
        assert dest.metrics == expected, run.case
        if run.case not in resent:
            assert dest.metric_writes == len(expected), f"{run.case}: points sent more than once"
        # params: config keys with native JSON types
        for row in run.table.filter(pc.is_null(run.table.column("step"))).to_pylist():
            typ, path = row["attribute_type"], row["attribute_path"]
            if typ in ("file", "file_set", "artifact", "file_series"):
                continue
            got = dest.config[path]
            if typ == "int":
                assert type(got) is int and got == row["int_value"]
            elif typ == "bool":
                assert got is row["bool_value"]
            elif typ == "string":
                assert got == row["string_value"]
            elif typ == "datetime":
                assert mp.from_iso(got) == row["datetime_value"].replace(tzinfo=timezone.utc)
            elif typ == "string_set":
                assert got == row["string_set_value"]
                if path == "sys/tags":
                    assert set(got) <= set(dest.tags)
            elif typ == "float":
                v = row["float_value"]
                assert (got == v and type(got) is float) if math.isfinite(v) else got == mp.float_text(v)
        # histograms: one HISTOGRAM line per source point, at its step and time
        hists = _source_points(run, "histogram_series")
        got = Counter((d["logName"], d["step"], d["time"]) for d in dest.data if d["dataType"] == "HISTOGRAM")
        want = Counter((p, int(Decimal(s) * m), _ms(t)) for p, s, t in zip(
            *(hists.column(c).to_pylist() for c in ("attribute_path", "step", "timestamp"))))
        assert got == want, run.case
        # console logs with their original times
        for stream, level in mp.CONSOLE_STREAMS.items():
            rows = run.table.filter(pc.equal(run.table.column("attribute_path"), stream))
            logs = [entry for entry in dest.logs if entry["logType"] == level]
            assert [(e["message"], e["time"]) for e in logs] == [
                (v or "", _ms(t)) for v, t in zip(rows.column("string_value").to_pylist(),
                                                 rows.column("timestamp").to_pylist())]
        # files: each once, bytes exact
        keys = [(f["logName"], f["fileName"], f["step"]) for f in dest.files]
        assert len(keys) == len(set(keys)), f"{run.case}: a file was sent twice"
        blobs = {f["key"]: server.blobs[f["key"]] for f in dest.files}
        for source_path, data in run.files.items():
            assert data in blobs.values(), f"{run.case}: {source_path} not stored"


def test_copy_stores_every_point_once_and_verifies(pluto_server, export, corpus, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    # plan reads, never writes
    code, plan, out = run_cli("plan", str(export), f"pluto://{PROJECT}")
    assert code == 0, out
    assert plan["totals"]["transformations"]["series_file"] == 6
    assert {m for m, _ in pluto_server.requests} == {"GET"}
    report_file = tmp_path / "report.json"
    code, report, out = run_cli("copy", str(export), f"pluto://{PROJECT}", "--report", str(report_file),
                                "--log-file", str(tmp_path / "debug.log"))
    assert code == 0, out
    assert report["totals"]["moved"] == len(corpus)
    _assert_stored_exactly(pluto_server, corpus)
    dest = _by_name(pluto_server)["corpus-scalars"]
    scalars = corpus_case(corpus, "scalars")
    created = scalars.table.filter(pc.equal(scalars.table.column("attribute_path"), "sys/creation_time"))
    assert dest.created_at == _ms(created.column("datetime_value")[0].as_py())
    child = _by_name(pluto_server)["corpus-fork_child"]
    assert child.config["sys/forking/parent"] == corpus_case(corpus, "fork_parent").run_id

    code, vreport, out = run_cli("verify", str(export), f"pluto://{PROJECT}")
    assert code == 0, out
    assert vreport["totals"]["verified"] == len(corpus)

    # a rerun writes nothing at all
    before = len(pluto_server.requests)
    code, report2, out = run_cli("copy", str(export), f"pluto://{PROJECT}")
    assert code == 0 and report2["totals"]["skipped"] == len(corpus), out
    writes = [r for r in pluto_server.requests[before:] if r[0] != "GET"]
    assert writes == []
    _assert_stored_exactly(pluto_server, corpus)

    # the key is in no log, report, ledger or read-back export of ours
    back = tmp_path / "back"
    assert run_cli("export", f"pluto://{PROJECT}", str(back))[0] == 0
    texts = [caplog.text, out, json.dumps(report), json.dumps(vreport), report_file.read_text(),
             (tmp_path / "debug.log").read_text()]
    for root in (tmp_path / ".trackport", back):
        texts += [p.read_bytes().decode("latin-1") for p in root.rglob("*") if p.is_file()]
    assert all(PLANTED_KEY not in t for t in texts)
    # ...and reaches the server only as a bearer token header
    assert all(PLANTED_KEY not in v for h in pluto_server.headers_seen for k, v in h.items()
               if k.lower() != "authorization")


def test_transient_errors_lose_nothing(pluto_server, export, corpus):
    pluto_server.fail("POST", "/api/runs/create", 429, times=2, retry_after=0.2)
    pluto_server.fail("POST", "/ingest/metrics", 502, times=3)
    pluto_server.fail("POST", "/ingest/metrics", 429, times=2, retry_after=0.1)
    pluto_server.fail("POST", "/ingest/data", 503, times=1)
    pluto_server.fail("POST", "/files", 502, times=2)
    pluto_server.fail("PUT", "/upload/", 502, times=2)
    pluto_server.fail("GET", "/api/runs/list", 429, times=2, retry_after=0)
    code, report, out = run_cli("copy", str(export), f"pluto://{PROJECT}")
    assert code == 0, out
    assert len(pluto_server.injected) == 14
    _assert_stored_exactly(pluto_server, corpus)
    assert run_cli("verify", str(export), f"pluto://{PROJECT}")[0] == 0


def _key_in_cmdlines() -> list[int]:
    hits = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if PLANTED_KEY.encode() in (entry / "cmdline").read_bytes():
                    hits.append(int(entry.name))
            except OSError:
                pass
    return hits


# Where the load is SIGKILLed.  The held request is processed after the kill (the
# client never sees the answer), the hardest case for a resume.
KILL_POINTS = {
    # the string_series run's first console-log request: its metrics are in,
    # its logs, series files and completion mark are not
    "console-logs": ("POST", "/ingest/logs", b"", "string_series"),
    # the files run, uploading one file_set member: some files are in, the rest not
    "file-upload": ("PUT", "/upload/", b"print('training')", "files"),
}


@pytest.mark.parametrize("kill_point", sorted(KILL_POINTS))
def test_killed_load_heals_without_duplicates(pluto_server, export, corpus, tmp_path, kill_point):
    method, prefix, body, case = KILL_POINTS[kill_point]
    pluto_server.hold(method, prefix, body)
    env = {**os.environ, **pluto_server.env()}
    proc = subprocess.Popen([sys.executable, "-m", "trackport", "copy", str(export), f"pluto://{PROJECT}",
                             "--workers", "1", "--no-progress"], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        assert pluto_server.held.wait(90), f"the load never reached {kill_point}"
        assert _key_in_cmdlines() == [], "the API key is on a process command line"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
        pluto_server.release()
    partial = [r for r in pluto_server.project_runs(PROJECT) if mp.TAG_COMPLETE not in r.tags]
    assert len(partial) == 1 and partial[0].status == "RUNNING"
    assert partial[0].name == f"corpus-{case}"
    if case == "string_series":
        assert partial[0].metrics and not partial[0].logs
    else:
        assert any(f.get("uploaded") for f in partial[0].files)

    code, report, out = run_cli("copy", str(export), f"pluto://{PROJECT}")
    assert code == 0, out
    statuses = Counter(r["status"] for r in report["runs"])
    assert statuses["repaired"] == 1
    # the killed request's presign row never got its upload: ignore rows without bytes
    for run in pluto_server.project_runs(PROJECT):
        run.files[:] = [f for f in run.files if f.get("uploaded")]
    _assert_stored_exactly(pluto_server, corpus, resent=frozenset({case}))
    assert partial[0].status_history == ["RUNNING", "COMPLETED"]  # resumed once, then finished
    assert run_cli("verify", str(export), f"pluto://{PROJECT}")[0] == 0


def test_negative_step_is_a_run_error_before_anything_is_written(pluto_server, tmp_path):
    from trackport.testing.corpus import micro_steps, series_table

    bad = corpus_case(build_corpus(big=False), "empty")
    table = series_table(bad.project_id, bad.run_id, "metrics/loss", "float_series", [1.0, 2.0],
                         micro_steps(["-1", "0"]), [1_714_521_600_000, 1_714_521_600_001])
    from trackport.testing.corpus import CorpusRun, concat

    run = CorpusRun(bad.project_id, bad.run_id, concat([bad.table, table]), {}, "negative")
    write_exporter_export(tmp_path / "neg", [run])
    code, report, out = run_cli("copy", str(tmp_path / "neg"), f"pluto://{PROJECT}")
    assert code == 1
    error = report["runs"][0]["error"]
    assert "negative step" in error and "metrics/loss" in error and "Fix:" in error
    assert pluto_server.project_runs(PROJECT) == []


def test_a_rejected_key_is_a_clear_error_that_does_not_show_the_key(pluto_server, export, monkeypatch):
    monkeypatch.setenv("PLUTO_API_KEY", "plt_wrong_KEY_987654321")
    code, report, out = run_cli("copy", str(export), f"pluto://{PROJECT}", "--run", "CORP-1")
    assert code == 1
    error = report["runs"][0]["error"]
    assert "401" in error and "PLUTO_API_KEY" in error
    assert "plt_wrong_KEY_987654321" not in out
    assert pluto_server.runs == {}


def test_partial_url_settings_are_refused(pluto_server, export, monkeypatch):
    monkeypatch.delenv("PLUTO_URL_PY")
    code, _, out = run_cli("copy", str(export), f"pluto://{PROJECT}")
    assert code == 2 and "PLUTO_URL_PY" in out
    assert pluto_server.requests == []


def test_pluto_host_option_and_downsampling_env(pluto_server, export, corpus, monkeypatch):
    for name in ("PLUTO_URL_APP", "PLUTO_URL_API", "PLUTO_URL_INGEST", "PLUTO_URL_PY"):
        monkeypatch.delenv(name)
    monkeypatch.setenv("NEPTUNE_EXPORTER_PLUTO_LOG_EVERY", "10")   # an old loader setting carries over
    # `pluto://`: the Pluto project is the source project
    code, report, out = run_cli("copy", str(export), "pluto://", "--pluto-host", pluto_server.url,
                                "--run", "CORP-7")   # big_series
    assert code == 1, out   # drops not allowed
    run = report["runs"][0]
    assert run["drops"] == {"metric_downsampled": 1800}
    (stored,) = pluto_server.project_runs("trackport-tests/corpus")
    assert len(stored.metrics) == 200
    steps = sorted(step for _, step, _ in stored.metrics)
    assert steps == list(range(0, 2000, 10))


def test_mapping_is_deterministic_and_exact():
    a = mp.external_id("parquet:/x", "ws/p", "RUN-1")
    assert a == mp.external_id("parquet:/x", "ws/p", "RUN-1") != mp.external_id("parquet:/x", "ws/p", "RUN-2")
    assert mp.is_uniform([0.0, 0.25, 0.5, 0.75]) and not mp.is_uniform([0.0, 1.0, 10.0])
    data, exact = mp.histogram_data({"type": "COUNTING", "edges": [0.0, 1.0, 10.0], "values": [3.0, 4.0]})
    assert not exact and data["bins"] == {"min": 0.0, "max": 10.0, "num": 2} and data["freq"] == [3, 4]
    assert mp.source_step(123456789000001, 10**6) == Decimal("123456789.000001")
    assert mp.config_value("datetime", mp.iso(datetime(2024, 5, 1, 1, 2, 3, 4000, tzinfo=timezone.utc))) == \
        datetime(2024, 5, 1, 1, 2, 3, 4000, tzinfo=timezone.utc)


def test_host_option_follows_the_sdk_url_rules(monkeypatch):
    from trackport.connectors.pluto.client import sdk_settings

    bare = sdk_settings("pluto.internal")
    assert (bare.url_api, bare.url_num, bare.url_file) == (
        "http://pluto.internal:3001", "http://pluto.internal:3003/ingest/metrics", "http://pluto.internal:3003/files")
    one = sdk_settings("https://pluto.example.com/")
    assert one.url_start == "https://pluto.example.com/api/runs/create"
    assert one.url_message == "https://pluto.example.com/ingest/logs"
    assert one._auth is None


def test_a_file_attribute_in_trackports_own_log_names_lands_elsewhere(pluto_server, tmp_path):
    """A file attribute `trackport/manifest` (a hostile export planting a manifest) or under
    `trackport/series/` gets another log name; the run reads back exactly (issue 15 item 13)."""
    from support import canonical_rows, read_plain_export
    from trackport.core.layout import safe
    from trackport.core.schema import rows_to_table
    from trackport.testing.corpus import CorpusRun

    project, run_id = "ws/planted", "PLANT-1"
    planted = json.dumps({"format": mp.MANIFEST_FORMAT, "version": 1, "project_id": project,
                          "run_id": "someone-else"}).encode()
    files = {f"{project}/{run_id}/manifest.json": planted, f"{project}/{run_id}/x.jsonl": b"series?"}
    table = rows_to_table([
        {"attribute_path": "trackport/manifest", "attribute_type": "file",
         "file_value": {"path": f"{project}/{run_id}/manifest.json"}},
        {"attribute_path": "trackport/series/log", "attribute_type": "file",
         "file_value": {"path": f"{project}/{run_id}/x.jsonl"}},
        {"attribute_path": "log", "attribute_type": "string_series", "step": Decimal(0),
         "timestamp": datetime(2024, 1, 1, tzinfo=timezone.utc), "string_value": "line"},
    ], {"project_id": project, "run_id": run_id})
    write_exporter_export(tmp_path / "src", [CorpusRun(project, run_id, table, files, "planted")])

    code, report, out = run_cli("copy", str(tmp_path / "src"), f"pluto://{PROJECT}")
    assert code == 0, out
    assert report["totals"]["transformations"].get("file_log_renamed") == 2, report
    assert "file_log_renamed" in mp.CAPABILITIES.transformations
    assert run_cli("verify", str(tmp_path / "src"), f"pluto://{PROJECT}")[0] == 0
    back = tmp_path / "back"
    code, _, out = run_cli("export", f"pluto://{PROJECT}", str(back))
    assert code == 0, out
    got = read_plain_export(back)[(project, run_id)]
    assert canonical_rows(got) == canonical_rows(table)
    for rel, data in files.items():
        assert (back / "files" / safe(project) / rel).read_bytes() == data


# -- conformance (trackport.testing.conformance) ------------------------------------------------
def test_conformance_round_trip(tmp_path, pluto_server):
    from trackport.testing import conformance

    conformance.round_trip(pluto_server.conformance_target(tmp_path), tmp_path)


def test_conformance_run_times(tmp_path, pluto_server):
    from trackport.testing import conformance

    conformance.run_times(pluto_server.conformance_target(tmp_path), tmp_path)


def test_conformance_files_and_bytes(tmp_path, pluto_server):
    from trackport.testing import conformance

    conformance.files_and_bytes(conformance.Target("pluto://proj"), tmp_path)


def test_a_grown_run_gets_only_what_is_new_and_an_unchanged_one_is_skipped(pluto_server, corpus, tmp_path):
    """neptune-exporter parquet (run_version: its parts' names and sizes) -> Pluto: runs copied
    with the first half of their series, then grown to all of it.  The completion mark carries
    the run_version; the grown runs are refreshed in the same Pluto run (metrics replaced by
    time, console lines by number, histogram points not in the last series file sent, a new
    manifest generation); the unchanged run is skipped; everything is stored once."""
    import shutil

    import pyarrow as pa

    from trackport.testing.corpus import CorpusRun

    runs = [corpus_case(corpus, c) for c in ("scalars", "big_series", "string_series", "histograms")]

    def first_half(run):
        t = run.table
        steps = [Decimal(s) for s in t.column("step").to_pylist() if s is not None]
        if not steps:
            return run
        cut = sorted(steps)[len(steps) // 2]
        keep = [s is None or Decimal(s) < cut for s in t.column("step").to_pylist()]
        return CorpusRun(run.project_id, run.run_id, t.filter(pa.array(keep)), run.files, run.case)

    src = tmp_path / "export"
    write_exporter_export(src, [first_half(r) for r in runs])
    code, report, out = run_cli("copy", str(src), f"pluto://{PROJECT}")
    assert code == 0 and report["totals"]["moved"] == 4, out
    shutil.rmtree(src)
    write_exporter_export(src, runs)                       # the trainings went on
    code, report, out = run_cli("copy", str(src), f"pluto://{PROJECT}")
    assert code == 0, out
    statuses = {r["run_id"]: r["status"] for r in report["runs"]}
    assert statuses == {runs[0].run_id: "skipped", **{r.run_id: "repaired" for r in runs[1:]}}, out
    grown = frozenset(r.case for r in runs[1:])
    _assert_stored_exactly(pluto_server, runs, resent=grown)     # one run each, every point once
    hist = _by_name(pluto_server)["corpus-histograms"]
    assert {f["fileName"] for f in hist.files if f["logName"] == mp.MANIFEST_LOG} == \
        {mp.MANIFEST_FILE, mp.generation_name(mp.MANIFEST_FILE, 1)}
    code, report, out = run_cli("copy", str(src), f"pluto://{PROJECT}")
    assert code == 0 and report["totals"]["skipped"] == 4, out
    code, report, out = run_cli("verify", str(src), f"pluto://{PROJECT}")
    assert code == 0 and report["totals"]["verified"] == 4, out
