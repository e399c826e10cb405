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
from trackport.core.registry import ConnectorOption, ConnectorSpec, ParsedUri, redact

log = logging.getLogger(__name__)

_DB_URI = re.compile(r"^(postgresql|postgres|mysql|mssql|oracle)(\+[\w-]+)?://", re.I)

SPEC = ConnectorSpec(
    schemes=("mlflow",),
    summary="mlflow:sqlite:///ABS.db, mlflow:./mlruns, mlflow+http(s)://HOST:PORT",
    extra="mlflow",
    requires=("mlflow",),
    # client.py uses private MLflow API (_get_request_session, _tracking_client.store, the store
    # registry, FileStore internals); pyproject's `mlflow` extra pins the same range.
    sdk_versions={"mlflow": ">=3.17.2,<3.18"},
    # registry.PROJECT_PREFIX: registered model versions; models.PROJECT_PREFIX: MLflow 3 logged models
    extension_projects=("mlflow-registry/", "mlflow-models/"),
    capabilities={"mlflow": "trackport.connectors.mlflow.mapping:CAPABILITIES"},
    options=(
        ConnectorOption("--mlflow-experiment",
                        "MLflow experiment name template (default '{project}')."),
        ConnectorOption("--mlflow-bulk", "MLflow database destination (sqlite:///, "
                        "postgresql://, mysql://): write runs (rows, tags, params, metric "
                        "points) straight into MLflow's tables in large transactions "
                        "(checked schema revisions only).", "flag"),
        ConnectorOption("--mlflow-artifacts-root", "MLflow source read directly (SQLite, "
                        "database, ./mlruns) whose runs were logged through a tracking "
                        "server (artifact URIs mlflow-artifacts:/...): the server's "
                        "--artifacts-destination folder, or the server's URL, to read "
                        "their artifacts from (without it they are a counted drop)."),
        ConnectorOption("--include-deleted", "MLflow source: also move deleted runs and "
                        "the runs of deleted experiments (sys/trashed = true).", "flag"),
    ),
)


@dataclass(frozen=True)
class Target:
    """Where an `mlflow:` URI points."""

    kind: str               # server | sqlite | database | file | databricks
    tracking_uri: str       # what MlflowClient gets (secret-free for servers)
    uri: str                # canonical trackport URI, free of secrets
    artifact_root: str | None = None  # file:// root for experiments trackport creates
    local_store: str | None = None    # SQLite file or file-store directory


def resolve(parsed: ParsedUri) -> Target:
    """Turn the part after `mlflow:` into a tracking URI (relative paths against the cwd)."""
    rest = parsed.rest.strip()
    if not rest:
        raise UsageError("mlflow: needs a store: mlflow:sqlite:///ABS.db, mlflow:./mlruns or "
                         "mlflow+http://HOST:PORT")
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
        root = (db.parent / "mlartifacts").as_uri()
        return Target("sqlite", tracking, f"mlflow:{tracking}", str(root), str(db))
    if _DB_URI.match(rest):
        root = (Path.cwd() / "mlartifacts").as_uri()
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


def _tracking(target: Target, read_only: bool = False):
    from .client import Tracking, env_for_file_store

    if target.kind == "file":
        env_for_file_store()
    return Tracking(target.tracking_uri, target.uri.removeprefix("mlflow+").removeprefix("mlflow:"),
                    target.artifact_root, Path(target.local_store) if target.local_store else None,
                    read_only=read_only)


def open_source(parsed_uri: ParsedUri, options: dict[str, Any]):
    """A source never changes its store: a SQLite store is read from a private copy, a file
    store without MLflow's mkdirs, a server database only at this MLflow's schema head."""
    from .source import MlflowSource

    target = resolve(parsed_uri)
    if target.local_store and not Path(target.local_store).exists():
        raise UsageError(f"no MLflow store at {target.local_store}")
    if target.kind == "sqlite" and not Path(target.local_store).is_file():
        raise UsageError(f"{target.local_store} is not a SQLite file")
    if target.kind == "database":
        from .client import check_database_revision

        check_database_revision(target.tracking_uri, target.uri)
    tracking = _tracking(target, read_only=True)
    tracking.artifacts_root = options.get("mlflow_artifacts_root") or None
    return MlflowSource(tracking, target.uri, options)


def open_sink(parsed_uri: ParsedUri, options: dict[str, Any], read_only: bool = False):
    from .sink import MlflowSink

    target = resolve(parsed_uri)
    sink = MlflowSink(_tracking(target), target.uri, options, read_only=read_only)
    if options.get("mlflow_bulk") and not read_only:
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
