"""The only module importing `comet_ml`; every import is inside a function.

Offline writes go through the SDK's own `OfflineExperiment` (comet_ml/offline.py), which writes
the messages file and, on `end()`, the zip archive `comet upload` sends.  Two private names are
used, hence the pinned range (SPEC.sdk_versions):
- `MetricMessage(timestamp=...)` + `Experiment._enqueue_message`: `log_metric` has no timestamp
  argument and stamps every point `now` (comet_ml/experiment.py `_log_metric`, comet_ml/messages.py
  `MetricMessage.__init__`); the message keeps the one given as `local_timestamp`.
  `StandardOutputMessage(timestamp=...)` likewise for console lines.
- `OfflineExperiment.start_time`: experiment.json's start_time (offline_utils.py
  `write_experiment_meta_file`), set to the run's creation time.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

def _quiet_sdk() -> None:
    """Before comet_ml's first import: no crash reports sent anywhere, and only its warnings on the
    console (its INFO lines would interleave with trackport's progress).  A user's own settings win."""
    os.environ.setdefault("COMET_ERROR_TRACKING_ENABLE", "false")
    os.environ.setdefault("COMET_LOGGING_CONSOLE", "warning")
    # Online: no second, local offline copy of every run beside the upload (the FallbackStreamer
    # writes one when the backend is newer than this setting: comet_ml/_online.py
    # _has_fallback_to_offline_enabled, config_map.py); an interrupted run is written again by the
    # next copy instead.  Its threads also cost ~1 s per experiment at end() (streamer/offline.py
    # queue_timeout=1).
    os.environ.setdefault("COMET_FALLBACK_STREAMER_FALLBACK_TO_OFFLINE_MIN_BACKEND_VERSION", "999.0.0")


# "Only one Experiment can be alive in a Python process" (comet_ml/experiment.py, end()): runs
# written by parallel workers take turns.
_ALIVE = threading.Lock()


def sdk_version() -> str:
    import comet_ml

    return getattr(comet_ml, "__version__", "?")


# every automatic logger of the SDK off: only what trackport logs is sent
_QUIET = dict(log_code=False, log_graph=False, auto_param_logging=False, auto_metric_logging=False,
              parse_args=False, auto_output_logging=False, log_env_details=False, log_git_metadata=False,
              log_git_patch=False, log_env_gpu=False, log_env_host=False, log_env_cpu=False,
              log_env_network=False, log_env_disk=False, display_summary_level=0)


class OfflineRun:
    """One OfflineExperiment writing `<folder>/<key>.zip`, every automatic logger off."""

    def __init__(self, workspace: str, project: str, key: str, folder: Path):
        _quiet_sdk()
        import comet_ml

        _ALIVE.acquire()
        try:
            self.exp = comet_ml.OfflineExperiment(
                project_name=project, workspace=workspace, offline_directory=str(folder),
                experiment_key=key, **_QUIET)
        except BaseException:
            _ALIVE.release()
            raise
        self.archive = Path(self.exp.offline_directory) / f"{key}.zip"
        self._open = True

    def set_start_ms(self, ms: int) -> None:
        self.exp.start_time = int(ms)

    def other(self, key: str, value: Any) -> None:
        self.exp.log_other(key, value)

    def name(self, name: str) -> None:
        self.exp.set_name(name)

    def tags(self, tags: list[str]) -> None:
        self.exp.add_tags(tags)

    def parameter(self, name: str, value: Any) -> None:
        self.exp.log_parameter(name, value)

    def metric(self, name: str, value: Any, step: int | None, ts_ms: int) -> None:
        from comet_ml.messages import MetricMessage

        message = MetricMessage(context=None, timestamp=int(ts_ms))
        message.set_metric(name, value, step=step, epoch=None)
        self.exp._enqueue_message(message)

    def output(self, text: str, stderr: bool, ts_ms: int) -> None:
        """A console line for Comet's Output tab, with its own time (StandardOutputMessage, as the
        SDK's output capture sends it: comet_ml/messages.py)."""
        from comet_ml.messages import StandardOutputMessage

        self.exp._enqueue_message(StandardOutputMessage(output=text, stderr=stderr, context=None,
                                                        timestamp=int(ts_ms)))

    def asset(self, path: Path, file_name: str, metadata: dict) -> None:
        # no step= here: the SDK would log an extra `curr_step` parameter (experiment.py _set_step);
        # the step is in metadata
        got = self.exp.log_asset(str(path), file_name=file_name, metadata=metadata, copy_to_tmp=True)
        if got is None:
            raise OSError(f"comet_ml refused the asset {file_name!r} (see the COMET log line above)")

    def end(self) -> Path:
        try:
            self.exp.end()
        finally:
            self._release()
        return self.archive

    def abort(self) -> None:
        """Stop the streamer without writing the archive."""
        try:
            self.exp.alive = False          # _mark_as_ended skips the archive when not alive
            self.exp.end()
        except Exception:       # noqa: BLE001
            pass
        finally:
            self._release()

    def _release(self) -> None:
        if self._open:
            self._open = False
            _ALIVE.release()


class OnlineRun(OfflineRun):
    """One online `comet_ml.Experiment` created under the given key (REST: logger/add/run, then
    batch endpoints for metrics and parameters, asset/upload, write/experiment/log-other; see
    tests/comet_server.py for every call).  Refuses a key the server already holds
    (ExperimentAlreadyUploaded): the sink deletes an incomplete experiment first."""

    def __init__(self, workspace: str, project: str, key: str):
        _quiet_sdk()
        import comet_ml

        _ALIVE.acquire()
        try:
            self.exp = comet_ml.Experiment(project_name=project, workspace=workspace, experiment_key=key,
                                           **_QUIET)
        except BaseException:
            _ALIVE.release()
            raise
        self.key, self._open = key, True
        if not getattr(self.exp, "alive", False):
            # the SDK logs the failed handshake and goes on as a disabled experiment (experiment.py _start)
            self.abort()
            raise ConnectionError(f"comet_ml could not create the online experiment {key} "
                                  f"(see the COMET log lines above)")

    def set_start_ms(self, ms: int) -> None:
        self.start_ms = int(ms)         # sent by the sink through the API once the run is written

    def end(self) -> None:
        """Every message and upload delivered, or ConnectionError (flush() is False when the SDK gave
        up on a batch; end() raises ExperimentCleaningException on a failed upload: _online.py _on_end)."""
        try:
            if not self.exp.flush():
                raise ConnectionError(f"comet_ml could not deliver everything logged to {self.key}")
            self.exp.end()
        finally:
            self._release()

    def abort(self) -> None:
        """Stop sending; what reached the server stays there without its completion mark."""
        try:
            self.exp.end()
        except Exception:       # noqa: BLE001
            pass
        finally:
            self._release()


class CometApi:
    """Comet's REST API v2 through the SDK's own client (`comet_ml.API()._client`, a RestApiClient:
    comet_ml/connection/connection_api.py), every call retried on 429/5xx and dropped connections
    with trackport's shared backoff.  The key comes from COMET_API_KEY (or the SDK's config file),
    a self-hosted server from COMET_URL_OVERRIDE."""

    def __init__(self, page_size: int = 100):
        _quiet_sdk()
        from comet_ml.api import API

        from trackport.core.errors import UsageError

        self.page_size = page_size
        try:
            self.rest = API(cache=False)._client
        except ValueError as exc:           # no key: connection_factory.get_rest_api_client
            raise UsageError(f"Comet API: {exc}; fix: set COMET_API_KEY (and COMET_URL_OVERRIDE for a "
                             f"self-hosted server)") from None

    def call(self, what: str, fn, *args, **kwargs):
        from trackport.core.retry import Backoff

        return Backoff(endpoint="comet").call(what, lambda: self._once(what, fn, *args, **kwargs), final=False)

    @staticmethod
    def _once(what: str, fn, *args, **kwargs):
        import requests
        from comet_ml.exceptions import CometRestApiException

        from trackport.core.errors import TransientError
        from trackport.core.retry import parse_retry_after

        try:
            return fn(*args, **kwargs)
        except CometRestApiException as exc:
            status = exc.response.status_code
            if status == 429 or status >= 500:
                raise TransientError(f"Comet API {what}: HTTP {status}",
                                     parse_retry_after(exc.response.headers.get("Retry-After")),
                                     throttled=status in (429, 503)) from None
            raise
        except (requests.ConnectionError, requests.Timeout) as exc:
            raise TransientError(f"Comet API {what}: {type(exc).__name__}") from None

    def projects(self, workspace: str) -> list[str]:
        return self.call("projects", self.rest.get_projects, workspace) or []

    def experiments(self, workspace: str, project: str) -> list[dict]:
        """Every experiment of a project, page by page (get_project_experiments' page/size)."""
        page_size = self.page_size
        out: list[dict] = []
        page = 1
        while True:
            got = self.call("experiments", self.rest.get_project_experiments, workspace, project,
                            page=page, page_size=page_size, sort_by="startTime", sort_order="asc")
            batch = (got or {}).get("experiments") or []
            out += batch
            if len(batch) < page_size:
                return out
            page += 1

    def parameters(self, key: str) -> list[dict]:
        return (self.call("parameters", self.rest.get_experiment_parameters_summaries, key) or {}).get("values") or []

    def others(self, key: str) -> list[dict]:
        return (self.call("others", self.rest.get_experiment_others_summaries, key) or {}).get("values") or []

    def tags(self, key: str) -> list[str]:
        return (self.call("tags", self.rest.get_experiment_tags, key) or {}).get("tags") or []

    def metric_names(self, key: str) -> list[str]:
        got = self.call("metrics summary", self.rest.get_experiment_metrics_summaries, key) or {}
        return sorted({m["name"] for m in got.get("values") or []})

    def metric(self, key: str, name: str) -> list[dict]:
        return (self.call("metric", self.rest.get_experiment_metric, key, name) or {}).get("metrics") or []

    def assets(self, key: str) -> list[dict]:
        return self.call("asset list", self.rest.get_experiment_asset_list, key) or []

    def metadata(self, key: str) -> dict | None:
        """The experiment's metadata; None when the server has no experiment with this key."""
        from comet_ml.exceptions import CometRestApiException

        try:
            return self.call("experiment metadata", self.rest.get_experiment_metadata, key)
        except CometRestApiException as exc:
            if exc.response.status_code in (400, 404):
                return None
            raise

    def delete(self, key: str) -> None:
        self.call("delete experiment", self.rest.delete_experiment, key)

    def log_other(self, key: str, name: str, value) -> None:
        self.call("log other", self.rest.log_experiment_other, key, name, value)

    def set_start_end(self, key: str, start_ms: int, end_ms: int) -> None:
        self.call("set start/end time", self.rest.set_experiment_start_end, key, int(start_ms), int(end_ms))

    def asset(self, key: str, asset_id: str) -> bytes:
        return self.call("asset", self.rest.get_experiment_asset, asset_id, experiment_key=key)
