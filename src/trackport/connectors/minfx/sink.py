"""Minfx destination `minfx://WORKSPACE[/PROJECT]`: the Neptune 2.x sink (connectors/neptune/sink/sink.py)
writing through the `minfx` client (client.py).

Everything the Neptune 2.x sink does holds: deterministic custom run id from the
source run id, `trackport/origin/*` written first, series in step order at
commit, the restore table, `trackport/complete` last; offline, a rerun finds
runs by scanning the queues for the origin.
"""

from __future__ import annotations

from typing import Any

from trackport.connectors.neptune.sink.sink import NeptuneSink
from trackport.core.errors import UsageError

from . import mapping as mp


class MinfxSink(NeptuneSink):
    def __init__(self, workspace: str, project: str | None, options: dict[str, Any], read_only: bool = False):
        mode = options.get("neptune_mode") or "async"
        if mode not in ("async", "offline"):
            raise UsageError(f"--minfx-mode must be async or offline, not {mode!r}")
        super().__init__("neptune2", workspace, project, options, read_only=read_only)
        self.capabilities = mp.CAPABILITIES
        self.uri = f"minfx://{workspace}" + (f"/{project}" if project else "")

    def client2(self):
        from . import client

        return client

    def preflight(self, read_only: bool = False) -> None:
        from trackport.core.connector import check_output_folder

        check_output_folder(self.data_dir, f"{self.uri} (--minfx-data-dir)", read_only or self.read_only)

    def as_source(self):
        from .source import MinfxOfflineSource

        return MinfxOfflineSource(self.data_dir, self.options)

    def describe_plan(self, plan) -> list[str]:
        lines = super().describe_plan(plan)
        return [line.replace("Neptune 2.x project", "Minfx project", 1) for line in lines]
