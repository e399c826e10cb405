"""A local server speaking the subset of Neptune's 3.x API that neptune-query 1.14 uses.

Endpoints (paths from neptune_query/generated/neptune_api/api/*):
- GET  /api/backend/v1/authorization/oauth-token        API token -> JWT access token (JSON)
- POST /api/leaderboard/v1/proto/leaderboard/entries/search/   runs table (protobuf)
- POST /api/leaderboard/v1/proto/leaderboard/attributes/query  attribute values (protobuf)
- POST /api/leaderboard/v1/proto/attributes/series/float       metric points (protobuf)
- POST /api/leaderboard/v1/proto/attributes/series             string / histogram / file series (protobuf)
- POST /api/storagebridge/v1/signedUrl                          signed download URLs (JSON)
- GET  /files/<path>                                            file content

The store is plain data built by the tests.  Lineage is honoured as the
service does: lineage FULL adds the parent's points up to the fork step, so a
reader asking for it would get the parent's points inside the fork.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import jwt
from neptune_query.generated.neptune_api.proto.neptune_pb.api.v1.model import (
    attributes_pb2,
    leaderboard_entries_pb2 as lb,
    series_values_pb2 as sv,
)

BACKEND_TYPE = {"float_series": "floatSeries", "string_set": "stringSet", "string_series": "stringSeries",
                "file": "fileRef", "file_series": "fileRefSeries", "histogram_series": "histogramSeries"}


@dataclass
class FakeRun:
    sys_id: str
    custom_run_id: str | None = None
    trashed: bool = False
    # name -> (type, value); datetime values as epoch ms; file values as (path, bytes, mime)
    atoms: dict[str, tuple[str, Any]] = field(default_factory=dict)
    # name -> [(timestamp_ms, step, value, is_preview)]
    metrics: dict[str, list[tuple]] = field(default_factory=dict)
    # name -> (type, [(timestamp_ms, step, value)]); histogram value: (type, edges, values); file: (path, bytes, mime)
    series: dict[str, tuple[str, list[tuple]]] = field(default_factory=dict)
    fork_parent: str | None = None   # sys_id of the parent run
    fork_step: float | None = None


class FakeNeptune:
    def __init__(self, api_key: str = "secret-api-key"):
        self.api_key = api_key
        self.projects: dict[str, list[FakeRun]] = {}
        self.requests: list[tuple[str, str, Any]] = []    # (method, path, json body or None)
        self.fail: dict[str, list[int]] = {}              # exact path -> statuses to answer first
        self.files: dict[str, bytes] = {}
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.url = ""

    # -- life cycle ----------------------------------------------------------------
    def start(self) -> "FakeNeptune":
        handler = type("Handler", (_Handler,), {"fake": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def token(self, api_key: str | None = None) -> str:
        data = {"api_address": self.url, "api_url": self.url, "api_key": api_key or self.api_key}
        return base64.b64encode(json.dumps(data).encode()).decode()

    # -- store helpers ---------------------------------------------------------------------
    def run(self, project: str, sys_id: str) -> FakeRun:
        for run in self.projects.get(project, []):
            if run.sys_id == sys_id:
                return run
        raise KeyError(sys_id)

    def add(self, project: str, run: FakeRun) -> FakeRun:
        self.projects.setdefault(project, []).append(run)
        for _, (typ, value) in run.atoms.items():
            if typ == "file":
                self.files[value[0]] = value[1]
        for _, (typ, points) in run.series.items():
            if typ == "file_series":
                for point in points:
                    self.files[point[2][0]] = point[2][1]
        return run


def _holder(identifier: str) -> tuple[str, str]:
    project, _, sys_id = identifier.rpartition("/")
    return project, sys_id


class _Handler(BaseHTTPRequestHandler):
    fake: FakeNeptune

    def log_message(self, *args) -> None:  # keep test output clean
        pass

    # -- plumbing -----------------------------------------------------------------------
    def _send(self, status: int, body: bytes, content_type: str = "application/json",
              headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, data: Any) -> None:
        self._send(status, json.dumps(data).encode())

    def _proto(self, message) -> None:
        self._send(200, message.SerializeToString(), "application/x-protobuf")

    def _failing(self, path: str) -> bool:
        statuses = self.fake.fail.get(path)
        if statuses:
            status = statuses.pop(0)
            self._send(status, b'{"message": "try later"}', headers={"retry-after": "0"} if status == 429 else None)
            return True
        return False

    def _authorized(self) -> bool:
        if self.headers.get("Authorization", "").startswith("Bearer "):
            return True
        self._json(401, {"message": "unauthorized"})
        return False

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        self.fake.requests.append(("GET", url.path, None))
        if self._failing(url.path):
            return
        if url.path == "/api/backend/v1/authorization/oauth-token":
            if self.headers.get("X-Neptune-Api-Token") != self.fake.token():
                self._json(401, {"message": "bad token"})
                return
            access = jwt.encode({"exp": int(time.time()) + 3600, "azp": "trackport-test", "iss": self.fake.url},
                                "not-a-secret-just-a-test-signing-key-0123456789", algorithm="HS256")
            self._json(200, {"accessToken": access, "refreshToken": "refresh", "username": "tester"})
        elif url.path.startswith("/files/"):
            data = self.fake.files.get(unquote(url.path[len("/files/"):]))
            if data is None:
                self._send(404, b"")
            else:
                self._send(200, data, "application/octet-stream")
        else:
            self._json(404, {"message": f"no route {url.path}"})

    def do_POST(self) -> None:
        url = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        body = json.loads(raw) if raw else {}
        self.fake.requests.append(("POST", url.path, body))
        if self._failing(url.path):
            return
        if not self._authorized():
            return
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        if url.path == "/api/leaderboard/v1/proto/leaderboard/entries/search/":
            self._search(query["projectIdentifier"], body)
        elif url.path == "/api/leaderboard/v1/proto/leaderboard/attributes/query":
            self._attributes(query["projectIdentifier"], body)
        elif url.path == "/api/leaderboard/v1/proto/attributes/series/float":
            self._float_series(body)
        elif url.path == "/api/leaderboard/v1/proto/attributes/series":
            self._series(body)
        elif url.path == "/api/storagebridge/v1/signedUrl":
            files = [{"url": f"{self.fake.url}/files/{f['path']}", "path": f["path"],
                      "project_identifier": f["project_identifier"], "provider": "aws"} for f in body["files"]]
            self._json(200, {"files": files})
        else:
            self._json(404, {"message": f"no route {url.path}"})

    # -- endpoints --------------------------------------------------------------------------
    def _search(self, project: str, body: dict) -> None:
        text = (body.get("query") or {}).get("query", "")
        runs = [r for r in self.fake.projects.get(project, [])
                if not (r.trashed and "`sys/trashed`:bool = false" in text)]
        page = body.get("pagination", {})
        offset, limit = int(page.get("offset", 0)), int(page.get("limit", 100))
        result = lb.ProtoLeaderboardEntriesSearchResultDTO(matching_item_count=len(runs))
        for run in runs[offset:offset + limit]:
            entry = result.entries.add(experiment_id=run.sys_id, type="run")
            names = {f["path"] for f in body.get("attributeFilters", [])}
            for name, value in (("sys/id", run.sys_id), ("sys/custom_run_id", run.custom_run_id)):
                if value is not None and name in names:
                    attr = entry.attributes.add(name=name, type="string")
                    attr.string_properties.value = value
        self._proto(result)

    def _attributes(self, project: str, body: dict) -> None:
        wanted = {_holder(i)[1] for i in body.get("experimentIdsFilter", [])}
        types = {f["attributeType"] for f in body.get("attributeFilter", [])}
        result = attributes_pb2.ProtoQueryAttributesResultDTO()
        for run in self.fake.projects.get(project, []):
            if run.sys_id not in wanted:
                continue
            entry = result.entries.add(experimentId=run.sys_id, experimentShortId=run.sys_id)
            everything = dict(run.atoms)
            everything.setdefault("sys/id", ("string", run.sys_id))
            if run.custom_run_id:
                everything.setdefault("sys/custom_run_id", ("string", run.custom_run_id))
            for name in run.metrics:
                everything[name] = ("float_series", None)
            for name, (typ, _) in run.series.items():
                everything[name] = (typ, None)
            for name, (typ, value) in sorted(everything.items()):
                backend = BACKEND_TYPE.get(typ, typ)
                if types and backend not in types:
                    continue
                attr = entry.attributes.add(name=name, type=backend)
                if typ == "string":
                    attr.string_properties.value = value
                elif typ == "int":
                    attr.int_properties.value = value
                elif typ == "float":
                    attr.float_properties.value = value
                elif typ == "bool":
                    attr.bool_properties.value = value
                elif typ == "datetime":
                    attr.datetime_properties.value = value
                elif typ == "string_set":
                    attr.string_set_properties.value.extend(value)
                elif typ == "file":
                    attr.file_ref_properties.path = value[0]
                    attr.file_ref_properties.sizeBytes = len(value[1])
                    attr.file_ref_properties.mimeType = value[2]
                elif typ == "float_series":
                    attr.float_series_properties.last = 0.0
                elif typ == "string_series":
                    attr.string_series_properties.last = ""
                elif typ == "file_series":
                    attr.file_ref_series_properties.last.path = ""
                elif typ == "histogram_series":
                    attr.histogram_series_properties.last.type = ""
        self._proto(result)

    def _lineage_points(self, project: str, sys_id: str, name: str, full: bool, kind: str) -> list[tuple]:
        run = self.fake.run(project, sys_id)
        own = list(run.metrics.get(name, [])) if kind == "float" else list(run.series.get(name, ("", []))[1])
        if full and run.fork_parent is not None:
            inherited = self._lineage_points(project, run.fork_parent, name, True, kind)
            own = [p for p in inherited if p[1] <= run.fork_step] + own
        return own

    def _float_series(self, body: dict) -> None:
        result = sv.ProtoFloatSeriesValuesResponseDTO()
        limit = int(body.get("perSeriesPointsLimit") or 10_000)
        for request in body["requests"]:
            series = request["series"]
            project, sys_id = _holder(series["holder"]["identifier"])
            points = self._lineage_points(project, sys_id, series["attribute"], series.get("lineage") == "FULL",
                                          "float")
            if not series.get("includePreview"):
                points = [p for p in points if not p[3]]
            points.sort(key=lambda p: p[1], reverse=True)          # the client asks "descending"
            if "afterStep" in request:
                points = [p for p in points if p[1] < request["afterStep"]]
            one = result.series.add(requestId=request["requestId"])
            one.series.total_item_count = len(points)
            for ts, step, value, preview in points[:limit]:
                one.series.values.add(timestamp_millis=ts, step=step, value=value, is_preview=preview,
                                      completion_ratio=0.5 if preview else 1.0)
        self._proto(result)

    def _series(self, body: dict) -> None:
        result = sv.ProtoSeriesValuesResponseDTO()
        for request in body["requests"]:
            series = request["series"]
            project, sys_id = _holder(series["holder"]["identifier"])
            run = self.fake.run(project, sys_id)
            typ = run.series.get(series["attribute"], ("", []))[0]
            points = self._lineage_points(project, sys_id, series["attribute"], series.get("lineage") == "FULL",
                                          "series")
            points.sort(key=lambda p: p[1], reverse=True)
            one = result.series.add(requestId=request["requestId"])
            one.searchAfter.finished = True
            one.searchAfter.token = "end"
            for ts, step, value in points:
                point = one.seriesValues.values.add(timestamp_millis=ts, step=step)
                if typ == "histogram_series":
                    point.object.histogram.type = value[0]
                    point.object.histogram.edges.extend(value[1])
                    point.object.histogram.values.extend(value[2])
                elif typ == "file_series":
                    point.object.fileRef.path = value[0]
                    point.object.fileRef.sizeBytes = len(value[1])
                    point.object.fileRef.mimeType = value[2]
                else:
                    point.object.stringValue = value
        self._proto(result)
