"""Trackio connector: `trackio:PROJECT`, Hugging Face's local-first tracker, both ways.

The store is the folder Trackio itself uses: --trackio-dir, else $TRACKIO_DIR, else
$HF_HOME/trackio (trackio/utils.py).  The source reads the project's SQLite file
read-only with the standard library; the sink writes through the trackio package
(client.py, the only module importing it).  See docs/trackio.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from trackport.core.errors import UsageError
from trackport.core.registry import ConnectorOption, ConnectorSpec, ParsedUri

SPEC = ConnectorSpec(
    schemes=("trackio",),
    summary="trackio:PROJECT or trackio:PROJECT@DIR (a local Trackio store; --trackio-dir / TRACKIO_DIR)",
    extra="trackio",
    requires=("trackio",),
    # client.py writes through trackio.sqlite_storage.SQLiteStorage, an internal class;
    # pyproject's `trackio` extra pins the same range.
    sdk_versions={"trackio": ">=0.43.0,<0.44"},
    capabilities={"trackio": "trackport.connectors.trackio.mapping:CAPABILITIES"},
    options=(
        ConnectorOption("--trackio-dir", "Trackio: the store folder (default: TRACKIO_DIR, else "
                        "HF_HOME/trackio, as Trackio itself).", envvar=("TRACKIO_DIR",)),
        ConnectorOption("--trackio-space-id", "Trackio: a Hugging Face Space destination is not "
                        "supported (copy into a local store, then `trackio sync`; docs/trackio.md)."),
    ),
)


def _split(parsed: ParsedUri) -> tuple[str | None, str | None]:
    """`trackio:PROJECT` or `trackio:PROJECT@DIR` (DIR starting with `/`, `.` or `~`: the store
    folder in the URI, so one command can read one store and write another)."""
    rest = parsed.rest.strip()
    if rest.startswith("//"):
        rest = rest[2:]
    project, at, folder = rest.rpartition("@")
    if at and folder.startswith(("/", ".", "~")):
        return project or None, folder
    return rest or None, None


def _root(parsed: ParsedUri, options: Any) -> Path:
    from .store import default_dir

    given = _split(parsed)[1] or options.get("trackio_dir")
    return Path(given).expanduser().absolute() if given else default_dir().absolute()


def _project(parsed: ParsedUri) -> str | None:
    return _split(parsed)[0]


def _no_space(options: Any) -> None:
    if options.get("trackio_space_id"):
        raise UsageError("trackio: a Space destination (--trackio-space-id) is not supported: trackport "
                         "writes the local store only. Fix: copy into trackio:PROJECT, then run "
                         "`trackio sync --project PROJECT --space-id USER/SPACE`")


def open_source(parsed: ParsedUri, options: Any):
    from .source import TrackioSource, project_dbs

    _no_space(options)
    root, project = _root(parsed, options), _project(parsed)
    if not root.is_dir():
        raise UsageError(f"no Trackio store at {root}; fix: pass --trackio-dir or set TRACKIO_DIR")
    if project is not None and not project_dbs(root, project):
        raise UsageError(f"no Trackio project {project!r} in {root} (no "
                         f"{root / 'PROJECT.db'}); fix: check the name with `trackio list projects`")
    return TrackioSource(root, project, f"trackio:{project or ''}")


def open_sink(parsed: ParsedUri, options: Any, read_only: bool = False):
    from .sink import TrackioSink

    from trackport.core.connector import check_output_folder

    _no_space(options)
    project = _project(parsed)
    if project is None:
        raise UsageError("a Trackio destination needs a project: trackio:PROJECT")
    from .client import validate_project

    try:
        validate_project(project)
    except ValueError as exc:
        raise UsageError(f"trackio:{project}: {exc}") from None
    root = _root(parsed, options)
    check_output_folder(root, f"trackio:{project}", read_only, "--trackio-dir ./trackio")
    return TrackioSink(root, project, f"trackio:{project}", read_only=read_only)
