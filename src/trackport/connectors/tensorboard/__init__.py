"""TensorBoard connector: `tensorboard:LOGDIR` as a source (event files of any
training) and as a destination (one run directory per run).  See
docs/tensorboard.md.  The tensorboard / tensorboardX packages are imported only
by reader.py, inside functions, so `import trackport` stays SDK-free.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from trackport.core.errors import UsageError
from trackport.core.registry import ParsedUri


def _logdir(parsed: ParsedUri) -> Path:
    rest = parsed.rest.strip()
    if rest.startswith("//"):
        rest = rest[2:]
    if not rest:
        raise UsageError("tensorboard: needs a directory: tensorboard:./lightning_logs")
    return Path(rest).expanduser().absolute()


def open_source(parsed: ParsedUri, options: dict[str, Any]):
    from .source import TensorboardSource

    logdir = _logdir(parsed)
    if not logdir.is_dir():
        raise UsageError(f"TensorBoard logdir {logdir} does not exist")
    return TensorboardSource(logdir, f"tensorboard:{logdir}", options)


def open_sink(parsed: ParsedUri, options: dict[str, Any]):
    from .sink import TensorboardSink

    logdir = _logdir(parsed)
    if not options.get("read_only"):
        logdir.mkdir(parents=True, exist_ok=True)
    return TensorboardSink(logdir, f"tensorboard:{logdir}", options)
