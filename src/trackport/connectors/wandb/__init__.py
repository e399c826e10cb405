"""W&B connector: `wandb:PATH` (offline run files), `wandb://ENTITY[/PROJECT]` (API source, sink).

No wandb import here: only `client.py` (and the API helper's module) import the SDK,
inside functions.  See docs/wandb.md.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from trackport.core.errors import UsageError
from trackport.core.registry import ParsedUri


def _offline_root(parsed: ParsedUri) -> Path:
    rest = parsed.rest.strip()
    if not rest:
        raise UsageError("wandb: needs a path: wandb:./wandb, wandb:DIR or wandb:DIR/offline-run-...")
    if rest.startswith("file://"):
        rest = rest[len("file://"):]
    root = Path(rest).expanduser()
    if not root.is_absolute():
        root = Path.cwd() / root
    return Path(os.path.normpath(root))


def open_source(parsed: ParsedUri, options: dict[str, Any]):
    if parsed.rest.startswith("//"):
        from .api_source import open_api_source

        return open_api_source(parsed, options)
    from .source import WandbOfflineSource

    return WandbOfflineSource(_offline_root(parsed), options)


def open_sink(parsed: ParsedUri, options: dict[str, Any]):
    if not parsed.rest.startswith("//"):
        raise UsageError("a W&B destination is wandb://ENTITY/PROJECT (add --wandb-mode offline to write "
                         "offline run files for `wandb sync`)")
    from .sink import open_wandb_sink

    return open_wandb_sink(parsed, options)


__all__ = ["open_source", "open_sink"]
