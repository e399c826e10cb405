"""The only module importing the 2.x client (`neptune` 1.x), lazily, inside functions.

The data directory is set through the client's own variable
NEPTUNE_DATA_DIRECTORY (read by neptune/internal/operation_processors/utils.py
when a run starts); it is process-wide, so one sink sets it once, to an
absolute path.  Never os.chdir.
"""

from __future__ import annotations

import logging
import os
from datetime import datetime, timezone
from typing import Any

from trackport.core.errors import RunError, TransientError, UsageError

log = logging.getLogger(__name__)


def set_data_dir(path: str) -> None:
    os.environ["NEPTUNE_DATA_DIRECTORY"] = path


def init_run(project: str, mode: str, custom_run_id: str, name: str | None, description: str | None,
             where: tuple[str, str]):
    import neptune

    kwargs: dict[str, Any] = dict(
        project=project, mode=mode, custom_run_id=custom_run_id,
        capture_hardware_metrics=False, capture_stdout=False, capture_stderr=False,
        capture_traceback=False, git_ref=False, source_files=[],
    )
    if name is not None:
        kwargs["name"] = name
    if description is not None:
        kwargs["description"] = description
    try:
        return neptune.init_run(**kwargs)
    except Exception as exc:  # the client raises many kinds; name the run
        raise _map(exc, where) from None


def _map(exc: Exception, where: tuple[str, str]):
    text = f"{type(exc).__name__}: {exc}"
    if "token" in text.lower():
        text = f"{type(exc).__name__} (authentication; check NEPTUNE_API_TOKEN)"
    if type(exc).__name__ in ("NeptuneConnectionLostException", "ConnectionError", "Timeout"):
        return TransientError(text)
    return RunError(text, project_id=where[0], run_id=where[1])


def file_value(path: str):
    from neptune.types import File

    return File(path)


def string_set_value(values: list[str]):
    from neptune.types import StringSet

    return StringSet(values)


def as_datetime(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc)


def quiet() -> None:
    """Route the client's logging away from stdout (it would corrupt `--json` output).

    neptune/internal/utils/logger.py gives its loggers a handler writing to
    sys.stdout and `propagate=False`; it also warns for every value it cuts,
    which trackport counts as declared transformations instead.
    """
    from neptune.internal.utils import logger as neptune_logger

    for name in (neptune_logger.NEPTUNE_LOGGER_NAME, neptune_logger.NEPTUNE_NO_PREFIX_LOGGER_NAME):
        lg = logging.getLogger(name)
        for handler in list(lg.handlers):
            if isinstance(handler, neptune_logger.GrabbableStdoutHandler):
                lg.removeHandler(handler)
        lg.propagate = True
        lg.setLevel(logging.ERROR)


def find_async(project: str, custom_run_ids: list[str]) -> dict[str, bool]:
    """custom run id -> complete, searched in a live project (NOT tested here: needs a Neptune server)."""
    import neptune

    try:
        proj = neptune.init_project(project=project, mode="read-only")
        table = proj.fetch_runs_table(columns=["sys/custom_run_id", "trackport/complete"]).to_pandas()
        proj.stop()
    except Exception as exc:
        raise UsageError(f"cannot search Neptune project {project} for runs already copied: "
                         f"{type(exc).__name__}") from None
    out = {}
    for _, row in table.iterrows():
        cid = row.get("sys/custom_run_id")
        if cid in custom_run_ids:
            out[cid] = bool(row.get("trackport/complete") is True)
    return out


def create_project_if_missing(project: str, description: str) -> None:
    """Private project named after the source (NOT tested here: needs a Neptune server)."""
    from neptune import management

    workspace, name = project.split("/", 1)
    try:
        if project in management.get_project_list():
            return
        management.create_project(name=name, workspace=workspace, visibility="priv", description=description)
    except Exception as exc:
        raise UsageError(f"cannot create Neptune project {project}: {type(exc).__name__}") from None
