"""Files on disk, for every connector that keeps runs in folders: names safe on any file
system (`safe`), JSON written atomically, and paths that must stay inside a root (symlinks
resolved) and must not be pipes or devices.

The layout of a parquet export (data/, files/, manifests) is the parquet connector's
(connectors/parquet/layout.py).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
import tempfile
from pathlib import Path
from typing import Any

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


def _digest(text: str) -> str:
    return hashlib.blake2b(text.encode("utf-8"), digest_size=8).hexdigest()


def safe(text: str) -> str:
    """Every character outside [A-Za-z0-9_-] becomes `_`, then `-<blake2b-8 hex>` of the
    original: distinct texts stay distinct, whatever the file system folds."""
    return _UNSAFE.sub("_", text) + "-" + _digest(text)


def write_json_atomic(path: Path, payload: Any) -> None:
    """Write JSON so that readers see the old file or the whole new one, never a torn one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(payload, fh, indent=1, sort_keys=True, default=str)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def read_json(path: Path) -> Any:
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def is_inside(path: Path, real_top: Path) -> bool:
    """`path`, every symlink resolved, is `real_top` (itself resolved) or lies below it."""
    real = path.resolve()
    return real == real_top or real_top in real.parents


def escape_below(top: Path, path: Path) -> str | None:
    """The first component of `path` below `top` that leads outside `top` once resolved
    (`top`-relative, e.g. `files/proj-1a2b`), or None when every one stays inside.
    Checked component by component: a project folder that is a symlink to /etc must not
    make /etc/passwd look "inside" its own (resolved) folder."""
    real_top = top.resolve()
    try:
        below = path.relative_to(top).parts
    except ValueError:
        return path.as_posix()
    step = top
    for name in below:
        step = step / name
        if not is_inside(step, real_top):
            return step.relative_to(top).as_posix()
    return None


def resolve_inside(root: Path, relative: str, top: Path | None = None) -> Path:
    """`root/relative`, refusing anything that leaves `root` (`..`, absolute paths, symlinks out),
    and, when `top` (a folder above `root`, the export root) is given, any component from `top`
    down -- `root` itself included -- that leads outside `top` once resolved."""
    if not relative or relative.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", relative):
        raise ValueError(f"file path {relative!r} is absolute or empty")
    parts = Path(relative).parts
    if ".." in parts:
        raise ValueError(f"file path {relative!r} escapes the files root")
    candidate = root / relative
    if top is not None:
        escaped = escape_below(top, root)
        if escaped is not None:
            raise ValueError(f"folder {escaped} of the export leads outside the export root (a symlink to "
                             f"{(top / escaped).resolve()}); nothing is read through it")
    if not is_inside(candidate, root.resolve()):
        raise ValueError(f"file path {relative!r} leads outside the files root (through a symlink)")
    if top is not None:
        escaped = escape_below(top, candidate)
        if escaped is not None:
            raise ValueError(f"file path {relative!r} leads outside the export root (through a symlink "
                             f"at {escaped})")
    return candidate


_KINDS = ((stat.S_ISFIFO, "a named pipe"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"))


def _kind(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def special_file(path: Path) -> str | None:
    """Why reading `path` (a file, or a folder of files) could hang or read a device: it, or
    an entry below it, is a named pipe, socket or device (symlinks followed).  None: only
    regular files and folders.  Checked before a byte is read: opening a named pipe
    for reading blocks until some process writes to it."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return None                     # missing: the caller's own check names it
    if stat.S_ISREG(mode):
        return None
    if not stat.S_ISDIR(mode):
        return f"is {_kind(mode)}, not a regular file"
    for entry in sorted(path.rglob("*")):
        try:
            mode = entry.stat().st_mode
        except OSError as exc:
            return f"holds {entry.relative_to(path).as_posix()!r}, which cannot be read ({exc.strerror})"
        if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
            return f"holds {entry.relative_to(path).as_posix()!r}, {_kind(mode)}, not a regular file"
    return None
