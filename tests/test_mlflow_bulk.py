"""`--mlflow-bulk`: metric points written straight into an MLflow SQLite store's tables.

Everything is read back through MLflow's own client and compared with what the
SDK path stores for the same input: the bulk path must be indistinguishable.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from databases import database
from support import run_cli, runs_by_id
from trackport.connectors.mlflow import bulk
from trackport.connectors.mlflow.points import FLOAT_MAX
from trackport.connectors.mlflow.tags import TAG_COMPLETE, TAG_ORIGIN_RUN
from trackport.core.errors import RunError
from trackport.testing.corpus import CorpusRun, build_corpus, rows_table, series_table
from trackport.testing.exporter_layout import write_exporter_export


KINDS = ["sqlite", "postgresql", "mysql"]
# Fields of a run's info that must be equal on both paths (ids and the artifact URI built from
# the id are compared apart).
INFO_FIELDS = ("run_name", "status", "start_time", "end_time", "lifecycle_stage", "user_id")


def _client(uri: str | Path):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri if isinstance(uri, str) else f"sqlite:///{uri}")


def _uri(db: str | Path) -> str:
    return db if isinstance(db, str) else f"sqlite:///{db}"


def _rows(db: str | Path, sql: str, args: tuple = ()) -> list[tuple]:
    """Rows of a query on the store's own tables (SQLAlchemy: any of the three databases)."""
    import sqlalchemy

    engine = sqlalchemy.create_engine(_uri(db))
    try:
        with engine.connect() as conn:
            return [tuple(r) for r in conn.exec_driver_sql(sql, args)]
    finally:
        engine.dispose()


def _value(v: float) -> str:
    return "nan" if math.isnan(v) else repr(v)


def _store_contents(db: str | Path) -> dict[str, dict]:
    """Per origin run id, read through MlflowClient: every metric's full history, the run's latest
    values, its info, tags and params (run ids replaced by the origin run id they belong to)."""
    client = _client(db)
    out, ids = {}, {}
    runs = []
    for exp in client.search_experiments():
        for run in client.search_runs([exp.experiment_id], max_results=1000):
            origin = run.data.tags.get(TAG_ORIGIN_RUN)
            if origin is None:
                continue
            ids[run.info.run_id] = origin
            runs.append((exp, run))
    for exp, run in runs:
        origin = ids[run.info.run_id]
        full = client.get_run(run.info.run_id)
        histories = {key: sorted((m.step, m.timestamp, _value(m.value))
                                 for m in client.get_metric_history(run.info.run_id, key))
                     for key in full.data.metrics}
        latest = {key: _value(v) for key, v in full.data.metrics.items()}
        # artifact_uri exactly as MLflow's create_run builds it
        assert full.info.artifact_uri == f"{exp.artifact_location}/{run.info.run_id}/artifacts"
        info = {f: getattr(full.info, f) for f in INFO_FIELDS}
        info["experiment"] = exp.name
        tags = {k: ids.get(v, v) for k, v in full.data.tags.items()}
        out[origin] = {"histories": histories, "latest": latest, "complete": full.data.tags.get(TAG_COMPLETE),
                       "info": info, "tags": tags, "params": dict(full.data.params)}
    return out


def _metric_rows(db: str | Path) -> int:
    return _rows(db, "SELECT COUNT(*) FROM metrics")[0][0]


def _latest_rows(db: str | Path) -> dict[tuple[str, str], tuple]:
    """latest_metrics as stored (value, timestamp, step, is_nan), by (origin run id, key)."""
    quote = "`" if _uri(db).startswith("mysql") else '"'
    return {(origin, key): (repr(value), ts, step, bool(is_nan)) for origin, key, value, ts, step, is_nan in
            _rows(db, f"SELECT t.value, l.{quote}key{quote}, l.value, l.timestamp, l.step, l.is_nan "
                      f"FROM latest_metrics l JOIN tags t ON t.run_uuid = l.run_uuid "
                      f"AND t.{quote}key{quote} = '{TAG_ORIGIN_RUN}'")}


def _new_store(db: str | Path) -> str:
    """An empty MLflow store made by MLflow itself (its migrations, at its head revision)."""
    _client(db)._tracking_client.store  # noqa: B018 - creating the store is the point
    return _uri(db)


@pytest.fixture
def store(request, tmp_path, monkeypatch):
    """A new, empty database URI of the kind the test is parametrized with (`kind`): a SQLite
    file, or a uniquely named database on the local PostgreSQL / MariaDB server (skipped with
    the reason when that server is unreachable), dropped afterwards."""
    uris, drops = [], []
    monkeypatch.chdir(tmp_path)   # a server database's artifacts: ./mlartifacts

    def make(kind: str, name: str = "m") -> str:
        if kind == "sqlite":
            uri = f"sqlite:///{tmp_path / f'{name}.db'}"
        else:
            uri, drop = database(kind, "tp_bulk")
            drops.append(drop)
        uris.append(uri)
        return uri

    yield make
    for drop in drops:
        drop()


# ---------------------------------------------------------------------------
# the corpus through both paths


@pytest.fixture(scope="module")
def corpus():
    return build_corpus(big=True)


@pytest.fixture(scope="module", params=KINDS)
def loaded(request, tmp_path_factory, corpus):
    """The conformance corpus copied into one store with --mlflow-bulk and into another through the
    SDK (the big corpus on SQLite; on the server databases the corpus without its 100,000-point
    runs, to keep each case well under a minute)."""
    kind = request.param
    tmp = tmp_path_factory.mktemp(f"bulk-corpus-{kind}")
    runs = corpus if kind == "sqlite" else build_corpus(big=False)
    src = tmp / "export"
    write_exporter_export(src, runs, part_rows=30_000)
    reports, uris, drops = {}, {}, []
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.chdir(tmp)
            for name, extra in (("bulk", ["--mlflow-bulk"]), ("sdk", [])):
                if kind == "sqlite":
                    uri = f"sqlite:///{tmp / f'{name}.db'}"
                else:
                    uri, drop = database(kind, "tp_bulk")
                    drops.append(drop)
                uris[name] = uri
                code, report, out = run_cli("copy", str(src), f"mlflow:{uri}", *extra,
                                            "--state-dir", str(tmp / f"state-{name}"))
                assert code == 0, out
                reports[name] = report
            yield kind, tmp, src, reports, uris, runs
    finally:
        for drop in drops:
            drop()


def test_bulk_load_reads_back_exactly_as_the_sdk_path(loaded):
    kind, tmp, src, reports, uris, corpus = loaded
    bulk_db, sdk_db = uris["bulk"], uris["sdk"]
    dest = f"mlflow:{bulk_db}"
    assert reports["bulk"]["totals"]["moved"] == len(corpus)
    # the same counts and the same declared transformations as the SDK path
    for field in ("points", "params", "files", "transformations", "drops"):
        assert reports["bulk"]["totals"][field] == reports["sdk"]["totals"][field], field
    assert reports["bulk"]["totals"]["transformations"]["inf_to_float_max"] > 0

    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp)
        code, report, out = run_cli("verify", str(src), dest, "--mlflow-bulk")
    assert code == 0, out
    assert report["totals"]["verified"] == len(corpus)

    got, want = _store_contents(bulk_db), _store_contents(sdk_db)
    assert sorted(got) == sorted(r.run_id for r in corpus)
    # field by field: run info, tags, params, metric histories and latest values; a run with no
    # time at all starts "now" (MLflow's create_run), so its start time is the load's on each path
    for run in corpus:
        if run.case == "empty":
            assert abs(got[run.run_id]["info"].pop("start_time") - want[run.run_id]["info"].pop("start_time")) \
                < 600_000
    for origin in want:
        for part in ("info", "tags", "params", "latest", "histories", "complete"):
            assert got[origin][part] == want[origin][part], (origin, part)
    assert got == want
    assert any(run["params"] for run in got.values()) and any(len(run["tags"]) > 6 for run in got.values())
    # the comparison covers the hard values: NaN, +-inf as +-float max, big steps
    values = {v for run in got.values() for h in run["histories"].values() for _, _, v in h}
    assert {"nan", repr(FLOAT_MAX), repr(-FLOAT_MAX)} <= values
    assert max(s for run in got.values() for h in run["histories"].values() for s, _, _ in h) > 2**31
    if kind == "sqlite":   # and many points
        assert max(len(h) for run in got.values() for h in run["histories"].values()) >= 100_000
    assert all(run["complete"] == "true" for run in got.values())
    # the table rows themselves, not only what the client shows
    assert _metric_rows(bulk_db) == _metric_rows(sdk_db)
    assert _latest_rows(bulk_db) == _latest_rows(sdk_db) and len(_latest_rows(bulk_db)) > 10
    for table in ("params", "tags"):
        count = f"SELECT COUNT(*) FROM {table}"
        assert _rows(bulk_db, count) == _rows(sdk_db, count), table


def test_rerun_skips_and_adds_nothing(loaded):
    kind, tmp, src, _, uris, corpus = loaded
    db = uris["bulk"]
    before = _metric_rows(db), _rows(db, "SELECT COUNT(*) FROM runs")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp)
        code, report, out = run_cli("copy", str(src), f"mlflow:{db}", "--mlflow-bulk",
                                    "--state-dir", str(tmp / "state-bulk-again"))
    assert code == 0, out
    assert report["totals"]["skipped"] == len(corpus)
    assert (_metric_rows(db), _rows(db, "SELECT COUNT(*) FROM runs")) == before


# ---------------------------------------------------------------------------
# the tables, exactly as MLflow's own store keeps them


def test_tables_match_mlflow_store_on_ties_duplicates_and_special_values(tmp_path):
    """The same tricky points through MLflow's store `log_batch` and through BulkStore.write."""
    from mlflow.entities import Metric

    db = tmp_path / "s.db"
    _new_store(db)
    client = _client(db)
    eid = client.create_experiment("e")
    sdk_run, bulk_run = (client.create_run(eid).info.run_id for _ in range(2))
    # (key, value, timestamp, step), in arrival order, in three batches
    batches = [
        [("a", 1.0, 10, 5), ("a", float("nan"), 10, 5), ("a", 0.0, 10, 5), ("a", 0.5, 9, 5),
         ("b", float("inf"), 1, 1), ("b", float("-inf"), 1, 1), ("b", -0.0, 2, 1), ("b", 3.0, 1, 1),
         ("c", float("nan"), 7, 2**40), ("c", 2.0, 7, 3)],
        [("a", 1.0, 10, 5), ("a", 2.0, 10, 5), ("b", 3.0, 1, 1), ("b", 4.0, 0, 2),
         ("c", float("nan"), 7, 2**40), ("c", 0.0, 7, 2**40), ("d", -1.0, 0, -3)],
        [("a", float("nan"), 11, 5), ("d", float("-inf"), 0, -3), ("d", -5.0, 0, -3)],
    ]
    store = client._tracking_client.store
    writer = bulk.BulkStore(f"sqlite:///{db}", "test store", db)
    assert writer.revision in bulk.SUPPORTED_REVISIONS
    for batch in batches:
        store.log_batch(sdk_run, [Metric(k, v, t, s) for k, v, t, s in batch], [], [])
        keys = sorted({k for k, _, _, _ in batch})
        writer.write(bulk_run, keys, np.array([keys.index(k) for k, _, _, _ in batch]),
                     np.array([v for _, v, _, _ in batch]), np.array([t for _, _, t, _ in batch]),
                     np.array([s for _, _, _, s in batch]))
    # once more: the primary key keeps every point once
    writer.write(bulk_run, ["a"], np.array([0]), np.array([1.0]), np.array([10]), np.array([5]))
    writer.close()

    def rows(table: str, run: str):
        with sqlite3.connect(db) as conn:
            return sorted(conn.execute(f"SELECT key, value, timestamp, step, is_nan FROM {table} "
                                       f"WHERE run_uuid = ?", (run,)).fetchall())

    assert rows("metrics", bulk_run) == rows("metrics", sdk_run)
    assert len(rows("metrics", bulk_run)) == 17
    assert rows("latest_metrics", bulk_run) == rows("latest_metrics", sdk_run)
    latest = {r[0]: r for r in rows("latest_metrics", bulk_run)}
    assert latest["a"] == ("a", 0.0, 11, 5, 1)          # NaN stored as 0 with is_nan, newest timestamp
    assert latest["c"][1:] == (0.0, 7, 2**40, 1)         # a tie (NaN vs 0.0): the first one stays
    assert latest["d"] == ("d", -1.0, 0, -3, 0)


@pytest.mark.parametrize("kind", KINDS)
def test_partial_run_is_repaired_without_duplicates(kind, store, tmp_path, monkeypatch):
    """A run that fails after some bulk transactions is finished by the next load, each point once."""
    monkeypatch.setattr(bulk, "FLUSH_ROWS", 1_000)     # several transactions in this small run
    project, run_id, n = "bulk/partial", "PART-1", 4_000
    steps = np.arange(n, dtype=np.int64) * 10**6
    stamps = 1_700_000_000_000 + np.arange(n, dtype=np.int64)
    head = [
        rows_table(project, run_id, [{"path": "sys/name", "type": "string", "value": "partial"},
                                     {"path": "config/lr", "type": "float", "value": 0.1}]),
        series_table(project, run_id, "train/loss", "float_series", np.linspace(1, 0, n), steps, stamps),
        series_table(project, run_id, "train/acc", "float_series", np.linspace(0, 1, n), steps, stamps),
    ]
    # The last part says config/lr twice, differently: the sink refuses the run there, after
    # the metric points of the earlier parts are in the store.
    bad = rows_table(project, run_id, [{"path": "config/lr", "type": "float", "value": 0.2}])
    src = tmp_path / "export"
    write_exporter_export(src, [CorpusRun(project, run_id, pa.concat_tables(head + [bad]), {}, "partial")],
                          part_rows=1_000)
    db = store(kind)
    dest = f"mlflow:{db}"

    code, report, out = run_cli("copy", str(src), dest, "--mlflow-bulk")
    assert code != 0
    failed = runs_by_id(report)[run_id]
    assert failed["status"] == "failed" and "config/lr" in (failed["error"] or ""), failed
    partial = _store_contents(db)[run_id]
    assert partial["complete"] is None
    assert 0 < _metric_rows(db) < 2 * n

    shutil.rmtree(src)   # fixed at the source: load again
    write_exporter_export(src, [CorpusRun(project, run_id, pa.concat_tables(head), {}, "partial")],
                          part_rows=1_000)
    code, report, out = run_cli("copy", str(src), dest, "--mlflow-bulk")
    assert code == 0, out
    assert runs_by_id(report)[run_id]["status"] == "repaired"
    assert _metric_rows(db) == 2 * n
    repaired = _store_contents(db)[run_id]
    assert repaired["complete"] == "true"
    assert repaired["params"] == {"config/lr": "0.1"} and repaired["info"]["run_name"] == "partial"
    assert _rows(db, "SELECT COUNT(*) FROM runs") == [(1,)]
    assert {k: len(h) for k, h in repaired["histories"].items()} == {"train/loss": n, "train/acc": n}
    assert repaired["latest"]["train/loss"] == repr(0.0)
    code, report, out = run_cli("verify", str(src), dest, "--mlflow-bulk")
    assert code == 0, out


def test_a_store_error_fails_that_run_only(tmp_path):
    """An insert the database refuses (here a trigger) fails its run with a RunError; others move."""
    project, n = "bulk/errors", 3_000
    steps = np.arange(n, dtype=np.int64) * 10**6
    runs = [CorpusRun(project, run_id, series_table(project, run_id, key, "float_series",
                                                    np.linspace(0, 1, n), steps, steps // 10**3), {}, run_id)
            for run_id, key in (("GOOD-1", "train/loss"), ("BAD-1", "train/boom"))]
    src = tmp_path / "export"
    write_exporter_export(src, runs)
    db = tmp_path / "dest.db"
    _new_store(db)
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TRIGGER no_boom BEFORE INSERT ON metrics WHEN NEW.key = 'train/boom' "
                     "BEGIN SELECT RAISE(ABORT, 'boom refused by the store'); END")
    code, report, out = run_cli("copy", str(src), f"mlflow:sqlite:///{db}", "--mlflow-bulk")
    assert code != 0
    by_run = runs_by_id(report)
    assert by_run["GOOD-1"]["status"] == "moved"
    assert by_run["BAD-1"]["status"] == "failed"
    assert "boom refused by the store" in by_run["BAD-1"]["error"]
    contents = _store_contents(db)
    assert contents["GOOD-1"]["complete"] == "true" and len(contents["GOOD-1"]["histories"]["train/loss"]) == n
    # a small run is written in one transaction: refused, it leaves nothing behind
    assert "BAD-1" not in contents


@pytest.mark.parametrize("kind,path", [(kind, "bulk") for kind in KINDS]
                         + [("postgresql", "sdk"), ("mysql", "sdk")])
def test_two_processes_at_once_load_each_run_exactly_once(kind, path, store, tmp_path):
    """Two `copy` processes of one export into one store at the same time, with `--mlflow-bulk`
    and (server databases) without: each run ends in the store once, complete.  On a server
    database each process has its own TMPDIR, as on two machines, so no lock folder is shared
    and only the look after the completion mark (one SQL query on either path,
    origin_sql.py) keeps one run; SQLite's lock sits beside the file."""
    project, n_runs = "bulk/race", 24
    runs = []
    for i in range(n_runs):
        run_id = f"RACE-{i}"
        steps = np.arange(200, dtype=np.int64)
        runs.append(CorpusRun(project, run_id, pa.concat_tables([
            rows_table(project, run_id, [{"path": "sys/name", "type": "string", "value": run_id},
                                         {"path": "config/i", "type": "int", "value": i}]),
            series_table(project, run_id, "train/loss", "float_series", np.linspace(1, 0, 200), steps,
                         1_700_000_000_000 + steps)]), {}, run_id))
    src = tmp_path / "export"
    write_exporter_export(src, runs)
    db = store(kind)
    _new_store(db)   # made once by MLflow, so that both processes meet the same schema
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(bulk.__file__).parents[3]),
                                                        os.environ.get("PYTHONPATH", "")])}
    procs = []
    for i in range(2):
        machine = tmp_path / f"machine-{i}"
        machine.mkdir()
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "trackport", "copy", str(src), f"mlflow:{db}",
             *(["--mlflow-bulk"] if path == "bulk" else []), "--json", "--no-progress", "--workers", "2",
             "--state-dir", str(tmp_path / f"state-{i}")],
            cwd=tmp_path, env={**env, "TMPDIR": str(machine)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True))
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    reports = [json.loads(out) for out, _ in outs]
    statuses = [runs_by_id(r) for r in reports]
    for run in runs:   # each run moved (or repaired) by one process at least; skipped or moved by the other
        got = {s[run.run_id]["status"] for s in statuses}
        assert got & {"moved", "repaired"} and got <= {"moved", "repaired", "skipped"}, (run.run_id, got)
    active = _rows(db, "SELECT t.value FROM runs r JOIN tags t ON t.run_uuid = r.run_uuid "
                       f"WHERE r.lifecycle_stage = 'active' AND t.{'`key`' if kind == 'mysql' else 'key'} = "
                       f"'{TAG_ORIGIN_RUN}'")
    assert sorted(v for (v,) in active) == sorted(r.run_id for r in runs)
    contents = _store_contents(db)
    assert all(c["complete"] == "true" and len(c["histories"]["train/loss"]) == 200 for c in contents.values())
    assert _metric_rows(db) >= n_runs * 200


def test_a_changed_param_is_refused_as_mlflow_refuses_it(tmp_path):
    """MLflow's _log_params: a param stored with another value fails the run (nothing written)."""
    db = tmp_path / "p.db"
    _new_store(db)
    client = _client(db)
    run_uuid = client.create_run(client.create_experiment("e")).info.run_id
    client.log_param(run_uuid, "lr", "0.1")
    writer = bulk.BulkStore(f"sqlite:///{db}", "test store", db)
    run = writer.run("p", "r")
    run.existing(run_uuid)
    with pytest.raises(RunError, match="Changing param values is not allowed"):
        run.commit([("lr", "0.2"), ("new", "1")], [("trackport.complete", "true")], "FINISHED", 5, None)
    writer.close()
    got = client.get_run(run_uuid)
    assert got.data.params == {"lr": "0.1"} and "trackport.complete" not in got.data.tags
    assert got.info.status == "RUNNING"


# ---------------------------------------------------------------------------
# refusals


def _small_export(tmp_path: Path) -> Path:
    src = tmp_path / "export"
    write_exporter_export(src, [r for r in build_corpus(big=False) if r.case == "scalars"])
    return src


def test_unknown_schema_revision_is_refused(tmp_path):
    db = tmp_path / "old.db"
    _new_store(db)
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE alembic_version SET version_num = '0123456789ab'")
    code, report, out = run_cli("copy", str(_small_export(tmp_path)), f"mlflow:sqlite:///{db}", "--mlflow-bulk")
    assert code == 2
    assert "0123456789ab" in out and bulk.SUPPORTED_REVISIONS[0] in out
    assert "mlflow db upgrade" in out and "drop --mlflow-bulk" in out
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT COUNT(*) FROM runs").fetchone()[0] == 0


def test_a_fresh_store_is_created_by_mlflow_then_checked(tmp_path):
    db = tmp_path / "new" / "fresh.db"
    db.parent.mkdir()
    code, report, out = run_cli("copy", str(_small_export(tmp_path)), f"mlflow:sqlite:///{db}", "--mlflow-bulk")
    assert code == 0, out
    assert report["totals"]["moved"] == 1
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT version_num FROM alembic_version").fetchone()[0] == bulk.SUPPORTED_REVISIONS[0]


@pytest.mark.parametrize("dest", ["mlflow+http://127.0.0.1:9/", "mlflow:{tmp}/mlruns"])
def test_bulk_needs_a_database_store(tmp_path, dest):
    dest = dest.format(tmp=tmp_path)
    code, report, out = run_cli("copy", str(_small_export(tmp_path)), dest, "--mlflow-bulk")
    assert code == 2
    assert "--mlflow-bulk" in out and "needs a database store" in out and "mlflow:sqlite:///" in out
    assert not (tmp_path / "mlruns").exists()
