"""Advisory locks that make two trackport processes writing one destination take turns.

A run is claimed per origin (source URI, project, run id) for the whole time a
process moves it: from asking the destination whether it is there, to its
completion mark.  A second process moving the same run waits for the claim,
then finds the run complete and skips it (or resumes it, should the first have
failed), so N identical commands end as one does.

The locks are `flock(2)` locks on one small file per origin in a lock folder:
- beside a local destination (a parquet export, a SQLite store, a TensorBoard
  logdir, W&B / Neptune offline folders): every process on the machine, any user
  who can write the destination, takes turns;
- for a remote destination (a tracking server, a database): under a folder of the
  user's temporary directory keyed by the destination URI: processes of that user
  on that machine take turns; writers on other machines rely on the connector's own
  claim (see docs/reliability.md).
The kernel releases a lock when its process ends, however it ends: a crashed
writer never leaves a stale claim.  Lock files stay (a few bytes each; deleting
one safely would need another lock).  `flock` is POSIX: on a system without
`fcntl` (Windows) claims are not taken, which docs/reliability.md says.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import tempfile
from pathlib import Path
from typing import Iterator

from .model import Origin

try:  # POSIX
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger("trackport")

LOCK_DIR_NAME = ".trackport-locks"


def _digest(text: str) -> str:
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=12).hexdigest()


def host_lock_dir(destination_uri: str) -> Path:
    """The lock folder for a destination that is not a local path (same user, same machine)."""
    uid = os.getuid() if hasattr(os, "getuid") else 0
    # tempfile.gettempdir() may point at this process's scratch folder (core/scratch.py): use its base.
    base = Path(os.environ.get("TMPDIR") or "/tmp")
    if not base.is_dir():
        base = Path(tempfile.gettempdir())
    return base / f"trackport-locks-{uid}" / _digest(destination_uri)


@contextlib.contextmanager
def file_lock(path: Path, what: str) -> Iterator[tuple[str, float]]:
    """Hold an exclusive flock on `path` (created if missing); wait for it, saying who holds it.
    Yields who held it last (its record: "pid N" while held, "pid N released" once let go
    normally; "" if nobody) and when that record was written (mtime): the release time of a
    holder that let go, the take time of one that died holding it."""
    if fcntl is None:
        yield "", 0.0
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    mine = f"pid {os.getpid()}"
    taken_by_us = False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                held_by = os.pread(fd, 200, 0).decode("utf-8", "replace").strip()
            except OSError:
                held_by = ""
            log.warning("%s: another trackport process (%s) is writing it; waiting for it to finish",
                        what, held_by or "unknown pid")
            fcntl.flock(fd, fcntl.LOCK_EX)
            log.info("%s: the other process is done; going on", what)
        try:
            previous = os.pread(fd, 200, 0).decode("utf-8", "replace").strip()
            written = os.fstat(fd).st_mtime
            os.ftruncate(fd, 0)
            os.pwrite(fd, mine.encode(), 0)
            taken_by_us = True
        except OSError:
            previous, written = "", 0.0
        yield previous, written
    finally:
        if taken_by_us:
            try:   # the next holder learns when we let go (and that we did not die holding it)
                os.pwrite(fd, f"{mine} {RELEASED}".encode(), 0)
            except OSError:
                pass
        os.close(fd)   # releases the lock


RELEASED = "released"


def available() -> bool:
    """Are claims taken on this system (POSIX flock)?"""
    return fcntl is not None


def written_meanwhile(previous: str, written: float, since: float) -> bool:
    """Did another process write under this lock after `since` (or die holding it, at any
    time)?  Then what this process learnt of the destination before may be stale."""
    released = previous.endswith(f" {RELEASED}")
    holder = previous[: -len(RELEASED) - 1] if released else previous
    if not holder or holder == f"pid {os.getpid()}":
        return False
    if not released:
        return True    # it died holding the claim: it may have written at any time since it took it
    return written >= since - 1.0


class OriginClaims:
    """Per-origin claims in one lock folder (None: no claims, the destination needs none)."""

    def __init__(self, directory: Path | None):
        self.directory = directory

    def path(self, origin: Origin) -> Path:
        assert self.directory is not None
        return self.directory / f"run-{_digest(repr((origin.uri, origin.project_id, origin.run_id)))}.lock"

    @contextlib.contextmanager
    def hold(self, origin: Origin, what: str, since: float) -> Iterator[bool]:
        """Claim the run; yields whether another process may have written it since `since`
        (`written_meanwhile`): what this process learnt about the destination may be stale."""
        if self.directory is None:
            yield False
            return
        with file_lock(self.path(origin), what) as (previous, written):
            yield written_meanwhile(previous, written, since)
