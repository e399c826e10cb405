"""MLflow 1.30 in a venv of its own, to write stores the way old MLflow wrote them.

The venv is built once per machine (tests/cached_venv.py; keyed by the version
and its pins; ~25 s and ~80 MB: mlflow-skinny plus the SQL store's
SQLAlchemy/alembic, no pandas/scipy).  MLflow 1.30 supports Python <= 3.10: the
interpreter is $TRACKPORT_OLD_MLFLOW_PYTHON, else python3.10 from pyenv or the
PATH.  When no interpreter or no venv can be had, the test FAILS with the
reason: it is never skipped.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from cached_venv import cached_venv

OLD_MLFLOW = "1.30.1"
OLD_REVISION = "97727af70f4d"   # alembic head of MLflow 1.30
_PINS = (f"mlflow-skinny=={OLD_MLFLOW}", "sqlalchemy<2", "alembic<2", "protobuf<4")


def _interpreter() -> str:
    wanted = os.environ.get("TRACKPORT_OLD_MLFLOW_PYTHON")
    candidates = [wanted] if wanted else []
    pyenv = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    candidates += sorted(str(p / "bin" / "python") for p in pyenv.glob("3.10*"))
    candidates += [shutil.which("python3.10") or ""]
    for cand in candidates:
        if cand and Path(cand).exists():
            return cand
    pytest.fail(f"MLflow {OLD_MLFLOW} needs Python 3.10 to write an old store and none was found "
                f"(looked in {pyenv} and the PATH); set TRACKPORT_OLD_MLFLOW_PYTHON to a python3.10")


def old_mlflow_python() -> Path:
    """The python of a venv holding MLflow 1.30 (built on first use, then reused)."""
    key = "mlflow-" + OLD_MLFLOW + "-" + "-".join(p.replace("<", "lt").replace("=", "") for p in _PINS[1:])
    return cached_venv(key, _interpreter(), _PINS, what=f"MLflow {OLD_MLFLOW}", timeout=900)


def run_old_mlflow(script: str, *args: str, cwd: Path) -> str:
    """Run `script` (Python source) under MLflow 1.30; its stdout."""
    python = old_mlflow_python()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PYTHON"))}
    env["MLFLOW_DISABLE_TELEMETRY"] = "true"
    done = subprocess.run([str(python), "-c", script, *args], cwd=cwd, capture_output=True, text=True,
                          env=env, timeout=300)
    if done.returncode != 0:
        pytest.fail(f"MLflow {OLD_MLFLOW} script failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    return done.stdout


# Writes, with MLflow 1.30's own client, a SQLite store (argv[1]) and a file store (argv[2])
# with the shapes found in real stores; prints the run ids as JSON.
WRITER = r'''
import json, sys
from mlflow.tracking import MlflowClient
from mlflow.entities import Metric, Param, RunTag

def fill(uri, artifacts):
    c = MlflowClient(tracking_uri=uri)
    ids = {}
    kw = {"artifact_location": artifacts + "/vision"} if artifacts else {}
    e = c.create_experiment("vision", tags={"team": "cv", "owner": "ann"}, **kw)
    r = c.create_run(e, start_time=1000, tags={"mlflow.runName": "finished", "k": "v"})
    c.log_batch(r.info.run_id, metrics=[Metric("loss", 1.0 / (i + 1), 2000 + i, i) for i in range(5)],
                params=[Param("lr", "0.1")])
    c.log_text(r.info.run_id, "weights", "model/weights.txt")
    c.set_terminated(r.info.run_id, "FINISHED", end_time=9000)
    ids["finished"] = r.info.run_id
    r = c.create_run(e, start_time=1100, tags={"mlflow.runName": "killed"})
    c.log_metric(r.info.run_id, "acc", 0.5, 3000, 0)
    c.set_terminated(r.info.run_id, "KILLED", end_time=5000)
    ids["killed"] = r.info.run_id
    r = c.create_run(e, start_time=1200, tags={"mlflow.runName": "running"})
    c.log_param(r.info.run_id, "p", "1")
    ids["running"] = r.info.run_id
    r = c.create_run(e, start_time=1300, tags={"mlflow.runName": "unnamed"})
    c.log_param(r.info.run_id, "q", "2")
    ids["unnamed"] = r.info.run_id
    r = c.create_run(e, start_time=1400, tags={"mlflow.runName": "gone"})
    c.log_param(r.info.run_id, "r", "3")
    c.delete_run(r.info.run_id)
    ids["deleted_run"] = r.info.run_id
    kw = {"artifact_location": artifacts + "/old"} if artifacts else {}
    e2 = c.create_experiment("old-exp", **kw)
    r = c.create_run(e2, start_time=1500, tags={"mlflow.runName": "in-deleted-exp"})
    c.log_metric(r.info.run_id, "m", 1.0, 4000, 0)
    c.set_terminated(r.info.run_id, "FINISHED", end_time=6000)
    ids["in_deleted_exp"] = r.info.run_id
    c.delete_experiment(e2)
    ids["experiments"] = {"vision": e, "old-exp": e2}
    return ids

out = {"sqlite": fill(sys.argv[1], sys.argv[3]), "file": fill(sys.argv[2], None)}
print(json.dumps(out))
'''


def remove_empty_folders(root: Path) -> None:
    """What a git checkout of a store keeps: no empty folder (deepest first)."""
    for folder in sorted((p for p in root.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
        if not any(folder.iterdir()):
            folder.rmdir()


def write_old_stores(root: Path) -> dict:
    """MLflow 1.30's SQLite store (root/old.db, artifacts under root/old-artifacts) and file
    store (root/mlruns), in the shapes of real old stores:

    - the run `unnamed` has the empty name and no `mlflow.runName` tag of runs written by
      MLflow < 1.29 (1.30 names every run it creates, so the name is blanked afterwards,
      in the SQL store's own columns);
    - the file store went through git (no empty folder: runs without params/, metrics/,
      artifacts/), and its deleted experiment's meta.yaml in .trash still says `active`,
      as MLflow < 1.x's delete_experiment left it.
    """
    import json
    import sqlite3

    root.mkdir(parents=True, exist_ok=True)
    out = run_old_mlflow(WRITER, f"sqlite:///{root / 'old.db'}", str(root / "mlruns"),
                         (root / "old-artifacts").as_uri(), cwd=root)
    ids = json.loads(out.strip().splitlines()[-1])
    conn = sqlite3.connect(root / "old.db")
    with conn:
        conn.execute("UPDATE runs SET name = '' WHERE run_uuid = ?", (ids["sqlite"]["unnamed"],))
        conn.execute("DELETE FROM tags WHERE key = 'mlflow.runName' AND run_uuid = ?", (ids["sqlite"]["unnamed"],))
    conn.close()
    store = root / "mlruns"
    unnamed = ids["file"]["unnamed"]
    exp = ids["file"]["experiments"]["vision"]
    meta = store / str(exp) / unnamed / "meta.yaml"
    meta.write_text("".join(line if not line.startswith("run_name:") else "run_name: ''\n"
                            for line in meta.read_text().splitlines(keepends=True)))
    (store / str(exp) / unnamed / "tags" / "mlflow.runName").unlink()
    trashed = store / ".trash" / str(ids["file"]["experiments"]["old-exp"]) / "meta.yaml"
    trashed.write_text(trashed.read_text().replace("lifecycle_stage: deleted", "lifecycle_stage: active"))
    remove_empty_folders(store)
    return ids
