"""The module naming the Minfx client (`minfx`, its bundled `minfx.neptune_v2`); imported lazily.

It offers the functions the Neptune 2.x sink calls on its client module
(connectors/neptune/sink/client2.py), against `minfx` instead of `neptune`:
`import minfx as neptune` is the client's documented use (its package
docstring, minfx/neptune_v3.py), and its code is neptune-client 1.x renamed.

The queue folder is the client's NEPTUNE_DATA_DIRECTORY (read by
minfx/neptune_v2/internal/operation_processors/utils.py when a run starts);
it is process-wide, so one sink sets it once, to an absolute path.  The API
token and project are the client's NEPTUNE_API_TOKEN / NEPTUNE_PROJECT
(minfx/neptune_v2/envs.py); the server address is inside the token.
"""

from __future__ import annotations

from trackport.connectors.neptune.sink.client2 import Client2, as_datetime

# The minfx package's own functions, and its bundled neptune-client 1.x code, whose loggers
# write to stderr (minfx/neptune_v2/internal/utils/logger.py).
MINFX = Client2(package="minfx", code="minfx.neptune_v2", product="Minfx",
                log_handler="GrabbableStderrHandler",
                auth_hint="check NEPTUNE_API_TOKEN for the Minfx server")

set_data_dir = MINFX.set_data_dir
init_run = MINFX.init_run
file_value = MINFX.file_value
string_set_value = MINFX.string_set_value
quiet = MINFX.quiet
find_async = MINFX.find_async
create_project_if_missing = MINFX.create_project_if_missing

__all__ = ["as_datetime", "create_project_if_missing", "file_value", "find_async", "init_run", "quiet",
           "set_data_dir", "string_set_value"]
