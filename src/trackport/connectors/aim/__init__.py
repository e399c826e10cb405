"""Aim connector: `aim:REPO`, a folder holding an Aim repository (`REPO/.aim`), both directions.

The `aim` package is imported only inside client.py, lazily.  Aim publishes no wheels for
Python 3.13 (its RocksDB binding, aimrocks, has none), so the extra carries a
`python_version < "3.13"` marker.  See docs/aim.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from trackport.core.errors import UsageError
from trackport.core.registry import ConnectorOption, ConnectorSpec, ParsedUri

SPEC = ConnectorSpec(
    schemes=("aim",),
    summary="aim:REPO (the folder holding an Aim repository's .aim)",
    extra="aim",
    requires=("aim",),
    # writes below Aim's public API (per-point times, batched metric writes; client.py)
    sdk_versions={"aim": ">=3.29.1,<3.30"},
    capabilities={"aim": "trackport.connectors.aim.mapping:CAPABILITIES"},
    options=(
        ConnectorOption("--aim-experiment", "Aim: experiment the runs are written to "
                        "(default: the source run's project)."),
    ),
)


def repo_root(parsed: ParsedUri) -> Path:
    rest = parsed.rest.strip()
    if rest.startswith("//"):
        rest = rest[2:]
    if not rest or rest.startswith("aim://") or "://" in rest:
        raise UsageError(f"bad Aim URI {parsed.display!r}: use aim:PATH, the folder holding .aim "
                         "(a remote Aim server is not supported)")
    root = Path(rest).expanduser().resolve()
    if root.name == ".aim":          # aim:./repo/.aim names the repository itself
        root = root.parent
    return root


def open_source(parsed: ParsedUri, options: Any):
    from .source import AimSource

    root = repo_root(parsed)
    if not (root / ".aim").is_dir():
        raise UsageError(f"no Aim repository at {root} (no .aim folder); fix: point at the folder "
                         "where `aim init` was run")
    return AimSource(root)


def open_sink(parsed: ParsedUri, options: Any, read_only: bool = False):
    from .sink import AimSink

    return AimSink(repo_root(parsed), options, read_only=read_only)


__all__ = ["SPEC", "open_sink", "open_source", "repo_root"]
