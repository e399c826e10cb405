"""A local Pluto server for tests: the subset of the wire protocol pluto-ml 0.0.29 speaks.

Pluto's own server needs Docker, ClickHouse and more, so the tests point the
real SDK code paths at this one (127.0.0.1, a free port, a thread).  One port
serves what Pluto splits over app/api/ingest/py hosts.  Paths, methods and
bodies follow the SDK source:

- pluto/sets.py `update_url`: /api/slug, /api/runs/create|resume|logName/add|
  config/update|tags/update|status/update, /api/runs/trigger, /ingest/metrics|
  data|logs, /files;
- pluto/api.py `make_compat_*` (JSON bodies), pluto/sync/process.py
  `_SyncUploader` (NDJSON lines, presign body and answer, the PUT);
- pluto/query.py (GET /api/runs/list, /api/runs/details/{id}, /api/runs/metrics,
  /api/runs/files, /api/runs/logs).

Behaviour copied from the real service (docs/pluto.md): externalId is
unique per project and a create with a taken one flips that run to RUNNING
and answers `resumed: true` (the SDK then raises RunExistsError); the list
items carry no externalId, the details do; NDJSON steps must be non-negative
integers and one bad line rejects the whole batch (400); a metric point sent
again for the same name, step and time replaces the stored one.  Every
presign creates a file row (a file sent twice shows up twice).

Fault injection: `server.fail(method, path_prefix, status, times, retry_after)`.
Holding: `server.hold(method, path_prefix)` blocks matching requests and sets
`server.held` so a test can SIGKILL a client at that exact point.
"""

from __future__ import annotations

import json
import random
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

__all__ = ["PlutoTestServer", "pluto_server", "PLANTED_KEY"]

PLANTED_KEY = "plt_test_SECRET_0123456789abcdef"


@dataclass
class StoredRun:
    id: int
    project: str
    name: str
    external_id: str | None
    config: dict
    tags: list[str]
    created_at: int | None
    updated_at: int | None
    status: str = "RUNNING"
    status_updated: int | None = None
    fork_run_id: int | None = None
    fork_step: int | None = None
    log_names: dict[str, set] = field(default_factory=dict)
    metrics: dict[tuple[str, int, int], float] = field(default_factory=dict)  # (name, step, time) -> value
    metric_writes: int = 0
    data: list[dict] = field(default_factory=list)
    logs: list[dict] = field(default_factory=list)
    files: list[dict] = field(default_factory=list)
    status_history: list[str] = field(default_factory=list)


class _Fault:
    def __init__(self, method, prefix, status, times, retry_after):
        self.method, self.prefix, self.status, self.times, self.retry_after = method, prefix, status, times, retry_after


class PlutoTestServer:
    def __init__(self, key: str = PLANTED_KEY):
        self.key = key
        self.lock = threading.RLock()
        self.runs: dict[int, StoredRun] = {}
        self.blobs: dict[str, bytes] = {}
        self.pending: dict[str, dict] = {}
        self.requests: list[tuple[str, str]] = []
        self.faults: list[_Fault] = []
        self.injected: list[tuple[str, str, int]] = []
        self.rejected_batches = 0
        self.headers_seen: list[dict] = []
        self._hold: tuple[str, str] | None = None
        self.held = threading.Event()
        self._release = threading.Event()
        self._next_id = 1
        self._rng = random.Random(7)
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def do_GET(self):
                server._handle(self, "GET")

            def do_POST(self):
                server._handle(self, "POST")

            def do_PUT(self):
                server._handle(self, "PUT")

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    # -- lifecycle -------------------------------------------------------------
    def start(self) -> "PlutoTestServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._release.set()
        self.httpd.shutdown()
        self.httpd.server_close()

    def env(self) -> dict[str, str]:
        return {"PLUTO_API_KEY": self.key, "PLUTO_URL_APP": self.url, "PLUTO_URL_API": self.url,
                "PLUTO_URL_INGEST": self.url, "PLUTO_URL_PY": self.url}

    def reset(self) -> None:
        with self.lock:
            self.runs.clear()
            self.blobs.clear()
            self.pending.clear()
            self.requests.clear()
            self.faults.clear()
            self.injected.clear()
            self.rejected_batches = 0
            self._hold = None
            self.held.clear()
            self._release.clear()

    # -- test controls -----------------------------------------------------------
    def fail(self, method: str, prefix: str, status: int, times: int = 1, retry_after: float | None = None):
        with self.lock:
            self.faults.append(_Fault(method, prefix, status, times, retry_after))

    def hold(self, method: str, prefix: str, contains: bytes = b"") -> None:
        """Block the first request matching method, path prefix and (a part of) its body."""
        with self.lock:
            self._hold = (method, prefix, contains)
            self.held.clear()
            self._release.clear()

    def release(self) -> None:
        with self.lock:
            self._hold = None
        self._release.set()

    def conformance_target(self, tmp_path):
        """The conformance target of tests/test_pluto.py: copy, verify, read back through this server."""
        from trackport.testing.conformance import Target

        return Target("pluto://conformance")

    def project_runs(self, project: str) -> list[StoredRun]:
        with self.lock:
            return [r for r in self.runs.values() if r.project == project]

    # -- dispatch ------------------------------------------------------------------
    def _handle(self, h: BaseHTTPRequestHandler, method: str) -> None:
        parts = urlsplit(h.path)
        path, query = parts.path, {k: v[-1] for k, v in parse_qs(parts.query).items()}
        body = self._body(h)
        with self.lock:
            self.requests.append((method, path))
            self.headers_seen.append(dict(h.headers))
            hold = self._hold
            fault = None
            for f in self.faults:
                if f.method == method and path.startswith(f.prefix) and f.times > 0:
                    f.times -= 1
                    fault = f
                    self.injected.append((method, path, f.status))
                    break
        if hold and hold[0] == method and path.startswith(hold[1]) and hold[2] in body:
            self.held.set()
            self._release.wait(120)
        if fault is not None:
            headers = {"Retry-After": str(fault.retry_after)} if fault.retry_after is not None else {}
            return self._send(h, fault.status, {"error": "injected"}, headers)
        public = (method == "PUT" and path.startswith("/upload/")) or (method == "GET" and path.startswith("/download/"))
        if not public and h.headers.get("Authorization") != f"Bearer {self.key}":
            return self._send(h, 401, {"error": "Unauthorized", "message": "Invalid API key"})
        try:
            status, payload = self._route(method, path, query, body, h.headers)
        except _Bad as exc:
            status, payload = exc.status, {"error": str(exc)}
        if isinstance(payload, bytes):
            h.send_response(status)
            h.send_header("Content-Length", str(len(payload)))
            h.send_header("Content-Type", "application/octet-stream")
            h.end_headers()
            h.wfile.write(payload)
            return
        self._send(h, status, payload)

    @staticmethod
    def _body(h) -> bytes:
        if h.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = b""
            while True:
                size = int(h.rfile.readline().strip(), 16)
                if size == 0:
                    h.rfile.readline()
                    return out
                out += h.rfile.read(size)
                h.rfile.readline()
        n = int(h.headers.get("Content-Length") or 0)
        return h.rfile.read(n) if n else b""

    @staticmethod
    def _send(h, status: int, payload: Any, headers: dict | None = None) -> None:
        data = json.dumps(payload).encode()
        h.send_response(status)
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)

    def _run(self, run_id: Any) -> StoredRun:
        try:
            run = self.runs.get(int(run_id))
        except (TypeError, ValueError):
            run = None
        if run is None:
            raise _Bad(404, f"run {run_id} not found")
        return run

    def _route(self, method: str, path: str, q: dict, body: bytes, headers):
        with self.lock:
            if method == "POST" and path == "/api/slug":
                return 200, {"organization": {"slug": "test-org"}}
            if method == "POST" and path.startswith("/api/runs/"):
                return self._api_post(path[len("/api/runs/"):], json.loads(body or b"{}"))
            if method == "POST" and path in ("/ingest/metrics", "/ingest/data", "/ingest/logs"):
                return self._ingest(self._run(headers.get("X-Run-Id")), path.rsplit("/", 1)[1], body)
            if method == "POST" and path == "/files":
                return self._presign(self._run(headers.get("X-Run-Id")), json.loads(body))
            if method == "PUT" and path.startswith("/upload/"):
                key = path[len("/upload/"):]
                row = self.pending.pop(key, None)
                if row is None:
                    raise _Bad(404, "no such upload")
                self.blobs[key] = body
                row["uploaded"] = True
                row["fileSize"] = len(body)
                return 200, {}
            if method == "GET" and path.startswith("/download/"):
                key = path[len("/download/"):]
                if key not in self.blobs:
                    raise _Bad(404, "no such object")
                return 200, self.blobs[key]
            if method == "GET" and path == "/api/runs/list":
                return 200, {"runs": self._list(q)}
            if method == "GET" and path.startswith("/api/runs/details/"):
                run = self._run(path.rsplit("/", 1)[1])
                return 200, {**self._item(run), "externalId": run.external_id,
                             "logNames": {k: sorted(v) for k, v in run.log_names.items()},
                             "systemMetadata": None}
            if method == "GET" and path == "/api/runs/metrics":
                return 200, {"metrics": self._metrics(q)}
            if method == "GET" and path == "/api/runs/logs":
                run = self._run(q.get("runId"))
                rows = [e for e in run.logs if "logType" not in q or e["logType"].lower() == q["logType"].lower()]
                offset, limit = int(q.get("offset", 0)), min(int(q.get("limit", 10000)), 10000)
                return 200, {"logs": [{"message": e["message"], "logType": e["logType"], "time": _iso(e["time"]),
                                       "lineNumber": e["lineNumber"], "step": None}
                                      for e in rows[offset:offset + limit]]}
            if method == "GET" and path == "/api/runs/files":
                run = self._run(q.get("runId"))
                rows = [f for f in run.files if f.get("uploaded")
                        and ("logName" not in q or f["logName"] == q["logName"])]
                return 200, {"files": [{k: f[k] for k in ("fileName", "fileType", "fileSize", "step", "time",
                                                          "logName")} | {"downloadUrl": f"{self.url}/download/{f['key']}"}
                                       for f in rows]}
        raise _Bad(404, f"no route {method} {path}")

    def _item(self, run: StoredRun) -> dict:
        return {"id": run.id, "name": run.name, "displayId": f"T-{run.id}", "status": run.status,
                "tags": list(run.tags), "config": run.config, "createdAt": run.created_at,
                "updatedAt": run.updated_at, "url": f"{self.url}/o/runs/{run.id}"}

    def _list(self, q: dict) -> list[dict]:
        want = [t for t in (q.get("tags") or "").split(",") if t]
        limit = min(int(q.get("limit", 50)), 200)
        offset = int(q.get("offset", 0))
        runs = [r for r in self.runs.values() if r.project == q.get("projectName")
                and all(t in r.tags for t in want)]
        runs.sort(key=lambda r: -r.id)
        return [self._item(r) for r in runs[offset:offset + limit]]

    def _api_post(self, op: str, doc: dict):
        if op == "create":
            project = doc.get("projectName")
            ext = doc.get("externalId")
            for run in self.runs.values():
                if ext and run.project == project and run.external_id == ext:
                    run.status = "RUNNING"       # the real server reopens it (docs/pluto.md)
                    run.status_history.append("RUNNING")
                    return 200, {"runId": run.id, "url": f"{self.url}/o/runs/{run.id}", "resumed": True,
                                 "displayId": f"T-{run.id}"}
            run = StoredRun(self._next_id, project, doc.get("runName"), ext,
                            json.loads(doc["config"]) if doc.get("config") else {},
                            list(doc.get("tags") or []), doc.get("createdAt"), doc.get("updatedAt"),
                            fork_run_id=doc.get("forkRunId"), fork_step=doc.get("forkStep"))
            self._next_id += 1
            self.runs[run.id] = run
            return 200, {"runId": run.id, "url": f"{self.url}/o/runs/{run.id}", "resumed": False,
                         "displayId": f"T-{run.id}"}
        if op == "trigger":
            return 200, {}
        run = self._run(doc.get("runId"))
        if op == "resume":
            run.status = "RUNNING"
            run.status_history.append("RUNNING")
            return 200, {"runId": run.id, "url": f"{self.url}/o/runs/{run.id}", "resumed": True}
        if op == "logName/add":
            run.log_names.setdefault(doc["logType"], set()).update(doc.get("logName") or [])
            return 200, {}
        if op == "config/update":
            if doc.get("config"):
                run.config.update(json.loads(doc["config"]))
            return 200, {}
        if op == "tags/update":
            run.tags = list(doc.get("tags") or [])
            return 200, {}
        if op == "status/update":
            run.status = doc["status"]
            run.status_history.append(doc["status"])
            run.status_updated = doc.get("statusUpdated")
            if run.status_updated is not None:
                run.updated_at = run.status_updated
            return 200, {}
        raise _Bad(404, f"no route /api/runs/{op}")

    def _ingest(self, run: StoredRun, kind: str, body: bytes):
        try:   # strict JSON, like the real (JavaScript) server: no NaN / Infinity
            lines = [json.loads(line, parse_constant=_no_constant)
                     for line in body.decode("utf-8").splitlines() if line.strip()]
        except ValueError as exc:
            self.rejected_batches += 1
            raise _Bad(400, f"bad NDJSON: {exc}") from None
        for line in lines:
            step = line.get("step", line.get("lineNumber"))
            if not isinstance(step, int) or isinstance(step, bool) or step < 0:
                self.rejected_batches += 1
                raise _Bad(400, f"invalid step {step!r}: must be a non-negative integer")
            if not isinstance(line.get("time"), int) or isinstance(line.get("time"), bool):
                self.rejected_batches += 1
                raise _Bad(400, f"invalid time {line.get('time')!r}")
        for line in lines:
            if kind == "metrics":
                for name, value in line["data"].items():
                    run.metrics[(name, line["step"], line["time"])] = value   # replace-by-time
                    run.metric_writes += 1
            elif kind == "data":
                run.data.append(line)
            else:
                run.logs.append(line)
        return 200, {}

    def _presign(self, run: StoredRun, doc: dict):
        out: dict[str, list] = {}
        for entry in doc.get("files", []):
            key = f"{self._next_id}-{len(self.blobs) + len(self.pending)}-{self._rng.randrange(1 << 30)}"
            row = {**entry, "key": key, "uploaded": False}
            self.pending[key] = row
            run.files.append(row)
            out.setdefault(entry.get("fileType", "file").upper(), []).append(
                {entry["fileName"]: f"{self.url}/upload/{key}"})
        return 200, out

    def _metrics(self, q: dict) -> list[dict]:
        run = self._run(q.get("runId"))
        name = q.get("logName")
        lo = int(q.get("stepMin", 0))
        hi = int(q.get("stepMax", 2**63 - 1))
        limit = min(int(q.get("limit", 10000)), 10000)
        pts = [(n, s, t, v) for (n, s, t), v in run.metrics.items() if (name is None or n == name) and lo <= s <= hi]
        if len(pts) > limit:           # the real server samples (reservoir) above the limit
            pts = self._rng.sample(pts, limit)
        pts.sort(key=lambda p: (p[1], p[2]))
        return [{"logName": n, "step": s, "time": _iso(t), "value": v} for n, s, t, v in pts]


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _no_constant(name: str):
    raise ValueError(f"{name} is not JSON")


class _Bad(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@pytest.fixture(scope="session")
def pluto_server_session():
    server = PlutoTestServer().start()
    yield server
    server.stop()


@pytest.fixture
def pluto_server(pluto_server_session, monkeypatch):
    """The local Pluto server, emptied, with PLUTO_API_KEY and the four PLUTO_URL_* set to it."""
    pluto_server_session.reset()
    for key, value in pluto_server_session.env().items():
        monkeypatch.setenv(key, value)
    yield pluto_server_session
    pluto_server_session.release()
