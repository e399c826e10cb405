"""Pluto connector: `pluto://PROJECT` (or `pluto://` for the source's project).

The pluto-ml SDK is imported only inside client.py, lazily.  The API key comes
from PLUTO_API_KEY (or `pluto login`), a self-hosted server from
PLUTO_URL_APP/API/INGEST/PY or --pluto-host: the SDK ignores `api_key=` and
`host=` keywords (docs/pluto.md).  See docs/pluto.md.
"""

from __future__ import annotations

from typing import Any

from trackport.core.errors import UsageError
from trackport.core.registry import ConnectorOption, ConnectorSpec, ParsedUri

SPEC = ConnectorSpec(
    schemes=("pluto",),
    summary="pluto://PROJECT (or pluto:// for the source project); PLUTO_API_KEY",
    extra="pluto",
    requires=("pluto",),
    # client.py resolves the key with pluto.query._resolve_api_token and sets private Settings
    # fields; pyproject's `pluto` extra pins the same range.
    sdk_versions={"pluto-ml": ">=0.0.29,<0.0.30"},
    capabilities={"pluto": "trackport.connectors.pluto.mapping:CAPABILITIES"},
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
    ),
)


def project_of(parsed: ParsedUri) -> str | None:
    rest = parsed.rest
    if not rest.startswith("//"):
        raise UsageError(f"bad Pluto URI {parsed.display!r}: use pluto://PROJECT or pluto://")
    project = rest[2:].strip().strip("/")
    if "@" in project or "?" in project:
        raise UsageError("a Pluto URI holds only the project; the key goes in PLUTO_API_KEY, "
                         "the server in PLUTO_URL_* or --pluto-host")
    return project or None


def _client(options: dict[str, Any]):
    from .client import PlutoClient

    return PlutoClient(options.get("pluto_host") or None)


def open_sink(parsed: ParsedUri, options: dict[str, Any], read_only: bool = False):
    from .sink import PlutoSink

    project = project_of(parsed)
    return PlutoSink(project, options, _client(options), read_only=read_only)


def open_source(parsed: ParsedUri, options: dict[str, Any]):
    from .source import PlutoSource

    project = project_of(parsed)
    if project is None:
        raise UsageError("reading Pluto needs a project: pluto://PROJECT")
    return PlutoSource(_client(options), project, f"pluto://{project}")


__all__ = ["open_sink", "open_source", "project_of"]
