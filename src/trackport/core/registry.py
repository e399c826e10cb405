"""Scheme -> connector, imported lazily (fsspec-style).

Adding a tracker is one line here plus its folder under `connectors/`.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from .errors import MissingExtraError, UsageError


@dataclass(frozen=True)
class ConnectorOption:
    """A command-line option that belongs to one connector.

    The CLI adds it to every moving command; its value reaches the connector
    as `options[name]` (the flag without dashes, `-` -> `_`).  `envvar`
    lets a tracker's existing settings carry over.
    """

    flag: str
    help: str
    kind: str = "str"                 # "str", "int" (>= 1), "count" (>= 0), "float" or "flag"
    choices: tuple[str, ...] = ()
    envvar: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return self.flag.lstrip("-").replace("-", "_")


@dataclass(frozen=True)
class ConnectorSpec:
    scheme: str
    module: str
    extra: str | None          # pip extra that installs its SDK
    requires: tuple[str, ...]  # importable names the extra provides
    summary: str
    options: tuple[ConnectorOption, ...] = ()
    aliases: tuple[str, ...] = ()   # more schemes served by the same module


_SPECS = (
    ConnectorSpec("parquet", "trackport.connectors.parquet", None, (),
                  "parquet:DIR (or a bare directory): a canonical / neptune-exporter export",
                  options=(ConnectorOption("--part-size", "Parquet part size in bytes (default 50 MB).", "int"),)),
    ConnectorSpec("mlflow", "trackport.connectors.mlflow", "mlflow", ("mlflow",),
                  "mlflow:sqlite:///ABS.db, mlflow:./mlruns, mlflow+http(s)://HOST:PORT",
                  options=(ConnectorOption("--mlflow-experiment",
                                           "MLflow experiment name template (default '{project}')."),
                           ConnectorOption("--mlflow-bulk", "MLflow database destination (sqlite:///, "
                                           "postgresql://, mysql://): write metric points straight into "
                                           "MLflow's tables in large transactions (checked schema "
                                           "revisions only).", "flag"),)),
    ConnectorSpec("wandb", "trackport.connectors.wandb", "wandb", ("wandb",),
                  "wandb://ENTITY[/PROJECT] (W&B API, WANDB_BASE_URL), wandb:PATH (offline run files)",
                  options=(ConnectorOption("--wandb-mode", "W&B destination mode: online (default) or offline "
                                           "(run files for `wandb sync`).", choices=("online", "offline")),
                           ConnectorOption("--wandb-dir", "Where W&B offline runs are written "
                                           "(DIR/wandb/offline-run-*; default $WANDB_DIR, else the "
                                           "current directory).", envvar=("WANDB_DIR",)))),
    ConnectorSpec("neptune", "trackport.connectors.neptune", "neptune", ("neptune",),
                  "neptune:PATH (offline .neptune data), neptune2://WORKSPACE/PROJECT, neptune3://WORKSPACE/PROJECT",
                  aliases=("neptune2", "neptune3"),
                  options=(ConnectorOption("--neptune-mode", "Neptune destination mode: async (default, needs "
                                           "NEPTUNE_API_TOKEN) or offline (data for `neptune sync`).",
                                           choices=("async", "offline")),
                           ConnectorOption("--neptune-data-dir", "Neptune destination data directory (absolute; "
                                           "default ./.neptune).", envvar=("NEPTUNE_DATA_DIRECTORY",)),
                           ConnectorOption("--neptune-project", "Project id given to neptune: offline 2.x runs, "
                                           "which record none (default 'offline')."),
                           ConnectorOption("--neptune-keep-all", "W&B -> Neptune: keep what the original script "
                                           "leaves out ('_' keys, artifact/, media/, config.yaml, wandb-*).",
                                           "flag"),
                           ConnectorOption("--neptune-project-include", "neptune2://WORKSPACE, neptune3://WORKSPACE: "
                                           "only projects whose name matches one of these comma-separated regexes."),
                           ConnectorOption("--neptune-project-exclude", "neptune2://WORKSPACE, neptune3://WORKSPACE: "
                                           "skip projects whose name matches one of these comma-separated regexes."),
                           ConnectorOption("--neptune-nql", "Neptune API sources: NQL query selecting the runs "
                                           "(passed to the server as it is)."),
                           ConnectorOption("--neptune-archived", "Neptune API sources: also read archived "
                                           "(trashed) runs.", "flag"),
                           ConnectorOption("--neptune-metric-previews", "neptune3:// source: also read metric "
                                           "preview points (left out by default, as neptune-exporter does).",
                                           "flag"))),
    ConnectorSpec("pluto", "trackport.connectors.pluto", "pluto", ("pluto",),
                  "pluto://PROJECT (or pluto:// for the source project); PLUTO_API_KEY",
                  options=(
                      ConnectorOption("--pluto-host", "Self-hosted Pluto: a host (SDK ports 3000/3001/3003/3004) "
                                      "or one base URL serving every endpoint (default: PLUTO_URL_* or the cloud)."),
                      ConnectorOption("--pluto-batch-rows", "Pluto: source rows handled at once, and series/log lines per ingest request (default 10000).",
                                      "int", envvar=("NEPTUNE_EXPORTER_PLUTO_BATCH_ROWS",)),
                      ConnectorOption("--pluto-flush-every", "Pluto: metric points per ingest request (default 1000).",
                                      "int", envvar=("NEPTUNE_EXPORTER_PLUTO_FLUSH_EVERY",)),
                      ConnectorOption("--pluto-file-chunk-size", "Pluto: files per upload chunk (default 100).",
                                      "int", envvar=("NEPTUNE_EXPORTER_PLUTO_FILE_CHUNK_SIZE",)),
                      ConnectorOption("--pluto-file-chunk-sleep", "Pluto: seconds to pause between file chunks "
                                      "(default 0).", "float", envvar=("NEPTUNE_EXPORTER_PLUTO_FILE_CHUNK_SLEEP",)),
                      ConnectorOption("--pluto-max-files-per-run", "Pluto: cap on files per run, 0 = none (default); "
                                      "files over the cap are reported as dropped.", "count",
                                      envvar=("NEPTUNE_EXPORTER_PLUTO_MAX_FILES_PER_RUN",)),
                      ConnectorOption("--pluto-log-every", "Pluto: keep 1 metric point in N (default 1 = every "
                                      "point); the others are reported as dropped.", "int",
                                      envvar=("NEPTUNE_EXPORTER_PLUTO_LOG_EVERY",)),
                  )),
    ConnectorSpec("tensorboard", "trackport.connectors.tensorboard", "tensorboard", ("tensorboard",),
                  "tensorboard:LOGDIR (event files)",
                  options=(ConnectorOption("--tensorboard-run-depth",
                                           "TensorBoard source: runs are the directories this many levels below "
                                           "LOGDIR; deeper event directories become attribute prefixes "
                                           "(default: every directory holding event files is a run).", "int"),
                           ConnectorOption("--tensorboard-subdirs-as-prefixes",
                                           "TensorBoard source: event directories below a run directory "
                                           "(train/, validation/) stay in that run as attribute prefixes.",
                                           "flag"),
                           ConnectorOption("--tensorboard-project",
                                           "TensorBoard source: project id of its runs (default: LOGDIR's "
                                           "name)."))),
)

CONNECTORS: dict[str, ConnectorSpec] = {
    scheme: spec for spec in _SPECS for scheme in (spec.scheme, *spec.aliases)
}


def connector_options() -> list[ConnectorOption]:
    """Every connector's own options, each once, in registry order."""
    seen: dict[str, ConnectorOption] = {}
    for spec in _SPECS:
        for option in spec.options:
            seen.setdefault(option.name, option)
    return list(seen.values())


@dataclass(frozen=True)
class ParsedUri:
    scheme: str
    rest: str          # what follows `scheme:` (or the transport URL for `scheme+http://`)
    original: str

    @property
    def display(self) -> str:
        return redact(self.original)


_SCHEME_RE = re.compile(r"^(?P<scheme>[a-zA-Z][a-zA-Z0-9]*)(?P<plus>\+[a-zA-Z]+)?:(?P<rest>.*)$", re.S)


def parse_uri(text: str) -> ParsedUri:
    if not text:
        raise UsageError("empty URI")
    match = _SCHEME_RE.match(text)
    if match and not (len(match["scheme"]) == 1 and os.name == "nt"):
        scheme = match["scheme"].lower()
        if scheme in CONNECTORS:
            rest = match["rest"]
            if match["plus"]:
                rest = f"{match['plus'][1:].lower()}:{rest}"
            return ParsedUri(scheme, rest, text)
        if not os.path.exists(text):
            known = ", ".join(f"{s}: ({c.summary})" for s, c in sorted(CONNECTORS.items()))
            raise UsageError(f"unknown scheme {scheme!r} in {redact(text)!r}; known schemes: {known}")
    # A bare path is a parquet export root.
    return ParsedUri("parquet", text, text)


def _importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # e.g. sys.modules[name] is None: import blocked
        return False


def connector(scheme: str):
    spec = CONNECTORS.get(scheme)
    if spec is None:
        raise UsageError(f"unknown scheme {scheme!r}; known: {', '.join(sorted(CONNECTORS))}")
    missing = [name for name in spec.requires if not _importable(name)]
    if missing:
        raise MissingExtraError(
            f"the {scheme} connector needs {', '.join(missing)}, which is not installed; "
            f"fix: pip install 'trackport[{spec.extra}]'"
        )
    return importlib.import_module(spec.module)


def open_source(uri: str, options: dict[str, Any] | None = None):
    parsed = parse_uri(uri)
    module = connector(parsed.scheme)
    if not hasattr(module, "open_source"):
        raise UsageError(f"{parsed.scheme} can only be a destination")
    return module.open_source(parsed, dict(options or {}))


def open_sink(uri: str, options: dict[str, Any] | None = None):
    parsed = parse_uri(uri)
    module = connector(parsed.scheme)
    if not hasattr(module, "open_sink"):
        raise UsageError(f"{parsed.scheme} can only be a source")
    return module.open_sink(parsed, dict(options or {}))


_SECRET_QUERY = re.compile(r"(?i)([?&](?:token|api[_-]?key|key|password|secret|access_token)=)[^&#]*")


def _remember_userinfo(password: str | None) -> None:
    """A URI's password is scrubbed from logs and reports from now on (raw and decoded)."""
    from urllib.parse import unquote

    from .logs import remember_secret

    if password:
        remember_secret(password)
        remember_secret(unquote(password))


def redact(text: str) -> str:
    """Drop userinfo and secret-looking query values from anything URL-shaped."""
    text = _SECRET_QUERY.sub(r"\1***", text)
    head, sep, tail = text.partition("://")
    if not sep:
        return text
    try:
        parts = urlsplit("x://" + tail)
    except ValueError:
        return text
    if parts.username is None and parts.password is None:
        return text
    _remember_userinfo(parts.password)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return head + "://" + urlunsplit(("x", host, parts.path, parts.query, parts.fragment))[len("x://"):]
