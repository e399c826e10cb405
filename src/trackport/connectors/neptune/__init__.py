"""Neptune connector.

- `neptune:PATH`: offline / unsynced data of the 2.x (`neptune`) and 3.x
  (`neptune-scale`) clients, read from disk;
- `neptune2://WORKSPACE/PROJECT`, `neptune3://WORKSPACE/PROJECT`: the Neptune
  APIs as sources and as destinations through the clients.

Layout, by what a module reads or writes (the digit is the client generation):
`mapping.py` is the pure canonical <-> Neptune mapping every part shares;
`offline/` reads data on disk (`source.py` the `neptune:PATH` source and its run
builder, `reader2.py` the 2.x JSON operation queues, `reader3.py` the 3.x
`run_operations.sqlite3`); `api/` reads the APIs (`source2.py` / `source3.py` open
the sources, `base.py` what both share, `mapping.py` their pure mapping, `reader2.py`
/ `reader3.py` the SDK calls); `sink/` writes (`sink.py` the sink and run writer,
`client2.py` / `client3.py` the SDK calls).  SDKs are imported lazily, inside functions,
and only by api/reader2.py (`neptune`, and neptune-query for file-series steps),
api/reader3.py (neptune-query), sink/client2.py (`neptune`), sink/client3.py
(`neptune-scale`, `neptune-api`) and offline/reader3.py (`neptune-api` protobufs).

No SDK is imported here: `import trackport` stays SDK-free.
"""

from __future__ import annotations

from typing import Any

from trackport.core.errors import UsageError
from trackport.core.registry import ConnectorOption, ConnectorSpec, ParsedUri

SPEC = ConnectorSpec(
    schemes=("neptune", "neptune2", "neptune3"),
    summary="neptune:PATH (offline .neptune data), neptune2://WORKSPACE/PROJECT, neptune3://WORKSPACE/PROJECT",
    extra="neptune",
    requires=("neptune",),
    # api/reader2.py, api/reader3.py read through neptune-query's internal package and the 2.x
    # client's attribute internals; sink/client3.py writes through neptune-scale's operations
    # repository.  pyproject's `neptune` extra pins the same ranges.
    sdk_versions={"neptune": ">=1.14.0.post2,<1.15", "neptune-scale": ">=0.30.0,<0.31",
                  "neptune-query": ">=1.14.1,<1.15"},
    capabilities={"neptune2": "trackport.connectors.neptune.mapping:CAPABILITIES_2",
                  "neptune3": "trackport.connectors.neptune.mapping:CAPABILITIES_3"},
    options=(
        ConnectorOption("--neptune-mode", "Neptune destination mode: async (default, needs "
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
                        "flag")
    ),
)


def _api_target(parsed: ParsedUri) -> tuple[str, str | None]:
    rest = parsed.rest
    if not rest.startswith("//"):
        raise UsageError(f"{parsed.scheme}: wants {parsed.scheme}://WORKSPACE[/PROJECT], got {parsed.display!r}")
    parts = [p for p in rest[2:].split("?", 1)[0].strip("/").split("/") if p]
    if not parts or len(parts) > 2:
        raise UsageError(f"{parsed.scheme}: wants {parsed.scheme}://WORKSPACE[/PROJECT], got {parsed.display!r}")
    return parts[0], (parts[1] if len(parts) == 2 else None)


def open_source(parsed: ParsedUri, options: dict[str, Any]):
    if parsed.scheme == "neptune2":
        from .api.source2 import open_api2_source

        return open_api2_source(parsed, options)
    if parsed.scheme == "neptune3":
        from .api.source3 import open_api3_source

        return open_api3_source(parsed, options)
    from .offline.source import open_offline_source

    return open_offline_source(parsed.rest, options)


def open_sink(parsed: ParsedUri, options: dict[str, Any], read_only: bool = False):
    if parsed.scheme not in ("neptune2", "neptune3"):
        raise UsageError("a Neptune destination is neptune2://WORKSPACE[/PROJECT] (2.x client) or "
                         "neptune3://WORKSPACE[/PROJECT] (neptune-scale); neptune:PATH is a source only")
    workspace, project = _api_target(parsed)
    from .sink.sink import NeptuneSink

    return NeptuneSink(parsed.scheme, workspace, project, options, read_only=read_only)


__all__ = ["open_source", "open_sink"]
