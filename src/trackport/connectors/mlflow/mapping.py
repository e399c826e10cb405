"""What MLflow holds of a canonical run: the transformations the MLflow sink may make and
the connector's capabilities (read by the registry without importing MLflow).

The mapping itself is split by concern, all pure, no MLflow import (docs/mlflow.md):
keys.py (attribute path -> MLflow key), values.py (param texts, times, steps), tags.py
(run tags, finding trackport's runs), artifacts.py (file, series and long-param artifacts),
points.py (metric points as the store keeps them), manifest.py (trackport/attributes.json),
batching.py (log_batch limits and the held batch), registry.py (registered model versions as
canonical runs of project `mlflow-registry/<model>`; registry_source.py / registry_sink.py
read and write them), models.py (MLflow 3 logged models as canonical runs of project
`mlflow-models/<experiment>`; models_source.py / models_sink.py).  client.py, sink.py, source.py and bulk.py
talk to MLflow.

MLflow facts these modules encode (mlflow/utils/validation.py, MLflow 3.17):
- param/metric/tag keys match `^[/\\w.\\- :]*$` (unicode `\\w`), must equal their
  `posixpath.normpath` (no `//`, `/./`, `..` parts, trailing `/`), must not
  start with `/` or `..`, and are at most 250 characters;
- param values are at most 6,000 characters and tag values 8,000 (longer
  ones are cut silently);
- the SQL store keeps NaN (is_nan) but replaces +-inf by +-1.7976931348623157e308,
  and SQLite stores -0.0 as 0.
"""

from __future__ import annotations

from trackport.core.capabilities import Capabilities

from .keys import KEY_RULE, MAX_KEY_LENGTH
from .values import MAX_PARAM_LENGTH

# Every transformation the MLflow sink may count, with what it means.
TRANSFORMATIONS: dict[str, str] = {
    "dataset_inputs_not_logged": "string mlflow/inputs/datasets that is not the JSON list the MLflow "
    "source writes (name, digest, source_type, source, schema, profile, tags): kept exactly in "
    "trackport/attributes.json, not logged as MLflow dataset inputs",
    "key_sanitized": "attribute path changed to fit MLflow key rules (bad character -> '_', "
    "path normalised, over 250 characters -> cut + '--<8 hex>'); original kept in trackport/attributes.json",
    "key_collision_renamed": "two attribute paths (or tags) landing on one MLflow key: the later one "
    "(sorted, unchanged paths first) gets a '--<8 hex>' suffix",
    "param_to_artifact": "param text over 6,000 characters stored whole as artifact "
    "trackport/params/<key>.txt; the param holds a 'trackport-artifact:' pointer",
    "param_changed_to_artifact": "a param whose value changed in a source run that grew (a resumed "
    "training's new config, a W&B run's new folder) refreshed into a run that holds the old value: "
    "MLflow cannot change a param, so it keeps the old text and the new value is stored whole as "
    "artifact trackport/params/<key>.txt, which trackport reads back",
    "tag_truncated": "tag value (description, key/value tag) cut to 8,000 characters; the full "
    "value is kept in trackport/attributes.json",
    "inf_to_float_max": "+-inf metric value stored by MLflow as +-1.7976931348623157e308 "
    "(read back as +-inf for runs trackport wrote)",
    "timestamp_filled": "missing or negative point timestamp sent as 0 ms (read back as null)",
    "step_filled": "missing step of a series point sent as step 0",
    "step_scaled": "decimal step multiplied by trackport.step_multiplier to an integer MLflow step "
    "(divided back exactly when read)",
    "step_floored": "step left with a fraction by a user-set multiplier, floored",
    "series_to_artifact": "string/histogram series stored as a JSON-lines artifact "
    "series/<key>.jsonl (read back as the series)",
    "run_name_truncated": "run name over 250 characters cut for MLflow's run name column "
    "(the whole name is kept in trackport/attributes.json)",
    "run_name_from_id": "an empty run name (MLflow 1.x runs had none) shown as the source run id: "
    "MLflow gives a nameless run a random name (the empty name is kept in trackport/attributes.json)",
    "file_extension_added": "file artifact named after its attribute path, plus the file's "
    "extension when the path has none",
    "file_path_collision_renamed": "a file attribute whose artifact path would be another "
    "attribute's, under or above it, a series artifact's (series/<key>.jsonl) or in trackport's own "
    "trackport/ folder: its artifact folder or name gets '--<8 hex of the attribute path>' "
    "(the manifest keeps the original path; read back exactly)",
    "model_version_renumbered": "a registered model version got another number in the destination "
    "(MLflow numbers versions itself, in creation order: the model already had versions there); the "
    "source number is kept in the version's trackport.origin.run_id and trackport.registry tags and "
    "read back from them",
    "model_version_source_relocated": "a registered model version's files were uploaded to the "
    "destination (under its linked run's trackport/registry/ folder, else the store's "
    "trackport-registry/ folder) and the version made from there; the source URI it came from is "
    "kept in its trackport.registry tag and read back from it",
    "registry_times_in_tag": "a registered model version's creation and last-update times and its "
    "user (sys/owner), which MLflow sets itself, are kept in its trackport.registry tag and read back "
    "from it",
    "logged_model_new_id": "an MLflow 3 logged model gets a new model id (m-...) in the destination "
    "(MLflow makes it); the source's id is kept in its trackport.origin.run_id tag and read back from "
    "it, and a registered model version made from `models:/<source id>` points at the new id",
    "logged_model_times_in_tag": "a logged model's creation and last-update times, which MLflow sets "
    "itself at the copy, are kept in its trackport.logged_model tag and read back from it",
    "logged_model_status_in_tag": "a logged model whose status MLflow cannot be given (UNSPECIFIED: "
    "finalize_logged_model takes READY or FAILED) stays PENDING; the source's status is kept in its "
    "trackport.logged_model tag and read back from it",
    "duplicate_point_in_manifest": "a point repeated exactly (same step, time and value) within a "
    "batch: MLflow's metric table holds it once, the manifest counts the copies (read back whole)",
}

# What MLflow holds, for the planner, the reports and the conformance suite.
CAPABILITIES = Capabilities(
    integer_steps=True,
    keeps_timestamps=True,
    max_key_length=MAX_KEY_LENGTH,
    key_rule=KEY_RULE,
    max_param_length=MAX_PARAM_LENGTH,
    replayable=False,
    null_point_drops={"float_series": "metric_null_value"},   # a metric value cannot be null
    transformations=dict(TRANSFORMATIONS),
)

