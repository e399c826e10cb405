"""`minfx:PATH`: the offline / unsynced queues the `minfx` client leaves on disk.

minfx 0.7.4 writes neptune-client 1.x's queue layout unchanged
(minfx/neptune_v2/internal/operation_processors/: `offline/run__*`,
`async/run__*`, `data-N.log` JSON lines, `metadata.json`), so the
`neptune:` reader (connectors/neptune/offline/) reads it; no SDK needed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from trackport.connectors.neptune.offline.source import NeptuneOfflineSource
from trackport.core.errors import UsageError


class MinfxOfflineSource(NeptuneOfflineSource):
    def __init__(self, root: Path, options: dict[str, Any]):
        super().__init__(root, options)
        self.uri = f"minfx:{root}"


def open_minfx_source(rest: str, options: dict[str, Any]) -> MinfxOfflineSource:
    text = rest.strip()
    if not text:
        raise UsageError("minfx: needs a path: minfx:PATH (the client's data directory or a folder under it)")
    root = Path(text).expanduser()
    if not root.is_absolute():
        root = Path.cwd() / root
    if not root.exists():
        raise UsageError(f"no Minfx data at {root}")
    return MinfxOfflineSource(root.resolve(), options)
