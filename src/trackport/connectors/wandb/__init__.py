"""W&B connector: `wandb:PATH` (offline run files), `wandb://ENTITY[/PROJECT]` (API source, sink).

No wandb import here: only `client.py` (and the API helper's module) import the SDK,
inside functions.  See docs/wandb.md.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from trackport.core.errors import UsageError
from trackport.core.registry import ConnectorOption, ConnectorSpec, ParsedUri

SPEC = ConnectorSpec(
    schemes=("wandb",),
    summary="wandb://ENTITY[/PROJECT] (W&B API, WANDB_BASE_URL), wandb:PATH (offline run files)",
    extra="wandb",
    requires=("wandb",),
    # api.py and client.py use wandb.sdk internals (wandb_setup, wbauth, service_connection,
    # wandb_init, wandb_internal_pb2, File._attrs); pyproject's `wandb` extra pins the same range.
    sdk_versions={"wandb": ">=0.31.0,<0.32"},
    extension_projects=("wandb-artifacts/",),      # artifacts.PROJECT_PREFIX: artifact versions
    capabilities={"wandb": "trackport.connectors.wandb.mapping:SINK_CAPABILITIES"},
    options=(
        ConnectorOption("--wandb-mode", "W&B destination mode: online (default) or offline "
                        "(run files for `wandb sync`).", choices=("online", "offline")),
        ConnectorOption("--wandb-dir", "Where W&B offline runs are written "
                        "(DIR/wandb/offline-run-*; default $WANDB_DIR, else the "
                        "current directory).", envvar=("WANDB_DIR",))
    ),
)


def _offline_root(parsed: ParsedUri) -> Path:
    root = parsed.directory("wandb:./wandb, wandb:DIR or wandb:DIR/offline-run-...")
    return Path(os.path.normpath(root))


def open_source(parsed: ParsedUri, options: dict[str, Any]):
    if parsed.rest.startswith("//"):
        from .api_source import open_api_source

        return open_api_source(parsed, options)
    from .source import WandbOfflineSource

    return WandbOfflineSource(_offline_root(parsed), options)


def open_sink(parsed: ParsedUri, options: dict[str, Any], read_only: bool = False):
    if not parsed.rest.startswith("//"):
        raise UsageError("a W&B destination is wandb://ENTITY/PROJECT (add --wandb-mode offline to write "
                         "offline run files for `wandb sync`)")
    from .sink import open_wandb_sink

    return open_wandb_sink(parsed, options, read_only=read_only)


__all__ = ["open_source", "open_sink"]
