"""MLflow connector: `mlflow:sqlite:///ABS.db`, `mlflow:./mlruns`, `mlflow+http(s)://HOST:PORT`.

The MLflow SDK is imported only inside `open_source` / `open_sink`, so
`import trackport` stays SDK-free.  Credentials come only from MLflow's own
environment variables (MLFLOW_TRACKING_TOKEN, MLFLOW_TRACKING_USERNAME /
MLFLOW_TRACKING_PASSWORD), read by the SDK; a user:password in the URI is
dropped, never stored or printed.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trackport.core.errors import UsageError
from trackport.core.registry import ParsedUri, redact

log = logging.getLogger(__name__)

_DB_URI = re.compile(r"^(postgresql|postgres|mysql|mssql|oracle)(\+[\w-]+)?://", re.I)


@dataclass(frozen=True)
class Target:
    """Where an `mlflow:` URI points."""

    kind: str               # server | sqlite | database | file | databricks
    tracking_uri: str       # what MlflowClient gets (secret-free for servers)
    uri: str                # canonical trackport URI, free of secrets
    artifact_root: str | None = None  # file:// root for experiments trackport creates
    local_store: str | None = None    # SQLite file or file-store directory


def resolve(parsed: ParsedUri, options: dict[str, Any] | None = None) -> Target:
    """Turn the part after `mlflow:` into a tracking URI (relative paths against the cwd)."""
    options = options or {}
    rest = parsed.rest.strip()
    if not rest:
        raise UsageError("mlflow: needs a store: mlflow:sqlite:///ABS.db, mlflow:./mlruns or "
                         "mlflow+http://HOST:PORT")
    artifact_root = options.get("mlflow_artifact_root")
    if rest.startswith(("http://", "https://")):
        clean = redact(rest).rstrip("/")
        if clean != rest.rstrip("/"):
            log.warning("credentials in the MLflow URI are ignored; set MLFLOW_TRACKING_TOKEN or "
                        "MLFLOW_TRACKING_USERNAME/MLFLOW_TRACKING_PASSWORD instead")
        return Target("server", clean, f"mlflow+{clean}")
    if rest.startswith("sqlite:"):
        path = rest[len("sqlite:"):]
        if not path.startswith("///"):
            raise UsageError(f"bad SQLite URI {rest!r}: use sqlite:///relative.db or sqlite:////abs.db")
        path = path[3:]
        if not path or path.startswith(":memory:"):
            raise UsageError("an in-memory SQLite store cannot hold runs across calls")
        db = Path(path).expanduser()
        if not db.is_absolute():
            db = Path.cwd() / db
        db = Path(os.path.normpath(db))
        tracking = f"sqlite:///{db}"
        root = artifact_root or (db.parent / "mlartifacts").as_uri()
        return Target("sqlite", tracking, f"mlflow:{tracking}", str(root), str(db))
    if _DB_URI.match(rest):
        root = artifact_root or (Path.cwd() / "mlartifacts").as_uri()
        return Target("database", rest, f"mlflow:{redact(rest)}", str(root))
    if rest == "databricks" or rest.startswith("databricks://"):
        return Target("databricks", rest, f"mlflow:{rest}")
    # A file store directory (./mlruns), bare or as a file: URI.
    if rest.startswith("file:"):
        from urllib.parse import unquote, urlsplit

        path = unquote(urlsplit(rest).path)
    else:
        path = rest
    directory = Path(path).expanduser()
    if not directory.is_absolute():
        directory = Path.cwd() / directory
    directory = Path(os.path.normpath(directory))
    return Target("file", directory.as_uri(), f"mlflow:{directory}", None, str(directory))


def _tracking(target: Target):
    from .client import Tracking, env_for_file_store

    if target.kind == "file":
        env_for_file_store()
    return Tracking(target.tracking_uri, target.uri.removeprefix("mlflow+").removeprefix("mlflow:"),
                    target.artifact_root, Path(target.local_store) if target.local_store else None)


def open_source(parsed_uri: ParsedUri, options: dict[str, Any]):
    from .source import MlflowSource

    target = resolve(parsed_uri, options)
    if target.local_store and not Path(target.local_store).exists():
        raise UsageError(f"no MLflow store at {target.local_store}")
    return MlflowSource(_tracking(target), target.uri, options)


def open_sink(parsed_uri: ParsedUri, options: dict[str, Any]):
    from .sink import MlflowSink

    target = resolve(parsed_uri, options)
    sink = MlflowSink(_tracking(target), target.uri, options)
    if options.get("mlflow_bulk") and not options.get("read_only"):
        sink.bulk = _bulk_store(target)
    return sink


def _bulk_store(target: Target):
    """`--mlflow-bulk`: the store's tables, checked (bulk.py), or a UsageError saying what instead."""
    if target.kind not in ("sqlite", "database"):
        where = {"server": "an MLflow server over REST", "file": "a file store (./mlruns)",
                 "databricks": "Databricks"}.get(target.kind, target.kind)
        raise UsageError(
            f"--mlflow-bulk writes MLflow's database tables directly and needs a database store "
            f"(mlflow:sqlite:///ABS.db, mlflow:postgresql://..., mlflow:mysql://...); {target.uri} is "
            f"{where}. Point trackport at the store behind it (the server's --backend-store-uri) "
            f"or drop --mlflow-bulk"
        )
    from .bulk import BulkStore

    local = Path(target.local_store) if target.local_store else None
    return BulkStore(target.tracking_uri, target.uri, local)


__all__ = ["open_source", "open_sink", "resolve", "Target"]
