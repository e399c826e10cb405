"""MLflow keys of canonical attribute paths: naming, escaping, and which paths are params.

Pure functions, no MLflow import.  Everything is deterministic, so a resumed load computes
exactly the keys the first attempt used.

MLflow's key rule (mlflow/utils/validation.py, MLflow 3.17): param/metric/tag keys match
`^[/\\w.\\- :]*$` (unicode `\\w`), must equal their `posixpath.normpath` (no `//`, `/./`,
`..` parts, trailing `/`), must not start with `/` or `..`, and are at most 250 characters.
"""

from __future__ import annotations

import hashlib
import posixpath
import re
from dataclasses import dataclass
from typing import Iterable

MAX_KEY_LENGTH = 250
KEY_RULE = (
    "letters, digits, '_', '-', '.', ' ', ':' and '/'; no empty, '.' or '..' path parts, "
    "no leading or trailing '/'; at most 250 characters"
)
# What distinguishes a renamed key: MLflow keys cannot hold '~', so '--' + 8 hex.
SUFFIX = "--"
# A character MLflow refuses in a key (also what artifact names are made safe with).
BAD_KEY_CHAR = re.compile(r"[^\w./\- :]")

FOREIGN_TAG_PREFIX = "mlflow/tags/"
# A param of a foreign run whose key would read back as something else (a `sys/` attribute,
# a tag, the status) is named `mlflow/params/<key>`; the sink gives it back its key.
FOREIGN_PARAM_PREFIX = "mlflow/params/"
# A foreign run's status when `sys/failed` does not say it (KILLED, RUNNING, SCHEDULED).
STATUS_PATH = "mlflow/status"
STATUSES = ("RUNNING", "SCHEDULED", "FINISHED", "FAILED", "KILLED")
SYS_PREFIX = "sys/"
# What the MLflow source reads beside params, metrics and tags (status, tags, experiment tags,
# dataset inputs, logged models: docs/mlflow.md); `mlflow/params/<k>` is a param.
MLFLOW_PREFIX = "mlflow/"


def short_hash(text: str) -> str:
    """8 hex characters of blake2b: the deterministic suffix of renamed keys."""
    return hashlib.blake2b(text.encode("utf-8"), digest_size=4).hexdigest()


def sanitize_key(path: str, max_length: int = MAX_KEY_LENGTH) -> str:
    """The MLflow key for an attribute path: valid for params, metrics and tags.

    Characters outside `[\\w./\\- :]` become `_`; empty path parts are dropped;
    a `.` part becomes `_` and a `..` part `__`; a key still starting with
    `..` gets `_.`; a key over `max_length` is cut and gets `--<8 hex>` of
    the ORIGINAL path.
    """
    text = BAD_KEY_CHAR.sub("_", path)
    parts = []
    for part in text.split("/"):
        if not part:
            continue
        if part == ".":
            part = "_"
        elif part == "..":
            part = "__"
        parts.append(part)
    key = "/".join(parts) or "_"
    if key.startswith(".."):
        key = "_" + key[1:]
    if len(key) > max_length:
        key = key[: max_length - len(SUFFIX) - 8] + SUFFIX + short_hash(path)
    return key


def is_valid_key(key: str, max_length: int = MAX_KEY_LENGTH) -> bool:
    """MLflow's own check (validate_param_and_metric_name + path_not_unique + length)."""
    if not key or len(key) > max_length or not re.fullmatch(r"[/\w.\- :]*", key):
        return False
    norm = posixpath.normpath(key)
    return not (norm != key or norm == "." or norm.startswith("..") or norm.startswith("/"))


def with_suffix(key: str, source: str, salt: str = "", max_length: int = MAX_KEY_LENGTH) -> str:
    suffix = SUFFIX + short_hash(source + salt)
    return key[: max_length - len(suffix)] + suffix


@dataclass
class KeyInfo:
    key: str
    sanitized: bool = False
    renamed: bool = False


def is_run_attribute(path: str, attribute_type: str) -> bool:
    """A single value kept in MLflow's own run fields and tags, or (when MLflow has no field
    for it) only in trackport's manifest: never a user param.

    `sys/*` (run name, times, status, notes, tags, fork, and every other run-level attribute)
    and `mlflow/*` but `mlflow/params/<k>` (the status, a string `mlflow/tags/<k>` is a tag,
    experiment tags, dataset inputs, logged models)."""
    return path.startswith(SYS_PREFIX) or (path.startswith(MLFLOW_PREFIX)
                                           and not path.startswith(FOREIGN_PARAM_PREFIX))


def param_base(path: str) -> str:
    """What a param's key is made from: `mlflow/params/<k>` is param `<k>`."""
    if path.startswith(FOREIGN_PARAM_PREFIX) and len(path) > len(FOREIGN_PARAM_PREFIX):
        return path[len(FOREIGN_PARAM_PREFIX):]
    return path


# Canonical system metrics (`monitoring/<name>` float series) are MLflow's system metrics
# (`system/<name>`, what `mlflow.start_run(log_system_metrics=True)` logs and its UI shows
# under "System metrics"), both ways.
MONITORING_PREFIX = "monitoring/"
SYSTEM_METRIC_PREFIX = "system/"


def system_metric_key(path: str) -> str:
    """The MLflow key a `monitoring/<name>` float series is made from: `system/<name>`."""
    return SYSTEM_METRIC_PREFIX + path[len(MONITORING_PREFIX):]


def foreign_metric_path(key: str, keys: Iterable[str]) -> str:
    """The attribute path of a foreign run's metric `key`: `system/<name>` is
    `monitoring/<name>` unless the run also has a metric named so (then both keep their key)."""
    if key.startswith(SYSTEM_METRIC_PREFIX) and len(key) > len(SYSTEM_METRIC_PREFIX):
        path = MONITORING_PREFIX + key[len(SYSTEM_METRIC_PREFIX):]
        if path not in keys:
            return path
    return key


def foreign_param_path(key: str) -> str:
    """The attribute path of a foreign run's param `key` (inverse of `param_base`)."""
    if key.startswith((SYS_PREFIX, MLFLOW_PREFIX)):
        return FOREIGN_PARAM_PREFIX + key
    return key


def _is_monitoring(path: str) -> bool:
    return path.startswith(MONITORING_PREFIX) and len(path) > len(MONITORING_PREFIX)


class KeyMap:
    """Attribute path -> MLflow key, unique within a run, decided from the full path set.

    Paths that need no change are placed first, then the rest in sorted order;
    a key already taken gets a `--<hash of the path>` suffix.  Paths met later
    (not in the initial set) are placed on demand, in arrival order.  The key of a
    param path `mlflow/params/<k>` is made from `<k>` (`params`: those paths); of a metric
    path `monitoring/<name>` from `system/<name>` (`metrics`: the float series paths).
    """

    def __init__(self, paths: Iterable[str] = (), reserved: Iterable[str] = (),
                 max_length: int = MAX_KEY_LENGTH, params: Iterable[str] = (), metrics: Iterable[str] = ()):
        self.max_length = max_length
        self._info: dict[str, KeyInfo] = {}
        self._used: set[str] = set(reserved)
        self._params = {p for p in params if param_base(p) != p}
        self._system = {p for p in metrics if _is_monitoring(p)}
        unique = set(paths)
        plain = sorted(p for p in unique if sanitize_key(self._base(p), max_length) == self._base(p))
        changed = sorted(p for p in unique if sanitize_key(self._base(p), max_length) != self._base(p))
        for path in plain + changed:
            self.info(path)

    def _base(self, path: str) -> str:
        if path in self._system:
            return system_metric_key(path)
        return param_base(path) if path in self._params else path

    def info(self, path: str, param: bool = False, metric: bool = False) -> KeyInfo:
        got = self._info.get(path)
        if got is not None:
            return got
        if param and param_base(path) != path:
            self._params.add(path)
        if metric and _is_monitoring(path):
            self._system.add(path)
        base = self._base(path)
        key = sanitize_key(base, self.max_length)
        info = KeyInfo(key, sanitized=key != base)
        n = 0
        while info.key in self._used:
            info.key = with_suffix(key, path, str(n) if n else "", self.max_length)
            info.renamed = True
            n += 1
        self._used.add(info.key)
        self._info[path] = info
        return info

    def key(self, path: str) -> str:
        return self.info(path).key

    def items(self):
        return self._info.items()

