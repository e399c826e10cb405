"""ClearML connector: `clearml:PATH`, a folder of ClearML offline sessions (one `<task id>.zip`
per task, as `Task.set_offline(True)` writes them for `Task.import_offline_session` or
`clearml-task --import-offline-session`).  Both directions; see docs/clearml.md.

The source reads session zips and folders as JSON without the SDK and without a server;
the sink writes through the real `clearml` package, in a writer process of its own
(client.py, the only module importing it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from trackport.core.errors import UsageError
from trackport.core.registry import ConnectorSpec, ParsedUri

SPEC = ConnectorSpec(
    schemes=("clearml",),
    summary="clearml:PATH (ClearML offline sessions: a folder of <task id>.zip, e.g. ~/.clearml/cache/offline)",
    extra="clearml",
    requires=("clearml",),
    # the sink writes events through the SDK's reporter (Task._reporter._report): private API
    sdk_versions={"clearml": ">=2.1.12,<2.2"},
    capabilities={"clearml": "trackport.connectors.clearml.mapping:CAPABILITIES"},
)


def _path(parsed: ParsedUri) -> Path:
    return parsed.directory("clearml:./offline (ClearML's own: clearml:~/.clearml/cache/offline)")


def open_source(parsed: ParsedUri, options: Any):
    from .source import ClearmlSource

    path = _path(parsed)
    if not path.exists():
        raise UsageError(f"no ClearML offline sessions at {path}: the folder does not exist")
    return ClearmlSource(path, f"clearml:{path}", options)


def open_sink(parsed: ParsedUri, options: Any, read_only: bool = False):
    from trackport.core.connector import check_output_folder

    from .sink import ClearmlSink

    path = _path(parsed)
    check_output_folder(path, f"clearml:{path}", read_only, "clearml:./offline")
    return ClearmlSink(path, f"clearml:{path}", options, read_only=read_only)
