"""Neptune connector.

- `neptune:PATH`: offline / unsynced data of the 2.x (`neptune`) and 3.x
  (`neptune-scale`) clients, read from disk (offline.py, offline2.py, offline3.py);
- `neptune2://WORKSPACE/PROJECT`, `neptune3://WORKSPACE/PROJECT`: the Neptune
  APIs as sources (api2_source.py, api3_source.py) and as destinations through
  the clients (sink.py; client2.py / client3.py are the only SDK importers).

No SDK is imported here: `import trackport` stays SDK-free.
"""

from __future__ import annotations

from typing import Any

from trackport.core.errors import UsageError
from trackport.core.registry import ParsedUri


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
        from .api2_source import open_api2_source

        return open_api2_source(parsed, options)
    if parsed.scheme == "neptune3":
        from .api3_source import open_api3_source

        return open_api3_source(parsed, options)
    from .offline import open_offline_source

    return open_offline_source(parsed.rest, options)


def open_sink(parsed: ParsedUri, options: dict[str, Any]):
    if parsed.scheme not in ("neptune2", "neptune3"):
        raise UsageError("a Neptune destination is neptune2://WORKSPACE[/PROJECT] (2.x client) or "
                         "neptune3://WORKSPACE[/PROJECT] (neptune-scale); neptune:PATH is a source only")
    workspace, project = _api_target(parsed)
    from .sink import NeptuneSink

    return NeptuneSink(parsed.scheme, workspace, project, options)


__all__ = ["open_source", "open_sink"]
