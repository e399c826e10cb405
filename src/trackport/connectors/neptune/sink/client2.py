"""The sink's only module importing the 2.x client (`neptune` 1.x), lazily, inside functions
(the `neptune2://` source reads through the same client in api/reader2.py).

`Client2` is the client's surface the sink uses, for one package that holds the neptune-client
1.x code: `neptune` itself (`NEPTUNE`, exposed as this module's functions) or a renamed copy of
it (Minfx bundles one as `minfx.neptune_v2`: connectors/minfx/client.py).

The data directory is set through the client's own variable
NEPTUNE_DATA_DIRECTORY (read by neptune/internal/operation_processors/utils.py
when a run starts); it is process-wide, so one sink sets it once, to an
absolute path.  Never os.chdir.
"""

from __future__ import annotations

import importlib
import logging
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from trackport.core.errors import RunError, TransientError, UsageError

log = logging.getLogger(__name__)


def as_datetime(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc)


@dataclass(frozen=True)
class Client2:
    """The neptune-client 1.x calls the 2.x sink makes.  `package`: what `init_run`,
    `init_project` come from; `code`: the package holding `types`, `management` and
    `internal` (the same for neptune); `product`: the name errors give; `log_handler`: the
    class name of the handler the client gives its loggers (removed by `quiet`)."""

    package: str = "neptune"
    code: str = "neptune"
    product: str = "Neptune"
    log_handler: str = "GrabbableStdoutHandler"
    auth_hint: str = "check NEPTUNE_API_TOKEN"

    as_datetime = staticmethod(as_datetime)

    def _module(self, name: str = ""):
        return importlib.import_module(f"{self.code}.{name}" if name else self.package)

    def set_data_dir(self, path: str) -> None:
        os.environ["NEPTUNE_DATA_DIRECTORY"] = path

    def init_run(self, project: str, mode: str, custom_run_id: str, name: str | None, description: str | None,
                 where: tuple[str, str]):
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
            return self._module().init_run(**kwargs)
        except Exception as exc:  # the client raises many kinds; name the run
            raise self._map(exc, where) from None

    def _map(self, exc: Exception, where: tuple[str, str]):
        text = f"{type(exc).__name__}: {exc}"
        if "token" in text.lower():
            text = f"{type(exc).__name__} (authentication; {self.auth_hint})"
        if type(exc).__name__ in ("NeptuneConnectionLostException", "ConnectionError", "Timeout"):
            return TransientError(text)
        return RunError(text, project_id=where[0], run_id=where[1])

    def file_value(self, path: str):
        return self._module("types").File(path)

    def string_set_value(self, values: list[str]):
        return self._module("types").StringSet(values)

    def quiet(self) -> None:
        """Route the client's logging away from stdout and stderr (it would corrupt `--json`).

        internal/utils/logger.py gives its loggers a handler writing to the terminal and
        `propagate=False`; it also warns for every value it cuts, which trackport counts as
        declared transformations instead.
        """
        client_logger = self._module("internal.utils.logger")
        handler = getattr(client_logger, self.log_handler)
        for name in (client_logger.NEPTUNE_LOGGER_NAME, client_logger.NEPTUNE_NO_PREFIX_LOGGER_NAME):
            lg = logging.getLogger(name)
            for h in list(lg.handlers):
                if isinstance(h, handler):
                    lg.removeHandler(h)
            lg.propagate = True
            lg.setLevel(logging.ERROR)

    def find_async(self, project: str, custom_run_ids: list[str]) -> dict[str, bool]:
        """custom run id -> complete, searched in a live project (NOT tested here: needs a server)."""
        try:
            proj = self._module().init_project(project=project, mode="read-only")
            table = proj.fetch_runs_table(columns=["sys/custom_run_id", "trackport/complete"]).to_pandas()
            proj.stop()
        except Exception as exc:
            raise UsageError(f"cannot search {self.product} project {project} for runs already copied: "
                             f"{type(exc).__name__}") from None
        out = {}
        for _, row in table.iterrows():
            cid = row.get("sys/custom_run_id")
            if cid in custom_run_ids:
                out[cid] = bool(row.get("trackport/complete") is True)
        return out

    def create_project_if_missing(self, project: str, description: str) -> None:
        """Private project named after the source (NOT tested here: needs a server)."""
        management = self._module("management")
        workspace, name = project.split("/", 1)
        try:
            if project in management.get_project_list():
                return
            management.create_project(name=name, workspace=workspace, visibility="priv", description=description)
        except Exception as exc:
            raise UsageError(f"cannot create {self.product} project {project}: {type(exc).__name__}") from None


NEPTUNE = Client2()
set_data_dir = NEPTUNE.set_data_dir
init_run = NEPTUNE.init_run
file_value = NEPTUNE.file_value
string_set_value = NEPTUNE.string_set_value
quiet = NEPTUNE.quiet
find_async = NEPTUNE.find_async
create_project_if_missing = NEPTUNE.create_project_if_missing
