"""The only module importing `clearml`: a writer process that turns one staged run into one
ClearML offline session per request.

Why a separate process: `Task.init` makes the task the process's single "main task" and
installs process-wide hooks (exit and signal handlers, an excepthook, logging handlers),
so one process holds one task at a time and trackport's own process would inherit those
hooks.  The sink (sink.py) starts `python -m trackport.connectors.clearml.client` once,
sends it one JSON job per line on stdin and reads one JSON answer per line; the child
writes the session with the real SDK in offline mode and answers with the zip ClearML made.

The child's environment keeps ClearML offline and away from the user's settings: every
CLEARML_*/TRAINS_* variable of the parent is dropped (CLEARML_TASK_ID would make the SDK
think it runs under an agent), CLEARML_OFFLINE_MODE=1, and CLEARML_CONFIG_FILE points at
a file of ours (so ~/clearml.conf is never read nor written) that turns off the update
check (the SDK asks updates.clear.ml from `Task.init` unless repository detection is off),
the reporting subprocess and debug-sample history rotation.  See
https://clear.ml/docs/latest/docs/guides/set_offline/ for the offline mode.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from pathlib import Path

CONFIG = """
sdk {
  metrics { file_history_size: 0 }
  development {
    report_use_subprocess: false
    vcs_repo_detect_async: false
    suppress_update_message: true
    store_uncommitted_code_diff: false
    support_stopping: false
    log_os_environments: []
    worker { report_period_sec: 600, log_stdout: false }
  }
}
"""

# Task.init(auto_connect_frameworks=...): nothing patched, no repository detection (which
# would also start the update check and analyse trackport's own code as "the script").
NO_FRAMEWORKS = {name: False for name in (
    "matplotlib", "tensorflow", "tensorboard", "pytorch", "xgboost", "scikit", "fastai",
    "lightgbm", "hydra", "detect_repository", "tfdefines", "joblib", "megengine", "catboost",
    "gradio", "jsonargparse")}


def child_environment(config_file: Path) -> dict[str, str]:
    """The writer process's environment (see the module docstring).  HOME is the writer's own
    folder: the SDK keeps a session cache in `~/.clearml/.session.json` (clearml/config/cache.py,
    a fixed path), which must not land in the user's home."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CLEARML_", "TRAINS_", "ALG_"))}
    env.update({"HOME": str(config_file.parent),
                "CLEARML_OFFLINE_MODE": "1", "CLEARML_CONFIG_FILE": str(config_file),
                "CLEARML_SUPPRESS_UPDATE_MESSAGE": "1", "CLEARML_LOG_ENVIRONMENT": "",
                "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)})
    return env


def _batches(path: str | None):
    if not path or not os.path.exists(path):
        return
    import pyarrow as pa

    with pa.OSFile(path, "rb") as fh:
        reader = pa.ipc.open_stream(fh)
        for batch in reader:
            yield batch.to_pydict()


def write_session(job: dict) -> dict:
    """Write one offline session from a staged job; returns {"task_id", "zip"}."""
    os.environ["CLEARML_CACHE_DIR"] = job["cache_dir"]
    from clearml import Task
    from clearml.backend_interface.metrics.events import PlotEvent, ScalarEvent

    Task.set_offline(True)
    task = Task.init(project_name=job["project"], task_name=job["name"], reuse_last_task_id=False,
                     continue_last_task=False, auto_connect_arg_parser=False,
                     auto_connect_frameworks=dict(NO_FRAMEWORKS), auto_resource_monitoring=False,
                     auto_connect_streams=False)
    try:
        # the origin first (trackport/complete=false), with every param
        task.set_parameters({**job["params"], **job["mark"]})
        if job.get("tags"):
            task.add_tags(list(job["tags"]))
        if job.get("comment") is not None:
            task.set_comment(job["comment"])
        logger = task.get_logger()
        # Scalars and plots go through the SDK's own event classes and reporter, which take
        # the point's time (`timestamp`, ms): Logger.report_scalar would stamp the write time.
        # An event without a time is written without one (the server stamps it on upload).
        reporter = task._reporter
        for cols in _batches(job.get("scalars")):
            for title, series, it, ts, value in zip(cols["title"], cols["series"], cols["iter"], cols["ts"],
                                                    cols["value"]):
                reporter._report(ScalarEvent(metric=title, variant=series, value=value, iter=it, timestamp=ts,
                                             gen_timestamp_if_none=False))
        for cols in _batches(job.get("plots")):
            for title, series, it, ts, plot in zip(cols["title"], cols["series"], cols["iter"], cols["ts"],
                                                   cols["plot"]):
                reporter._report(PlotEvent(metric=title, variant=series, plot_str=plot, iter=it, timestamp=ts,
                                           gen_timestamp_if_none=False))
        for cols in _batches(job.get("console")):
            for level, msg in zip(cols["level"], cols["msg"]):
                logger.report_text(msg, level=40 if level == "error" else 20, print_console=False)
        for cols in _batches(job.get("media")):
            for title, series, it, local in zip(cols["title"], cols["series"], cols["iter"], cols["local"]):
                logger.report_media(title, series, iteration=it, local_path=local)
        for name, local in job.get("artifacts") or []:
            task.upload_artifact(name, artifact_object=Path(local), wait_on_upload=True)
        if job.get("record"):
            task.upload_artifact(job["record_name"], artifact_object=Path(job["record"]), wait_on_upload=True)
        task.flush(wait_for_uploads=True)
        task.set_parameter(job["complete_param"], "true")      # the completion mark, last
    except BaseException:
        task.close()
        raise
    task.close()
    folder = Path(str(task.get_offline_mode_folder()))
    return {"task_id": task.id, "zip": folder.as_posix() + ".zip", "folder": folder.as_posix()}


def serve() -> None:
    """Answer one job per stdin line with one JSON line on the original stdout; the SDK's
    own prints go to stderr."""
    proto = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            answer = write_session(json.loads(line))
        except BaseException as exc:          # noqa: BLE001 -- reported to the parent, which fails the run
            traceback.print_exc()
            answer = {"error": f"{type(exc).__name__}: {exc}"}
        proto.write(json.dumps(answer) + "\n")
        proto.flush()


if __name__ == "__main__":
    serve()
