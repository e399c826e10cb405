"""A local stand-in for the Lightning AI endpoints litlogger 2026.8 and lightning_sdk 2026.10 call.

The real service is Lightning AI's cloud; nothing of it runs locally, so the tests point the
real SDK request code at this server (127.0.0.1, a free port, a thread) through
LIGHTNING_CLOUD_URL.  Paths, methods, query parameters and JSON bodies follow the SDK source
in site-packages (the swagger client's `attribute_map`s give the camelCase field names):

- teamspace resolution, lightning_sdk/teamspace.py `Teamspace.__init__`:
  GET /v1/orgs/{id}?name= (org_api.py `get_org`), GET /v1/memberships
  (teamspace_api.py `list_teamspaces`), GET /v1/projects/{id}; an owner that is no org is
  looked up as a user (user_api.py `get_user_by_name`: GET /v1/auth/user, /v1/users/search);
- litlogger/api/metrics_api.py: GET /v1/metrics-streams?projectId=&name= (404 when absent),
  POST /v1/projects/{p}/metrics-stream/create, PUT /v1/projects/{p}/logger-metrics/{id}
  (append), PUT /v1/projects/{p}/metrics-stream/{id} (phase, persisted, tags: replaced when
  sent), GET /v1/projects/{p}/logger-metrics?ids=&minStep=&maxStep=&samples= (read),
  GET /v1/projects/{p}/metrics-stream/list, POST /v1/projects/{p}/metrics-stream/delete;
- litlogger/api/artifacts_api.py: the teamspace drive upload of lightning_sdk/api/utils.py
  `_BlobUploader` (POST /v1/projects/{p}/artifacts/blobs -> presigned URL -> PUT), the
  artifact record POST/GET /v1/projects/{p}/metrics-streams/{s}/logger-artifacts, and the
  download GET /v1/projects/{p}/artifacts/blobs/{path}.

Choices of this stand-in where the SDK does not say what the service does (docs/litlogger.md):
a stream name is unique in its teamspace (a second create answers 409), deleting a stream
deletes its points and artifact records (not the drive files), `samples` caps the points
answered per metric by keeping evenly spaced ones, and a value JSON cannot carry (NaN) is
refused with 400.
"""

from __future__ import annotations

import base64
import json
import math
import threading
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

__all__ = ["LitLoggerTestServer", "PLANTED_KEY", "USER_ID", "ORG", "TEAMSPACE"]

PLANTED_KEY = "ll_test_SECRET_0123456789abcdef"
USER_ID = "user-7f3a"
USERNAME = "alice"
ORG = "acme"
TEAMSPACE = "research"
CLUSTER = "local-cluster"


@dataclass
class Stream:
    id: str
    project_id: str
    name: str
    tags: list[dict]
    store_step: bool
    store_created_at: bool
    created_at: str
    phase: str = "RUNNING"
    persisted: bool = False
    metrics: dict[str, list[dict]] = field(default_factory=dict)   # name -> [{step, value, createdAt}]
    artifacts: list[dict] = field(default_factory=list)
    appends: int = 0
    phases: list[str] = field(default_factory=list)

    def tag_map(self) -> dict[str, str]:
        return {t["name"]: t.get("value", "") for t in self.tags}

    def to_json(self) -> dict:
        return {"id": self.id, "projectId": self.project_id, "name": self.name, "clusterId": CLUSTER,
                "cloudspaceId": "", "workId": "", "appId": "", "pluginId": "", "jobName": "",
                "phase": self.phase, "persisted": self.persisted, "tags": self.tags,
                "storeStep": self.store_step, "storeCreatedAt": self.store_created_at,
                "createdAt": self.created_at, "updatedAt": self.created_at}


class _Bad(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class LitLoggerTestServer:
    def __init__(self, key: str = PLANTED_KEY):
        self.key = key
        self.lock = threading.RLock()
        self.org = {"id": "org-1", "name": ORG, "displayName": "Acme", "preferredCluster": CLUSTER}
        self.project = {"id": "proj-1", "name": TEAMSPACE, "displayName": "Research", "ownerId": "org-1",
                        "ownerType": "organization", "projectSettings": {"preferredCluster": CLUSTER}}
        self.streams: dict[str, Stream] = {}
        self.blobs: dict[str, bytes] = {}          # drive path -> bytes
        self.pending: dict[str, str] = {}          # upload token -> drive path
        self.requests: list[tuple[str, str]] = []
        self.auth_seen: list[str] = []
        self.unknown: list[tuple[str, str]] = []
        self._hold: tuple[str, str, bytes] | None = None
        self.held = threading.Event()
        self._release = threading.Event()
        self._drop_held = False
        self.faults: list[list] = []               # [method, path prefix, status, times left]
        self.injected: list[tuple[str, str, int]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True   # headers and body go out in two writes: no 40 ms delayed-ACK stall

            def log_message(self, *args):
                pass

            def do_GET(self):
                server._handle(self, "GET")

            def do_POST(self):
                server._handle(self, "POST")

            def do_PUT(self):
                server._handle(self, "PUT")

            def do_DELETE(self):
                server._handle(self, "DELETE")

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    # -- lifecycle ---------------------------------------------------------------
    def start(self) -> "LitLoggerTestServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._release.set()
        self.httpd.shutdown()
        self.httpd.server_close()

    def env(self) -> dict[str, str]:
        return {"LIGHTNING_CLOUD_URL": self.url, "LIGHTNING_USER_ID": USER_ID, "LIGHTNING_API_KEY": self.key}

    def reset(self) -> None:
        with self.lock:
            self.streams.clear()
            self.blobs.clear()
            self.pending.clear()
            self.requests.clear()
            self.auth_seen.clear()
            self.unknown.clear()
            self._hold = None
            self._drop_held = False
            self.faults.clear()
            self.injected.clear()
            self.held.clear()
            self._release.clear()

    def fail(self, method: str, prefix: str, status: int, times: int = 1) -> None:
        """Answer the next `times` requests matching method and path prefix with `status`, unprocessed."""
        with self.lock:
            self.faults.append([method, prefix, status, times])

    def hold(self, method: str, prefix: str, contains: bytes = b"") -> None:
        """Block the first request matching method, path prefix and (a part of) its body."""
        with self.lock:
            self._hold = (method, prefix, contains)
            self.held.clear()
            self._release.clear()

    def release(self, drop: bool = False) -> None:
        """Let a held request go on; with `drop`, it is answered 503 without taking effect."""
        with self.lock:
            self._hold = None
            self._drop_held = drop
        self._release.set()

    def by_name(self) -> dict[str, Stream]:
        with self.lock:
            return {s.name: s for s in self.streams.values()}

    # -- dispatch ------------------------------------------------------------------
    def _handle(self, h: BaseHTTPRequestHandler, method: str) -> None:
        parts = urlsplit(h.path)
        path = parts.path
        query = parse_qs(parts.query)
        length = int(h.headers.get("Content-Length") or 0)
        body = h.rfile.read(length) if length else b""
        with self.lock:
            self.requests.append((method, path))
            hold = self._hold
            fault = next((f for f in self.faults if f[0] == method and path.startswith(f[1]) and f[3] > 0), None)
            if fault is not None:
                fault[3] -= 1
                self.injected.append((method, path, fault[2]))
        if fault is not None:
            return self._send(h, fault[2], {"code": 14, "message": "injected"})
        if hold and hold[0] == method and path.startswith(hold[1]) and hold[2] in body:
            with self.lock:
                self._hold = None
            self.held.set()
            self._release.wait(120)
            if self._drop_held:   # the client was killed: this request never took effect
                return self._send(h, 503, {"code": 14, "message": "unavailable"})
        if not (method == "PUT" and path.startswith("/storage/")):
            auth = h.headers.get("Authorization") or ""
            with self.lock:
                self.auth_seen.append(auth)
            want = "Basic " + base64.b64encode(f"{USER_ID}:{self.key}".encode()).decode()
            if auth != want:
                return self._send(h, 401, {"code": 16, "message": "unauthenticated"})
        try:
            status, payload = self._route(method, path, query, body)
        except _Bad as exc:
            status, payload = exc.status, {"code": 3, "message": str(exc)}
        self._send(h, status, payload)

    def _send(self, h, status: int, payload) -> None:
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        h.send_response(status)
        h.send_header("Content-Type", "application/octet-stream" if isinstance(payload, bytes) else "application/json")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)

    def _json(self, body: bytes) -> dict:
        try:
            return json.loads(body or b"{}", parse_constant=_no_constant)
        except ValueError as exc:
            raise _Bad(400, f"invalid JSON body: {exc}") from None

    def _stream(self, project_id: str, stream_id: str) -> Stream:
        stream = self.streams.get(stream_id)
        if stream is None or stream.project_id != project_id:
            raise _Bad(404, "metrics stream not found")
        return stream

    def _route(self, method: str, path: str, query: dict, body: bytes):
        seg = [unquote(p) for p in path.strip("/").split("/")]
        q1 = {k: v[-1] for k, v in query.items()}
        with self.lock:
            if method == "GET" and seg[:2] == ["v1", "orgs"]:
                if q1.get("name") == ORG or (len(seg) > 2 and seg[2] == self.org["id"]):
                    return 200, self.org
                return 404, {"code": 5, "message": "organization not found"}
            if method == "GET" and path == "/v1/auth/user":
                return 200, {"id": USER_ID, "username": USERNAME}
            if method == "GET" and path == "/v1/users/search":
                query = q1.get("query")
                return 200, {"users": [{"id": USER_ID, "username": USERNAME}] if query in (USER_ID, USERNAME) else []}
            if method == "GET" and path == "/v1/memberships":
                p = self.project
                return 200, {"memberships": [{"projectId": p["id"], "name": p["name"], "displayName": p["displayName"],
                                              "ownerId": p["ownerId"], "ownerType": p["ownerType"],
                                              "userId": USER_ID}]}
            if method == "GET" and seg[:2] == ["v1", "projects"] and len(seg) == 3:
                if seg[2] == self.project["id"]:
                    return 200, self.project
                return 404, {"code": 5, "message": "project not found"}
            if method == "GET" and path == "/v1/metrics-streams":
                for s in self.streams.values():
                    if s.project_id == q1.get("projectId") and s.name == q1.get("name"):
                        return 200, s.to_json()
                return 404, {"code": 5, "message": "metrics stream not found"}
            if len(seg) >= 4 and seg[:2] == ["v1", "projects"]:
                pid = seg[2]
                if pid != self.project["id"]:
                    return 404, {"code": 5, "message": "project not found"}
                rest = seg[3:]
                return self._project_route(method, pid, rest, query, q1, body)
            if method == "PUT" and seg[0] == "storage" and len(seg) == 2:
                target = self.pending.pop(seg[1], None)
                if target is None:
                    return 403, b"<Error><Code>AccessDenied</Code></Error>"
                self.blobs[target] = body
                return 200, b""
        self.unknown.append((method, path))
        return 404, {"code": 5, "message": f"no route {method} {path}"}

    def _project_route(self, method, pid, rest, query, q1, body):
        if method == "POST" and rest == ["metrics-stream", "create"]:
            doc = self._json(body)
            name = doc.get("name") or ""
            if any(s.project_id == pid and s.name == name for s in self.streams.values()):
                return 409, {"code": 6, "message": f"metrics stream {name} already exists"}
            stream = Stream(uuid.uuid4().hex[:12], pid, name, _tags(doc.get("tags")), bool(doc.get("storeStep")),
                            bool(doc.get("storeCreatedAt")), _now())
            self.streams[stream.id] = stream
            return 200, stream.to_json()
        if method == "GET" and rest == ["metrics-stream", "list"]:
            ids = set(query.get("ids", []))
            items = [s for s in self.streams.values() if s.project_id == pid and (not ids or s.id in ids)]
            items.sort(key=lambda s: s.created_at)
            offset, limit = int(q1.get("offset", 0)), int(q1.get("limit", 0) or 50)
            return 200, {"metricsStreams": [s.to_json() for s in items[offset:offset + limit]]}
        if method == "POST" and rest == ["metrics-stream", "delete"]:
            for sid in self._json(body).get("ids") or []:
                self.streams.pop(sid, None)
            return 200, {}
        if method == "PUT" and len(rest) == 2 and rest[0] == "metrics-stream":
            stream = self._stream(pid, rest[1])
            doc = self._json(body)
            if doc.get("phase"):
                stream.phase = doc["phase"]
                stream.phases.append(doc["phase"])
            if "persisted" in doc:
                stream.persisted = bool(doc["persisted"])
            if doc.get("tags") is not None:
                stream.tags = _tags(doc["tags"])
            return 200, stream.to_json()
        if method == "PUT" and len(rest) == 2 and rest[0] == "logger-metrics":
            stream = self._stream(pid, rest[1])
            doc = self._json(body)
            batch = []
            for metric in doc.get("metrics") or []:
                for v in metric.get("values") or []:
                    value = v.get("value")
                    if not isinstance(value, (int, float)) or not math.isfinite(value):
                        raise _Bad(400, f"invalid metric value for {metric.get('name')!r}")
                    step = v.get("step")
                    batch.append((metric["name"], {"step": None if step is None else int(step), "value": float(value),
                                                   "createdAt": v.get("createdAt")}))
            for name, point in batch:
                stream.metrics.setdefault(name, []).append(point)
            stream.appends += 1
            return 200, {}
        if method == "GET" and rest == ["logger-metrics"]:
            ids = query.get("ids", [])
            lo = int(q1["minStep"]) if "minStep" in q1 else None
            hi = int(q1["maxStep"]) if "maxStep" in q1 else None
            samples = int(q1.get("samples", 0) or 0)
            named: dict[str, dict] = {}
            for sid in ids:
                stream = self._stream(pid, sid)
                for name, points in stream.metrics.items():
                    got = [p for p in points if (lo is None or (p["step"] is not None and p["step"] >= lo))
                           and (hi is None or (p["step"] is not None and p["step"] <= hi))]
                    if samples and len(got) > samples:     # evenly spaced points, like a chart would
                        got = [got[(i * len(got)) // samples] for i in range(samples)]
                    named.setdefault(name, {"idsMetrics": {}})["idsMetrics"][sid] = {"metricsValues": [
                        {k: (str(p[k]) if k == "step" else p[k]) for k in ("step", "value", "createdAt")
                         if p[k] is not None} for p in got]}
            return 200, {"namedMetrics": named}
        if len(rest) == 3 and rest[0] == "metrics-streams" and rest[2] == "logger-artifacts":
            stream = self._stream(pid, rest[1])
            if method == "POST":
                item = {"id": uuid.uuid4().hex[:12], "path": self._json(body).get("path"), "clusterId": CLUSTER,
                        "metricsStreamId": stream.id, "projectId": pid}
                stream.artifacts.append(item)
                return 200, item
            if method == "GET":
                return 200, {"loggerArtifacts": list(stream.artifacts)}
        if method == "POST" and rest == ["artifacts", "blobs"]:
            doc = self._json(body)
            if doc.get("cluster_id") != CLUSTER:
                raise _Bad(400, "unknown cluster_id")
            results = []
            for blob in doc.get("blobs") or []:
                if int(blob.get("parts") or 1) != 1:
                    raise _Bad(400, "this stand-in signs single-part uploads only")
                token = uuid.uuid4().hex
                self.pending[token] = blob["path"]
                results.append({"urls": [{"url": f"{self.url}/storage/{token}"}], "complete_required": False})
            return 200, {"results": results}
        if method == "GET" and rest[:2] == ["artifacts", "blobs"] and len(rest) > 2:
            data = self.blobs.get("/".join(rest[2:]))
            if data is None:
                return 404, b"<Error><Code>NoSuchKey</Code></Error>"
            return 200, data
        self.unknown.append((method, "/".join(rest)))
        return 404, {"code": 5, "message": f"no route {method} {'/'.join(rest)}"}


def _tags(items) -> list[dict]:
    return [{"name": str(t.get("name")), "value": str(t.get("value", "")), "fromCode": bool(t.get("fromCode")),
             "active": bool(t.get("active"))} for t in items or []]


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _no_constant(name: str):
    raise ValueError(f"{name} is not JSON")
