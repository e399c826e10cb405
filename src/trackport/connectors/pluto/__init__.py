"""Pluto connector: `pluto://PROJECT` (or `pluto://` for the source's project).

The pluto-ml SDK is imported only inside client.py, lazily.  The API key comes
from PLUTO_API_KEY (or `pluto login`), a self-hosted server from
PLUTO_URL_APP/API/INGEST/PY or --pluto-host: the SDK ignores `api_key=` and
`host=` keywords (DESIGN.md section 7).  See docs/pluto.md.
"""

from __future__ import annotations

from typing import Any

from trackport.core.errors import UsageError
from trackport.core.registry import ParsedUri


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


def open_sink(parsed: ParsedUri, options: dict[str, Any]):
    from .sink import PlutoSink

    project = project_of(parsed)
    return PlutoSink(project, options, _client(options))


def open_source(parsed: ParsedUri, options: dict[str, Any]):
    from .source import PlutoSource

    project = project_of(parsed)
    if project is None:
        raise UsageError("reading Pluto needs a project: pluto://PROJECT")
    return PlutoSource(_client(options), project, f"pluto://{project}")


__all__ = ["open_sink", "open_source", "project_of"]
