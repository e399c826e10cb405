"""MLflow sink: a canonical run of project `mlflow-registry/<model>` -> a registered model version.

Identity: the origin tags on the model version (`trackport.origin.*`), the completion mark
`trackport.complete=true` set last.  A rerun finds the version by them: complete is skipped,
partial is finished in place (never a second version).  The version links to the destination's
copy of its source run, found by that run's origin; a source run still moving in this command
is waited for, one not in the destination fails the entry, naming the run and the fix.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from pathlib import Path
from typing import Any

from trackport.core.connector import RunPlan
from trackport.core.errors import RunError
from trackport.core.model import DestRun, Origin

from . import registry as rg
from .client import errors
from .entries import EntryWriter, ms_or_none
from .registry_source import PAGE, RegistryLocator, _paged
from .tags import TAG_COMPLETE, TAG_ORIGIN_PROJECT, TAG_ORIGIN_RUN, TAG_ORIGIN_URI, TRACKPORT_TAG_PREFIX

log = logging.getLogger(__name__)

WAIT_S = 600.0   # at most this long for a source run or a lower version moving in this command


class Versions:
    """The sink's registry half: model versions by origin, and what is moving right now."""

    def __init__(self, sink):
        self.sink = sink
        self.tracking = sink.tracking
        self._cond = threading.Condition()
        self._moving: set[Origin] = set()      # asked by find_run, not yet committed or given up

    # -- what this command is moving -------------------------------------------------

    def moving(self, origin: Origin) -> None:
        with self._cond:
            self._moving.add(origin)

    def settled(self, origin: Origin) -> None:
        with self._cond:
            self._moving.discard(origin)
            self._cond.notify_all()

    def wait_while(self, busy) -> None:
        deadline = time.monotonic() + WAIT_S
        with self._cond:
            while busy(self._moving):
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                self._cond.wait(min(left, 1.0))

    # -- finding versions --------------------------------------------------------------

    def versions(self, name: str) -> list:
        if not self.tracking.has_registry():
            return []
        client = self.tracking.client
        try:
            with errors():
                client.get_registered_model(name)
        except RunError:
            return []
        with errors():
            return _paged(client.search_model_versions, filter_string=rg.model_filter(name), max_results=PAGE)

    def find(self, origin: Origin) -> tuple[Any | None, list]:
        """(the version of `origin`, the others of the same origin)."""
        found = [mv for mv in self.versions(rg.model_of(origin.project_id))
                 if (mv.tags or {}).get(TAG_ORIGIN_URI) == origin.uri
                 and mv.tags.get(TAG_ORIGIN_PROJECT) == origin.project_id
                 and mv.tags.get(TAG_ORIGIN_RUN) == origin.run_id]
        found.sort(key=lambda mv: (mv.tags.get(TAG_COMPLETE) != "true", int(mv.version)))
        return (found[0] if found else None), found[1:]

    def find_run(self, origin: Origin) -> DestRun | None:
        if not self.tracking.exists():
            self.moving(origin)
            return None
        mv, others = self.find(origin)
        if mv is None or mv.tags.get(TAG_COMPLETE) != "true":
            self.moving(origin)
        if mv is None:
            return None
        return DestRun(f"{mv.name}/{mv.version}", mv.tags.get(TAG_COMPLETE) == "true", None,
                       RegistryLocator(mv.name, str(mv.version)), None,
                       tuple(f"{o.name}/{o.version}" for o in others))


    def describe_plan(self, plan: RunPlan) -> list[str]:
        """What making this version would transform, from the scan (the number MLflow gives it
        is known only when it is made: `model_version_renumbered` is counted then)."""
        scan, report = plan.scan, plan.report
        if scan.value(rg.SOURCE) is not None:
            report.transformed("model_version_source_relocated", 1, str(scan.value(rg.SOURCE)))
        if any(scan.value(p) is not None for p in ("sys/creation_time", "sys/modification_time", "sys/owner")):
            report.transformed("registry_times_in_tag", 1, "sys/creation_time")
        run = scan.value(rg.SOURCE_RUN_ID)
        link = (f"linked to the copy of run {scan.value(rg.SOURCE_RUN_PROJECT)}/{run}" if run
                else "without a source run")
        model = scan.value(rg.SOURCE_MODEL_ID)
        if model:
            link += f", made from the copy of logged model {scan.value(rg.SOURCE_MODEL_PROJECT)}/{model}"
        return [f"MLflow registered model {rg.model_of(plan.origin.project_id)!r}, version "
                f"{plan.origin.run_id}, {link}"]


class RegistryWriter(EntryWriter):
    """Collects a registry entry's values and files, then makes the version at commit."""

    FILES = rg.FILES
    WHAT = "a model version"
    HOLDS = "single values and files only (no series)"

    def __init__(self, sink, versions: Versions, plan: RunPlan, resume: DestRun | None):
        super().__init__(sink, plan, resume)
        self.versions = versions

    def _linked_run(self) -> tuple[str | None, str | None]:
        """(destination MLflow run id, its artifact URI) of the version's source run."""
        project, run_id = self._text(rg.SOURCE_RUN_PROJECT), self._text(rg.SOURCE_RUN_ID)
        if not run_id:
            return None, None
        run = self._dest_run(project, run_id, "its source run",
                             f"copy that run too (its project {project!r} in --project), then run "
                             f"the command again: the version is made then")
        return run.info.run_id, run.info.artifact_uri

    def _linked_model(self) -> Any | None:
        """The destination's copy of the logged model a `models:/<model id>` version was made
        from (waiting while it moves in this command), or a RunError naming it and the fix."""
        project, model = self._text(rg.SOURCE_MODEL_PROJECT), self._text(rg.SOURCE_MODEL_ID)
        if not model:
            return None
        model_origin = Origin(self.origin.uri, project or "", model)
        self.versions.wait_while(lambda moving: model_origin in moving)
        found, _ = self.sink.models.find(model_origin)
        if found is None or found.tags.get(TAG_COMPLETE) != "true":
            state = "not in" if found is None else "incomplete in"
            raise self._err(
                f"its logged model {project}/{model} is {state} the destination, so the version "
                f"cannot point at its copy. Fix: copy that logged model too (--classes with "
                f"artifacts, its project {project!r} in --project), then run the command again: "
                f"the version is made then")
        return found

    def _location(self, run_artifacts: str | None) -> str:
        """Where the version's files go: inside its run's artifacts (trackport's folder) when it
        has a run, else in the store's artifact root."""
        key = hashlib.blake2b(f"{self.origin.uri}\0{self.origin.project_id}\0{self.origin.run_id}".encode(),
                              digest_size=8).hexdigest()
        if run_artifacts:
            return f"{run_artifacts.rstrip('/')}/trackport/registry/{key}"
        root = self.tracking.artifact_root
        if root is None and self.tracking.is_server:
            root = "mlflow-artifacts:"
        if root is None and self.tracking.local_store is not None:
            root = Path(self.tracking.local_store).as_uri()
        if root is None:
            raise self._err("no artifact location for a model version without a source run")
        return f"{root.rstrip('/')}/trackport-registry/{key}"

    def _upload(self, location: str) -> None:
        staged = self._stage(link=False)
        if staged is None:
            return
        with errors(self.origin.project_id, self.origin.run_id):
            self.tracking.upload_to(location, staged)

    # -- commit ------------------------------------------------------------------------

    def _commit(self) -> DestRun:
        client = self.tracking.client
        name = self._text(rg.MODEL) or rg.model_of(self.origin.project_id)
        if name != rg.model_of(self.origin.project_id):
            raise self._err(f"{rg.MODEL} {name!r} is not the model its project names "
                            f"({self.origin.project_id!r})")
        source_version = self.origin.run_id
        for path in self.values:   # before anything is written
            if path.startswith(rg.TAG_PREFIX + TRACKPORT_TAG_PREFIX):
                raise self._err(f"model version tag {path[len(rg.TAG_PREFIX):]!r} is in the namespace "
                                f"trackport keeps its own tags in (trackport.*); such a version cannot "
                                f"be moved into MLflow as is. Fix: rename the tag in the source")
        run_id, run_artifacts = self._linked_run()
        logged_model = self._linked_model()
        # Versions are numbered by MLflow in creation order: lower versions moving now go first.
        if source_version.isdigit():
            n = int(source_version)
            self.versions.wait_while(lambda moving: any(
                o.uri == self.origin.uri and o.project_id == self.origin.project_id
                and o.run_id.isdigit() and int(o.run_id) < n for o in moving))
        pe = (self.origin.project_id, self.origin.run_id)
        with errors(*pe):
            try:
                model = client.get_registered_model(name)
            except Exception as exc:   # not there yet
                from .client import is_missing

                if not is_missing(exc):
                    raise
                try:
                    model = client.create_registered_model(name)
                except Exception as again:
                    if "already exists" not in str(again).lower() and "RESOURCE_ALREADY_EXISTS" not in str(again):
                        raise
                    model = client.get_registered_model(name)
        mv, _ = self.versions.find(self.origin)
        origin_tags = {TAG_ORIGIN_URI: self.origin.uri, TAG_ORIGIN_PROJECT: self.origin.project_id,
                       TAG_ORIGIN_RUN: self.origin.run_id}
        if logged_model is not None:
            # Made from the destination's copy of its logged model: `models:/<its id>`; the
            # version's files are that model's (uploaded with it), not uploaded again.
            location = f"models:/{logged_model.model_id}"
            if mv is None:
                with errors(*pe):
                    mv = self.tracking.create_model_version_of_model(
                        name, logged_model.model_id, run_id=run_id, tags=origin_tags,
                        description=self._text("sys/description"), run_link=self._text(rg.RUN_LINK))
        else:
            location = self._location(run_artifacts)
            self._upload(location)   # a partial version: the same bytes at the same paths again
            if mv is None:
                with errors(*pe):
                    mv = client.create_model_version(name, location, run_id=run_id, tags=origin_tags,
                                                     description=self._text("sys/description"),
                                                     run_link=self._text(rg.RUN_LINK))
        version = str(mv.version)
        if version != source_version:
            self.report.transformed("model_version_renumbered", 1,
                                    f"{name} version {source_version} -> {version}")
        source = self._text(rg.SOURCE)
        if source is not None and source != location:
            self.report.transformed("model_version_source_relocated", 1, f"{source} -> {location}")
        created = self.values.get("sys/creation_time")
        updated = self.values.get("sys/modification_time")
        if created is not None or updated is not None or self._text("sys/owner"):
            self.report.transformed("registry_times_in_tag", 1, "sys/creation_time")
        with errors(*pe):
            description = self._text("sys/description")
            if (mv.description or None) != description:
                client.update_model_version(name, version, description=description or "")
            want_tags = {p[len(rg.TAG_PREFIX):]: str(v) for p, v in self.values.items()
                         if p.startswith(rg.TAG_PREFIX) and v is not None}
            for key, value in sorted(want_tags.items()):
                if (mv.tags or {}).get(key) != value:
                    client.set_model_version_tag(name, version, key, value)
            for alias in sorted(self.values.get(rg.ALIASES) or []):
                client.set_registered_model_alias(name, alias, version)
            stage = self._text(rg.STAGE)
            if stage and stage != (mv.current_stage or "None"):
                client.transition_model_version_stage(name, version, stage, archive_existing_versions=False)
            model_description = self._text(rg.MODEL_DESCRIPTION)
            if model_description is not None and model.description != model_description:
                client.update_registered_model(name, description=model_description)
            for path, value in sorted(self.values.items()):
                if path.startswith(rg.MODEL_TAG_PREFIX) and value is not None:
                    key = path[len(rg.MODEL_TAG_PREFIX):]
                    if (model.tags or {}).get(key) != str(value):
                        client.set_registered_model_tag(name, key, str(value))
            client.set_model_version_tag(name, version, rg.TAG_REGISTRY, rg.registry_tag(
                source, ms_or_none(created), ms_or_none(updated), source_version, self._text("sys/owner")))
            client.set_model_version_tag(name, version, TAG_COMPLETE, "true")   # the mark, last
        self.versions.settled(self.origin)
        return DestRun(f"{name}/{version}", True, None, RegistryLocator(name, version))
