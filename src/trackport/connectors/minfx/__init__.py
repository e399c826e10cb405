"""Minfx connector.

Minfx (https://minfx.ai) ships the Neptune 2.x client API under its own package
(`import minfx as neptune`: `minfx.neptune_v2`, a fork of neptune-client 1.x), so
this connector reuses the Neptune 2.x sink and its mapping (connectors/neptune)
and swaps the client: client.py is the only module importing `minfx`.

- `minfx://WORKSPACE[/PROJECT]`: destination, through `minfx.init_run`, in the
  client's `async` mode (needs NEPTUNE_API_TOKEN of a Minfx server) or its
  `offline` mode (queues for `minfx sync`, under --minfx-data-dir);
- `minfx:PATH`: source, the offline / unsynced queues the client leaves on disk
  (the same queue format as neptune-client 1.x: read by the `neptune:` reader).

No SDK is imported here: `import trackport` stays SDK-free.
"""

from __future__ import annotations

from typing import Any

from trackport.core.errors import UsageError
from trackport.core.registry import ConnectorOption, ConnectorSpec, ParsedUri

SPEC = ConnectorSpec(
    schemes=("minfx",),
    summary="minfx://WORKSPACE[/PROJECT] (Minfx, Neptune 2.x client API), minfx:PATH (its offline data)",
    extra="minfx",
    requires=("minfx",),
    # client.py sets the client's queue folder and reads where a run queues its operations
    # through minfx.neptune_v2 internals; pyproject's `minfx` extra pins the same range.
    sdk_versions={"minfx": ">=0.7.4,<0.8"},
    capabilities={"minfx": "trackport.connectors.minfx.mapping:CAPABILITIES"},
    options=(
        ConnectorOption("--minfx-mode", "Minfx destination mode: async (default, needs NEPTUNE_API_TOKEN "
                        "of a Minfx server) or offline (queues for `minfx sync`).",
                        choices=("async", "offline")),
        ConnectorOption("--minfx-data-dir", "Minfx destination data directory (default ./.minfx, kept "
                        "apart from the Neptune client's ./.neptune; `minfx sync --path DIR`)."),
        ConnectorOption("--minfx-project", "minfx:PATH source: the project id given to offline runs, "
                        "which record none (default 'offline')."),
        ConnectorOption("--minfx-keep-all", "W&B -> Minfx: keep what the Neptune mapping leaves out "
                        "('_' keys, artifact/, media/, config.yaml, wandb-*).", "flag"),
    ),
)


def neptune_options(options: dict[str, Any]) -> dict[str, Any]:
    """The reused Neptune sink and reader read `neptune_*` options: give them ours."""
    out = dict(options)
    for ours, theirs in (("minfx_mode", "neptune_mode"), ("minfx_data_dir", "neptune_data_dir"),
                         ("minfx_project", "neptune_project"), ("minfx_keep_all", "neptune_keep_all")):
        out[theirs] = options.get(ours)
    if not out.get("neptune_data_dir"):
        from pathlib import Path

        out["neptune_data_dir"] = str(Path.cwd() / ".minfx")
    return out


def _target(parsed: ParsedUri) -> tuple[str, str | None]:
    rest = parsed.rest
    parts = [p for p in rest[2:].split("?", 1)[0].strip("/").split("/") if p] if rest.startswith("//") else []
    if not parts or len(parts) > 2:
        raise UsageError(f"minfx: a destination is minfx://WORKSPACE[/PROJECT], got {parsed.display!r}")
    return parts[0], (parts[1] if len(parts) == 2 else None)


def open_source(parsed: ParsedUri, options: dict[str, Any]):
    if parsed.rest.startswith("//"):
        raise UsageError("minfx://WORKSPACE/PROJECT is a destination; as a source give the client's "
                         "offline data: minfx:PATH (its data directory or any folder under it)")
    from .source import open_minfx_source

    return open_minfx_source(parsed.rest, neptune_options(options))


def open_sink(parsed: ParsedUri, options: dict[str, Any], read_only: bool = False):
    if not parsed.rest.startswith("//"):
        raise UsageError("a Minfx destination is minfx://WORKSPACE[/PROJECT]; minfx:PATH is a source only")
    workspace, project = _target(parsed)
    from .sink import MinfxSink

    return MinfxSink(workspace, project, neptune_options(options), read_only=read_only)


__all__ = ["open_source", "open_sink"]
