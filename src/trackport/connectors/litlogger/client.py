"""The only module that imports litlogger and lightning_sdk, lazily (only when a connector opens).

What comes from the SDKs: litlogger's REST client (`litlogger.api.client.LitRestClient`), its
metrics layer (`litlogger.api.metrics_api.MetricsApi`: find by name, append points with their
step and time, set phase and tags), its artifacts layer (`litlogger.api.artifacts_api.ArtifactsApi`:
teamspace drive upload + artifact record, download), the deterministic curve colours
(`litlogger.colors._create_colors`) and lightning_sdk's `Teamspace` (owner and teamspace lookup,
drive I/O).  Everything runs in this process; the credentials (LIGHTNING_USER_ID +
LIGHTNING_API_KEY, or the file `lightning login` saved) only ever travel in the SDK's
Authorization header.

What we do NOT use, on purpose (docs/litlogger.md):
- `litlogger.init()` / `Experiment`: it stamps every point with the time of logging, not the
  source's (litlogger/experiment_support.py `log_metric_value`: `created_at = datetime.now()`),
  uploads at most one batch per second from a background thread (litlogger/background.py
  `_send_metrics`), installs SIGTERM/SIGINT handlers and an atexit hook (experiment.py);
- `litlogger.api.utils._resolve_teamspace`: when the named teamspace cannot be resolved it
  silently falls back to the first teamspace the user belongs to (api/utils.py, the
  `memberships[0]` branch), which would load into the wrong place;
- `MetricsApi.create_experiment_metrics`: it attaches this machine's system info (hostname,
  command line, installed packages: litlogger/diagnostics.py `collect_system_info`) to the
  experiment, which describes the trackport host, not the source run; the same request is
  made here without it.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable

from trackport.core.errors import TransientError, UsageError

log = logging.getLogger(__name__)

TRANSIENT_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})


class LitLoggerRejected(Exception):
    """A request the service refused for good."""

    def __init__(self, status: int, message: str):
        super().__init__(f"HTTP {status}: {message}" if status else message)
        self.status = status


_import_lock = threading.Lock()


def _import_sdk() -> None:
    """Import lightning_sdk and litlogger, also where stderr has no file descriptor.

    `import lightning_sdk` calls `os.isatty(sys.stderr.fileno())` (lightning_sdk/helpers.py:96,
    `set_tqdm_envvars_noninteractive`), which raises under a captured stderr (the Python API in
    a notebook or a test runner): the import then sees /dev/null instead, once.
    """
    with _import_lock:
        if "litlogger.api.metrics_api" in sys.modules:
            return
        try:
            sys.stderr.fileno()
            redirect = False
        except (AttributeError, OSError, ValueError):
            redirect = True
        saved = sys.stderr
        if redirect:
            sys.stderr = open(os.devnull, "w")   # noqa: SIM115 - closed below
        try:
            import lightning_sdk  # noqa: F401
            import litlogger.api.metrics_api  # noqa: F401
        finally:
            if redirect:
                sys.stderr.close()
                sys.stderr = saved


def _credentials_present() -> bool:
    if os.environ.get("LIGHTNING_API_KEY") or os.environ.get("LIGHTNING_AUTH_TOKEN"):
        return True
    path = os.environ.get("LIGHTNING_CREDENTIAL_PATH") or str(Path.home() / ".lightning" / "credentials.json")
    return Path(path).is_file()


def _message(exc: Exception) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    text = (body or getattr(exc, "reason", None) or str(exc) or type(exc).__name__)
    return " ".join(str(text).split())[:300]


def _call(fn: Callable, *args: Any, **kwargs: Any) -> Any:
    """One SDK call; 429/5xx/connection failures -> TransientError, other refusals -> LitLoggerRejected."""
    import requests
    import urllib3
    from lightning_sdk.lightning_cloud.openapi.rest import ApiException

    try:
        return fn(*args, **kwargs)
    except ApiException as exc:
        status = int(exc.status or 0)
        if status in TRANSIENT_STATUS or status == 0:
            raise TransientError(f"LitLogger answered HTTP {status}: {_message(exc)}") from None
        raise LitLoggerRejected(status, _message(exc)) from None
    except (urllib3.exceptions.HTTPError, requests.exceptions.RequestException) as exc:
        raise TransientError(f"LitLogger unreachable: {type(exc).__name__}") from None
    except ConnectionError as exc:
        # a refused key: lightning_sdk/lightning_cloud/rest_client.py:275 turns the 401 into this
        if "Authentication" in str(exc):
            raise LitLoggerRejected(401, "authentication failed") from None
        raise TransientError(f"LitLogger unreachable: {type(exc).__name__}") from None
    except RuntimeError as exc:   # the drive's upload/download (lightning_sdk/api/utils.py) fail so
        raise LitLoggerRejected(0, _message(exc)) from None


class LitLoggerClient:
    """One teamspace of a Lightning AI account, resolved on first use."""

    def __init__(self, teamspace: str):
        self.teamspace_name = teamspace
        self._teamspace = None
        self._rest = None

    # -- connection ----------------------------------------------------------------
    def _connect(self) -> None:
        if self._teamspace is not None:
            return
        if not _credentials_present():
            # lightning_sdk would open a browser login here (lightning_cloud/login.py `Auth.authenticate`)
            raise UsageError("no Lightning AI credentials: set LIGHTNING_USER_ID and LIGHTNING_API_KEY "
                             "(or run `lightning login`)")
        cloud_url = os.environ.get("LIGHTNING_CLOUD_URL")
        _import_sdk()
        from lightning_sdk import Teamspace
        from lightning_sdk.lightning_cloud import env

        if cloud_url:   # env.py reads it once, at import; a later setting (a test server) wins
            env.LIGHTNING_CLOUD_URL = cloud_url
        from litlogger.api.client import LitRestClient

        try:
            teamspace = Teamspace(self.teamspace_name)
        except Exception as exc:   # noqa: BLE001 - the SDK raises ValueError/RuntimeError/ApiException
            status = int(getattr(exc, "status", 0) or 0)
            # a refused key surfaces as ConnectionError("Authentication failed. ...")
            # (lightning_sdk/lightning_cloud/rest_client.py:275)
            if status in (401, 403) or (isinstance(exc, ConnectionError) and "Authentication" in str(exc)):
                raise UsageError(f"Lightning AI refused the credentials: check "
                                 f"LIGHTNING_USER_ID and LIGHTNING_API_KEY") from None
            if status in TRANSIENT_STATUS:
                raise TransientError(f"LitLogger answered HTTP {status}") from None
            raise UsageError(f"teamspace {self.teamspace_name!r} not found ({_message(exc)}). Fix: use "
                             f"litlogger://OWNER/TEAMSPACE with a teamspace you are a member of") from None
        self._rest = LitRestClient(max_retries=0)   # retries are trackport's (core/retry.py)
        self._teamspace = teamspace

    @property
    def teamspace(self):
        self._connect()
        return self._teamspace

    @property
    def teamspace_id(self) -> str:
        return self.teamspace.id

    @property
    def rest(self):
        self._connect()
        return self._rest

    def _metrics_api(self):
        self._connect()
        from litlogger.api.metrics_api import MetricsApi

        return MetricsApi(client=self.rest)

    def _artifacts_api(self):
        self._connect()
        from litlogger.api.artifacts_api import ArtifactsApi

        return ArtifactsApi(client=self.rest)

    # -- streams (experiments) --------------------------------------------------------
    def get_stream(self, name: str):
        return _call(self._metrics_api().get_experiment_metrics_by_name, teamspace_id=self.teamspace_id, name=name)

    def create_stream(self, name: str, tags: dict[str, str]):
        from lightning_sdk.lightning_cloud.openapi import LitLoggerServiceCreateMetricsStreamBody
        from litlogger.api.metrics_api import MetricsApi
        from litlogger.colors import _create_colors

        light, dark = _create_colors(name)
        body = LitLoggerServiceCreateMetricsStreamBody(
            name=name, light_color=light, dark_color=dark, tags=MetricsApi._metadata_to_tags(tags),
            store_step=True, store_created_at=True)
        return _call(self.rest.lit_logger_service_create_metrics_stream, project_id=self.teamspace_id, body=body)

    def delete_stream(self, stream_id: str) -> None:
        from lightning_sdk.lightning_cloud.openapi import LitLoggerServiceDeleteMetricsStreamBody

        _call(self.rest.lit_logger_service_delete_metrics_stream, project_id=self.teamspace_id,
              body=LitLoggerServiceDeleteMetricsStreamBody(ids=[stream_id]))

    def list_streams(self, page: int = 100) -> list:
        out, offset = [], 0
        while True:
            got = _call(self.rest.lit_logger_service_list_metrics_streams, project_id=self.teamspace_id,
                        limit=page, offset=offset).metrics_streams or []
            out += got
            if len(got) < page:
                return out
            offset += page

    def finish(self, stream_id: str, failed: bool, tags: dict[str, str]) -> None:
        """Phase COMPLETED/FAILED, persisted, and the tags replaced by `tags`."""
        from litlogger.types import PhaseType

        _call(self._metrics_api().update_experiment_metrics, teamspace_id=self.teamspace_id,
              metrics_store_id=stream_id, persisted=True,
              phase=PhaseType.FAILED if failed else PhaseType.COMPLETED, metadata=tags)

    # -- points ------------------------------------------------------------------------
    def append(self, stream_id: str, points: dict[str, list[tuple[float, int | None, int | None]]]) -> None:
        """Points {metric name: [(value, step, epoch ms or None)]} in one request."""
        from litlogger.types import Metrics, MetricValue

        metrics = [Metrics(name=name, values=[
            MetricValue(value=value, step=step, created_at=None if ms is None else _utc_naive(ms))
            for value, step, ms in values]) for name, values in points.items()]
        _call(self._metrics_api().append_experiment_metrics, teamspace_id=self.teamspace_id,
              metrics_store_id=stream_id, metrics=metrics)

    def read_points(self, stream_id: str, samples: int) -> dict[str, list[tuple[int | None, float, int | None]]]:
        """Every stored point of a stream: {name: [(step, value, epoch ms or None)]}.

        The SDK's request (path, query, auth) with `_preload_content=False`: its model
        deserialisation (a swagger object and a dateutil parse per point) takes seconds per
        100k points, so the JSON answer (v1_get_logger_metrics_response.py field names) is read here.
        """
        kwargs: dict[str, Any] = {"project_id": self.teamspace_id, "ids": [stream_id], "_preload_content": False}
        if samples:
            kwargs["samples"] = samples
        response = _call(self.rest.lit_logger_service_get_logger_metrics, **kwargs)
        doc = json.loads(response.data or b"{}")
        out: dict[str, list] = {}
        for name, named in (doc.get("namedMetrics") or {}).items():
            per_id = (named.get("idsMetrics") or {}).get(stream_id) or {}
            out[name] = [(None if v.get("step") in (None, "") else int(v["step"]), float(v["value"]),
                          None if v.get("createdAt") is None else _ms(_parse_time(v["createdAt"])))
                         for v in per_id.get("metricsValues") or []]
        return out

    # -- artifacts ----------------------------------------------------------------------
    def upload(self, stream, experiment: str, local: Path, remote: str) -> None:
        _call(self._artifacts_api().upload_experiment_file_artifact, teamspace=self.teamspace,
              metrics_store=stream, experiment_name=experiment, file_path=str(local), remote_path=remote)

    def artifact_paths(self, stream_id: str) -> set[str]:
        got = _call(self.rest.lit_logger_service_list_logger_artifacts, project_id=self.teamspace_id,
                    metrics_stream_id=stream_id)
        return {a.path for a in (got.logger_artifacts or [])}

    def download(self, stream, experiment: str, remote: str, local: Path) -> Path:
        """An artifact's bytes, from the drive path litlogger gives it (artifacts_api.py
        `download_experiment_file_artifact`: experiments/<name>/<path>), without the progress
        bar that `Teamspace.download_file` always draws (lightning_sdk/teamspace.py `download_file`)."""
        local.parent.mkdir(parents=True, exist_ok=True)
        teamspace = self.teamspace
        _call(teamspace._teamspace_api.download_file, path=f"experiments/{experiment}/{remote}",
              target_path=str(local), teamspace_id=teamspace.id,
              cloud_account=getattr(stream, "cluster_id", None) or None, progress_bar=False)
        return local

    def experiment_url(self, experiment: str) -> str | None:
        try:
            from litlogger.api.utils import build_experiment_url

            return build_experiment_url(self.teamspace.owner.name, self.teamspace.name, experiment)
        except Exception:   # noqa: BLE001 - a URL is a courtesy
            return None


def _utc_naive(ms: int) -> datetime:
    """A naive UTC datetime: metrics_api.py `_to_v1_metric_value` formats it and appends +00:00."""
    return datetime(1970, 1, 1) + timedelta(milliseconds=int(ms))


def _parse_time(text: str) -> datetime:
    """An RFC 3339 time as the service writes it ('Z' or an offset, up to nanoseconds)."""
    text = text.replace("Z", "+00:00")
    head, dot, rest = text.partition(".")
    if dot:   # fromisoformat takes at most 6 fraction digits
        digits = len(rest) - len(rest.lstrip("0123456789"))
        rest = rest[:min(digits, 6)] + rest[digits:]
        text = f"{head}.{rest}"
    return datetime.fromisoformat(text)


def _ms(value: datetime) -> int:
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    delta = value - datetime(1970, 1, 1, tzinfo=timezone.utc)
    return (delta.days * 86_400_000) + (delta.seconds * 1000) + (delta.microseconds // 1000)
