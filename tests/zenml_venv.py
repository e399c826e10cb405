"""ZenML in a venv of its own, for tests/test_zenml.py.

`zenml[local]` pins pydantic <=2.12.5, SQLAlchemy 2.0, alembic <=1.15.2, click <=8.5.0 and
exact OpenTelemetry versions, older than what trackport's other SDKs are tested with, so it is
not in trackport's `all`/`test` extras (docs/zenml.md).  Its tests run in a venv built once
per machine (tests/cached_venv.py; keyed by the ZenML pin; ~30 s with a warm pip cache,
~120 MB).  The venv holds ZenML and its own dependencies; a .pth file then appends the running
interpreter's site-packages (pyarrow, pytest, wandb, ...), so ZenML's pins win inside it and
nothing outside it changes.  When the venv cannot be built the test FAILS with the reason:
it is never skipped.
"""

from __future__ import annotations

import subprocess
import sys
import sysconfig
from pathlib import Path

from cached_venv import base_interpreter, cached_venv

ZENML_PIN = "zenml[local]>=0.98.0,<0.99"      # pyproject's `zenml` extra


def zenml_python() -> Path:
    """The python of a venv holding ZenML (built on first use, then reused)."""
    python = cached_venv(f"zenml-0.98-py{sys.version_info.major}.{sys.version_info.minor}",
                         base_interpreter(), (ZENML_PIN,), what="ZenML")
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    # the running interpreter's packages, after the venv's own (rewritten each time: the
    # outer environment may have moved)
    outer = dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"],
                           *[p for p in sys.path if p.endswith("site-packages")]])
    (Path(purelib) / "trackport-outer.pth").write_text("".join(p + "\n" for p in outer))
    return python
