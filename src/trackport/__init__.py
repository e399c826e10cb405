"""trackport: move ML experiment history between trackers, losslessly.

Importing trackport imports no tracker SDK (nor pyarrow); connectors load theirs on use.
Every command is a function here (docs/python-api.md):

    import trackport
    report = trackport.copy("parquet:./export", "mlflow:sqlite:///mlflow.db")
    checked = trackport.verify("parquet:./export", "mlflow:sqlite:///mlflow.db")
"""

import logging as _logging

from ._version import __version__
from .api import (InspectReport, SyncReport, copy, default_destination, export, inspect, load, plan, report,
                  sync, verify)
from .core.errors import (Cancelled, MissingExtraError, RunError, RunsFailedError, TrackportError,
                          UsageError)
from .core.options import Options
from .core.progress import ProgressEvent
from .core.report import CommandReport, Difference, RunReport, Totals


__all__ = [
    "copy", "export", "load", "plan", "verify", "report", "sync", "inspect", "default_destination",
    "CommandReport", "RunReport", "Totals", "Difference", "InspectReport", "SyncReport", "ProgressEvent", "Options",
    "TrackportError", "UsageError", "MissingExtraError", "RunError", "RunsFailedError", "Cancelled",
    "__version__",
]

# A library prints nothing unless its caller configures logging (the CLI does).
_logging.getLogger("trackport").addHandler(_logging.NullHandler())
