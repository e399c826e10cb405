"""The only module that imports the Pluto SDK (pluto-ml), lazily, inside functions.

What comes from the SDK: the settings and URL rules (`pluto.sets.Settings`,
`update_host`/`update_url`: the endpoint paths), the API key resolution
(`PLUTO_API_KEY`, `MLOP_API_TOKEN`, then the key `pluto login` saved:
`pluto.query._resolve_api_token`), and the request bodies of the run API
(`pluto.api.make_compat_start_v1`, `..._resume_v1`, `..._status_v1`,
`..._update_tags_v1`, `..._update_config_v1`, `..._meta_v1`).  The NDJSON
ingest lines have the shapes of the SDK's uploader (pluto/sync/process.py
`_SyncUploader.upload_*`), and the reads use the paths and parameters of
`pluto.query.Client` (`/api/runs/list`, `/api/runs/details/{id}`,
`/api/runs/metrics`, `/api/runs/files`).

What we do NOT use, on purpose:
- `pluto.init()`/`Op`: it starts `python -m pluto.sync --settings <json>` whose
  JSON carries the API key on the child's command line (pluto/sync/process.py
  `SyncProcessManager._start_or_attach`, `op.py _init_sync_manager` puts `_auth`
  in it), captures the console at fd level and samples this host's hardware;
- its `api_key=`/`host=` keywords, which it ignores (docs/pluto.md).
So every request here is made in this process with httpx (the SDK's own HTTP
library), the key only ever in an `Authorization` header, never in a log line,
an exception text or a command line.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trackport.core.errors import TransientError, UsageError
from trackport.core.retry import Backoff, parse_retry_after

log = logging.getLogger(__name__)

URL_ENV = {
    "url_app": ("PLUTO_URL_APP", "MLOP_URL_APP"),
    "url_api": ("PLUTO_URL_API", "MLOP_URL_API"),
    "url_ingest": ("PLUTO_URL_INGEST", "MLOP_URL_INGEST"),
    "url_py": ("PLUTO_URL_PY", "MLOP_URL_PY"),
}
TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})
RUN_STATUS = {"COMPLETED": 0, "FAILED": 1, "RUNNING": -1}


class PlutoRejected(Exception):
    """A request the server refused for good (4xx other than 408/429)."""

    def __init__(self, status: int, message: str):
        super().__init__(f"HTTP {status}: {message}")
        self.status = status


def _env(names: tuple[str, ...]) -> str | None:
    for name in names:
        value = os.environ.get(name)
        if value:
            return value
    return None


def sdk_settings(host: str | None = None):
    """A `pluto.sets.Settings` with the four URLs resolved (no key inside).

    `--pluto-host`: a bare host gets the SDK's ports (3000/3001/3003/3004,
    `Settings.update_host`); a full URL serves all four (single-endpoint
    self-hosting).  Otherwise PLUTO_URL_APP/API/INGEST/PY, all four or none:
    the SDK silently sends an unset one to the hosted cloud.
    """
    from pluto.sets import Settings

    settings = Settings()
    settings._auth = None
    settings.compat = {}
    settings.meta = []
    if host:
        host = host.strip().rstrip("/")
        if host.startswith(("http://", "https://")):
            for key in URL_ENV:
                setattr(settings, key, host)
            settings.update_url()
        else:
            settings.host = host
            settings.update_host()
        return settings
    found = {key: _env(names) for key, names in URL_ENV.items()}
    given = [k for k, v in found.items() if v]
    if given and len(given) < len(found):
        missing = [URL_ENV[k][0] for k, v in found.items() if not v]
        raise UsageError(
            f"a self-hosted Pluto needs all four URL settings; {', '.join(missing)} "
            f"{'is' if len(missing) == 1 else 'are'} unset and the SDK would send those requests to "
            f"the hosted cloud. Fix: set them too, or pass --pluto-host"
        )
    if given:
        for key, value in found.items():
            setattr(settings, key, value.rstrip("/"))
        settings.update_url()
    else:
        settings.update_host()   # the hosted service
    return settings


def api_key() -> str:
    from pluto.query import _resolve_api_token

    key = _resolve_api_token()
    if not key:
        raise UsageError("no Pluto API key: set PLUTO_API_KEY or run `pluto login`")
    from trackport.core.logs import remember_secret

    remember_secret(key)    # a `pluto login` key is in no environment variable the scrubber reads
    return key


@dataclass
class CreatedRun:
    run_id: int
    url: str | None
    resumed: bool


class PlutoClient:
    """HTTP calls to one Pluto deployment, with bounded retries on 429/5xx."""

    def __init__(self, host: str | None = None, attempts: int | None = None, max_wait: float = 30.0,
                 timeout: float = 60.0):
        import httpx

        self.settings = sdk_settings(host)
        self._key = api_key()
        self.attempts = attempts            # None: --retry-max-attempts (trackport.core.retry)
        self.max_wait = max_wait            # cap on a server's Retry-After
        self.endpoint = f"pluto {self.settings.url_api}"   # where workers share a throttling pause
        self._http = httpx.Client(timeout=httpx.Timeout(timeout), follow_redirects=True)
        self._lock = threading.Lock()

    @property
    def app_url(self) -> str:
        return self.settings.url_app

    def close(self) -> None:
        self._http.close()

    def __repr__(self) -> str:  # never show the key
        return f"PlutoClient({self.settings.url_api!r})"

    # -- transport -------------------------------------------------------------

    def _headers(self, run: "RunContext | None", content_type: str | None) -> dict[str, str]:
        headers = {"Authorization": f"Bearer {self._key}", "User-Agent": "pluto"}
        if content_type:
            headers["Content-Type"] = content_type
        if run is not None:
            headers.update({"X-Run-Id": str(run.run_id), "X-Run-Name": run.name,
                            "X-Project-Name": run.project})
        return headers

    def request(self, method: str, url: str, *, run: "RunContext | None" = None, content: Any = None,
                content_type: str | None = None, params: dict | None = None, what: str = "",
                auth: bool = True, extra_headers: dict | None = None, reopen=None):
        """One call, retried on 408/429/5xx and dropped connections (trackport.core.retry:
        Retry-After honoured, throttling shared by every worker on this host, bounded by
        --retry-max-attempts / --retry-max-seconds).

        Gives up with TransientError (marked exhausted: the pipeline does not retry it again);
        a refusal raises PlutoRejected.  `reopen()` gives a fresh body for each attempt (file
        uploads).
        """
        import httpx

        what = what or f"{method} {url.split('?')[0]}"
        headers = self._headers(run, content_type) if auth else dict(extra_headers or {})
        if auth and extra_headers:
            headers.update(extra_headers)

        def once():
            body = reopen() if reopen is not None else content
            try:
                resp = self._http.request(method, url, content=body, params=params, headers=headers)
            except httpx.TransportError as exc:
                raise TransientError(f"{what}: {type(exc).__name__}") from None
            finally:
                if reopen is not None and hasattr(body, "close"):
                    body.close()
            if resp.status_code < 400:
                return resp
            message = _reason(resp)
            if resp.status_code not in TRANSIENT_STATUS:
                raise PlutoRejected(resp.status_code, f"{what}: {message}")
            wait_hint = parse_retry_after(resp.headers.get("Retry-After"))
            if wait_hint is not None:
                wait_hint = min(wait_hint, self.max_wait)
            raise TransientError(f"Pluto: {what}: HTTP {resp.status_code} {message}", retry_after=wait_hint,
                                 throttled=resp.status_code in (429, 503) or wait_hint is not None)

        return Backoff(max_attempts=self.attempts, endpoint=self.endpoint).call(what, once, final=False)

    def _json(self, method: str, url: str, body: bytes, run=None, what: str = "") -> dict:
        resp = self.request(method, url, run=run, content=body, content_type="application/json", what=what)
        try:
            return resp.json() if resp.content else {}
        except ValueError:
            return {}

    # -- SDK settings per run --------------------------------------------------

    def _run_settings(self, run: "RunContext", **compat):
        from pluto.sets import Settings

        s = Settings()
        for key in ("url_app", "url_api", "url_ingest", "url_py"):
            setattr(s, key, getattr(self.settings, key))
        s.update_url()
        s._auth = None                  # the key travels only in the Authorization header
        s.meta = []
        s.project = run.project
        s._op_name = run.name
        s._op_id = run.run_id
        s._external_id = run.external_id
        s.compat = {k: v for k, v in compat.items() if v is not None}
        s.disable_system_metrics = True
        s.disable_console = True
        return s

    # -- runs --------------------------------------------------------------------

    def create_run(self, run: "RunContext", config: dict, tags: list[str], created_ms: int | None,
                   updated_ms: int | None) -> CreatedRun:
        from pluto.api import make_compat_start_v1

        s = self._run_settings(run, createdAt=created_ms, updatedAt=updated_ms)
        body = make_compat_start_v1(config, s, {}, tags)
        doc = self._json("POST", s.url_start, body, what="create run")
        return CreatedRun(int(doc["runId"]), doc.get("url"), bool(doc.get("resumed", False)))

    def resume_run(self, run: "RunContext") -> None:
        from pluto.api import make_compat_resume_v1

        s = self._run_settings(run)
        s._resume_run_id = run.run_id
        self._json("POST", s.url_resume, make_compat_resume_v1(s), what="resume run")

    def update_config(self, run: "RunContext", config: dict) -> None:
        from pluto.api import make_compat_update_config_v1

        s = self._run_settings(run)
        self._json("POST", s.url_update_config, make_compat_update_config_v1(s, config), run, "update config")

    def update_tags(self, run: "RunContext", tags: list[str]) -> None:
        from pluto.api import make_compat_update_tags_v1

        s = self._run_settings(run)
        self._json("POST", s.url_update_tags, make_compat_update_tags_v1(s, tags), run, "update tags")

    def finish(self, run: "RunContext", status: str, updated_ms: int | None) -> None:
        from pluto.api import make_compat_status_v1

        s = self._run_settings(run, updatedAt=updated_ms)
        s._op_status = RUN_STATUS[status]
        self._json("POST", s.url_stop, make_compat_status_v1(s), run, "update status")

    def add_log_names(self, run: "RunContext", log_type: str, names: list[str]) -> None:
        """Register names with the server (`logName/add`; the SDK's `_update_meta`)."""
        from pluto.api import make_compat_meta_v1

        if not names:
            return
        s = self._run_settings(run)
        self._json("POST", s.url_meta, make_compat_meta_v1(names, log_type, s), run, "add log names")

    # -- ingest ------------------------------------------------------------------

    def post_lines(self, run: "RunContext", kind: str, lines: list[str]) -> None:
        """NDJSON to /ingest/metrics|data|logs (`kind` = num | data | message)."""
        if not lines:
            return
        url = {"num": self.settings.url_num, "data": self.settings.url_data,
               "message": self.settings.url_message}[kind]
        body = "".join(lines).encode("utf-8")
        self.request("POST", url, run=run, content=body, content_type="application/x-ndjson",
                     what=f"ingest {kind} ({len(lines)} lines)")

    def upload_files(self, run: "RunContext", entries: list[dict], paths: list[Path]) -> None:
        """Presign a chunk of files (POST /files, the SDK's `_get_presigned_urls` body), then PUT each.

        Files are streamed from disk, never read whole into memory.
        """
        if not entries:
            return
        body = json.dumps({"files": entries}).encode()
        doc = self._json("POST", self.settings.url_file, body, run, f"presign {len(entries)} files")
        urls: dict[str, str] = {}
        for group in doc.values():
            if isinstance(group, list):
                for mapping in group:
                    if isinstance(mapping, dict):
                        urls.update(mapping)
        for entry, path in zip(entries, paths):
            url = urls.get(entry["fileName"])
            if not url:
                raise TransientError(f"no upload URL for {entry['fileName']} in the presign answer")
            self.request("PUT", url, auth=False, extra_headers={"Content-Type": entry["fileType"]},
                         reopen=lambda p=path: open(p, "rb"), what=f"upload {entry['fileName']}")

    # -- reads (pluto.query paths) -------------------------------------------------

    def _get(self, path: str, params: dict) -> dict:
        resp = self.request("GET", f"{self.settings.url_api}{path}", params=params, what=f"GET {path}")
        return resp.json()

    def list_runs(self, project: str, tags: list[str] | None = None) -> list[dict]:
        out: list[dict] = []
        offset = 0
        while True:
            params: dict[str, Any] = {"projectName": project, "limit": 200}
            if tags:
                params["tags"] = ",".join(tags)
            if offset:
                params["offset"] = offset
            page = self._get("/api/runs/list", params).get("runs", [])
            out.extend(page)
            if len(page) < 200:
                return out
            offset += len(page)

    def run_details(self, project: str, run_id: int) -> dict:
        return self._get(f"/api/runs/details/{int(run_id)}", {"projectName": project})

    def metrics(self, project: str, run_id: int, name: str, step_min: int, step_max: int,
                limit: int = 10_000) -> list[dict]:
        params = {"runId": int(run_id), "projectName": project, "logName": name, "limit": limit,
                  "stepMin": step_min, "stepMax": step_max}
        return self._get("/api/runs/metrics", params).get("metrics", [])

    def files(self, project: str, run_id: int, log_name: str | None = None) -> list[dict]:
        params: dict[str, Any] = {"runId": int(run_id), "projectName": project}
        if log_name is not None:
            params["logName"] = log_name
        return self._get("/api/runs/files", params).get("files", [])

    def logs(self, project: str, run_id: int, log_type: str) -> list[dict]:
        """Every console line of one type (`pluto.query.Client.get_logs`, paged)."""
        out: list[dict] = []
        offset = 0
        while True:
            params = {"runId": int(run_id), "projectName": project, "logType": log_type.lower(),
                      "limit": 10_000, "offset": offset}
            page = self._get("/api/runs/logs", params).get("logs", [])
            out.extend(page)
            if len(page) < 10_000:
                return out
            offset += len(page)

    def download(self, url: str, target: Path) -> None:
        """Stream a file's download URL to `target` (presigned: no key sent)."""
        import httpx

        target.parent.mkdir(parents=True, exist_ok=True)

        def once() -> int | None:
            try:
                with self._http.stream("GET", url) as resp:
                    if resp.status_code in TRANSIENT_STATUS:
                        wait_hint = parse_retry_after(resp.headers.get("Retry-After"))
                        raise TransientError(f"download failed: HTTP {resp.status_code}", retry_after=wait_hint,
                                             throttled=resp.status_code in (429, 503) or wait_hint is not None)
                    if resp.status_code >= 400:
                        return resp.status_code
                    with open(target, "wb") as fh:
                        for chunk in resp.iter_bytes(1 << 20):
                            fh.write(chunk)
                    return None
            except httpx.TransportError as exc:
                raise TransientError(f"download failed: {type(exc).__name__}") from None

        refused = Backoff(max_attempts=self.attempts, endpoint=self.endpoint).call(
            f"download {target.name}", once, final=False)
        if refused is not None:
            raise TransientError(f"download failed: HTTP {refused}")


@dataclass
class RunContext:
    """The identity of one Pluto run, as the SDK's headers and bodies need it."""

    project: str
    name: str
    external_id: str
    run_id: int = 0


def _reason(resp) -> str:
    try:
        body = resp.json()
        if isinstance(body, dict):
            return str(body.get("error") or body.get("message") or "")[:300]
    except ValueError:
        pass
    return resp.text[:300]

