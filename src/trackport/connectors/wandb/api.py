"""The W&B public API (`wandb.Api`) as the `wandb://ENTITY[/PROJECT]` source uses it.

The only module of the API source that imports wandb, inside functions.
Every call goes through `errors()`, which turns wandb's failures into
trackport's TransientError (429, 5xx, connection failures) or RunError
(anything else, naming the run).

wandb 0.31 sends all public-API requests through its `wandb-core` sidecar
(wandb/apis/public/service_api.py), which retries GraphQL requests itself
(429 and 5xx, honouring Retry-After).  Its retry loop is bounded here through
the settings `x_graphql_retry_max` / `x_graphql_retry_wait_max_seconds` /
`x_graphql_timeout_seconds` (wandb/sdk/wandb_settings.py), so a throttled
server surfaces as a TransientError within seconds and the pipeline's own
backoff (shared by all workers) takes over instead of a silent multi-minute
wait inside the SDK.

Credentials: the key comes from WANDB_API_KEY or `wandb login` (netrc), found
by wandb's own lookup without an interactive prompt; it is handed to
`wandb.Api` and never logged, stored or put in a URI.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from trackport.core.errors import RunError, TransientError, UsageError

from . import artifacts as art_map
from .mapping import json_text

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://api.wandb.ai"
HISTORY_PAGE = 1_000          # rows per scan_history page (the client's default page size)
LIST_PAGE = 100               # runs / files per listing page
EVENTS_SAMPLES = 1_000_000    # system metrics: ask for every point; the server may cap it
GRAPHQL_RETRY_MAX = 3         # wandb-core retries, then we take over
GRAPHQL_RETRY_WAIT_MAX_S = 10.0
GRAPHQL_TIMEOUT_S = 60.0

_settings_lock = threading.Lock()
_HTTP_STATUS = re.compile(r"\bHTTP (\d{3})\b")
_VERSION_ALIAS = re.compile(r"^v\d+$")   # W&B numbers a version in each collection itself
_RETRY_AFTER = re.compile(r"retry[- ]after\D{0,5}(\d+(?:\.\d+)?)", re.I)


def import_wandb():
    """`import wandb` without pluto-ml's patch (client.py, docs/wandb.md)."""
    from .client import import_wandb as shared

    return shared()


def _wandb_errors():
    wandb = import_wandb()
    from wandb.errors import CommError
    from wandb.sdk.lib.service.service_connection import WandbApiFailedError

    return wandb, CommError, WandbApiFailedError


def status_of(exc: BaseException) -> int | None:
    """The HTTP status behind a wandb error, when it carries one."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        response = getattr(exc, "response", None)
        status = getattr(response, "http_status", None)
        if isinstance(status, int) and status:
            return status
        status = getattr(response, "status_code", None)
        if isinstance(status, int) and status:
            return status
        nested = getattr(exc, "exc", None)
        exc = nested if isinstance(nested, BaseException) else exc.__cause__
    return None


def classify(exc: BaseException, project_id: str = "", run_id: str = "", file: str | None = None) -> Exception:
    """The trackport error for an exception raised by wandb."""
    text = str(exc) or type(exc).__name__
    status = status_of(exc)
    if status is None:
        # wandb-core reports a request it gave up on as text only ("... giving up after
        # 4 attempt(s) while retrying: HTTP 429: ...").
        found = _HTTP_STATUS.findall(text)
        status = int(found[-1]) if found else None
    lowered = text.lower()
    if status == 429 or (status is not None and status >= 500) or status == 408:
        match = _RETRY_AFTER.search(text)
        return TransientError(f"W&B API: HTTP {status}: {text}",
                              retry_after=float(match.group(1)) if match else None)
    if status is None and any(w in lowered for w in ("timed out", "timeout", "connection refused",
                                                      "connection reset", "eof", "unavailable")):
        return TransientError(f"W&B API: {text}")
    if status in (401, 403):
        return UsageError(f"W&B refused the credentials (HTTP {status}); set WANDB_API_KEY to a valid "
                          f"key for this server or run `wandb login`")
    return RunError(f"W&B API: {text}", project_id=project_id, run_id=run_id, file=file)


@contextlib.contextmanager
def errors(project_id: str = "", run_id: str = "", file: str | None = None):
    """Map wandb's exceptions to TransientError / RunError / UsageError."""
    try:
        yield
    except (RunError, TransientError, UsageError):
        raise
    except Exception as exc:  # noqa: BLE001 - every SDK failure is classified, none passes raw
        _wandb, comm_error, api_failed = _wandb_errors()
        if isinstance(exc, (comm_error, api_failed, ConnectionError, TimeoutError, OSError)) or \
                type(exc).__module__.startswith("wandb"):
            raise classify(exc, project_id, run_id, file) from exc
        raise


@dataclass(frozen=True)
class RemoteFile:
    name: str
    size: int | None
    md5: str | None
    handle: Any          # wandb.apis.public.File


class WandbApi:
    """One `wandb.Api` bound to a server (WANDB_BASE_URL or api.wandb.ai)."""

    def __init__(self, base_url: str, entity: str):
        self.base_url = base_url.rstrip("/")
        self.entity = entity
        wandb = import_wandb()
        api_key = self._credentials()
        with errors(), _bounded_retries():
            self.api = wandb.Api(overrides={"base_url": self.base_url, "entity": entity},
                                 timeout=int(GRAPHQL_TIMEOUT_S), api_key=api_key)

    def _credentials(self) -> str | None:
        """The API key wandb would use for this host, found without prompting."""
        import_wandb()
        from wandb.sdk.lib.wbauth import authenticate

        try:
            auth = authenticate.authenticate_session(host=self.base_url, source="trackport",
                                                     no_offline=True, prompt=False, update_session=False)
        except Exception as exc:  # noqa: BLE001 - a malformed key: say so without echoing it
            raise UsageError(f"W&B credentials are not usable ({type(exc).__name__}); set WANDB_API_KEY "
                             f"to a valid key or run `wandb login`") from None
        if auth is None:
            raise UsageError(f"no W&B credentials for {self.base_url}: set WANDB_API_KEY or run `wandb login`")
        from trackport.core.logs import remember_secret

        remember_secret(getattr(auth, "api_key", None))   # a netrc key is in no environment variable
        return getattr(auth, "api_key", None)

    # -- listing -------------------------------------------------------------
    def projects(self) -> list[str]:
        with errors():
            return sorted(p.name for p in self.api.projects(self.entity, per_page=LIST_PAGE))

    def runs(self, project: str, full: bool = False) -> Iterator[Any]:
        """The project's runs, oldest first; `full` also loads config and summary."""
        path = f"{self.entity}/{project}"
        with errors(path):
            runs = self.api.runs(path, order="+created_at", per_page=LIST_PAGE, lazy=not full)
            iterator = iter(runs)
        while True:
            try:
                with errors(path):
                    run = next(iterator)
            except StopIteration:
                return
            except (RunError, ValueError) as exc:
                # wandb/apis/public/runs.py `Runs.convert_objects`: a project the server does not
                # return raises a bare ValueError("Could not find project ...").
                if "could not find project" in str(exc).lower():
                    raise UsageError(f"no W&B project {path} on {self.base_url} (or no access to it)") from None
                raise
            yield run

    def run(self, project: str, run_id: str) -> Any:
        with errors(f"{self.entity}/{project}", run_id):
            return self.api.run(f"{self.entity}/{project}/{run_id}")

    # -- one run ---------------------------------------------------------------
    def history(self, run: Any, rows_per_page: int = HISTORY_PAGE) -> Iterator[list[dict]]:
        """Every history row of `run`, in pages of rows (never the sampled `run.history()`).

        `scan_history` goes through wandb-core, which reads the run's exported
        history parquet files where the server offers them and asks for the
        rows not exported yet with `HistoryPage(minStep, maxStep, samples =
        maxStep - minStep)` (so never sampled).  It pages by STEP RANGE, not by
        row count (wandb/apis/public/history.py): a run with sparse steps (a
        step multiplier, steps counting samples) would need one request per
        empty range.  The range is therefore sized from the run's own step
        density (last step / row count) to hold about `rows_per_page` rows.
        """
        pid = f"{run.entity}/{run.project}"
        with errors(pid, run.id):
            last_step = run.lastHistoryStep
            line_count = getattr(run, "_attrs", {}).get("historyLineCount")
            rows = line_count if isinstance(line_count, int) and line_count > 0 else rows_per_page
            step_range = max(rows_per_page, -(-(max(last_step, 0) + 1) * rows_per_page // rows))
            scan = run.scan_history(page_size=step_range, use_cache=False)
            iterator = iter(scan)
        page: list[dict] = []
        while True:
            with errors(pid, run.id):
                try:
                    row = next(iterator)
                except StopIteration:
                    break
            page.append(row)
            if len(page) >= rows_per_page:
                yield page
                page = []
        if page:
            yield page

    def system_events(self, run: Any, samples: int = EVENTS_SAMPLES) -> list[dict]:
        """System metric rows as the server gives them (`events(samples:)`)."""
        with errors(f"{run.entity}/{run.project}", run.id):
            return list(run.history(stream="system", samples=samples, pandas=False) or [])

    def files(self, run: Any) -> list[RemoteFile]:
        out = []
        with errors(f"{run.entity}/{run.project}", run.id):
            for f in run.files(per_page=LIST_PAGE):
                out.append(RemoteFile(f.name, getattr(f, "size", None), f._attrs.get("md5"), f))
        return out

    def download(self, run: Any, remote: RemoteFile, root: Path) -> Path:
        """Download one run file under the absolute directory `root` (never a chdir)."""
        root = root.resolve()
        with errors(f"{run.entity}/{run.project}", run.id, remote.name):
            handle = remote.handle.download(root=str(root), replace=True, exist_ok=True)
            handle.close()   # File.download returns an open text handle (wandb/apis/public/files.py)
        local = root / remote.name
        if not local.is_file():
            raise RunError("downloaded file is missing", project_id=f"{run.entity}/{run.project}",
                           run_id=run.id, file=remote.name)
        return local


    # -- artifacts (docs/wandb.md, "Artifacts") ---------------------------------------------
    def logged_artifacts(self, run: Any) -> list[Any]:
        """The artifact versions `run` logged (GraphQL RunOutputArtifacts, paged)."""
        with errors(f"{run.entity}/{run.project}", run.id):
            return list(run.logged_artifacts(per_page=LIST_PAGE))

    def used_artifacts(self, run: Any) -> list[Any]:
        """The artifact versions `run` used (`use_artifact`; GraphQL RunInputArtifacts, paged)."""
        with errors(f"{run.entity}/{run.project}", run.id):
            return list(run.used_artifacts(per_page=LIST_PAGE))

    def used_refs(self, run: Any) -> list[str]:
        """`artifacts.version_ref` of every artifact version `run` used."""
        return sorted({art_map.version_ref(a.source_entity, a.source_project, a.source_name.split(":")[0], a.digest)
                       for a in self.used_artifacts(run)})

    def artifact(self, handle: Any, producer_project: str, producer_run: str) -> art_map.Artifact:
        """What W&B holds of one logged version: its attributes, manifest (FetchArtifactManifest,
        then the manifest file) and registry links (FetchLinkedArtifacts)."""
        with errors(producer_project, producer_run):
            entries = tuple(
                art_map.Entry(path=path, digest=str(e.digest), size=e.size if (e.size or not e.ref) else None,
                              ref=e.ref or None, extra=dict(e.extra or {}))
                for path, e in handle.manifest.entries.items())
            links = tuple(art_map.Link(f"{link.entity}/{link.project}/{link.name.split(':')[0]}",
                                       tuple(sorted(a for a in link.aliases if not _VERSION_ALIAS.match(a))))
                          for link in handle.linked_artifacts)
            algorithm = getattr(handle, "digest_algorithm", "") or ""
            return art_map.Artifact(
                entity=handle.source_entity, project=handle.source_project,
                name=handle.source_name.split(":")[0], type=handle.type, digest=handle.digest,
                producer_project=producer_project, producer_run=producer_run,
                description=handle.description or "",
                metadata=json_text(handle.metadata) if handle.metadata else "",
                aliases=tuple(handle.aliases), tags=tuple(handle.tags or ()),
                ttl_seconds=int(handle.ttl.total_seconds()) if handle.ttl else 0,
                digest_algorithm=str(getattr(algorithm, "value", algorithm)),
                storage_policy=handle.manifest.storage_policy.name(), entries=entries, links=links)

    def download_artifact(self, handle: Any, root: Path, project_id: str, run_id: str) -> Path:
        """Every file of the version under the absolute directory `root` (GetArtifactMembershipFileUrls,
        then each file's URL), past wandb's artifact cache (nothing is written there)."""
        root = root.resolve()
        with errors(project_id, run_id):
            handle.download(root=str(root), skip_cache=True)
        return root


@contextlib.contextmanager
def _bounded_retries():
    """Bound wandb-core's own GraphQL retry loop for the Api made inside.

    `wandb.Api` copies the global settings when it is made
    (wandb/apis/public/api.py), so they are set around its construction only
    and put back afterwards; a user's explicit WANDB__GRAPHQL_* settings win.
    """
    from wandb.sdk import wandb_setup

    wanted = {
        "x_graphql_retry_max": GRAPHQL_RETRY_MAX,
        "x_graphql_retry_wait_max_seconds": GRAPHQL_RETRY_WAIT_MAX_S,
        "x_graphql_timeout_seconds": GRAPHQL_TIMEOUT_S,
    }
    with _settings_lock:
        settings = wandb_setup.singleton().settings
        before = {name: getattr(settings, name) for name in wanted}
        try:
            for name, value in wanted.items():
                if before[name] is None and not os.environ.get("WANDB_" + name.removeprefix("x").upper()):
                    setattr(settings, name, value)
            yield
        finally:
            for name, value in before.items():
                setattr(settings, name, value)
