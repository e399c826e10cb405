"""TensorBoard connector: `tensorboard:LOGDIR` as a source (event files of any
training) and as a destination (one run directory per run).  See
docs/tensorboard.md.  The tensorboard / tensorboardX packages are imported only
by reader.py, inside functions, so `import trackport` stays SDK-free.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from trackport.core.errors import UsageError
from trackport.core.registry import ConnectorOption, ConnectorSpec, ParsedUri

SPEC = ConnectorSpec(
    schemes=("tensorboard",),
    summary="tensorboard:LOGDIR (event files)",
    extra="tensorboard",
    requires=("tensorboard",),
    # reader.py uses internal modules: tensorboard.util.tensor_util, the hparams plugin's protos,
    # tensorboardX.record_writer; pyproject's `tensorboard` extra pins the same ranges.
    sdk_versions={"tensorboard": ">=2.21.0,<2.22", "tensorboardX": ">=2.6.5,<2.7"},
    capabilities={"tensorboard": "trackport.connectors.tensorboard.mapping:CAPABILITIES"},
    options=(
        ConnectorOption("--tensorboard-run-depth",
                        "TensorBoard source: runs are the directories this many levels below "
                        "LOGDIR; deeper event directories become attribute prefixes "
                        "(default: every directory holding event files is a run).", "int"),
        ConnectorOption("--tensorboard-subdirs-as-prefixes",
                        "TensorBoard source: event directories below a run directory "
                        "(train/, validation/) stay in that run as attribute prefixes.",
                        "flag"),
        ConnectorOption("--tensorboard-orphans",
                        "TensorBoard source: after a training restart, move every point "
                        "(keep, the default; restarts are counted) or only what "
                        "TensorBoard shows: its default loader (default-loader) or "
                        "--load_fast=false (python-loader).", "str",
                        choices=("keep", "default-loader", "python-loader")),
        ConnectorOption("--tensorboard-project",
                        "TensorBoard source: project id of its runs (default: LOGDIR's "
                        "name).")
    ),
)


def _logdir(parsed: ParsedUri) -> Path:
    return parsed.directory("tensorboard:./lightning_logs")


def open_source(parsed: ParsedUri, options: dict[str, Any]):
    from .source import TensorboardSource

    logdir = _logdir(parsed)
    if not logdir.is_dir():
        raise UsageError(f"TensorBoard logdir {logdir} does not exist")
    return TensorboardSource(logdir, f"tensorboard:{logdir}", options)


def open_sink(parsed: ParsedUri, options: dict[str, Any], read_only: bool = False):
    from .sink import TensorboardSink

    from trackport.core.connector import check_output_folder

    logdir = _logdir(parsed)
    # The folder is checked (and made) here, before any run: TensorboardSink.preflight is this.
    check_output_folder(logdir, f"tensorboard:{logdir}", read_only, "tensorboard:./logs")
    return TensorboardSink(logdir, f"tensorboard:{logdir}", options, read_only=read_only)
