"""`trackport copy ... wandb://ENTITY/PROJECT` in the default ONLINE mode: the real wandb SDK
(0.31, wandb-core) writing to our local W&B server (tests/wandb_server.py, which takes the
SDK's write path: UpsertBucket, RunResumeStatus, CreateRunFiles + uploads, file_stream),
then read back through the real `wandb.Api` by `verify` and `export`."""

from __future__ import annotations

import json
import math
from decimal import Decimal

import pytest

from support import canonical_rows, read_plain_export, run_cli
from trackport.connectors.wandb import mapping as mp
from trackport.testing.corpus import build_corpus
from trackport.testing.exporter_layout import write_exporter_export
from wandb_server import FakeRun, wandb_server  # noqa: F401  (fixture)

DEST = "wandb://entity/corpus"
SERIES = ("float_series", "string_series", "histogram_series")


@pytest.fixture(scope="module")
def corpus():
    return build_corpus(big=False)


@pytest.fixture
def source(tmp_path, corpus):
    src = tmp_path / "src"
    write_exporter_export(src, corpus, part_rows=30_000)
    return src


def _written(server, corpus_run) -> FakeRun:
    runs = [r for r in server.entities["entity"]["corpus"]
            if mp.origin_from_config(r.config) == (corpus_run.project_id, corpus_run.run_id)]
    assert len(runs) == 1, corpus_run.case
    return runs[0]


def _same(expected, got) -> bool:
    if isinstance(expected, float):
        if math.isnan(expected):
            return isinstance(got, float) and math.isnan(got)
        return got == expected          # -0.0 arrives as 0 (the manifest keeps where)
    return got == expected


def _assert_history_has_every_point(run: FakeRun, corpus_run) -> int:
    manifest = json.loads(run.files[mp.MANIFEST_PATH])
    multiplier = manifest["step_multiplier"]
    steps = [row["_step"] for row in run.history]
    assert steps == sorted(set(steps)), f"{corpus_run.case}: not one row per step in increasing order"
    by_step = {row["_step"]: row for row in run.history}
    points = [r for r in corpus_run.table.to_pylist() if r["attribute_type"] in SERIES]
    for point in points:
        step = int(Decimal(point["step"]) * multiplier)
        row = by_step[step]
        key = point["attribute_path"]
        key = mp.ESCAPED_PREFIX + key if key.startswith("_") else key
        assert key in row, (corpus_run.case, key, step)
        value = row[key]
        if point["attribute_type"] == "float_series":
            assert _same(point["float_value"], value), (corpus_run.case, key, step, value)
        elif point["attribute_type"] == "string_series":
            assert value == point["string_value"], (corpus_run.case, key, step)
        else:
            hist = point["histogram_value"]
            assert value["_type"] == "histogram" and value["values"] == hist["values"], (corpus_run.case, key)
            assert value["bins"] == hist["edges"], (corpus_run.case, key)
        # the original timestamp: the row's `_timestamp`, or the point's own when it differs
        ms = int(point["timestamp"].timestamp() * 1000)
        own = row.get(mp.TS_PREFIX + key)
        assert (own if own is not None else round(row["_timestamp"] * 1000)) == ms, (corpus_run.case, key, step)
    return len(points)


def test_online_copy_stores_every_point_verifies_and_reruns_clean(wandb_server, source, corpus, tmp_path):
    code, report, output = run_cli("copy", str(source), DEST, "--wandb-mode", "online",
                                   "--wandb-dir", str(tmp_path / "wd"))
    assert code == 0, output
    assert report["totals"]["moved"] == len(corpus)
    assert not report["totals"]["drops"]
    # the SDK's local copies of the uploaded runs are gone (the server has them)
    assert not list((tmp_path / "wd" / "wandb").glob("run-*"))

    # What the server stored, run by run.
    assert len(wandb_server.entities["entity"]["corpus"]) == len(corpus)
    checked = 0
    for corpus_run in corpus:
        run = _written(wandb_server, corpus_run)
        assert run.state == "finished"
        assert mp.is_complete(run.config)
        checked += _assert_history_has_every_point(run, corpus_run)
        # the completion mark arrived last: after every history chunk, the manifest and
        # the first file_stream `complete`
        log = run.write_log
        mark = next(i for i, (what, detail) in enumerate(log)
                    if what == "upsert" and mp.is_complete(detail))
        assert all(i < mark for i, (what, _d) in enumerate(log) if what == "history"), corpus_run.case
        assert log.index(("file", mp.MANIFEST_PATH)) < mark
        assert log.index(("complete", 0)) < mark
        assert not any(what == "upsert" and not mp.is_complete(d) for what, d in log[mark:])
        if run.history:     # the summary holds the last values (never clobbered by the mark)
            assert run.summary["_step"] == run.history[-1]["_step"], corpus_run.case
    assert checked > 2000
    # Everything the SDK sent was understood by the server (no unserved operation).
    assert wandb_server.operations(400) == [] and wandb_server.operations(404) == []
    served = set(wandb_server.operations(200))
    assert {"RunResumeStatus", "UpsertBucket", "CreateRunFiles", "file_stream",
            f"upload:{mp.MANIFEST_PATH}"} <= served
    # Decimal steps were scaled (the multiplier in the manifest) and counted.
    steps_run = _written(wandb_server, next(r for r in corpus if r.case == "steps"))
    assert json.loads(steps_run.files[mp.MANIFEST_PATH])["step_multiplier"] > 1
    assert report["totals"]["transformations"].get("step_scaled")
    # Config keeps types; name, notes, tags arrive as W&B run attributes.
    scalars = next(r for r in corpus if r.case == "scalars")
    stored = _written(wandb_server, scalars)
    for row in scalars.table.to_pylist():
        if row["step"] is None and row["attribute_type"] in ("int", "float", "bool", "string"):
            value = row[f"{row['attribute_type']}_value"]
            got = stored.config[row["attribute_path"]]
            # wandb-core re-encodes the config in Go, which writes an integral float (3.0) as 3;
            # the run's manifest keeps the exact type (verify and export below read it back)
            want_type = int if isinstance(value, float) and value.is_integer() else type(value)
            assert _same(value, got) and type(got) is want_type, (row["attribute_path"], got, value)
    singles = {r["attribute_path"]: r for r in scalars.table.to_pylist() if r["step"] is None}
    assert stored.display_name == singles["sys/name"]["string_value"]
    if "sys/tags" in singles:
        assert sorted(stored.tags) == sorted(singles["sys/tags"]["string_set_value"])
    # Files were uploaded through CreateRunFiles + PUT.
    files_run = _written(wandb_server, next(r for r in corpus if r.case == "files"))
    assert any(name.startswith(mp.FILES_DIR + "/") for name in files_run.files)
    assert wandb_server.rejected_auth == 0

    # verify: read back through wandb.Api (the sink's as_source), every point compared.
    code, report, output = run_cli("verify", str(source), DEST)
    assert code == 0, output
    assert report["totals"]["verified"] == len(corpus)

    # export: the runs come back under their origin ids, as they were.
    code, report, output = run_cli("export", DEST, str(tmp_path / "back"))
    assert code == 0, output
    tables = read_plain_export(tmp_path / "back")
    for corpus_run in corpus:
        got = tables[(corpus_run.project_id, corpus_run.run_id)]
        assert canonical_rows(got) == canonical_rows(corpus_run.table), corpus_run.case

    # A rerun skips every run and sends no history.
    before = {r.id: (r.history_lines_received, len(r.write_log)) for r in wandb_server.entities["entity"]["corpus"]}
    streamed = wandb_server.operations().count("file_stream")
    code, report, output = run_cli("copy", str(source), DEST, "--wandb-dir", str(tmp_path / "wd"))
    assert code == 0, output
    assert report["totals"]["skipped"] == len(corpus)
    after = {r.id: (r.history_lines_received, len(r.write_log)) for r in wandb_server.entities["entity"]["corpus"]}
    assert after == before
    assert wandb_server.operations().count("file_stream") == streamed
    assert "UpsertBucket" not in wandb_server.operations()[-len(corpus) * 3:]
    _assert_no_secret(wandb_server.api_key, output, json.dumps(report), root=tmp_path)


def _assert_no_secret(key: str, *texts: str, root) -> None:
    for text in texts:
        assert key not in text
    for path in root.rglob("*"):
        if path.is_file():
            assert key.encode() not in path.read_bytes(), path


def test_a_killed_online_load_is_refused_not_duplicated(wandb_server, tmp_path, corpus):
    """A run without its completion mark (a load killed before the end) is not appended to:
    W&B would drop the steps it already holds; the copy fails that run with the fix."""
    few = [r for r in corpus if r.case in ("nan_inf", "string_series")]
    src = tmp_path / "src"
    write_exporter_export(src, few, part_rows=30_000)
    code, report, output = run_cli("copy", str(src), DEST, "--wandb-dir", str(tmp_path / "wd"))
    assert code == 0, output
    victim = _written(wandb_server, few[0])
    victim.config[mp.TRACKPORT_KEY]["complete"] = False          # the mark never arrived
    received = victim.history_lines_received
    rows = list(victim.history)

    code, report, output = run_cli("verify", str(src), DEST)
    assert code != 0
    status = {r["run_id"]: r for r in report["runs"]}
    assert status[few[0].run_id]["status"] == "missing"
    assert status[few[0].run_id]["error"] == "incomplete in the destination"
    assert status[few[1].run_id]["status"] == "verified"

    code, report, output = run_cli("copy", str(src), DEST, "--wandb-dir", str(tmp_path / "wd"))
    assert code != 0
    status = {r["run_id"]: r for r in report["runs"]}
    assert status[few[1].run_id]["status"] == "skipped"
    failed = status[few[0].run_id]
    assert failed["status"] == "failed"
    assert "left incomplete by an earlier copy" in failed["error"] and "delete that run" in failed["error"]
    assert victim.history_lines_received == received and victim.history == rows
    assert wandb_server.api_key not in output


def test_a_grown_run_with_new_points_below_its_last_step_is_refused_untouched(wandb_server, tmp_path):
    """W&B cannot take a step at or below a run's last one: a source run that grew with points
    there (a series catching up) fails with the fix, and the W&B run keeps what it had and its
    old mark (nothing logged)."""
    import shutil

    from trackport.testing.corpus import CorpusRun, rows_table

    def run(b_steps):
        rows = [{"path": "sys/name", "type": "string", "value": "grower"}]
        rows += [{"path": "a", "type": "float_series", "value": float(s), "step": s,
                  "timestamp": 1_700_000_000_000 + s} for s in range(5)]
        rows += [{"path": "b", "type": "float_series", "value": -float(s), "step": s,
                  "timestamp": 1_700_000_000_000 + s} for s in range(b_steps)]
        return CorpusRun("grow/proj", "GROW-1", rows_table("grow/proj", "GROW-1", rows))

    src = tmp_path / "src"
    write_exporter_export(src, [run(2)])
    args = ["--wandb-dir", str(tmp_path / "wd")]
    code, report, output = run_cli("copy", str(src), DEST, *args)
    assert code == 0, output
    (stored,) = [r for r in wandb_server.entities["entity"]["corpus"]
                 if mp.origin_from_config(r.config) == ("grow/proj", "GROW-1")]
    history, mark = list(stored.history), dict(stored.config[mp.TRACKPORT_KEY])
    assert mark["last_step"] == 4 and mark["points"] == 7
    shutil.rmtree(src)
    write_exporter_export(src, [run(5)])                   # b grew at steps 2..4, below step 4
    code, report, output = run_cli("copy", str(src), DEST, *args)
    assert code != 0
    (failed,) = report["runs"]
    assert failed["status"] == "failed" and "at or below step 4" in failed["error"], failed
    assert stored.history == history and stored.config[mp.TRACKPORT_KEY] == mark
