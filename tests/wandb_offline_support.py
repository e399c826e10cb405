"""Makes real W&B offline runs with the real wandb SDK, in a child process.

Run as a script: `python wandb_offline_support.py DIR` writes two runs under DIR/wandb
and prints nothing of interest; the values logged are the constants below, which the
tests compare with what the `wandb:` source reads.  A child process keeps the SDK's
console capture, service process and globals out of the test process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

ENTITY = "acme"
PROJECT = "vision"
BASE_S = 1_714_521_600.0          # 2024-05-01T00:00:00Z
RICH_ID = "rich0001"
SPARSE_ID = "sparse01"
CONFIG = {"optimizer": {"lr": 0.001, "betas": [0.9, 0.999], "name": "adam", "nested": {"deep": 3}},
          "epochs": 10, "flag": True, "nothing": None, "ünï code": "välue"}
# (step, {key: value}, timestamp seconds): uneven steps, metrics at different steps
HISTORY = [
    (0, {"loss": 1.5, "acc/top1": 0.1}, BASE_S + 0.001),
    (1, {"loss": 1.25}, BASE_S + 1.5),
    (5, {"loss": float("nan"), "acc/top1": 0.25, "lr/ünï": 3}, BASE_S + 5.25),
    (17, {"loss": float("inf"), "text": "hello"}, BASE_S + 17.125),
    (18, {"neg": float("-inf")}, BASE_S + 18.0),
    (1000, {"loss": 0.5, "acc/top1": 0.75}, BASE_S + 1000.999),
]
MEDIA_STEP = 1001
# what `make_runs` leaves for the `wandb:` source: its two runs, and the artifact the SDK makes
# of the rich run's wandb.Table (a `run_table` artifact, moved like every artifact)
ENTRIES = 3
STDOUT_LINES = ["first line", "second line with ünïcode"]
STDERR_LINES = ["a warning line"]
SPARSE_HISTORY = [(3, {"x": 1.0}, BASE_S + 3), (300, {"y": 2.0}, BASE_S + 300), (301, {"x": 3.0}, BASE_S + 301)]


def make_runs(root: Path) -> None:
    """Write the two runs (offline) under root/wandb; raises if the child fails."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "PLUTO_"))}
    env["WANDB_SILENT"] = "true"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).parent.parent / "src"),
                                                      env.get("PYTHONPATH", "")]))
    subprocess.run([sys.executable, __file__, str(root)], check=True, env=env, timeout=120,
                   capture_output=True)


def _child(root: Path) -> None:
    from trackport.connectors.wandb.client import import_wandb

    wandb = import_wandb()
    import numpy as np

    settings = wandb.Settings(mode="offline", x_disable_meta=True, save_code=False,
                              x_disable_stats=True, console="wrap", silent=True)
    run = wandb.init(project=PROJECT, entity=ENTITY, id=RICH_ID, dir=str(root), config=CONFIG,
                     tags=["baseline", "ünï"], notes="notes ✓", group="grp", job_type="train",
                     name="rich run", settings=settings)
    for line in STDOUT_LINES:
        print(line, flush=True)
    for line in STDERR_LINES:
        print(line, file=sys.stderr, flush=True)
    for step, values, ts in HISTORY:
        run.log({**values, "_timestamp": ts}, step=step)
    image = np.zeros((4, 6, 3), dtype=np.uint8)
    image[1, 2] = [255, 0, 0]
    run.log({"samples/img": wandb.Image(image), "weights": wandb.Histogram(np_histogram=([1, 2, 3], [0.0, 1.0, 2.5, 4.0])),
             "tab": wandb.Table(columns=["a", "b"], data=[[1, "x"], [2, "y"]]), "_timestamp": BASE_S + 2000},
            step=MEDIA_STEP)
    saved = root / "model.ckpt"
    saved.write_bytes(b"checkpoint bytes")
    run.save(str(saved), base_path=str(root), policy="now")
    notes = root / "notes.txt"
    notes.write_text("a saved text file")
    run.save(str(notes), base_path=str(root), policy="now")
    run.summary["best"] = 0.75
    run.summary["best_epoch"] = 7
    run.finish()

    run = wandb.init(project=PROJECT, entity=ENTITY, id=SPARSE_ID, dir=str(root), config={"k": 1},
                     settings=wandb.Settings(mode="offline", x_disable_meta=True, save_code=False,
                                             x_stats_sampling_interval=0.1, console="off", silent=True))
    for step, values, ts in SPARSE_HISTORY:
        run.log({**values, "_timestamp": ts}, step=step)
    time.sleep(1.0)   # system metrics (stats records) sampled every 0.1 s
    run.finish(exit_code=3)
    print(json.dumps({"ok": True}))


# -- one run id in several folders (a resumed run, a run a sweep agent started twice) -----------
RESUMED_ID = "resume01"
STUB_ID = "stub0001"
# (config, [(step, {key: value}, timestamp seconds)], summary, exit code) of each folder, in time order
RESUMED_FOLDERS = [
    ({"lr": 0.1, "epochs": 3}, [(0, {"loss": 3.0}, BASE_S), (1, {"loss": 2.0}, BASE_S + 1),
                                (2, {"loss": 1.5}, BASE_S + 2)], {"best": 1.5}, 1),
    # resumed from a checkpoint of step 2: logs step 2 again, then goes on
    ({"lr": 0.05}, [(2, {"loss": 99.0}, BASE_S + 50), (3, {"loss": 1.0, "acc": 0.5}, BASE_S + 51),
                    (4, {"loss": 0.5}, BASE_S + 52)], {"best": 0.5}, 0),
]
STUB_FOLDERS = [
    ({"a": 1, "only_first": "x"}, [], {}, 0),        # started, then stopped by the agent: no history
    ({"a": 2}, [(0, {"m": 1.0}, BASE_S + 10), (1, {"m": 2.0}, BASE_S + 11)], {"m": 2.0}, 0),
]


def make_resumed_runs(root: Path) -> None:
    """Write RESUMED_ID and STUB_ID, each as two offline folders of one run id (real SDK)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "PLUTO_"))}
    env["WANDB_SILENT"] = "true"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).parent.parent / "src"),
                                                      env.get("PYTHONPATH", "")]))
    subprocess.run([sys.executable, __file__, str(root), "resumed"], check=True, env=env, timeout=120,
                   capture_output=True)


def _child_resumed(root: Path) -> None:
    from trackport.connectors.wandb.client import import_wandb

    wandb = import_wandb()
    for run_id, folders in ((RESUMED_ID, RESUMED_FOLDERS), (STUB_ID, STUB_FOLDERS)):
        for n, (config, history, summary, exit_code) in enumerate(folders):
            if n:
                time.sleep(1.1)       # the folder name holds the start time, to the second
            run = wandb.init(project=PROJECT, entity=ENTITY, id=run_id, dir=str(root), config=config,
                             resume="allow",
                             settings=wandb.Settings(mode="offline", x_disable_meta=True, save_code=False,
                                                     x_disable_stats=True, console="off", silent=True))
            for step, values, ts in history:
                run.log({**values, "_timestamp": ts}, step=step)
            for key, value in summary.items():
                run.summary[key] = value
            run.finish(exit_code=exit_code)


# -- logs of older SDKs, written record by record with wandb's own protobuf classes -----------
PROTO_ID = "oldsdk01"
# stats items as the SDKs wrote them: wandb 0.10-0.12 (`network` a dict, gpu keys flat) and
# wandb 0.21 (a key that itself starts with `system.`)
STATS = [
    (BASE_S + 2.0, {"cpu": 12.5, "memory": 40.0, "network": {"sent": 1000, "recv": 2000},
                    "gpu.0.gpu": 55.0, "system.powerWatts": 3.5}),
    (BASE_S + 4.0, {"cpu": 13.5, "memory": 41.0, "network": {"sent": 1500, "recv": 2600},
                    "gpu.0.gpu": 56.0, "system.powerWatts": 3.75}),
]
# the W&B (API) names of those metrics and their canonical paths
STATS_PATHS = {"monitoring/cpu": "cpu", "monitoring/memory": "memory",
               "monitoring/network.sent": ("network", "sent"), "monitoring/network.recv": ("network", "recv"),
               "monitoring/gpu.0.gpu": "gpu.0.gpu", "monitoring/system.powerWatts": "system.powerWatts"}
PROTO_HISTORY = [(0, {"loss": 1.0}, BASE_S + 1.0), (1, {"loss": 0.5}, BASE_S + 3.0)]


def write_proto_run(root: Path, run_id: str = PROTO_ID, stats=STATS, history=PROTO_HISTORY,
                    stepless: list[dict] = ()) -> Path:
    """An offline run folder under root/wandb whose `.wandb` log holds a run record, history
    rows (each with `_step`, as every SDK writes them), `stats` records and an exit record,
    made with `wandb.proto.wandb_internal_pb2` and written in the `.wandb` format
    (datastore.write_log).  `stepless`: history rows written with neither `_step` nor a step."""
    from trackport.connectors.wandb.client import internal_pb2
    from trackport.connectors.wandb.datastore import write_log

    pb = internal_pb2()
    payloads = []

    def record(**kind):
        rec = pb.Record(**kind)
        payloads.append(rec.SerializeToString())

    run = pb.RunRecord(run_id=run_id, entity=ENTITY, project=PROJECT)
    run.start_time.FromMilliseconds(int(BASE_S * 1000))
    record(run=run)

    def history_record(values: dict, step: int | None, ts: float) -> None:
        hist = pb.HistoryRecord()
        items = dict(values, _timestamp=ts)
        if step is not None:
            items["_step"] = step
        for key, value in items.items():
            hist.item.add(key=key, value_json=json.dumps(value))
        record(history=hist)

    rows = [(step, values, ts) for step, values, ts in history]
    for step, values, ts in rows[:1]:
        history_record(values, step, ts)
    for values in stepless:
        history_record(values, None, BASE_S + 1.5)
    for step, values, ts in rows[1:]:
        history_record(values, step, ts)
    for ts, items in stats:
        stat = pb.StatsRecord(stats_type=pb.StatsRecord.StatsType.SYSTEM)
        stat.timestamp.FromNanoseconds(int(round(ts * 1e9)))
        for key, value in items.items():
            stat.item.add(key=key, value_json=json.dumps(value))
        record(stats=stat)
    record(exit=pb.RunExitRecord(exit_code=0, runtime=5))
    run_dir = root / "wandb" / f"offline-run-20240501_000000-{run_id}"
    run_dir.mkdir(parents=True)
    write_log(run_dir / f"run-{run_id}.wandb", payloads)
    return run_dir


# -- a run that logs artifacts (the SDK stages their files under WANDB_DATA_DIR) ---------------
ARTIFACT_RUN_ID = "arts0001"
# name -> (type, {path in the artifact: bytes}, aliases given, description, metadata)
ARTIFACTS = {
    "resnet": ("model", {"weights.bin": bytes(range(256)) * 40, "conf/config.json": b'{"depth": 50}'},
               ["best", "epoch-3"], "the best checkpoint", {"acc": 0.91, "epochs": 3}),
    "cifar": ("dataset", {"train.csv": b"x,y\n1,2\n"}, [], "", {}),
}


def make_artifact_run(root: Path) -> Path:
    """Write ARTIFACT_RUN_ID (logging ARTIFACTS) under root/wandb; returns the staging root."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "PLUTO_"))}
    env.update(WANDB_SILENT="true", WANDB_DATA_DIR=str(root / "wandb-data"), WANDB_CACHE_DIR=str(root / "cache"))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).parent.parent / "src"),
                                                      env.get("PYTHONPATH", "")]))
    subprocess.run([sys.executable, __file__, str(root), "artifacts"], check=True, env=env, timeout=120,
                   capture_output=True)
    return root / "wandb-data"


def _child_artifacts(root: Path) -> None:
    from trackport.connectors.wandb.client import import_wandb

    wandb = import_wandb()
    run = wandb.init(project=PROJECT, entity=ENTITY, id=ARTIFACT_RUN_ID, dir=str(root),
                     settings=wandb.Settings(mode="offline", x_disable_meta=True, save_code=False,
                                             x_disable_stats=True, console="off", silent=True))
    run.log({"loss": 1.0}, step=0)
    for name, (kind, files, aliases, description, metadata) in ARTIFACTS.items():
        artifact = wandb.Artifact(name, type=kind, description=description or None, metadata=metadata or None)
        for rel, data in files.items():
            with artifact.new_file(rel, mode="wb") as fh:
                fh.write(data)
        run.log_artifact(artifact, aliases=aliases or None)
    run.finish()


if __name__ == "__main__":
    if sys.argv[2:] == ["resumed"]:
        _child_resumed(Path(sys.argv[1]))
    elif sys.argv[2:] == ["artifacts"]:
        _child_artifacts(Path(sys.argv[1]))
    else:
        _child(Path(sys.argv[1]))


def conformance_target(tmp_path: Path):
    """The conformance target of tests/test_wandb.py: corpus -> W&B sink offline -> `wandb:`.

    Nothing is transformed for the corpus (every change the sink may make is undone by the
    manifest it writes), so `expect` stays the input.
    """
    from trackport.testing.conformance import Target

    dest = tmp_path / "wandb-dest"
    return Target("wandb://trackport/corpus", ["--wandb-mode", "offline", "--wandb-dir", str(dest)],
                  back=f"wandb:{dest}")
