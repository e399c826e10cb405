"""No command changes a byte of its source (issue 25, item 1).

Every source connector that reads local data is fingerprinted (every path, its kind,
size, modification time and content digest) before and after `plan`, `copy`,
`export`, `verify` and an export killed part-way: the fingerprints must be equal.
Each source is written by its real writer: MLflow 1.30 (a venv of its own, see
old_mlflow.py) and MLflow 3 for the MLflow stores, TensorBoard's writers, the W&B
and Neptune SDKs in their offline modes, and trackport's own export for parquet.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

import pytest

import wandb_offline_support as wos
from crash_support import child_command
from neptune_support import write_sdk2_run, write_sdk3_runs
from old_mlflow import remove_empty_folders, write_old_stores
from support import run_cli
from test_tensorboard import write_training


def fingerprint(root: Path) -> dict[str, tuple]:
    """path -> (kind, size, mtime_ns, sha256) of every file and folder under root (root included)."""
    out = {}
    for path in [root, *root.rglob("*")]:
        st = path.lstat()
        rel = str(path.relative_to(root))
        if path.is_symlink():
            out[rel] = ("link", os.readlink(path), st.st_mtime_ns)
        elif path.is_dir():
            out[rel] = ("dir", st.st_mtime_ns)
        else:
            out[rel] = ("file", st.st_size, st.st_mtime_ns, hashlib.sha256(path.read_bytes()).hexdigest())
    return out


def _diff(before: dict, after: dict) -> list[str]:
    lines = [f"new: {p}" for p in sorted(set(after) - set(before))]
    lines += [f"gone: {p}" for p in sorted(set(before) - set(after))]
    lines += [f"changed: {p} {before[p]} -> {after[p]}" for p in sorted(set(before) & set(after))
              if before[p] != after[p]]
    return lines


# -- the sources, each written by its own writer ---------------------------------------------------

def _mlflow3_store(root: Path, kind: str) -> str:
    """A store written by the installed MLflow 3 (head revision / today's file store)."""
    from mlflow.tracking import MlflowClient

    from mlflow.entities import Metric, Param

    if kind == "sqlite":
        uri = f"sqlite:///{root / 'm.db'}"
    else:
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        uri = (root / "mlruns").as_uri()
    client = MlflowClient(tracking_uri=uri)
    eid = client.create_experiment("e3", artifact_location=(root / "arts").as_uri(), tags={"team": "x"})
    run = client.create_run(eid, start_time=1_000, run_name="r3")
    client.log_batch(run.info.run_id, metrics=[Metric("loss", float(i), 2_000 + i, i) for i in range(20)],
                     params=[Param("lr", "0.1")])
    client.log_text(run.info.run_id, "hello", "notes/readme.txt")
    client.set_terminated(run.info.run_id, "FINISHED", end_time=9_000)
    if kind == "sqlite":
        client._tracking_client.store.engine.dispose()
        return f"mlflow:{uri}"
    remove_empty_folders(root / "mlruns")   # as a git checkout has it: no .trash/, no empty folder
    return f"mlflow:{root / 'mlruns'}"


_OLD_WRITTEN: list[Path] = []


def _old_stores(root: Path) -> None:
    """MLflow 1.30's stores, written once per session and copied (mtimes kept) after that."""
    import shutil

    if not _OLD_WRITTEN:
        first = root.parent.parent / "old-mlflow-stores"
        write_old_stores(first)
        _OLD_WRITTEN.append(first)
    shutil.copytree(_OLD_WRITTEN[0], root, copy_function=shutil.copy2, dirs_exist_ok=True)


def _old_sqlite(root: Path) -> str:
    _old_stores(root)
    return f"mlflow:sqlite:///{root / 'old.db'}"


def _old_file(root: Path) -> str:
    _old_stores(root)
    return f"mlflow:{root / 'mlruns'}"


def _tensorboard(root: Path) -> str:
    write_training(root / "logs")
    return f"tensorboard:{root / 'logs'}"


def _parquet(root: Path) -> str:
    scratch = root.parent / f"{root.name}-writer"
    write_training(scratch / "logs")
    code, _, out = run_cli("export", f"tensorboard:{scratch / 'logs'}", str(root / "export"),
                           "--state-dir", str(scratch / "state"))
    assert code == 0, out
    return f"parquet:{root / 'export'}"


def _wandb(root: Path) -> str:
    wos.make_runs(root)
    return f"wandb:{root}"


def _neptune2(root: Path) -> str:
    before = os.environ.get("NEPTUNE_DATA_DIRECTORY")
    try:
        write_sdk2_run(root / ".neptune", root.parent / f"{root.name}-files")
    finally:
        if before is None:
            os.environ.pop("NEPTUNE_DATA_DIRECTORY", None)
        else:
            os.environ["NEPTUNE_DATA_DIRECTORY"] = before
    return f"neptune:{root / '.neptune'}"


def _neptune3(root: Path) -> str:
    write_sdk3_runs(root / ".neptune", root.parent / f"{root.name}-files")
    return f"neptune:{root}"


SOURCES = {
    "mlflow-sqlite-1.30": _old_sqlite,
    "mlflow-file-1.30-git": _old_file,
    "mlflow-sqlite-head": lambda root: _mlflow3_store(root, "sqlite"),
    "mlflow-file-git": lambda root: _mlflow3_store(root, "file"),
    "parquet": _parquet,
    "tensorboard": _tensorboard,
    "wandb-offline": _wandb,
    "neptune2-offline": _neptune2,
    "neptune3-offline": _neptune3,
}
_OPTIONS = {"neptune2-offline": ["--neptune-project", "ws/proj"]}


@pytest.mark.parametrize("name", sorted(SOURCES))
def test_no_command_changes_the_source(name, tmp_path):
    root = tmp_path / "source"
    root.mkdir()
    src = SOURCES[name](root)
    extra = _OPTIONS.get(name, [])
    before = fingerprint(root)
    dest = f"mlflow:sqlite:///{tmp_path / 'dest.db'}"
    state = ["--state-dir", str(tmp_path / "state")]

    commands = {
        "plan": ["plan", src, dest],
        "copy": ["copy", src, dest, *state],
        "export": ["export", src, str(tmp_path / "export"), *state],
        "verify": ["verify", src, dest],
    }
    for command, args in commands.items():
        code, report, out = run_cli(*args, *extra)
        assert code in (0, 1) and report, f"{command}: {out[-3000:]}"
        if command == "copy":
            assert report["totals"]["runs"] >= 1 and not report["totals"].get("failed"), out[-3000:]
        assert _diff(before, fingerprint(root)) == [], f"{name}: `trackport {command}` changed the source"

    # An export killed while it writes its first run's rows.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        filter(None, [str(Path(__file__).resolve().parent.parent / "src"), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run(child_command(["call:ParquetRunWriter.write:1"],
                                        ["export", src, str(tmp_path / "killed"), "--no-progress",
                                         "--state-dir", str(tmp_path / "state-killed"), *extra]),
                          capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
    assert done.returncode == -9, done.stderr[-3000:]
    assert _diff(before, fingerprint(root)) == [], f"{name}: an interrupted export changed the source"
