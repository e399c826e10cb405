"""A stand-in Comet server on 127.0.0.1: the REST v2 read endpoints `comet_ml.API` calls.

Paths, query parameters and answer shapes are those of the SDK's own client and its consumers
(comet_ml 3.58, site-packages):
- comet_ml/connection/connection_url_helpers.py get_backend_version_url: GET clientlib/isAlive/ver
  -> {"version"} (RestApiClient._get_api_backend_version);
- comet_ml/connection/connection_api.py RestApiClient, under api/rest/v2/:
  projects?workspaceName -> {"projects": [{"projectName"}]} (get_projects);
  experiments?workspaceName&projectName&archived&page&size&sortBy&sortOrder -> {"experiments":
  [metadata]} (get_project_experiments; metadata keys from get_experiment_metadata's docstring);
  experiment/parameters, experiment/log-other, experiment/metrics/summary ?experimentKey ->
  {"values": [{"name", "valueCurrent"}]} (APIExperiment.get_parameters_summary/_others_summary);
  experiment/tags -> {"tags"}; experiment/metrics/get-metric?experimentKey&metricName ->
  {"metrics": [{metricName, metricValue (text), timestamp, step, epoch, runContext, offset}]}
  (APIExperiment.get_metrics docstring); experiment/asset/list -> {"assets": [{assetId, fileName,
  fileSize, step}]}; experiment/asset/get-asset?experimentKey&assetId -> the bytes.
JSON answers carry `Content-Type: application/json` exactly (get_from_endpoint compares it).
The key travels in the Authorization header (http_session.API_KEY_HEADER).

The write side is what an online `comet_ml.Experiment` calls (observed with comet_ml 3.58.8, all
REST: this version has no websocket; URLs in comet_ml/connection/connection_url_helpers.py, under
COMET_URL_OVERRIDE = <url>/clientlib/):
- POST logger/add/run {experimentKey, projectName, teamName, getOrCreateEnabled} -> {runId,
  project_id} (RestServerConnection.add_run; handshake.py parse_experiment_handshake_response);
  a key already there answers 400 sdk_error_code 90999 (exceptions.py EXPERIMENT_ALREADY_EXISTS);
- POST status-report/update {is_alive} -> the beat intervals (update_experiment_status);
  asset/3d-limits, GET health/ping, notification/experiment: acknowledged;
- POST tags/add-tags-to-experiment {addedTags} (add_tags);
- POST batch/logger/experiment/metric and .../parameter {experimentKey, values: [message dicts]},
  gzip-compressed (_send_batch; messages.py MetricMessage/ParameterMessage.to_batch_message_dict);
- POST rest/v2/write/experiment/output {outputLines} (send_stdout_batch);
- POST asset/upload?experimentId&assetId&fileName&overwrite, multipart "file" + "metadata"
  (connection_upload.py);
- POST api/rest/v2/write/experiment/log-other {experimentKey, key, value} (log_experiment_other;
  the "Name" other names the experiment), write/experiment/set-start-end-time,
  GET api/rest/v2/write/experiment/delete?experimentKey (RestApiClient.delete_experiment),
  GET api/rest/v2/experiment/metadata?experimentKey (400 when there is no such experiment).
`writes` records every accepted write (kind, key) so tests can count what reached the server.
"""

from __future__ import annotations

import gzip
import json
import threading
import uuid
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

API_KEY = "test-comet-key-0123456789"
V2 = "/api/rest/v2/"


class CometServer:
    """`workspaces`: {workspace: {project: [experiment dict]}}; an experiment dict holds
    key, name, start, end, tags, params {name: text}, others {name: text},
    metrics [{name, value, step, epoch, timestamp}], assets [{id, name, data}]."""

    def __init__(self, workspaces: dict, throttle_first: int = 0):
        self.workspaces = workspaces
        self.throttle_left = throttle_first     # answer the first N experiment listings 429 + Retry-After
        self.requests: list[str] = []
        self.writes: list[tuple[str, str]] = []
        self.deleted: list[str] = []
        self.pages: list[int] = []
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self.url = ""

    def experiment(self, key: str) -> dict | None:
        found = self.where(key)
        return None if found is None else found[2]

    def where(self, key: str) -> tuple[str, str, dict] | None:
        for workspace, projects in self.workspaces.items():
            for project, exps in projects.items():
                for exp in exps:
                    if exp["key"] == key:
                        return workspace, project, exp
        return None

    def delete(self, key: str) -> tuple[dict, int]:
        found = self.where(key)
        if found is None:
            return {"msg": "No such experiment", "code": 400}, 400
        workspace, project, exp = found
        self.workspaces[workspace][project].remove(exp)
        self.deleted.append(key)
        return {}, 200

    def write(self, path: str, query: dict, data: bytes, headers):
        """One write of the online SDK (module docstring), under the lock."""
        route = path.rstrip("/")
        for prefix in ("/clientlib/rest/v2/", "/clientlib/", V2):
            if route.startswith(prefix):
                route = route[len(prefix):]
                break
        if route == "asset/upload":
            return self.upload(query, data, headers.get("Content-Type", ""))
        body = json.loads(data) if data else {}
        key = body.get("experimentKey", "")
        if route == "logger/add/run":
            if self.where(key) is not None and not body.get("getOrCreateEnabled"):
                return {"msg": "experiment already exists", "sdk_error_code": 90999}, 400
            if self.where(key) is None:
                now = body.get("local_timestamp") or 0
                self.workspaces.setdefault(body["teamName"], {}).setdefault(body["projectName"], []).append(
                    {"key": key, "name": None, "start": now, "end": now, "tags": [], "params": {}, "others": {},
                     "metrics": [], "assets": [], "output": [], "alive": True})
            self.writes.append(("experiment", key))
            return {"runId": f"run-{key}", "project_id": f"id-{body['projectName']}", "lastOffset": 0}
        if route in ("asset/3d-limits", "notification/experiment"):
            return {}
        exp = self.experiment(key)
        if exp is None:
            return {"msg": "No such experiment", "code": 400}, 400
        if route == "status-report/update":
            if not body.get("is_alive"):
                exp["alive"] = False
            return {"is_alive_beat_duration_millis": 60_000, "gpu_monitor_interval_millis": 60_000,
                    "cpu_monitor_interval_millis": 60_000}
        if route == "tags/add-tags-to-experiment":
            exp["tags"] += [t for t in body["addedTags"] if t not in exp["tags"]]
        elif route == "batch/logger/experiment/metric":
            for v in body["values"]:
                exp["metrics"].append({"name": v["metricName"], "value": v["metricValue"], "step": v.get("step"),
                                       "epoch": v.get("epoch"), "timestamp": v.get("timestamp")})
                self.writes.append(("metric", key))
        elif route == "batch/logger/experiment/parameter":
            for v in body["values"]:
                exp["params"][v["parameterName"]] = as_text(v["parameterValue"])
        elif route == "write/experiment/output":
            exp["output"] += body["outputLines"]
        elif route == "write/experiment/log-other":
            exp["others"][body["key"]] = as_text(body["value"])
            if body["key"] == "Name":
                exp["name"] = body["value"]
        elif route == "write/experiment/set-start-end-time":
            exp["start"], exp["end"] = body["startTimeMillis"], body["endTimeMillis"]
        else:
            return None
        self.writes.append((route, key))
        return {}

    def upload(self, query: dict, data: bytes, content_type: str):
        exp = self.experiment(query.get("experimentId", ""))
        if exp is None:
            return {"msg": "No such experiment", "code": 400}, 400
        message = BytesParser(policy=HTTP).parsebytes(
            f"Content-Type: {content_type}\r\n\r\n".encode() + data)
        fields = {part.get_param("name", header="content-disposition"): part.get_payload(decode=True)
                  for part in message.iter_parts()}
        asset_id = query.get("assetId") or uuid.uuid4().hex
        exp["assets"] = [a for a in exp["assets"] if a["id"] != asset_id]
        exp["assets"].append({"id": asset_id, "name": query.get("fileName"), "data": fields["file"],
                              "metadata": (fields.get("metadata") or b"").decode() or None})
        self.writes.append(("asset", exp["key"]))
        return {"assetId": asset_id, "web": "", "api": ""}

    def start(self) -> "CometServer":
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                parts = urlsplit(self.path)
                query = {k: v[0] for k, v in parse_qs(parts.query).items()}
                length = int(self.headers.get("Content-Length") or 0)
                data = self.rfile.read(length) if length else b""
                if self.headers.get("Content-Encoding") == "gzip":
                    data = gzip.decompress(data)
                with server._lock:
                    server.requests.append(parts.path)
                    answer = server.write(parts.path, query, data, self.headers)
                if answer is None:
                    return self.json({"msg": f"no route {parts.path}"}, 404)
                body, status = answer if isinstance(answer, tuple) else (answer, 200)
                return self.json(body, status)

            def do_GET(self):
                parts = urlsplit(self.path)
                query = {k: v[0] for k, v in parse_qs(parts.query).items()}
                with server._lock:
                    server.requests.append(parts.path)
                if parts.path.rstrip("/") == "/clientlib/isAlive/ver":
                    return self.json({"version": "3.40.0"})
                if parts.path.rstrip("/") == "/clientlib/health/ping":
                    return self.json({})
                if parts.path.rstrip("/") == V2 + "write/experiment/delete":
                    with server._lock:
                        return self.json(*server.delete(query.get("experimentKey", "")))
                if parts.path.rstrip("/") == V2 + "experiment/metadata":
                    with server._lock:
                        found = server.where(query.get("experimentKey", ""))
                    if found is None:
                        return self.json({"msg": "No such experiment", "code": 400}, 400)
                    workspace, project, exp = found
                    return self.json(server.metadata(exp, {"workspaceName": workspace, "projectName": project}))
                if self.headers.get("Authorization") != API_KEY:
                    return self.json({"msg": "bad api key", "code": 401}, 401)
                if not parts.path.startswith(V2):
                    return self.json({"msg": f"no route {parts.path}"}, 404)
                route = parts.path[len(V2):].rstrip("/")
                answer = server.answer(route, query)
                if answer is None:
                    return self.json({"msg": f"no route {route}"}, 404)
                if answer == "throttle":
                    return self.json({"msg": "rate limited"}, 429, {"Retry-After": "1"})
                if isinstance(answer, bytes):
                    self.send_response(200)
                    self.send_header("Content-Type", "application/octet-stream-binary")
                    self.send_header("Content-Length", str(len(answer)))
                    self.end_headers()
                    self.wfile.write(answer)
                    return None
                return self.json(answer)

            def json(self, body, status=200, headers=None):
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()

    def answer(self, route: str, query: dict):
        if route == "projects":
            projects = self.workspaces.get(query.get("workspaceName"), {})
            return {"projects": [{"projectName": p, "projectId": f"id-{p}"} for p in sorted(projects)]}
        if route == "experiments":
            with self._lock:
                if self.throttle_left > 0:
                    self.throttle_left -= 1
                    return "throttle"
            exps = self.workspaces.get(query.get("workspaceName"), {}).get(query.get("projectName"), [])
            exps = sorted(exps, key=lambda e: e["start"])
            if "page" in query:
                page, size = int(query["page"]), int(query["size"])
                with self._lock:
                    self.pages.append(page)
                exps = exps[(page - 1) * size: page * size]
            return {"experiments": [self.metadata(e, query) for e in exps]}
        exp = self.experiment(query.get("experimentKey", ""))
        if exp is None:
            return None
        key = exp["key"]
        if route == "experiment/tags":
            return {"tags": exp["tags"]}
        if route == "experiment/parameters":
            return {"values": [summary(k, v) for k, v in exp["params"].items()]}
        if route == "experiment/log-other":
            return {"values": [summary(k, v) for k, v in exp["others"].items()]}
        if route == "experiment/metrics/summary":
            names = sorted({m["name"] for m in exp["metrics"]})
            return {"values": [summary(n, None) for n in names]}
        if route == "experiment/metrics/get-metric":
            points = [m for m in exp["metrics"] if m["name"] == query.get("metricName")]
            return {"metrics": [{"metricName": m["name"], "metricValue": text(m["value"]), "timestamp": m["timestamp"],
                                 "step": m["step"], "epoch": m["epoch"], "runContext": None, "offset": i}
                                for i, m in enumerate(points)]}
        if route == "experiment/asset/list":
            return {"assets": [{"assetId": a["id"], "fileName": a["name"], "fileSize": len(a["data"]),
                                "step": None, "experimentKey": key, "metadata": a.get("metadata")}
                               for a in exp["assets"]]}
        if route == "experiment/asset/get-asset":
            for a in exp["assets"]:
                if a["id"] == query.get("assetId"):
                    return a["data"]
        return None

    @staticmethod
    def metadata(exp: dict, query: dict) -> dict:
        return {"archived": False, "durationMillis": exp["end"] - exp["start"], "endTimeMillis": exp["end"],
                "experimentKey": exp["key"], "experimentName": exp["name"], "fileName": None, "filePath": None,
                "optimizationId": None, "projectId": f"id-{query.get('projectName')}",
                "projectName": query.get("projectName"), "running": False, "startTimeMillis": exp["start"],
                "throttle": False, "workspaceName": query.get("workspaceName")}


def as_text(value) -> str:
    """Parameters and others are kept and answered as text (valueCurrent)."""
    return value if isinstance(value, str) else json.dumps(value)


def text(value) -> str:
    """A metric value as Comet's REST API answers it: text ("NaN" as sent, numbers by repr)."""
    return value if isinstance(value, str) else repr(value)


def summary(name: str, value) -> dict:
    return {"name": name, "valueCurrent": value, "valueMax": value, "valueMin": value,
            "timestampCurrent": 0, "timestampMax": 0, "timestampMin": 0, "editable": False}
