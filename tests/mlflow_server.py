"""Pytest fixtures for the MLflow connector: a real `mlflow server` and a sqlite URI.

`mlflow_server` starts one server per test session (startup takes ~15 s):
a SQLite backend store and proxied artifacts under a temporary directory,
bound to 127.0.0.1 on a free port.  It yields the base URL and kills the
server's whole process group at the end.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

__all__ = ["mlflow_server", "mlflow_sqlite_uri", "start_mlflow_server", "stop_mlflow_server"]

_STARTUP_TIMEOUT = 300.0  # a bound, not a wait: a loaded 2-core machine has needed over 120 s


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as resp:
            return resp.status == 200
    except OSError:
        return False


def start_mlflow_server(root: Path, workers: int = 2, backend_store_uri: str | None = None
                        ) -> tuple[subprocess.Popen, str]:
    """Start `mlflow server` storing under `root` (runs in `backend_store_uri` when given, e.g.
    a PostgreSQL or MySQL database, else a SQLite file there); return (process, base URL) once
    healthy."""
    root.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log = open(root / "server.log", "wb")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_TRACKING_")}
    env["MLFLOW_DISABLE_TELEMETRY"] = "true"  # no calls to outside hosts from tests
    # MLflow 3.17 starts a job runner (huey consumers) beside the server by default; it serves
    # no tracking request but takes CPU and polls the server's SQLite file (docs/benchmarks.md).
    # (mlflow/environment_variables.py MLFLOW_SERVER_ENABLE_JOB_EXECUTION, read in mlflow/server/__init__.py)
    env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
    cmd = [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", backend_store_uri or f"sqlite:///{root / 'm.db'}",
        "--artifacts-destination", str(root / "art"),
        "--host", "127.0.0.1",
        "--port", str(port),
        "--workers", str(workers),
    ]
    proc = subprocess.Popen(
        cmd, cwd=root, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
    )
    log.close()
    deadline = time.monotonic() + _STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            text = (root / "server.log").read_text(errors="replace")[-3000:]
            raise RuntimeError(f"mlflow server exited with {proc.returncode}:\n{text}")
        if _healthy(url):
            return proc, url
        time.sleep(0.3)
    stop_mlflow_server(proc)
    raise RuntimeError(f"mlflow server did not become healthy within {_STARTUP_TIMEOUT:.0f} s")


def stop_mlflow_server(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=10)


@pytest.fixture(scope="session")
def mlflow_server():
    """Base URL (http://127.0.0.1:PORT) of a real MLflow tracking server for this session."""
    root = Path(tempfile.mkdtemp(prefix="trackport-mlflow-server-"))
    proc, url = start_mlflow_server(root)
    try:
        yield url
    finally:
        stop_mlflow_server(proc)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def mlflow_sqlite_uri(tmp_path):
    """A fresh direct SQLite tracking URI (the database is created on first use)."""
    return f"sqlite:///{tmp_path / 'm.db'}"
