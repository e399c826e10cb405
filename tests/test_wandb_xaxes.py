"""W&B custom x-axes: `define_metric(name, step_metric=...)` kept through every copy.

Runs are written by the real wandb SDK (0.31) in a child process, offline and online
(against tests/wandb_server.py).  Their metric definitions become
`wandb/define_metric/<name>` string attributes (docs/wandb.md, "Custom x-axes"), a W&B
destination writes them back as real MetricRecords (read here from the written `.wandb`
log with the SDK's own protobuf), and parquet and MLflow keep them as plain values.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from support import read_plain_export, run_cli
from trackport.connectors.wandb import mapping as mp
from trackport.connectors.wandb.client import internal_pb2
from trackport.connectors.wandb.datastore import LogReader
from trackport.core.layout import safe
from trackport.core.schema import rows_to_table
from wandb_server import wandb_server  # noqa: F401  (fixture)

RUN_ID = "xaxes001"
ENTITY, PROJECT = "acme", "axes"
# what the run below defines, as the canonical attributes must hold it
DEFINITIONS = {
    "wandb/define_metric/epoch": "{}",
    "wandb/define_metric/val/acc": '{"step_metric":"epoch","step_sync":true,"summary":["max"]}',
    "wandb/define_metric/train/*": '{"step_metric":"global_step","step_sync":true}',
    "wandb/define_metric/hidden_one": '{"hidden":true}',
}

_CHILD = textwrap.dedent('''
    import sys
    from trackport.connectors.wandb.client import import_wandb
    wandb = import_wandb()
    mode, root, run_id = sys.argv[1], sys.argv[2], sys.argv[3]
    settings = wandb.Settings(mode=mode, x_disable_meta=True, save_code=False, x_disable_stats=True,
                              console="off", silent=True)
    run = wandb.init(project="PROJECT", entity="ENTITY", id=run_id, dir=root, settings=settings)
    run.define_metric("epoch")
    run.define_metric("val/acc", step_metric="epoch")
    run.define_metric("val/acc", summary="max")          # merged into the definition above
    run.define_metric("train/*", step_metric="global_step")
    run.define_metric("hidden_one", hidden=True)
    for i in range(4):
        row = {"train/loss": 1.0 / (i + 1), "global_step": i * 100, "hidden_one": float(i)}
        if i % 2:
            row.update({"epoch": i // 2, "val/acc": 0.5 + i / 10})
        run.log(row, step=i)
    run.finish()
''').replace("PROJECT", PROJECT).replace("ENTITY", ENTITY)


def _write_run(mode: str, root: Path, run_id: str = RUN_ID) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "PLUTO_"))}
    if mode == "online":
        env.update({k: os.environ[k] for k in ("WANDB_BASE_URL", "WANDB_API_KEY")})
    env["WANDB_SILENT"] = "true"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).parent.parent / "src"),
                                                      env.get("PYTHONPATH", "")]))
    subprocess.run([sys.executable, "-c", _CHILD, mode, str(root), run_id], check=True, env=env,
                   timeout=120, capture_output=True)


def _definitions(export_root: Path) -> dict[str, str]:
    (table,) = read_plain_export(export_root).values()
    rows = table.filter(pc.starts_with(table.column("attribute_path"), mp.DEFINE_METRIC_PREFIX))
    assert set(rows.column("attribute_type").to_pylist()) <= {"string"}
    assert rows.column("step").null_count == rows.num_rows      # single values
    return dict(zip(rows.column("attribute_path").to_pylist(), rows.column("string_value").to_pylist()))


def _metric_records(wandb_root: Path) -> dict[str, object]:
    """name (or glob name) -> MetricRecord of the one offline run under wandb_root/wandb."""
    pb = internal_pb2()
    (log_file,) = (wandb_root / "wandb").glob("offline-run-*/*.wandb")
    out = {}
    for payload in LogReader(log_file):
        record = pb.Record()
        record.ParseFromString(payload)
        if record.WhichOneof("record_type") == "metric":
            out[record.metric.name or record.metric.glob_name] = record.metric
    return out


def _assert_records_define_the_axes(records: dict) -> None:
    assert set(records) == {"epoch", "val/acc", "train/*", "hidden_one"}
    acc = records["val/acc"]
    assert acc.step_metric == "epoch" and acc.options.step_sync and acc.summary.max
    assert not acc.summary.min and not acc.options.hidden
    glob = records["train/*"]
    assert glob.glob_name == "train/*" and not glob.name and glob.step_metric == "global_step"
    assert records["hidden_one"].options.hidden and not records["hidden_one"].step_metric
    assert records["epoch"].step_metric == "" and records["epoch"].options.defined


@pytest.fixture(scope="module")
def offline_axes(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("wandb-axes")
    _write_run("offline", root)
    return root


def test_wandb_offline_to_parquet_to_wandb_keeps_define_metric(offline_axes, tmp_path):
    export = tmp_path / "export"
    code, report, out = run_cli("export", f"wandb:{offline_axes}", str(export))
    assert code == 0, out
    assert _definitions(export) == DEFINITIONS

    code, report, out = run_cli("plan", str(export), f"wandb://{ENTITY}/{PROJECT}", "--wandb-mode", "offline",
                                "--wandb-dir", str(tmp_path / "w"))
    assert code == 0, out
    assert "4 metric definition(s)" in out
    code, report, out = run_cli("copy", str(export), f"wandb://{ENTITY}/{PROJECT}", "--wandb-mode", "offline",
                                "--wandb-dir", str(tmp_path / "w"))
    assert code == 0, out
    assert "metric_definition_partial" not in out
    # the written run holds real metric definitions: W&B plots val/acc against epoch
    _assert_records_define_the_axes(_metric_records(tmp_path / "w"))
    # ... and the axis series itself, every point at its step
    back = tmp_path / "back"
    code, report, out = run_cli("export", f"wandb:{tmp_path / 'w'}", str(back))
    assert code == 0, out
    assert _definitions(back) == DEFINITIONS
    (table,) = read_plain_export(back).values()
    epoch = table.filter(pc.equal(table.column("attribute_path"), "epoch"))
    assert sorted(zip(epoch.column("step").to_pylist(), epoch.column("float_value").to_pylist())) == \
        [(1, 0.0), (3, 1.0)]
    code, report, out = run_cli("verify", f"wandb:{offline_axes}", f"wandb://{ENTITY}/{PROJECT}",
                                "--wandb-mode", "offline", "--wandb-dir", str(tmp_path / "w"))
    assert code == 0, out


def test_define_metric_through_mlflow_and_back_into_wandb(offline_axes, tmp_path, mlflow_sqlite_uri):
    dest = f"mlflow:{mlflow_sqlite_uri}"
    code, report, out = run_cli("copy", f"wandb:{offline_axes}", dest)
    assert code == 0, out
    export = tmp_path / "from-mlflow"
    code, report, out = run_cli("export", dest, str(export))
    assert code == 0, out
    assert _definitions(export) == DEFINITIONS
    # MLflow -> W&B: the plain values become metric definitions again
    code, report, out = run_cli("copy", dest, f"wandb://{ENTITY}/{PROJECT}", "--wandb-mode", "offline",
                                "--wandb-dir", str(tmp_path / "w"))
    assert code == 0, out
    _assert_records_define_the_axes(_metric_records(tmp_path / "w"))


def test_the_api_source_reads_the_definitions_the_server_keeps(wandb_server, tmp_path):  # noqa: F811
    # the real SDK online: wandb-core sends the definitions in config `_wandb.m`
    _write_run("online", tmp_path / "sdk", run_id="xaxes002")
    run = next(r for r in wandb_server.entities[ENTITY][PROJECT] if r.id == "xaxes002")
    assert any(e.get("1") == "val/acc" for e in run.wandb_config["m"])
    export = tmp_path / "api"
    code, report, out = run_cli("export", f"wandb://{ENTITY}/{PROJECT}", str(export))
    assert code == 0, out
    assert _definitions(export) == DEFINITIONS

    # and the sink online: wandb-core sends what it wrote in config `_wandb.m`, which W&B's UI plots by
    code, report, out = run_cli("copy", str(export), f"wandb://{ENTITY}/copied", "--wandb-dir", str(tmp_path / "d"))
    assert code == 0, out
    (copied,) = wandb_server.entities[ENTITY]["copied"]
    m = copied.wandb_config["m"]
    names = [e.get("1") or e.get("2") for e in m]
    acc = m[names.index("val/acc")]
    assert names[acc["5"] - 1] == "epoch" and 2 in acc["7"]          # x-axis epoch, summary max
    glob = m[names.index("train/*")]
    assert "2" in glob and names[glob["5"] - 1] == "global_step"
    assert 2 in m[names.index("hidden_one")]["6"]                    # hidden


def test_unwritable_definition_fields_are_a_declared_transformation(tmp_path):
    """A definition from an older SDK (goal, summary best) is written as far as wandb 0.31's
    define_metric goes, counted, and the attribute keeps every field."""
    text = mp.metric_definition_text("epoch", False, False, ["min", "best"], "minimize")
    assert text == '{"goal":"minimize","step_metric":"epoch","summary":["min","best"]}'
    assert mp.metric_unwritable(mp.metric_definition(text)) == ["goal", "summary"]
    table = rows_to_table([
        {"attribute_path": "wandb/define_metric/loss", "attribute_type": "string", "string_value": text},
        {"attribute_path": "wandb/define_metric/bad", "attribute_type": "string", "string_value": "not json"},
        {"attribute_path": "sys/name", "attribute_type": "string", "string_value": "old"},
    ], {"project_id": "acme/old", "run_id": "old1"})
    data = tmp_path / "src" / "data" / safe("acme/old")
    data.mkdir(parents=True)
    pq.write_table(table, data / f"{safe('old1')}_part_0.parquet")
    code, report, out = run_cli("copy", str(tmp_path / "src"), f"wandb://{ENTITY}/{PROJECT}", "--wandb-mode",
                                "offline", "--wandb-dir", str(tmp_path / "w"))
    assert code == 0, out
    (run,) = report["runs"]
    assert run["transformations"].get("metric_definition_partial") == 2, run
    (record,) = _metric_records(tmp_path / "w").values()
    assert record.name == "loss" and record.step_metric == "epoch" and record.summary.min
    assert not record.summary.best and int(record.goal) == 0
    back = tmp_path / "back"
    code, report, out = run_cli("export", f"wandb:{tmp_path / 'w'}", str(back))
    assert code == 0, out
    assert _definitions(back) == {"wandb/define_metric/loss": text, "wandb/define_metric/bad": "not json"}
