"""`trackport sync`: rounds of copies that add only what is new, with real components: a
TensorBoard logdir that keeps growing (tensorboardX, as a training writes it) mirrored into
MLflow with every point once; a real MLflow server that stops answering for a round;
Ctrl-C between rounds; memory over many rounds."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import pytest

import trackport
from fault_proxy import FaultProxy
from support import run_cli

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "examples" / "sample-export"


def _log_scalars(logdir: Path, steps: range) -> None:
    from tensorboardX import SummaryWriter

    # a new event file, as a resumed training writes one; tensorboardX names it by the second
    # (event_file_writer.py), so two writers within one second would share (and overwrite) a file
    writer = SummaryWriter(str(logdir), filename_suffix=f".from{steps.start}")
    for step in steps:
        writer.add_scalar("train/loss", 1.0 / (step + 1), step, walltime=1_700_000_000 + step)
    writer.close()


def test_a_growing_tensorboard_run_is_mirrored_into_mlflow_with_every_point_once(tmp_path):
    from mlflow.tracking import MlflowClient

    logdir = tmp_path / "logs"
    _log_scalars(logdir / "exp", range(0, 50))
    db = tmp_path / "mlflow.db"
    dest = f"mlflow:sqlite:///{db}"
    statuses: list[dict] = []

    def on_round(number, report, error):
        assert error is None, error
        statuses.append(report.totals.statuses)
        if number == 1:
            _log_scalars(logdir / "exp", range(50, 120))     # training goes on between rounds

    done = trackport.sync(f"tensorboard:{logdir}", dest, every=0, rounds=3, on_round=on_round,
                          state_dir=tmp_path / ".trackport")
    assert statuses[0] == {"moved": 1}
    assert "skipped" not in statuses[1], statuses      # the grown run was refreshed ...
    assert statuses[2] == {"skipped": 1}               # ... and then left alone
    assert done.rounds == 3 and done.exit_code == 0
    client = MlflowClient(f"sqlite:///{db}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert len(runs) == 1                               # refreshed in place, never a second run
    history = client.get_metric_history(runs[0].info.run_id, "train/loss")
    assert sorted(m.step for m in history) == list(range(120))   # every point, once
    assert trackport.verify(f"tensorboard:{logdir}", dest).exit_code == 0


_GROW_WANDB_RUN = """
import sys
from trackport.connectors.wandb.client import import_wandb
wandb = import_wandb()
root, first, last = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
run = wandb.init(project="sync", entity="team", id="growing1", dir=root, resume="allow",
                 settings=wandb.Settings(mode="offline", x_disable_meta=True, save_code=False,
                                         x_disable_stats=True, console="off", silent=True))
for step in range(first, last):
    run.log({"loss": 1.0 / (step + 1), "_timestamp": 1_700_000_000 + step}, step=step)
run.finish()
"""


def _train_wandb(root: Path, first: int, last: int) -> None:
    """Steps first..last-1 of one W&B run, offline, with the real SDK (a resumed training
    writes a second folder of the same run id)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(WANDB_SILENT="true", PYTHONPATH=str(REPO / "src"))
    subprocess.run([sys.executable, "-c", _GROW_WANDB_RUN, str(root), str(first), str(last)], check=True,
                   env=env, timeout=180, capture_output=True)


def test_a_growing_wandb_offline_run_is_mirrored_into_mlflow_with_every_point_once(tmp_path):
    from mlflow.tracking import MlflowClient

    root = tmp_path / "training"
    _train_wandb(root, 0, 100)
    db = tmp_path / "mlflow.db"
    statuses: list[dict] = []

    def on_round(number, report, error):
        assert error is None, error
        statuses.append(report.totals.statuses)
        if number == 1:
            time.sleep(1.1)              # W&B names a run's folder by its start time, to the second
            _train_wandb(root, 100, 200)

    done = trackport.sync(f"wandb:{root}", f"mlflow:sqlite:///{db}", every=0, rounds=3, on_round=on_round,
                          state_dir=tmp_path / ".trackport")
    assert statuses == [{"moved": 1}, {"repaired": 1}, {"skipped": 1}] and done.exit_code == 0
    client = MlflowClient(f"sqlite:///{db}")
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    history = client.get_metric_history(run.info.run_id, "loss")
    assert sorted(m.step for m in history) == list(range(200))          # every point, once
    assert {m.timestamp for m in history} == {(1_700_000_000 + s) * 1000 for s in range(200)}


def test_a_destination_gone_for_a_round_is_caught_up_by_the_next(tmp_path, mlflow_server):
    errors: list[str | None] = []
    with FaultProxy(mlflow_server, rate=0.0, kinds=("503",)) as proxy:

        def on_round(number, report, error):
            errors.append(error if error else (None if report.exit_code == 0 else "runs failed"))
            proxy.rate = 1.0 if number == 1 else 0.0      # every request answered 503 in round 2

        dest = f"mlflow+{proxy.url}"
        isolated = {"mlflow_experiment": f"sync-{tmp_path.name}-{{project}}"}
        done = trackport.sync(str(SAMPLE), dest, every=0, rounds=3, on_round=on_round,
                              state_dir=tmp_path / ".trackport", retry_max_seconds=3, **isolated)
        assert errors[0] is None and errors[1] is not None and errors[2] is None, errors
        assert done.exit_code == 0 and done.failed_rounds == 0
        assert done.last.totals.statuses == {"skipped": 5}, done.last.totals
        checked = trackport.verify(str(SAMPLE), dest, **isolated)
        assert checked.exit_code == 0 and checked.totals.statuses == {"verified": 5}   # one run each


def test_ctrl_c_between_rounds_stops_at_once_with_the_last_rounds_exit_code(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.Popen([sys.executable, "-m", "trackport", "sync", str(SAMPLE), f"parquet:{tmp_path / 'out'}",
                             "--every", "10m", "--state-dir", str(tmp_path / ".trackport")],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        first = ""
        deadline = time.monotonic() + 120
        while "round 1:" not in first and time.monotonic() < deadline:
            first += proc.stderr.readline()
        assert "round 1: 5 moved" in first, first
        os.kill(proc.pid, signal.SIGINT)
        started = time.monotonic()
        _, err = proc.communicate(timeout=30)
        assert time.monotonic() - started < 10
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, err
    assert "sync: 1 round(s), 0 could not run; 5 moved" in err


def test_memory_stays_flat_over_many_rounds(tmp_path):
    out = f"parquet:{tmp_path / 'out'}"
    used: dict[int, int] = {}

    def on_round(number, report, error):
        if number in (40, 140):
            used[number] = tracemalloc.get_traced_memory()[0]

    tracemalloc.start()
    try:
        done = trackport.sync(str(SAMPLE), out, every=0, rounds=140, on_round=on_round,
                              state_dir=tmp_path / ".trackport")
    finally:
        tracemalloc.stop()
    assert done.rounds == 140 and done.statuses == {"moved": 5, "skipped": 139 * 5}
    assert used[140] - used[40] < 256 * 1024, used      # 100 rounds later: no growth to speak of


def test_a_bad_uri_or_period_is_a_usage_error_at_once(tmp_path):
    with pytest.raises(trackport.UsageError):
        trackport.sync(str(SAMPLE), "nosuchscheme://x", every=0, rounds=5)
    code, _, out = run_cli("sync", str(SAMPLE), f"parquet:{tmp_path / 'out'}", "--every", "5x", "--rounds", "1")
    assert code == 2 and "--every '5x' is not a duration" in out
    assert not (tmp_path / "out").exists()
