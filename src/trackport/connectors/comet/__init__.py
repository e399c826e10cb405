"""Comet connector: `comet://WORKSPACE/PROJECT` (destination) and `comet:PATH` (source).

The destination writes through the real `comet_ml` SDK.  `--comet-mode offline` (the default:
see docs/comet.md) writes one `OfflineExperiment` archive per run into `--comet-offline-dir`,
which `comet upload` sends later; `--comet-mode online` creates one experiment per run on the
server through the SDK's online `Experiment`; `comet:PATH` reads such archives (trackport's or the SDK's)
back.  comet_ml is imported only by client.py, inside functions.  See docs/comet.md.
"""

from __future__ import annotations

from pathlib import Path

from trackport.core.errors import UsageError
from trackport.core.registry import ConnectorOption, ConnectorSpec, ParsedUri

DEFAULT_OFFLINE_DIR = ".cometml-runs"     # the SDK's own default (config_constants DEFAULT_OFFLINE_DATA_DIRECTORY)

SPEC = ConnectorSpec(
    schemes=("comet",),
    summary="comet://WORKSPACE/PROJECT (offline archives: --comet-offline-dir, or --comet-mode online); comet:PATH reads archives",
    extra="comet",
    requires=("comet_ml",),
    # client.py enqueues comet_ml.messages.MetricMessage through Experiment._enqueue_message (to
    # keep each point's timestamp) and sets OfflineExperiment.start_time: tested with this range
    sdk_versions={"comet-ml": ">=3.58.8,<3.59"},
    capabilities={"comet": "trackport.connectors.comet.mapping:CAPABILITIES"},
    options=(
        ConnectorOption("--comet-mode", "Comet: offline (archives for `comet upload`; the default) or "
                        "online (experiments on the server: COMET_API_KEY, COMET_URL_OVERRIDE).", choices=("offline", "online"),
                        envvar=("TRACKPORT_COMET_MODE",)),
        ConnectorOption("--comet-offline-dir", "Comet offline: the folder receiving one archive per run "
                        f"(default: COMET_OFFLINE_DIRECTORY, else ./{DEFAULT_OFFLINE_DIR}).",
                        envvar=("COMET_OFFLINE_DIRECTORY",)),
        ConnectorOption("--comet-page-size", "Comet API source: experiments per listing request "
                        "(default 100).", "int"),
    ),
)


def workspace_project(parsed: ParsedUri) -> tuple[str, str | None] | None:
    """`comet://WORKSPACE[/PROJECT]` -> (workspace, project); None for `comet:PATH`."""
    rest = parsed.rest.strip()
    if not rest.startswith("//") or rest.startswith("///"):
        return None
    parts = [p for p in rest[2:].split("/") if p]
    if "@" in rest or "?" in rest or not parts or len(parts) > 2:
        raise UsageError(f"bad Comet URI {parsed.display!r}: use comet://WORKSPACE/PROJECT (the API key goes "
                         f"in COMET_API_KEY), or comet:PATH for a folder of offline archives")
    return parts[0], parts[1] if len(parts) > 1 else None


def _mode(options) -> str:
    mode = options.get("comet_mode")
    if mode:
        return mode
    return "offline"


def offline_dir(options) -> Path:
    text = options.get("comet_offline_dir") or DEFAULT_OFFLINE_DIR
    path = Path(text).expanduser()
    return (path if path.is_absolute() else Path.cwd() / path).absolute()


def open_sink(parsed: ParsedUri, options, read_only: bool = False):
    from trackport.core.connector import check_output_folder

    target = workspace_project(parsed)
    if target is None or target[1] is None:
        raise UsageError("a Comet destination is a project: comet://WORKSPACE/PROJECT")
    if _mode(options) == "online":
        from .client import CometApi
        from .sink import CometOnlineSink

        return CometOnlineSink(target[0], target[1], CometApi(options.get("comet_page_size") or 100), options,
                               read_only=read_only)
    from .sink import CometOfflineSink

    folder = offline_dir(options)
    check_output_folder(folder, f"comet offline dir {folder}", read_only, "--comet-offline-dir ./comet-archives")
    return CometOfflineSink(target[0], target[1], folder, options, read_only=read_only)


def open_source(parsed: ParsedUri, options):
    target = workspace_project(parsed)
    if target is not None:
        from .client import CometApi
        from .source import CometApiSource

        return CometApiSource(CometApi(options.get("comet_page_size") or 100), target[0], target[1], options)
    from .source import CometArchiveSource

    root = parsed.directory("comet:./.cometml-runs").absolute()
    if not root.exists():
        raise UsageError(f"comet: no folder or archive at {root}; fix: point at a folder of Comet offline "
                         f"archives (comet:./.cometml-runs)")
    return CometArchiveSource(root, f"comet:{root}", options)


__all__ = ["SPEC", "open_sink", "open_source", "workspace_project"]
