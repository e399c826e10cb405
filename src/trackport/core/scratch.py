"""One scratch folder per trackport process, swept when its process is gone.

Every temporary file of a command (the pipeline's spools, connectors' staging
folders, SDK temp files) goes under `<tmp>/trackport-pid<PID>` because
`tempfile.tempdir` points there.  A normal exit removes it; a killed process
(SIGKILL, Ctrl-C's immediate exit) leaves it, and the next command removes
the folders of processes that no longer exist.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

_PREFIX = "trackport-pid"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def use_process_scratch() -> Path:
    """Point this process's temporary files at its own folder (idempotent); sweep dead ones."""
    mine = f"{_PREFIX}{os.getpid()}"
    current = tempfile.gettempdir()
    if Path(current).name == mine:
        return Path(current)
    base = Path(current)
    for folder in base.glob(f"{_PREFIX}*"):
        pid = folder.name[len(_PREFIX):]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)
    scratch = base / mine
    scratch.mkdir(exist_ok=True)
    tempfile.tempdir = str(scratch)
    atexit.register(shutil.rmtree, scratch, True)
    return scratch
