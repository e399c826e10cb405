"""MLflow sink: a canonical run of project `mlflow-models/<experiment>` -> an MLflow 3 logged model.

Identity: the origin tags on the logged model (`trackport.origin.*`, given with its creation),
the completion mark `trackport.complete=true` set last.  A rerun finds the model by them
(search_logged_models on the origin tag): complete is skipped; a partial one (no mark: a
command stopped while writing it) is deleted and made again, so one origin never ends with two
models.  The model lives in the experiment of the destination's copy of its source run and
links to that copy; a source run still moving in this command is waited for, one not in the
destination fails the entry, naming the run and the fix.
"""

from __future__ import annotations

import logging
from typing import Any

from trackport.core.connector import RunPlan
from trackport.core.model import DestRun, Origin

from . import models as lm
from .client import errors
from .entries import EntryWriter, ms_or_none
from .models_source import ModelLocator
from .tags import TAG_COMPLETE, TAG_ORIGIN_PROJECT, TAG_ORIGIN_RUN, TAG_ORIGIN_URI, TRACKPORT_TAG_PREFIX

log = logging.getLogger(__name__)


class Models:
    """The sink's logged-model half: logged models by origin.  What is moving right now is
    kept by the registry half (`sink.registry`), shared by runs, models and versions."""

    def __init__(self, sink):
        self.sink = sink
        self.tracking = sink.tracking

    def find(self, origin: Origin) -> tuple[Any | None, list]:
        """(the logged model of `origin`, the others of the same origin): complete first, then
        the oldest."""
        if not self.tracking.exists():
            return None, []
        ids = [e.experiment_id for e in self.tracking.experiments()]
        if not ids:
            return None, []
        with errors(origin.project_id, origin.run_id):
            found = self.tracking.search_logged_models(ids, lm.tag_filter(TAG_ORIGIN_RUN, origin.run_id))
        found = [m for m in found if (m.tags or {}).get(TAG_ORIGIN_URI) == origin.uri
                 and m.tags.get(TAG_ORIGIN_PROJECT) == origin.project_id
                 and m.tags.get(TAG_ORIGIN_RUN) == origin.run_id]
        found.sort(key=lambda m: (m.tags.get(TAG_COMPLETE) != "true", m.creation_timestamp or 0, m.model_id))
        return (found[0] if found else None), found[1:]

    def find_run(self, origin: Origin) -> DestRun | None:
        moving = self.sink.registry
        mdl, others = self.find(origin)
        complete = mdl is not None and mdl.tags.get(TAG_COMPLETE) == "true"
        if not complete:
            moving.moving(origin)
        if mdl is None:
            return None
        # Partial duplicates are replaced by the writer; complete ones are named (never a silent pick).
        dups = tuple(o.model_id for o in others if o.tags.get(TAG_COMPLETE) == "true") if complete else ()
        return DestRun(mdl.model_id, complete, None, ModelLocator(mdl.model_id), None, dups)

    def describe_plan(self, plan: RunPlan) -> list[str]:
        """What making this logged model would transform, from the scan."""
        scan, report = plan.scan, plan.report
        report.transformed("logged_model_new_id", 1, f"{plan.origin.run_id} -> a new m-... id")
        if any(scan.value(p) is not None for p in ("sys/creation_time", "sys/modification_time")):
            report.transformed("logged_model_times_in_tag", 1, "sys/creation_time")
        status = scan.value(lm.STATUS)
        if status is not None and status not in ("READY", "FAILED", "PENDING"):
            report.transformed("logged_model_status_in_tag", 1, f"{lm.STATUS} {status}")
        run = scan.value(lm.SOURCE_RUN_ID)
        link = (f"linked to the copy of run {scan.value(lm.SOURCE_RUN_PROJECT)}/{run}" if run
                else "without a source run")
        return [f"MLflow logged model {scan.value(lm.NAME) or scan.value('sys/name')!r} of experiment "
                f"{lm.experiment_of(plan.origin.project_id)!r}, {link}"]


class ModelWriter(EntryWriter):
    """Collects a logged model's values and files, then makes the model at commit."""

    FILES = lm.FILES
    WHAT = "a logged model"
    HOLDS = f"single values and files only (its metrics are the JSON string {lm.METRICS})"
    RUN_FIX = ("copy that run too (its project in --project, and a --classes that moves runs), then run "
               "the command again: the model is made then")

    def __init__(self, sink, plan: RunPlan, resume: DestRun | None):
        super().__init__(sink, plan, resume)
        self.models: Models = sink.models

    # -- commit ------------------------------------------------------------------------

    def _commit(self) -> DestRun:
        from mlflow.entities import Metric

        client = self.tracking.client
        pe = (self.origin.project_id, self.origin.run_id)
        name = self._text(lm.NAME) or self._text("sys/name")
        if not name:
            raise self._err(f"a logged model needs a name ({lm.NAME} or sys/name)")
        for path in self.values:   # before anything is written
            if path.startswith(lm.TAG_PREFIX + TRACKPORT_TAG_PREFIX):
                raise self._err(f"logged model tag {path[len(lm.TAG_PREFIX):]!r} is in the namespace "
                                f"trackport keeps its own tags in (trackport.*); such a model cannot be "
                                f"moved into MLflow as is. Fix: rename the tag in the source")
        status = self._text(lm.STATUS) or "READY"
        if status not in lm.STATUSES:
            raise self._err(f"{lm.STATUS} {status!r} is not one of {', '.join(lm.STATUSES)}")
        try:
            points = lm.metrics_from_json(self.values.get(lm.METRICS))
        except ValueError as exc:
            raise self._err(str(exc)) from None
        run_id = self._text(lm.SOURCE_RUN_ID)
        run = self._dest_run(self._text(lm.SOURCE_RUN_PROJECT), run_id, "its source run",
                             self.RUN_FIX) if run_id else None
        if run is not None:
            experiment_id = run.info.experiment_id
        else:
            experiment = self.sink.experiment_name(lm.experiment_of(self.origin.project_id))
            with errors(*pe):
                experiment_id = self.tracking.experiment_id(experiment, create=True)
        # The runs the metric points were logged from, by (project, run id) -> destination run.
        dest_runs: dict[tuple[str, str], str] = {}
        if run is not None:
            dest_runs[(self._text(lm.SOURCE_RUN_PROJECT) or "", run_id)] = run.info.run_id
        for p in points:
            key = (p.get("run_project") or "", p.get("run_id") or "")
            if key in dest_runs:
                continue
            if not key[1]:
                raise self._err(f"{lm.METRICS}: metric {p['key']!r} names no run; MLflow logs a "
                                f"model's metric from a run")
            dest_runs[key] = self._dest_run(key[0], key[1], f"the run metric {p['key']!r} was logged from",
                                            self.RUN_FIX).info.run_id

        existing, others = self.models.find(self.origin)
        if existing is not None and existing.tags.get(TAG_COMPLETE) == "true":
            self.moving.settled(self.origin)   # another writer finished it meanwhile
            return DestRun(existing.model_id, True, None, ModelLocator(existing.model_id))
        for partial in [m for m in (existing, *others) if m is not None]:
            if partial.tags.get(TAG_COMPLETE) != "true":
                log.info("logged model %s of %s/%s is partial: deleted and made again",
                         partial.model_id, *pe)
                with errors(*pe):
                    client.delete_logged_model(partial.model_id)

        tags = {p[len(lm.TAG_PREFIX):]: str(v) for p, v in self.values.items()
                if p.startswith(lm.TAG_PREFIX) and v is not None}
        params = {p[len(lm.PARAM_PREFIX):]: str(v) for p, v in self.values.items()
                  if p.startswith(lm.PARAM_PREFIX) and v is not None}
        created, updated = ms_or_none(self.values.get("sys/creation_time")), ms_or_none(self.values.get("sys/modification_time"))
        tags.update({TAG_ORIGIN_URI: self.origin.uri, TAG_ORIGIN_PROJECT: self.origin.project_id,
                     TAG_ORIGIN_RUN: self.origin.run_id,
                     lm.TAG_MODEL: lm.model_tag(created, updated, status, self.origin.run_id)})
        staged = self._stage(link=True)
        with errors(*pe):
            model = client.create_logged_model(experiment_id, name=name,
                                               source_run_id=run.info.run_id if run is not None else None,
                                               tags=tags, params=params or None,
                                               model_type=self._text(lm.MODEL_TYPE))
        self.report.transformed("logged_model_new_id", 1, f"{self.origin.run_id} -> {model.model_id}")
        if created is not None or updated is not None:
            self.report.transformed("logged_model_times_in_tag", 1, "sys/creation_time")
        if status not in ("READY", "FAILED", "PENDING"):
            self.report.transformed("logged_model_status_in_tag", 1, f"{lm.STATUS} {status}")
        with errors(*pe):
            if staged is not None:
                self.tracking.upload_to(model.artifact_location, staged)
            by_run: dict[str, list] = {}
            for p in points:
                dest_run = dest_runs[(p.get("run_project") or "", p.get("run_id") or "")]
                by_run.setdefault(dest_run, []).append(Metric(
                    p["key"], p["value"], p["timestamp"], p["step"], model_id=model.model_id,
                    dataset_name=p.get("dataset_name"), dataset_digest=p.get("dataset_digest"),
                    run_id=dest_run))
            for dest_run, metrics in by_run.items():
                for i in range(0, len(metrics), 1000):
                    self.tracking.log_model_metrics(experiment_id, dest_run, metrics[i:i + 1000])
            if status in lm.FINAL_STATUSES:
                client.finalize_logged_model(model.model_id, status)
            client.set_logged_model_tags(model.model_id, {TAG_COMPLETE: "true"})   # the mark, last
        self.moving.settled(self.origin)
        return DestRun(model.model_id, True, None, ModelLocator(model.model_id))
