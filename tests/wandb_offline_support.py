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


if __name__ == "__main__":
    _child(Path(sys.argv[1]))


def conformance_target(tmp_path: Path):
    """The `wandb-offline` entry of tests/test_conformance.py: corpus -> W&B sink offline -> `wandb:`.

    Nothing is transformed for the corpus (every change the sink may make is undone by the
    manifest it writes), so `expect` stays the input.
    """
    from support import Target

    dest = tmp_path / "wandb-dest"
    return Target("wandb://trackport/corpus", ["--wandb-mode", "offline", "--wandb-dir", str(dest)],
                  back=f"wandb:{dest}")
