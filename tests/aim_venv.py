"""Aim's tests on Python >= 3.13, where aim has no wheels: a venv of pyenv's Python 3.12.

Built once per machine (tests/cached_venv.py; keyed by the pins below).  `run_suite_in_venv` runs a
test file with pytest inside it (PYTHONPATH = this checkout's src and tests) and FAILS with
pytest's output unless every test of it passed; it is never skipped.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from cached_venv import cached_venv

PINS = ("aim>=3.29,<3.30", "wandb>=0.19", "pyarrow>=14", "numpy>=1.24", "click>=8.1", "rich>=13",
        "pytest>=8", "pytest-timeout>=2.3")
_ROOT = Path(__file__).resolve().parent.parent


def _interpreter() -> str:
    wanted = os.environ.get("TRACKPORT_AIM_PYTHON")
    pyenv = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    candidates = [wanted] if wanted else []
    candidates += sorted((str(p / "bin" / "python") for p in pyenv.glob("3.12*")), reverse=True)
    candidates += [shutil.which("python3.12") or ""]
    for cand in candidates:
        if cand and Path(cand).exists():
            return cand
    pytest.fail(f"aim has no wheels for this Python and no Python 3.12 was found to test it with "
                f"(looked in {pyenv} and the PATH); set TRACKPORT_AIM_PYTHON to a python3.12")


def aim_python() -> Path:
    key = "aim-py312-" + re.sub(r"[^A-Za-z0-9.]+", "_", "-".join(PINS))[:80]
    return cached_venv(key, _interpreter(), PINS, what="Aim (Python 3.12)", timeout=1800)


def run_suite_in_venv(test_file: Path) -> int:
    """Run `test_file` with pytest under the aim venv; the number of tests passed."""
    python = aim_python()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env["PYTHONPATH"] = os.pathsep.join([str(_ROOT / "src"), str(_ROOT / "tests")])
    done = subprocess.run([str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider", str(test_file)],
                          cwd=_ROOT, capture_output=True, text=True, env=env, timeout=3000)
    tail = done.stdout[-6000:] + done.stderr[-2000:]
    if done.returncode != 0:
        pytest.fail(f"the Aim tests failed in the Python 3.12 venv ({python}):\n{tail}")
    passed = re.search(r"(\d+) passed", done.stdout)
    if not passed or re.search(r"\d+ (skipped|deselected|xfailed)", done.stdout):
        pytest.fail(f"the Aim tests did not all run in the Python 3.12 venv:\n{tail}")
    print(tail)
    return int(passed.group(1))
