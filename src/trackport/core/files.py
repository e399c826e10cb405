"""Local files, shared by connectors: the files of a run kept under one folder, and a local
copy of a file for an SDK that uploads from disk.  (A folder named by a `scheme:DIR` URI:
`ParsedUri.directory`, in registry.py, which connectors' SDK-free `__init__` modules import.)"""

from __future__ import annotations

import shutil
import tempfile
import threading
import weakref
from pathlib import Path
from typing import BinaryIO, Callable

from . import layout
from .connector import FileAccess
from .errors import RunError
from .model import RunRef


class DirectoryFiles(FileAccess):
    """The files of a run kept under one local folder: `file_value.path` is relative to `root`.

    Refused with a RunError naming the run and the file: a path that leaves `root` (absolute,
    `..`, or through a symlink; with `top`, a folder above `root`, through a symlink anywhere
    from `top` down), a missing file (`holder` names where it was looked for), a folder holding
    a symlink that leads out of `root`, and anything but regular files and folders (a named
    pipe, socket or device: reading it could wait forever)."""

    def __init__(self, root: Path, run: RunRef, top: Path | None = None, holder: str = "the run's folder"):
        self.root = root
        self.run = run
        self.top = top
        self.holder = holder

    def _fail(self, reason: str, path: str) -> RunError:
        return RunError(reason, project_id=self.run.project_id, run_id=self.run.run_id, file=path)

    def local_path(self, path: str) -> Path:
        try:
            found = layout.resolve_inside(self.root, path, self.top)
        except ValueError as exc:
            raise self._fail(str(exc), path) from None
        if not found.exists():
            raise self._fail(f"file missing from {self.holder} (looked for {found})", path)
        if found.is_dir():
            self._check_tree(found, path)
        special = layout.special_file(found)
        if special:
            raise self._fail(f"file path {path!r} {special}; reading it could wait forever, so nothing is "
                             f"read from it", path)
        return found

    def _check_tree(self, folder: Path, path: str) -> None:
        """A folder (file_set, artifact) whose entries all stay inside the files root: a
        symlink inside it must not carry a file from elsewhere into the destination."""
        real_root = self.root.resolve()
        for entry in sorted(folder.rglob("*")):
            if not entry.is_symlink():
                continue
            if not layout.is_inside(entry, real_root):
                rel = entry.relative_to(folder).as_posix()
                raise self._fail(f"file path {path!r} holds {rel!r}, a symlink that leads outside the files root",
                                 path)

    def open(self, path: str) -> BinaryIO:
        return open(self.local_path(path), "rb")


def materialise(files: FileAccess, path: str, scratch: Path, err: Callable[..., Exception],
               name: str | None = None) -> Path:
    """A local file (a file set: a folder) holding what `files` gives for `path`, for an SDK
    that uploads from disk.

    The source's own local path when it has one: nothing is copied.  Otherwise the bytes are
    streamed into `scratch/<name>`, or, without `name`, into a new folder below `scratch` under
    the path's base name (kept, as trackers show it; one folder per file, so two files of one
    name never meet).  A file that cannot be read or is missing raises
    `err(message, file=path)` -- a RunScoped writer passes its `_err`, naming run and file.
    """
    try:
        local = files.local_path(path)
        if local is None:
            if name is None:
                scratch.mkdir(parents=True, exist_ok=True)
                target = Path(tempfile.mkdtemp(dir=scratch)) / (Path(path).name or "file")
            else:
                target = scratch / name
                target.parent.mkdir(parents=True, exist_ok=True)
            with files.open(path) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
            local = target
    except (FileNotFoundError, IsADirectoryError, PermissionError, ValueError) as exc:
        raise err(f"cannot read file: {exc}", file=path) from None
    local = Path(local)
    if not local.exists():
        raise err("file not found", file=path)
    return local


def copy_into(files: FileAccess, path: str, target: Path, err: Callable[..., Exception]) -> tuple[int, int]:
    """Copy what `files` gives for `path` to `target`, streaming (a file set's folder: the whole
    folder); (files, bytes) now at `target`, for the run's report.  For sinks that keep files in
    folders of their own (TensorBoard, DVCLive, GoodSeed).  A file that cannot be read raises
    `err("cannot read file: ...", file=path)`."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        local = files.local_path(path)
        if local is not None and Path(local).is_dir():
            shutil.copytree(local, target, dirs_exist_ok=True)
            sizes = [p.stat().st_size for p in target.rglob("*") if p.is_file()]
            return len(sizes), sum(sizes)
        with files.open(path) as src, open(target, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
    except (OSError, ValueError) as exc:
        raise err(f"cannot read file: {exc}", file=path) from None
    return 1, target.stat().st_size


class ScratchFolder:
    """A temporary folder made on first use of `path` (under the process's scratch folder,
    core/scratch.py) and removed by `remove()`, or when its owner is collected: `verify`
    does not close the sink whose read-back source downloads into one."""

    def __init__(self, prefix: str):
        self.prefix = prefix
        self._path: Path | None = None
        self._finalizer: weakref.finalize | None = None
        self._lock = threading.Lock()

    @property
    def path(self) -> Path:
        with self._lock:
            if self._path is None:
                self._path = Path(tempfile.mkdtemp(prefix=self.prefix))
                self._finalizer = weakref.finalize(self, shutil.rmtree, str(self._path), True)
            return self._path

    def remove(self) -> None:
        with self._lock:
            if self._finalizer is not None:
                self._finalizer()
            self._path = self._finalizer = None


class DownloadedFiles(FileAccess):
    """A run's files as a hosted tracker holds them, fetched on first use: `download(folder)`
    writes every file of the run at its `file_value.path` under a new folder in `scratch`."""

    def __init__(self, download: Callable[[Path], None], scratch: ScratchFolder, prefix: str):
        self._download = download
        self._scratch = scratch
        self._prefix = prefix
        self._dir: Path | None = None
        self._lock = threading.Lock()

    def local_path(self, path: str) -> Path:
        with self._lock:
            if self._dir is None:
                self._dir = Path(tempfile.mkdtemp(prefix=self._prefix, dir=self._scratch.path))
                self._download(self._dir)
        return self._dir / path

    def open(self, path: str) -> BinaryIO:
        local = self.local_path(path)
        if not local.is_file():
            raise FileNotFoundError(path)
        return open(local, "rb")
