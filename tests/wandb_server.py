"""A local W&B server of ours: the GraphQL and file-download subset `wandb.Api` uses.

wandb 0.31 sends every public-API request through its `wandb-core` sidecar,
so the queries answered here are the ones in `wandb/apis/public/*.py`
(Runs, Run, RunFiles, RunFullHistory, RunHistoryKeys, GetProjects from
`wandb/apis/_generated/operations.py`) and the ones compiled into
`wandb/bin/wandb-core` (Viewer for the login check, ServerFeaturesQuery,
RunParquetHistory and HistoryPage for `scan_history`; see
core/internal/runhistoryreader/{reader,livedata}.go in wandb/wandb).
Payload shapes follow those queries' selections and the pydantic models in
`wandb/apis/_generated/`.

`scan_history` asks `parquetHistory` first: a run's exported steps come as
parquet files (`parquetUrls`, served here) and the steps not yet exported
("live") come page by page from `history(minStep, maxStep, samples)`.
A fixture run sets `parquet_until` to split its history between the two.

The server caps every page (`page_cap`) so that listing runs, projects and
files spans several pages, serves a 429 with `Retry-After` to the
operations counted in `rate_limits` (that many times each), and records
every request.

It also takes the WRITE path of an online `wandb.init` / `run.log` /
`run.save` / `run.finish` (what wandb-core sends, logged from the real SDK
0.31 and the query texts in `wandb/bin/wandb-core`; see
core/internal/runbranch/resume.go and core/internal/filestream/ in wandb/wandb):
- `RunResumeStatus` (does the run exist; its config, summary, line counts and
  history tail for a resume), `UpsertBucket` (create/update a run: name,
  notes, tags, group, job type, the whole config each time);
- `CreateRunFiles` -> an upload URL per file, then `PUT` of the bytes there;
- `POST /files/ENTITY/PROJECT/RUN/file_stream`: JSON chunks
  `{"files": {"wandb-history.jsonl" | "wandb-events.jsonl" | "output.log":
  {"offset": N, "content": [line, ...]}, "wandb-summary.json": {...}},
  "uploaded": [...], "complete": true, "exitcode": 0}`;
- `POST /sdk/otel/...` (the SDK's own telemetry): accepted and ignored.
What arrives is stored in the run (FakeRun) so that the read queries above
serve it back, and each run keeps `write_log`, the order things arrived in.

Artifacts (`FakeArtifact`, put in `server.artifacts` by a test: W&B's state after
`log_artifact` / `use_artifact` / `link_artifact`) are served to the queries of
`wandb/sdk/artifacts/_generated/operations.py` the public API sends: RunOutputArtifacts /
RunInputArtifacts (`run.logged_artifacts()` / `used_artifacts()`), FetchArtifactManifest
(then `GET` of the manifest JSON at its directUrl), GetArtifactMembershipFileUrls (then
`GET` of each file) and FetchLinkedArtifacts (registry memberships).

The artifact WRITE path is taken too (logged from the real SDK 0.31; the query texts are in
`wandb/bin/wandb-core`, the Python SDK's in wandb/sdk/artifacts/_generated/operations.py):
`run.log_artifact` -> ArtifactType (Python), then wandb-core's ArtifactSaver: CreateArtifact
(a version with the same digest in the collection is answered as it is: W&B's dedup),
CreateArtifactManifest (without, then with an upload URL), `PUT` of the manifest JSON,
CreateArtifactFiles (an upload URL per file, no multipart) and `PUT` of each file,
CommitArtifact; `Artifact.wait()` -> ArtifactByID; `run.use_artifact` /
`Api().run().use_artifact` -> UseArtifact (kept in `uses`, the run added to the version's
consumers); `run.link_artifact` -> LinkArtifact (the Python SDK's; answered with the
membership, the server announcing ARTIFACT_MEMBERSHIP_IN_LINK_ARTIFACT_RESPONSE).  What
arrives is a FakeArtifact (the digest and manifest as sent, the files as uploaded), served
back by the read queries above.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import re
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import quote, unquote

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

__all__ = ["FakeArtifact", "FakeRun", "WandbServer", "wandb_server", "fixture_runs"]

_OPERATION = re.compile(r"\b(query|mutation)\s+(\w+)")


@dataclass
class FakeRun:
    """One run as the server holds it (values in W&B's own wire forms)."""

    id: str
    display_name: str
    config: dict[str, Any] = field(default_factory=dict)          # plain values; wrapped on the wire
    summary: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)    # rows with _step/_timestamp
    events: list[dict[str, Any]] = field(default_factory=list)     # system metric rows
    files: dict[str, bytes] = field(default_factory=dict)
    tags: list[str] = field(default_factory=list)
    notes: str | None = None
    group: str | None = None
    job_type: str | None = None
    state: str = "finished"
    created_at: str = "2026-01-02T03:04:05"
    heartbeat_at: str = "2026-01-02T04:05:06"
    system_metrics: dict[str, Any] = field(default_factory=dict)
    commit: str | None = None
    sweep_name: str | None = None
    parquet_until: int | None = None    # steps below this come from a parquet export
    events_max_samples: int = 10_000    # what the server's events(samples:) returns at most
    # written through the SDK's online path
    wandb_config: dict[str, Any] = field(default_factory=dict)    # config `_wandb` (SDK bookkeeping)
    console: list[str] = field(default_factory=list)               # output.log lines
    history_lines_received: int = 0                                # every history line ever posted
    write_log: list[tuple[str, Any]] = field(default_factory=list)  # (what, detail) in arrival order

    @property
    def last_step(self) -> int:
        return max((row["_step"] for row in self.history), default=-1)


@dataclass
class FakeArtifact:
    """One artifact version as the server holds it: its files' bytes, the run that logged
    it, the runs that used it and the registry collections it is linked into."""

    entity: str
    project: str
    name: str                                   # the collection (artifact sequence) name
    type: str
    files: dict[str, bytes]
    producer: str                               # run id of the run that logged it
    version_index: int = 0
    aliases: list[str] = field(default_factory=lambda: ["latest"])
    description: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    tags: list[str] = field(default_factory=list)
    consumers: list[str] = field(default_factory=list)          # run ids of the runs that used it
    links: list[tuple[str, list[str]]] = field(default_factory=list)  # ("ENTITY/PROJECT/COLLECTION", aliases)
    # set when the SDK wrote it (CreateArtifact ... CommitArtifact): what it sent, as sent
    created_id: str | None = None
    sent_digest: str | None = None
    sent_manifest: dict[str, Any] | None = None
    state: str = "COMMITTED"

    def entry_digest(self, path: str) -> str:
        return base64.b64encode(hashlib.md5(self.files[path]).digest()).decode()

    @property
    def digest(self) -> str:
        """W&B's digest of the manifest (wandb/sdk/artifacts/artifact_manifests/artifact_manifest_v1.py)."""
        if self.sent_digest:
            return self.sent_digest
        hasher = hashlib.md5(b"wandb-artifact-manifest-v1\n")
        for path in sorted(self.files):
            hasher.update(f"{path}:{self.entry_digest(path)}\n".encode())
        return hasher.hexdigest()

    @property
    def id(self) -> str:
        return self.created_id or base64.b64encode(f"Artifact:{self.digest}".encode()).decode()

    def manifest(self) -> dict[str, Any]:
        if self.sent_manifest is not None:
            return self.sent_manifest
        return {"version": 1, "storagePolicy": "wandb-storage-policy-v1",
                "storagePolicyConfig": {"storageLayout": "V2"},
                "contents": {p: {"digest": self.entry_digest(p), "size": len(b)} for p, b in sorted(self.files.items())}}


class WandbServer:
    """In-memory W&B: entity -> project -> runs, on 127.0.0.1 and a free port."""

    def __init__(self, api_key: str, entities: dict[str, dict[str, list[FakeRun]]],
                 page_cap: int = 2, rate_limit_once: tuple[str, ...] = (), retry_after: int = 1):
        self.api_key = api_key
        self.entities = entities
        self.page_cap = page_cap
        # operation -> how many more times it gets a 429 (with Retry-After) before being served
        self.rate_limits: dict[str, int] = {op: 1 for op in rate_limit_once}
        self.retry_after = retry_after
        self.requests: list[tuple[str, str, int]] = []    # (method, operation or path, status)
        self.artifacts: list[FakeArtifact] = []
        self.features: list[str] = ["ARTIFACT_MEMBERSHIP_IN_LINK_ARTIFACT_RESPONSE"]
        self.uses: list[dict] = []     # every UseArtifact input, in arrival order
        self.rejected_auth = 0
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="wandb-server", daemon=True)

    # -- lifecycle ---------------------------------------------------------------
    def start(self) -> "WandbServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def operations(self, status: int | None = None) -> list[str]:
        with self._lock:
            return [op for _m, op, st in self.requests if status is None or st == status]

    def _record(self, method: str, what: str, status: int) -> None:
        with self._lock:
            self.requests.append((method, what, status))

    def _take_rate_limit(self, operation: str) -> bool:
        with self._lock:
            left = self.rate_limits.get(operation, 0)
            if left > 0:
                self.rate_limits[operation] = left - 1
                return True
            return False

    # -- lookups -------------------------------------------------------------------
    def _project(self, entity: str, project: str) -> list[FakeRun] | None:
        return self.entities.get(entity, {}).get(project)

    def _run(self, variables: dict) -> FakeRun | None:
        runs = self._project(variables.get("entity", ""), variables.get("project", "")) or []
        name = variables.get("name") or variables.get("run") or variables.get("runName")
        return next((r for r in runs if r.id == name), None)

    def file_url(self, entity: str, project: str, run: FakeRun, name: str) -> str:
        return f"{self.url}/files/{quote(entity)}/{quote(project)}/{quote(run.id)}/{quote(name)}"

    def parquet_url(self, entity: str, project: str, run: FakeRun) -> str:
        return f"{self.url}/history/{quote(entity)}/{quote(project)}/{quote(run.id)}.parquet"

    # -- GraphQL -------------------------------------------------------------------
    def graphql(self, operation: str, variables: dict) -> dict:
        handler = getattr(self, f"_op_{operation}", None)
        if handler is None:
            raise KeyError(operation)
        return handler(variables)

    def _op_Viewer(self, v: dict) -> dict:
        entity = next(iter(self.entities), "entity")
        return {"viewer": {"id": "VXNlcjox", "entity": entity, "username": entity, "email": None,
                           "flags": "{}", "teams": {"edges": [{"node": {"name": e}} for e in self.entities]}}}

    def _op_GetDefaultEntity(self, v: dict) -> dict:
        return {"viewer": {"id": "VXNlcjox", "entity": next(iter(self.entities), "entity")}}

    def _op_ServerFeaturesQuery(self, v: dict) -> dict:
        # ARTIFACT_MEMBERSHIP_IN_LINK_ARTIFACT_RESPONSE: LinkArtifact answers with the new
        # membership (wandb/sdk/artifacts/artifact.py:2583), as current W&B servers do
        return {"serverInfo": {"features": [{"name": name, "isEnabled": True} for name in self.features]}}

    def _page(self, items: list, cursor: str | None, first: int | None) -> tuple[list, int, bool]:
        start = int(cursor) if cursor else 0
        size = min(first or self.page_cap, self.page_cap)
        chunk = items[start:start + size]
        end = start + len(chunk)
        return chunk, end, end < len(items)

    def _op_GetProjects(self, v: dict) -> dict:
        projects = sorted(self.entities.get(v.get("entity") or "", {}))
        chunk, end, more = self._page(projects, v.get("cursor"), v.get("perPage"))
        edges = [{"node": {"__typename": "Project", "id": base64.b64encode(f"Project:{name}".encode()).decode(),
                           "name": name, "entityName": v["entity"], "createdAt": "2026-01-01T00:00:00",
                           "isBenchmark": False, "user": None}} for name in chunk]
        return {"models": {"pageInfo": {"__typename": "PageInfo", "endCursor": str(end), "hasNextPage": more},
                           "edges": edges}}

    def _run_node(self, entity: str, project: str, run: FakeRun, full: bool) -> dict:
        node = {
            "projectId": "1", "id": base64.b64encode(f"Run:{run.id}".encode()).decode(),
            "tags": list(run.tags), "name": run.id, "displayName": run.display_name,
            "sweepName": run.sweep_name, "state": run.state, "group": run.group, "jobType": run.job_type,
            "commit": run.commit, "readOnly": False, "createdAt": run.created_at,
            "heartbeatAt": run.heartbeat_at, "description": run.notes, "notes": run.notes,
            "historyLineCount": len(run.history),
            "user": {"name": "Test User", "username": entity},
        }
        if full:
            wrapped = {k: {"value": val, "desc": None} for k, val in run.config.items()}
            # config `_wandb` as the SDK sent it (its metric definitions `m`, ...)
            wrapped["_wandb"] = {"value": {"cli_version": "0.31.0", "python_version": "3.11.7",
                                           **(run.wandb_config or {})}, "desc": None}
            node.update({
                "config": json.dumps(wrapped),
                "summaryMetrics": json.dumps(run.summary),
                "systemMetrics": json.dumps(run.system_metrics),
                "historyKeys": self._history_keys(run),
            })
        return node

    def _history_keys(self, run: FakeRun) -> dict:
        keys: dict[str, Any] = {}
        for row in run.history:
            for key in row:
                keys.setdefault(key, {"typeCounts": [{"type": "number", "count": 0}]})
                keys[key]["typeCounts"][0]["count"] += 1
        return {"lastStep": run.last_step, "keys": keys}

    def _op_Runs(self, v: dict) -> dict:
        runs = self._project(v["entity"], v["project"])
        if runs is None:
            return {"project": None}
        chunk, end, more = self._page(runs, v.get("cursor"), v.get("perPage"))
        full = "RunFragment on Run" in self._current_query
        edges = [{"node": self._run_node(v["entity"], v["project"], r, full), "cursor": str(i + 1)}
                 for i, r in enumerate(chunk, start=end - len(chunk))]
        return {"project": {"internalId": "1", "runCount": len(runs), "readOnly": False,
                            "runs": {"edges": edges, "pageInfo": {"endCursor": str(end), "hasNextPage": more}}}}

    def _op_Run(self, v: dict) -> dict:
        run = self._run(v)
        if run is None:
            return {"project": None if self._project(v["entity"], v["project"]) is None else {"run": None}}
        full = "RunFragment on Run" in self._current_query
        return {"project": {"run": self._run_node(v["entity"], v["project"], run, full)}}

    def _op_RunHistoryKeys(self, v: dict) -> dict:
        run = self._run(v)
        return {"project": {"run": None if run is None else {"historyKeys": self._history_keys(run)}}}

    def _op_RunParquetHistory(self, v: dict) -> dict:
        run = self._run(v)
        if run is None:
            return {"project": {"run": None}}
        urls, live = [], run.history
        if run.parquet_until is not None:
            urls = [self.parquet_url(v["entity"], v["project"], run)]
            live = [row for row in run.history if row["_step"] >= run.parquet_until]
        live_keys = v.get("liveKeys") or ["_step"]
        live_data = [{k: row[k] for k in live_keys if k in row} for row in live]
        return {"project": {"run": {"parquetHistory": {"parquetUrls": urls, "liveData": live_data}}}}

    def _op_HistoryPage(self, v: dict) -> dict:
        run = self._run(v)
        if run is None:
            return {"project": {"run": None}}
        lo, hi, samples = int(v["minStep"]), int(v["maxStep"]), int(v["pageSize"])
        low_bound = max(lo, run.parquet_until or 0)
        rows = [row for row in run.history if low_bound <= row["_step"] < hi][:samples]
        return {"project": {"run": {"history": [json.dumps(row) for row in rows]}}}

    def _op_RunFullHistory(self, v: dict) -> dict:
        run = self._run(v)
        if run is None:
            return {"project": {"run": None}}
        samples = min(int(v.get("samples") or 500), run.events_max_samples)
        if "events(" in self._current_query:
            rows = _sample(run.events, samples)
            return {"project": {"run": {"events": [json.dumps(r) for r in rows]}}}
        rows = _sample(run.history, samples)
        return {"project": {"run": {"history": [json.dumps(r) for r in rows]}}}

    def _op_RunFiles(self, v: dict) -> dict:
        run = self._run(v)
        if run is None:
            return {"project": None}
        names = sorted(run.files)
        wanted = v.get("fileNames") or []
        if wanted:
            names = [n for n in names if n in wanted]
        chunk, end, more = self._page(names, v.get("fileCursor"), v.get("fileLimit"))
        edges = []
        for i, name in enumerate(chunk, start=end - len(chunk)):
            url = self.file_url(v["entity"], v["project"], run, name)
            edges.append({"node": {"id": base64.b64encode(f"File:{run.id}/{name}".encode()).decode(),
                                   "name": name, "url": url, "directUrl": url,
                                   "sizeBytes": len(run.files[name]), "mimetype": "application/octet-stream",
                                   "updatedAt": run.heartbeat_at, "md5": base64.b64encode(
                                       __import__("hashlib").md5(run.files[name]).digest()).decode()},
                          "cursor": str(i + 1)})
        return {"project": {"internalId": "1", "run": {
            "fileCount": len(run.files),
            "files": {"edges": edges, "pageInfo": {"endCursor": str(end), "hasNextPage": more}}}}}

    # -- artifacts (wandb/sdk/artifacts/_generated/operations.py) --------------------------
    def _artifact_by_id(self, artifact_id: str) -> FakeArtifact | None:
        return next((a for a in self.artifacts if a.id == artifact_id), None)

    def artifact_url(self, art: FakeArtifact, what: str) -> str:
        return f"{self.url}/artifact/{quote(art.id, safe='')}/{quote(what)}"

    @staticmethod
    def _project_info(entity: str, project: str) -> dict:
        return {"id": base64.b64encode(f"Project:{project}".encode()).decode(), "internalId": "1",
                "name": project, "entity": {"name": entity}}

    def _artifact_node(self, art: FakeArtifact) -> dict:
        """ArtifactFragment: the version, its collection and its aliases (its own collection's
        and those of the registry collections it is linked into)."""
        own = {"__typename": "ArtifactSequence", "name": art.name,
               "project": self._project_info(art.entity, art.project)}
        aliases = [{"__typename": "ArtifactAlias", "id": f"{art.id}:{a}", "alias": a, "artifactCollection": own}
                   for a in art.aliases]
        return {"__typename": "Artifact", "id": art.id, "artifactSequence": own,
                "versionIndex": art.version_index, "artifactType": {"name": art.type},
                "description": art.description, "metadata": json.dumps(art.metadata),
                "ttlDurationSeconds": -2, "ttlIsInherited": True,   # -2: no TTL (artifact.py, _ttl_duration_seconds_to_gql)
                "tags": [{"__typename": "Tag", "id": f"tag:{t}", "name": t} for t in art.tags],
                "historyStep": None, "state": "COMMITTED", "size": sum(len(b) for b in art.files.values()),
                "digest": art.digest, "digestAlgorithm": "MANIFEST_MD5", "commitHash": art.digest[:12],
                "fileCount": len(art.files), "createdAt": "2026-01-02T03:04:05", "updatedAt": "2026-01-02T03:04:05",
                "aliases": aliases}

    def _run_artifacts(self, v: dict, used: bool) -> dict:
        run = self._run(v)
        if run is None:
            return {"project": {"run": None}}
        mine = [a for a in self.artifacts if a.entity == v["entity"] and
                (run.id in a.consumers if used else (a.project == v["project"] and a.producer == run.id))]
        chunk, end, more = self._page(mine, v.get("cursor"), v.get("perPage"))
        return {"project": {"run": {"artifacts": {
            "totalCount": len(mine), "pageInfo": {"__typename": "PageInfo", "endCursor": str(end), "hasNextPage": more},
            "edges": [{"node": self._artifact_node(a)} for a in chunk]}}}}

    def _op_RunOutputArtifacts(self, v: dict) -> dict:
        return self._run_artifacts(v, used=False)

    def _op_RunInputArtifacts(self, v: dict) -> dict:
        return self._run_artifacts(v, used=True)

    def _op_ArtifactByID(self, v: dict) -> dict:
        art = self._artifact_by_id(v["id"])
        return {"artifact": None if art is None else self._artifact_node(art)}

    def _op_FetchArtifactManifest(self, v: dict) -> dict:
        art = self._artifact_by_id(v["id"])
        return {"artifact": None if art is None else {
            "currentManifest": {"file": {"directUrl": self.artifact_url(art, "manifest")}}}}

    def _op_GetArtifactMembershipFileUrls(self, v: dict) -> dict:
        art = next((a for a in self.artifacts if (a.entity, a.project, a.name) == (v["entity"], v["project"],
                                                                                 v["collection"])
                    and v["alias"] in (*a.aliases, f"v{a.version_index}")), None)
        if art is None:
            return {"project": None}
        chunk, end, more = self._page(sorted(art.files), v.get("cursor"), v.get("perPage"))
        return {"project": {"artifactCollection": {"__typename": "ArtifactSequence", "artifactMembership": {
            "files": {"pageInfo": {"__typename": "PageInfo", "endCursor": str(end), "hasNextPage": more},
                      "edges": [{"node": {"__typename": "File", "name": name,
                                          "directUrl": self.artifact_url(art, "files/" + name)}}
                                for name in chunk]}}}}}

    def _op_FetchLinkedArtifacts(self, v: dict) -> dict:
        art = self._artifact_by_id(v["artifactID"])
        if art is None:
            return {"artifact": None}
        own = {"__typename": "ArtifactSequence", "name": art.name,
               "project": self._project_info(art.entity, art.project)}
        nodes = [{"versionIndex": art.version_index, "createdAt": "2026-01-02T03:04:05", "artifactCollection": own,
                  "aliases": [{"__typename": "ArtifactAlias", "id": f"{art.id}:{a}", "alias": a} for a in art.aliases]}]
        for n, (target, aliases) in enumerate(art.links):
            entity, project, collection = target.split("/")
            nodes.append({"versionIndex": n, "createdAt": "2026-01-02T03:04:05",
                          "artifactCollection": {"__typename": "ArtifactPortfolio", "name": collection,
                                                 "project": self._project_info(entity, project)},
                          "aliases": [{"__typename": "ArtifactAlias", "id": f"{target}:{a}", "alias": a}
                                      for a in aliases]})
        return {"artifact": {"artifactMemberships": {"edges": [{"node": node} for node in nodes]}}}

    def artifact_download(self, artifact_id: str, what: str) -> bytes | None:
        art = self._artifact_by_id(artifact_id)
        if art is None:
            return None
        if what == "manifest":
            return json.dumps(art.manifest()).encode()
        return art.files.get(what.removeprefix("files/")) if what.startswith("files/") else None

    # -- the SDK's write path ------------------------------------------------------------
    # Artifacts, as wandb-core's ArtifactSaver sends them (query texts in wandb/bin/wandb-core):
    # CreateArtifact -> CreateArtifactManifest (+ PUT of the manifest JSON) -> CreateArtifactFiles
    # (+ PUT of each file) -> CommitArtifact; `run.use_artifact` sends UseArtifact and
    # `run.link_artifact` LinkArtifact.
    def artifact_upload_url(self, art: FakeArtifact, what: str) -> str:
        return f"{self.url}/artifact-upload/{quote(art.id, safe='')}/{quote(what)}"

    def _op_ArtifactType(self, v: dict) -> dict:
        name = (v.get("name") or "").split(":")[0]
        art = next((a for a in self.artifacts if (a.entity, a.project, a.name) ==
                    (v.get("entity"), v.get("project"), name)), None)
        return {"project": {"artifact": None if art is None else {"artifactType": {"name": art.type}}}}

    def _op_CreateArtifact(self, v: dict) -> dict:
        i = v["input"]
        entity, project, name = i["entityName"], i["projectName"], i["artifactCollectionName"]
        aliases = [a["alias"] for a in i.get("aliases") or []]
        with self._lock:
            same = [a for a in self.artifacts if (a.entity, a.project, a.name) == (entity, project, name)]
            art = next((a for a in same if a.digest == i["digest"]), None)
            if art is None:
                metadata = json.loads(i["metadata"]) if isinstance(i.get("metadata"), str) else (i.get("metadata") or {})
                art = FakeArtifact(entity, project, name, i["artifactTypeName"], {}, i.get("runName") or "",
                                   version_index=len(same), aliases=[], description=i.get("description"),
                                   metadata=metadata, tags=[t["tagName"] for t in i.get("tags") or []],
                                   sent_digest=i["digest"], state="PENDING",
                                   created_id=base64.b64encode(f"Artifact:{entity}/{project}/{name}:"
                                                               f"{i['digest']}".encode()).decode())
                self.artifacts.append(art)
            for alias in aliases:          # an alias names one version of a collection
                for other in same:
                    if other is not art and alias in other.aliases:
                        other.aliases.remove(alias)
                if alias not in art.aliases:
                    art.aliases.append(alias)
            latest = max((a for a in self.artifacts if (a.entity, a.project, a.name) == (entity, project, name)),
                         key=lambda a: a.version_index)
        return {"createArtifact": {"artifact": {"id": art.id, "state": art.state,
                                                "artifactSequence": {"latestArtifact": {"id": latest.id}}}}}

    def _manifest_payload(self, art: FakeArtifact, key: str) -> dict:
        return {key: {"artifactManifest": {"id": f"manifest:{art.id}", "file": {
            "id": f"file:{art.id}", "uploadUrl": self.artifact_upload_url(art, "__manifest__"), "uploadHeaders": []}}}}

    def _op_CreateArtifactManifest(self, v: dict) -> dict:
        art = self._artifact_by_id(v["artifactID"])
        if art is None:
            raise KeyError("CreateArtifactManifest of an unknown artifact")
        return self._manifest_payload(art, "createArtifactManifest")

    def _op_UpdateArtifactManifest(self, v: dict) -> dict:
        art = self._artifact_by_id(v["artifactManifestID"].removeprefix("manifest:"))
        if art is None:
            raise KeyError("UpdateArtifactManifest of an unknown manifest")
        return self._manifest_payload(art, "updateArtifactManifest")

    def _op_CreateArtifactFiles(self, v: dict) -> dict:
        edges = []
        for f in v["input"]["artifactFiles"]:
            art = self._artifact_by_id(f["artifactID"])
            if art is None:
                raise KeyError("CreateArtifactFiles of an unknown artifact")
            edges.append({"node": {"storagePath": f"{art.id}/{f['name']}",
                                   "uploadUrl": self.artifact_upload_url(art, "files/" + f["name"]),
                                   "uploadHeaders": [], "uploadMultipartUrls": None, "artifact": {"id": art.id}}})
        return {"createArtifactFiles": {"files": {"edges": edges}}}

    def receive_artifact_upload(self, artifact_id: str, what: str, data: bytes) -> bool:
        with self._lock:
            art = self._artifact_by_id(artifact_id)
            if art is None or art.state != "PENDING":
                return False
            if what == "__manifest__":
                art.sent_manifest = json.loads(data)
            elif what.startswith("files/"):
                art.files[what[len("files/"):]] = data
            else:
                return False
            return True

    def _op_CommitArtifact(self, v: dict) -> dict:
        art = self._artifact_by_id(v["artifactID"])
        if art is None:
            raise KeyError("CommitArtifact of an unknown artifact")
        art.state = "COMMITTED"
        return {"commitArtifact": {"artifact": {"id": art.id, "digest": art.digest}}}

    def _op_UseArtifact(self, v: dict) -> dict:
        i = v.get("input") or v
        art = self._artifact_by_id(i["artifactID"])
        if art is None:
            raise KeyError("UseArtifact of an unknown artifact")
        self.uses.append(dict(i))
        with self._lock:
            if i["runName"] not in art.consumers:
                art.consumers.append(i["runName"])
        return {"useArtifact": {"artifact": {"id": art.id}}}

    def _op_LinkArtifact(self, v: dict) -> dict:
        i = v.get("input") or v
        art = self._artifact_by_id(i.get("artifactID") or i.get("artifactId") or "")
        if art is None:
            raise KeyError("LinkArtifact of an unknown artifact")
        target = f"{i['entityName']}/{i['projectName']}/{i['artifactPortfolioName']}"
        aliases = [a["alias"] for a in i.get("aliases") or []]
        with self._lock:
            art.links = [(t, a) for t, a in art.links if t != target] + [(target, aliases)]
            index = [t for t, _a in art.links].index(target)
        entity, project, portfolio = target.split("/")
        membership = {"__typename": "ArtifactCollectionMembership", "id": f"membership:{target}:{art.id}",
                      "versionIndex": index, "createdAt": "2026-01-02T03:04:05",
                      "aliases": [{"__typename": "ArtifactAlias", "id": f"{target}:{a}", "alias": a} for a in aliases],
                      "artifactCollection": {"__typename": "ArtifactPortfolio", "name": portfolio,
                                             "project": self._project_info(entity, project)},
                      "artifact": self._artifact_node(art)}
        # the Python SDK's LinkArtifact (wandb/sdk/artifacts/_generated/operations.py) names it `result`
        return {"result": {"versionIndex": index, "artifactMembership": membership}}

    def upload_url(self, entity: str, project: str, run_id: str, name: str) -> str:
        return f"{self.url}/upload/{quote(entity)}/{quote(project)}/{quote(run_id)}/{quote(name)}"

    def _op_RunResumeStatus(self, v: dict) -> dict:
        entity, project = v.get("entity") or next(iter(self.entities), "entity"), v.get("project") or ""
        run = self._run({"entity": entity, "project": project, "name": v.get("name")})
        bucket = None
        if run is not None:
            wrapped = {k: {"value": val} for k, val in run.config.items()}
            wrapped["_wandb"] = {"value": run.wandb_config}
            bucket = {
                "id": base64.b64encode(f"Run:{run.id}".encode()).decode(), "name": run.id,
                "summaryMetrics": json.dumps(run.summary), "displayName": run.display_name,
                "logLineCount": len(run.console), "historyLineCount": len(run.history),
                "eventsLineCount": len(run.events),
                "historyTail": json.dumps([json.dumps(r) for r in run.history[-10:]]),
                "eventsTail": json.dumps([json.dumps(r) for r in run.events[-10:]]),
                "config": json.dumps(wrapped), "tags": list(run.tags), "notes": run.notes,
                # wandb-core treats a run without `t` in it as not started (runbranch/resume.go runExists)
                "wandbConfig": json.dumps({"t": run.wandb_config.get("t", {})}),
            }
        return {"model": {"id": "UHJvamVjdDox", "name": project,
                          "entity": {"id": "RW50aXR5OjE=", "name": entity}, "bucket": bucket}}

    def _by_storage_id(self, storage_id: str) -> tuple[str, str, str] | None:
        """(entity, project, run id) of a run's GraphQL id (`Run.update()` and its summary
        write name the run by that id only; wandb/apis/public/summary.py HTTPSummary._write)."""
        try:
            run_id = base64.b64decode(storage_id).decode().removeprefix("Run:")
        except ValueError:
            return None
        for entity, projects in self.entities.items():
            for project, runs in projects.items():
                if any(r.id == run_id for r in runs):
                    return entity, project, run_id
        return None

    def _op_UpsertBucket(self, v: dict) -> dict:
        if not v.get("name") and v.get("id"):
            found = self._by_storage_id(v["id"])
            if found is None:
                raise KeyError("UpsertBucket of an unknown run id")
            v = {**v, "entity": found[0], "project": found[1], "name": found[2]}
        entity = v.get("entity") or next(iter(self.entities), "entity")
        project = v.get("project") or "uncategorized"
        with self._lock:
            runs = self.entities.setdefault(entity, {}).setdefault(project, [])
            run = next((r for r in runs if r.id == v["name"]), None)
            inserted = run is None
            if inserted:
                run = FakeRun(id=v["name"], display_name=v.get("displayName") or v["name"], state="running",
                              created_at=_now_iso(), heartbeat_at=_now_iso())
                runs.append(run)
            for attr, var in (("display_name", "displayName"), ("group", "groupName"), ("job_type", "jobType"),
                              ("commit", "commit"), ("state", "state")):
                if v.get(var) is not None:
                    setattr(run, attr, v[var])
            if v.get("notes") is not None or v.get("description") is not None:
                run.notes = v.get("notes") if v.get("notes") is not None else v.get("description")
            if v.get("tags") is not None:
                run.tags = list(v["tags"])
            if v.get("config") is not None:
                config = {k: (val.get("value") if isinstance(val, dict) else val)
                          for k, val in json.loads(v["config"]).items()}
                run.wandb_config = config.pop("_wandb", None) or run.wandb_config
                run.config = config
            if v.get("summaryMetrics") is not None:
                run.summary = json.loads(v["summaryMetrics"])
            run.write_log.append(("upsert", json.loads(json.dumps(run.config))))
            wrapped = json.dumps({k: {"value": val} for k, val in run.config.items()})
        return {"upsertBucket": {"inserted": inserted, "bucket": {
            "id": base64.b64encode(f"Run:{run.id}".encode()).decode(), "name": run.id,
            "displayName": run.display_name, "description": run.notes, "config": wrapped, "sweepName": None,
            "historyLineCount": len(run.history),
            "project": {"id": "UHJvamVjdDox", "name": project, "entity": {"id": "RW50aXR5OjE=", "name": entity}}}}}

    def _op_CreateRunFiles(self, v: dict) -> dict:
        return {"createRunFiles": {
            "runID": base64.b64encode(f"Run:{v['run']}".encode()).decode(), "uploadHeaders": [],
            "files": [{"name": name, "uploadUrl": self.upload_url(v["entity"], v["project"], v["run"], name)}
                      for name in v["files"]]}}

    def _write_run(self, entity: str, project: str, run_id: str) -> FakeRun | None:
        return self._run({"entity": entity, "project": project, "name": run_id})

    def receive_upload(self, entity: str, project: str, run_id: str, name: str, data: bytes) -> bool:
        with self._lock:
            run = self._write_run(entity, project, run_id)
            if run is None:
                return False
            run.files[name] = data
            run.write_log.append(("file", name))
            return True

    def receive_file_stream(self, entity: str, project: str, run_id: str, body: dict) -> bool:
        """Apply one file_stream chunk (core/internal/filestream/filestreamrequest.go)."""
        with self._lock:
            run = self._write_run(entity, project, run_id)
            if run is None:
                return False
            for name, chunk in (body.get("files") or {}).items():
                offset, lines = int(chunk["offset"]), list(chunk["content"])
                if name == "wandb-history.jsonl":
                    run.history[offset:offset + len(lines)] = [json.loads(line) for line in lines]
                    run.history_lines_received += len(lines)
                    run.write_log.append(("history", len(lines)))
                elif name == "wandb-events.jsonl":
                    run.events[offset:offset + len(lines)] = [json.loads(line) for line in lines]
                elif name == "wandb-summary.json":
                    run.summary = json.loads(lines[-1])
                    run.write_log.append(("summary", run.summary))
                elif name == "output.log":
                    run.console[offset:offset + len(lines)] = lines
                    run.files["output.log"] = "".join(line + "\n" for line in run.console).encode()
            run.heartbeat_at = _now_iso()
            if body.get("complete"):
                code = body.get("exitcode")
                run.state = "finished" if code == 0 else "failed"
                run.write_log.append(("complete", code))
            return True

    # -- HTTP -----------------------------------------------------------------------
    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep pytest output clean
                pass

            def _send(self, status: int, body: bytes, ctype: str = "application/json",
                      headers: dict[str, str] | None = None) -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                for k, val in (headers or {}).items():
                    self.send_header(k, val)
                self.end_headers()
                self.wfile.write(body)

            def _authorized(self) -> bool:
                header = self.headers.get("Authorization", "")
                if not header.startswith("Basic "):
                    return False
                try:
                    user_key = base64.b64decode(header[6:]).decode()
                except ValueError:
                    return False
                return user_key.partition(":")[2] == server.api_key

            def _body(self) -> bytes:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                if self.headers.get("Content-Encoding") == "gzip":
                    raw = gzip.decompress(raw)
                return raw

            def _write_path(self, prefix: str) -> list[str] | None:
                parts = [unquote(p) for p in self.path.split("?")[0].split("/") if p]
                return parts[1:] if parts and parts[0] == prefix else None

            def do_PUT(self):
                raw = self._body()
                parts = self._write_path("artifact-upload")
                if parts and len(parts) >= 2 and server.receive_artifact_upload(parts[0], "/".join(parts[1:]), raw):
                    server._record("PUT", f"artifact-upload:{'/'.join(parts[1:])}", 200)
                    return self._send(200, b"", "text/plain")
                parts = self._write_path("upload")
                if parts and len(parts) >= 4 and server.receive_upload(*parts[:3], "/".join(parts[3:]), raw):
                    server._record("PUT", f"upload:{'/'.join(parts[3:])}", 200)
                    return self._send(200, b"", "text/plain")
                server._record("PUT", self.path, 404)
                return self._send(404, b"not found", "text/plain")

            def do_POST(self):
                raw = self._body()
                if self.path.startswith("/sdk/otel/"):
                    return self._send(200, b"", "application/x-protobuf")    # the SDK's telemetry
                parts = self._write_path("files")
                if parts and len(parts) == 4 and parts[3] == "file_stream":
                    if not self._authorized():
                        server.rejected_auth += 1
                        server._record("POST", "file_stream", 401)
                        return self._send(401, b'{"error":"unauthorized"}')
                    if server.receive_file_stream(*parts[:3], json.loads(raw or b"{}")):
                        server._record("POST", "file_stream", 200)
                        return self._send(200, b'{"exitcode": null, "limits": {}}')
                    server._record("POST", "file_stream", 404)
                    return self._send(404, b'{"error":"run not found"}')
                if self.path.rstrip("/") != "/graphql":
                    server._record("POST", self.path, 404)
                    return self._send(404, b'{"errors":[{"message":"not found"}]}')
                try:
                    body = json.loads(raw or b"{}")
                except ValueError:
                    return self._send(400, b'{"errors":[{"message":"bad json"}]}')
                query = body.get("query") or ""
                match = _OPERATION.search(query)
                operation = body.get("operationName") or (match.group(2) if match else "anonymous")
                if not self._authorized():
                    server.rejected_auth += 1
                    server._record("POST", operation, 401)
                    return self._send(401, b'{"errors":[{"message":"unauthorized"}]}')
                if server._take_rate_limit(operation):
                    server._record("POST", operation, 429)
                    return self._send(429, b'{"errors":[{"message":"rate limit exceeded"}]}',
                                      headers={"Retry-After": str(server.retry_after)})
                variables = body.get("variables") or {}
                if isinstance(variables, str):
                    variables = json.loads(variables or "{}")
                server._local.query = query
                try:
                    data = server.graphql(operation, variables)
                except KeyError:
                    server._record("POST", operation, 400)
                    msg = json.dumps({"errors": [{"message": f"operation {operation} not served by the test server"}]})
                    return self._send(400, msg.encode())
                server._record("POST", operation, 200)
                return self._send(200, json.dumps({"data": data}).encode())

            def do_GET(self):
                parts = [unquote(p) for p in self.path.split("?")[0].split("/") if p]
                if len(parts) >= 5 and parts[0] == "files":
                    entity, project, run_id = parts[1:4]
                    name = "/".join(parts[4:])
                    run = server._run({"entity": entity, "project": project, "name": run_id})
                    if run is not None and name in run.files:
                        server._record("GET", f"file:{name}", 200)
                        return self._send(200, run.files[name], "application/octet-stream")
                if len(parts) >= 3 and parts[0] == "artifact":
                    data = server.artifact_download(parts[1], "/".join(parts[2:]))
                    if data is not None:
                        server._record("GET", f"artifact:{'/'.join(parts[2:])}", 200)
                        return self._send(200, data, "application/octet-stream")
                if len(parts) == 4 and parts[0] == "history" and parts[3].endswith(".parquet"):
                    run = server._run({"entity": parts[1], "project": parts[2], "name": parts[3][:-8]})
                    if run is not None and run.parquet_until is not None:
                        server._record("GET", f"parquet:{run.id}", 200)
                        return self._send(200, _history_parquet(run), "application/octet-stream")
                server._record("GET", self.path, 404)
                return self._send(404, b"not found", "text/plain")

        return Handler

    _local = threading.local()

    @property
    def _current_query(self) -> str:
        return getattr(self._local, "query", "")


def _now_iso() -> str:
    return datetime.now(timezone.utc).replace(tzinfo=None).isoformat(timespec="seconds")


def _sample(rows: list, samples: int) -> list:
    if len(rows) <= samples:
        return list(rows)
    step = len(rows) / samples
    return [rows[int(i * step)] for i in range(samples)]


def _history_parquet(run: FakeRun) -> bytes:
    """The run's exported steps as a parquet file: one column per key, nulls where not logged."""
    rows = [row for row in run.history if row["_step"] < run.parquet_until]
    keys = sorted({k for row in rows for k in row})
    columns = {}
    for key in keys:
        values = [row.get(key) for row in rows]
        sample = next((x for x in values if x is not None), None)
        if key == "_step":
            columns[key] = pa.array(values, pa.int64())
        elif isinstance(sample, (dict, list)):
            columns[key] = pa.array([None if x is None else json.dumps(x) for x in values], pa.string())
        elif isinstance(sample, str):
            columns[key] = pa.array(values, pa.string())
        else:
            columns[key] = pa.array([None if x is None else float(x) for x in values], pa.float64())
    out = io.BytesIO()
    pq.write_table(pa.table(columns), out)
    return out.getvalue()


# -- the fixture description -------------------------------------------------------------
PNG = (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x02\x00\x00\x00\x90wS\xde"
       b"\x00\x00\x00\x0cIDATx\x9cc\xf8\xcf\xc0\x00\x00\x03\x01\x01\x00\xc9\xfe\x92\xef\x00\x00\x00\x00IEND\xaeB`\x82")
T0 = 1_767_323_045.0   # 2026-01-02T03:04:05Z


def fixture_runs() -> dict[str, dict[str, list[FakeRun]]]:
    """Projects of `entity`: a long run and a small one with media, a third run elsewhere, an empty one."""
    long_history = []
    for step in range(0, 2500):
        row = {"_step": step, "_timestamp": T0 + step * 0.5, "_runtime": step * 0.5,
               "train/loss": 1.0 / (step + 1)}
        if step % 10 == 0:
            row["val/acc"] = step / 2500
        long_history.append(row)
    long_run = FakeRun(
        id="longrun1", display_name="long-run",
        config={"lr": 0.001, "epochs": 30, "use_amp": True, "optimizer": {"name": "adam", "betas": [0.9, 0.999]},
                "model": {"depth": 12, "act": "gelu"}, "seed": None},
        summary={"train/loss": 1.0 / 2500, "best_epoch": 27, "_step": 2499, "_runtime": 1249.5,
                 "_timestamp": T0 + 2499 * 0.5, "_wandb": {"runtime": 1250}},
        history=long_history,
        events=[{"system.cpu": 10.0 + i, "system.memory_percent": 40.0 + i / 10, "system.gpu.0.temp": 60 + i % 5,
                 "_timestamp": T0 + i * 15.0, "_runtime": i * 15.0, "_wandb": True} for i in range(84)],
        files={"output.log": "epoch 1\nepoch 2\nloss=0.5 ünïcode\n".encode(),
               "requirements.txt": b"torch==2.5.0\nnumpy==2.1.0\n",
               "code/x.py": b"print('hello')\n",
               "model.ckpt": bytes(range(256)) * 40,
               "config.yaml": b"lr:\n  value: 0.001\n",
               "wandb-metadata.json": b'{"os": "Linux"}'},
        tags=["baseline", "long"], notes="the long one", group="sweep-a", job_type="train",
        parquet_until=1500,
    )
    media_history = []
    for i, step in enumerate((0, 3, 7, 20)):
        row = {"_step": step, "_timestamp": T0 + 100 + i, "_runtime": float(i), "loss": 0.5 - i * 0.1,
               "note": f"text {i}"}
        if step == 7:
            row["samples"] = {"_type": "image-file", "path": "media/images/samples_7_abc.png",
                              "sha256": "x", "size": len(PNG), "format": "png", "width": 1, "height": 1}
            row["weights"] = {"_type": "histogram", "values": [1, 2, 3], "bins": [0.0, 0.5, 1.0, 1.5]}
        media_history.append(row)
    media_run = FakeRun(
        id="media002", display_name="media-run",
        config={"batch": 32, "name": "ünïcode ✓", "nested": {"deep": {"x": 1.5}}},
        summary={"loss": 0.2, "samples": media_history[2]["samples"], "_step": 20},
        history=media_history,
        events=[{"system.cpu": 5.0, "_timestamp": T0 + 100, "_runtime": 0.0}],
        files={"output.log": b"hello\nworld\n", "media/images/samples_7_abc.png": PNG,
               "artifact/x.bin": b"ignored"},
        tags=[], notes=None, group=None, job_type=None, state="crashed",
    )
    # Its full-resolution system metrics are in wandb-events.jsonl; the events stream is sampled.
    events = [{"system.cpu": float(i), "_timestamp": T0 + i * 2.0, "_runtime": i * 2.0, "_wandb": True}
              for i in range(5)]
    other_run = FakeRun(id="other003", display_name="other", config={"k": "v"}, summary={"acc": 1.0},
                        history=[{"_step": 0, "_timestamp": T0, "acc": 1.0}],
                        events=events, events_max_samples=2,
                        files={"wandb-events.jsonl": "".join(json.dumps(e) + "\n" for e in events).encode()})
    return {"entity": {"proj-a": [long_run, media_run], "proj_b": [other_run], "proj-c": []}}


@pytest.fixture
def wandb_server(monkeypatch):
    """A running server with the fixture runs; WANDB_BASE_URL / WANDB_API_KEY point at it."""
    key = "tp-secret-wandb-key-4c1d2f9e8a7b6c5d4e3f2a1b"   # 40+ characters, like a real key
    server = WandbServer(key, fixture_runs(), page_cap=2, rate_limit_once=("RunFiles",)).start()
    monkeypatch.setenv("WANDB_BASE_URL", server.url)
    monkeypatch.setenv("WANDB_API_KEY", key)
    try:
        yield server
    finally:
        server.stop()


# -- runs made by the real SDK, put on the server as `wandb sync` would ---------------------------
def fake_run_from_offline(run_dir) -> tuple[str, str, FakeRun]:
    """(entity, project, FakeRun) of an offline run directory written by the real wandb SDK.

    What `wandb sync` would upload, taken from the run's `.wandb` transaction log
    (our reader, trackport.connectors.wandb.datastore) and its `files/` folder:
    run attributes, config, history rows, summary and every file.  History
    rows keep W&B's nested form; system metrics become events rows.
    """
    from pathlib import Path

    from trackport.connectors.wandb.client import internal_pb2
    from trackport.connectors.wandb.datastore import LogReader

    run_dir = Path(run_dir)
    pb = internal_pb2()
    config: dict = {}
    summary: dict = {}
    history: list[dict] = []
    events: list[dict] = []
    info: dict = {}

    def apply(target: dict, updates, removes=()) -> None:
        for item in updates:
            keys = list(item.nested_key) or [item.key]
            node = target
            for key in keys[:-1]:
                node = node.setdefault(key, {})
            node[keys[-1]] = json.loads(item.value_json)
        for item in removes:
            keys = list(item.nested_key) or [item.key]
            node = target
            for key in keys[:-1]:
                node = node.get(key, {})
            node.pop(keys[-1], None)

    for payload in LogReader(next(run_dir.glob("*.wandb"))):
        record = pb.Record()
        record.ParseFromString(payload)
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run = record.run
            info = {"id": run.run_id, "entity": run.entity, "project": run.project,
                    "name": run.display_name, "notes": run.notes or None, "group": run.run_group or None,
                    "job_type": run.job_type or None, "tags": list(run.tags),
                    "created": run.start_time.ToDatetime().isoformat(timespec="microseconds")}
            apply(config, run.config.update)
        elif kind == "config":
            apply(config, record.config.update, record.config.remove)
        elif kind == "summary":
            apply(summary, record.summary.update, record.summary.remove)
        elif kind == "history":
            row: dict = {}
            apply(row, record.history.item)
            row.setdefault("_step", record.history.step.num)
            history.append(row)
        elif kind == "exit":
            info["state"] = "finished" if record.exit.exit_code == 0 else "failed"
        elif kind == "stats":
            # W&B's sender names each item `system.<key>` and flattens a nested value with '.'
            # (wandb 0.10-0.12 `network: {sent, recv}` -> `system.network.sent`)
            row = {"_timestamp": record.stats.timestamp.seconds + record.stats.timestamp.nanos / 1e9}

            def put(name: str, value) -> None:
                if isinstance(value, dict) and value:
                    for sub, subvalue in value.items():
                        put(f"{name}.{sub}", subvalue)
                else:
                    row[name] = value

            for item in record.stats.item:
                put(f"system.{item.key}", json.loads(item.value_json))
            events.append(row)
    files = {}
    files_dir = run_dir / "files"
    for path in sorted(files_dir.rglob("*")):
        if path.is_file():
            files[path.relative_to(files_dir).as_posix()] = path.read_bytes()
    config.pop("_wandb", None)
    fake = FakeRun(id=info["id"], display_name=info["name"], config=config, summary=summary,
                   history=history, events=events, files=files, tags=info["tags"], notes=info["notes"],
                   group=info["group"], job_type=info["job_type"], created_at=info["created"],
                   state=info.get("state", "running"))
    return info["entity"], info["project"], fake
