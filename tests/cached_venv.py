"""A venv built once per machine for tests that need an SDK whose pins or Python clash with
trackport's own test environment (old MLflow, Aim on 3.13, ZenML).

Venvs live under ~/.cache/trackport-tests/ (or $TRACKPORT_TEST_CACHE), one per key, guarded
by a file lock so that parallel test processes build each once.  A venv is reused only if
its python still starts: a venv made from another venv's python points at that python, and
CI deletes its own venv after each run, so a cached venv must never be built on one (it is
built on the base interpreter) and a broken one is rebuilt rather than trusted.  When a venv
cannot be built the calling test FAILS with pip's output; it is never skipped.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

CACHE = Path(os.environ.get("TRACKPORT_TEST_CACHE", Path.home() / ".cache" / "trackport-tests"))


def base_interpreter() -> str:
    """The interpreter the running one was made from (itself outside a venv)."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    for name in (f"python{version}", "python3", "python"):
        cand = Path(sys.base_prefix) / "bin" / name
        if cand.exists():
            return str(cand)
    return sys.executable


def _starts(python: Path) -> bool:
    try:
        return subprocess.run([str(python), "-c", "pass"], capture_output=True, timeout=120).returncode == 0
    except OSError:
        return False


def cached_venv(key: str, interpreter: str, pins: tuple[str, ...], *, what: str, timeout: int = 1200) -> Path:
    """The python of the venv `key`: `interpreter` plus `pins`, built on first use."""
    venv = CACHE / key
    python = venv / "bin" / "python"
    ready = venv / ".ready"
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / f"{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if ready.exists() and _starts(python):
            return python
        shutil.rmtree(venv, ignore_errors=True)
        for cmd in ([interpreter, "-m", "venv", str(venv)],
                    [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", *pins]):
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
            if done.returncode != 0:
                shutil.rmtree(venv, ignore_errors=True)
                pytest.fail(f"cannot build the {what} venv ({' '.join(cmd)}):\n"
                            f"{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
        ready.write_text("\n".join(pins))
    return python
