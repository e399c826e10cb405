"""Neptune test helpers: conformance targets and SDK writers (offline modes, data under tmp_path)."""

from __future__ import annotations

from pathlib import Path


def conformance_target(tmp_path: Path, generation: str):
    """corpus -> neptune{2,3}:// in offline mode -> neptune:DATA_DIR; nothing may differ."""
    from trackport.testing.conformance import Target

    data = tmp_path / f"neptune{generation}-data"
    return Target(
        f"neptune{generation}://trackport-tests/corpus",
        ["--neptune-mode", "offline", "--neptune-data-dir", str(data)],
        back=f"neptune:{data}",
        expect=lambda run: sorted_string_sets(run.table),
    )


def sorted_string_sets(table):
    """A canonical table with its string sets sorted (declared transformation `string_set_sorted`)."""
    import pyarrow as pa

    col = table.column("string_set_value").to_pylist()
    fixed = pa.array([None if v is None else sorted(v) for v in col], table.schema.field("string_set_value").type)
    return table.set_column(table.schema.get_field_index("string_set_value"), "string_set_value", fixed)


# -- runs written by the real SDKs, offline -------------------------------------------
BASE_S = 1_714_521_600  # 2024-05-01T00:00:00Z


def write_sdk2_run(data_dir: Path, files_dir: Path) -> list[dict]:
    """One run with the 2.x client (`neptune.init_run(mode="offline")`); its expected rows.

    Rows are dicts as `trackport.testing.corpus.rows_table` takes them, plus
    series given as (path, type, steps, timestamps ms, values).
    """
    import os
    from datetime import datetime, timezone

    import neptune
    from neptune.types import File

    from trackport.testing.corpus import png_bytes

    os.environ["NEPTUNE_DATA_DIRECTORY"] = str(data_dir)
    files_dir.mkdir(parents=True, exist_ok=True)
    (files_dir / "model.ckpt").write_bytes(b"\x00weights" * 50)
    (files_dir / "sample.png").write_bytes(png_bytes(3))
    fs = files_dir / "code"
    (fs / "pkg").mkdir(parents=True, exist_ok=True)
    (fs / "train.py").write_text("print('hi')\n")
    (fs / "pkg" / "util.py").write_text("X = 1\n")
    run = neptune.init_run(mode="offline", project="ws/proj", custom_run_id="sdk2-run", name="sdk2 name",
                           description="notes", tags=["keep", "drop"], capture_hardware_metrics=False,
                           capture_stdout=False, capture_stderr=False, capture_traceback=False,
                           git_ref=False, source_files=[])
    try:
        run["config/lr"] = 0.001
        run["config/epochs"] = 12
        run["config/opt"] = "adam"
        run["config/amp"] = True
        run["config/start"] = datetime(2024, 5, 1, 12, 30, 15, 250000, tzinfo=timezone.utc)
        run["config/gone"] = "deleted below"
        run["config/overwritten"] = 1
        run["config/overwritten"] = 2
        run["sys/group_tags"].add(["grp"])
        run["sys/tags"].remove("drop")
        run["data/sources"].add(["coco", "imagenet"])
        run["train/loss"].extend([0.9, 0.7, 0.5, 0.25], steps=[0.5, 1, 1.25, 1000000.125],
                                 timestamps=[BASE_S + 0.001, BASE_S + 1.5, BASE_S + 2, BASE_S + 3.999])
        run["monitoring/stdout"].append("epoch 0", step=0, timestamp=BASE_S + 10)
        run["monitoring/stdout"].append("ünïcode ✓", step=1, timestamp=BASE_S + 11.25)
        run["files/model"].upload(str(files_dir / "model.ckpt"))
        run["images/sample"].append(File(str(files_dir / "sample.png")), step=3, timestamp=BASE_S + 20)
        run["source_code/files"].upload_files([str(fs)])
        del run["config/gone"]
    finally:
        run.stop()
    ms = BASE_S * 1000
    return [
        {"path": "sys/name", "type": "string", "value": "sdk2 name"},
        {"path": "sys/description", "type": "string", "value": "notes"},
        {"path": "sys/tags", "type": "string_set", "value": ["keep"]},
        {"path": "sys/group_tags", "type": "string_set", "value": ["grp"]},
        {"path": "sys/failed", "type": "bool", "value": False},
        {"path": "config/lr", "type": "float", "value": 0.001},
        {"path": "config/epochs", "type": "int", "value": 12},
        {"path": "config/opt", "type": "string", "value": "adam"},
        {"path": "config/amp", "type": "bool", "value": True},
        {"path": "config/start", "type": "datetime", "value": ms + 45_015_250},
        {"path": "config/overwritten", "type": "int", "value": 2},
        {"path": "data/sources", "type": "string_set", "value": ["coco", "imagenet"]},
        ("train/loss", "float_series", ["0.5", "1", "1.25", "1000000.125"],
         [ms + 1, ms + 1500, ms + 2000, ms + 3999], [0.9, 0.7, 0.5, 0.25]),
        ("monitoring/stdout", "string_series", ["0", "1"], [ms + 10_000, ms + 11_250], ["epoch 0", "ünïcode ✓"]),
    ]


def write_sdk3_runs(log_dir: Path, files_dir: Path) -> dict[str, list]:
    """A parent and a forked child with neptune-scale (`mode="offline"`); their expected rows."""
    from datetime import datetime, timezone

    from neptune_scale import Run
    from neptune_scale.types import Histogram

    from trackport.testing.corpus import png_bytes

    files_dir.mkdir(parents=True, exist_ok=True)
    (files_dir / "weights.bin").write_bytes(b"\x01\x02" * 100)
    (files_dir / "frame.png").write_bytes(png_bytes(5))
    utc = timezone.utc
    common = dict(mode="offline", project="ws/proj3", log_directory=str(log_dir),
                  enable_console_log_capture=False, source_tracking_config=None, runtime_namespace=None)
    created = datetime(2024, 5, 1, tzinfo=utc)
    parent = Run(run_id="sdk3-parent", experiment_name="exp-a", creation_time=created, **common)
    try:
        parent.log_configs({"config/lr": 0.01, "config/big": 2**40, "config/name": "resnet",
                            "config/flag": False, "config/when": datetime(2024, 5, 2, 3, 4, 5, tzinfo=utc),
                            "config/list": ["b", "a"], "config/nan": float("nan"), "sys/name": "parent name"})
        parent.add_tags(["t1", "t2"])
        parent.add_tags(["g"], group_tags=True)
        parent.remove_tags(["t2"])
        for i, step in enumerate([0.5, 1.0, 1.25, 2.000001]):
            parent.log_metrics({"train/loss": 1.0 / (i + 1), "train/acc": i * 0.25}, step=step,
                               timestamp=datetime(2024, 5, 1, 0, 0, i, 123000 * i, tzinfo=utc))
        parent.log_string_series({"logs/out": "line a"}, step=1,
                                 timestamp=datetime(2024, 5, 1, 0, 1, tzinfo=utc))
        parent.log_histograms({"hist/w": Histogram(bin_edges=[0, 1, 2], counts=[3, 4])}, step=1,
                              timestamp=datetime(2024, 5, 1, 0, 2, tzinfo=utc))
        parent.assign_files({"files/weights": str(files_dir / "weights.bin")})
        parent.log_files({"images/frame": str(files_dir / "frame.png")}, step=2,
                         timestamp=datetime(2024, 5, 1, 0, 3, tzinfo=utc))
    finally:
        parent.close()
    child = Run(run_id="sdk3-child", fork_run_id="sdk3-parent", fork_step=1.25, creation_time=created, **common)
    try:
        child.log_metrics({"train/loss": 0.1}, step=3, timestamp=datetime(2024, 5, 1, 1, tzinfo=utc))
    finally:
        child.close()
    ms = 1_714_521_600_000
    return {
        "sdk3-parent": [
            {"path": "sys/creation_time", "type": "datetime", "value": ms},
            {"path": "sys/experiment/name", "type": "string", "value": "exp-a"},
            {"path": "sys/name", "type": "string", "value": "parent name"},
            {"path": "sys/tags", "type": "string_set", "value": ["t1"]},
            {"path": "sys/group_tags", "type": "string_set", "value": ["g"]},
            {"path": "config/lr", "type": "float", "value": 0.01},
            {"path": "config/big", "type": "int", "value": 2**40},
            {"path": "config/name", "type": "string", "value": "resnet"},
            {"path": "config/flag", "type": "bool", "value": False},
            {"path": "config/when", "type": "datetime", "value": ms + 86_400_000 + 11_045_000},
            {"path": "config/list", "type": "string_set", "value": ["a", "b"]},
            {"path": "config/nan", "type": "float", "value": float("nan")},
            ("train/loss", "float_series", ["0.5", "1", "1.25", "2.000001"],
             [ms, ms + 1123, ms + 2246, ms + 3369], [1.0, 0.5, 1.0 / 3, 0.25]),
            ("train/acc", "float_series", ["0.5", "1", "1.25", "2.000001"],
             [ms, ms + 1123, ms + 2246, ms + 3369], [0.0, 0.25, 0.5, 0.75]),
            ("logs/out", "string_series", ["1"], [ms + 60_000], ["line a"]),
            ("hist/w", "histogram_series", ["1"], [ms + 120_000],
             [{"type": "COUNTING", "edges": [0.0, 1.0, 2.0], "values": [3.0, 4.0]}]),
        ],
        "sdk3-child": [
            {"path": "sys/creation_time", "type": "datetime", "value": ms},
            {"path": "sys/forking/parent", "type": "string", "value": "sdk3-parent"},
            {"path": "sys/forking/step", "type": "float", "value": 1.25},
            ("train/loss", "float_series", ["3"], [ms + 3_600_000], [0.1]),
        ],
    }


def expected_table(project_id: str, run_id: str, rows: list):
    """Canonical table of `rows` (dicts for single values, tuples for series)."""
    import pyarrow as pa

    from trackport.testing.corpus import micro_steps, rows_table, series_table

    singles = [r for r in rows if isinstance(r, dict)]
    tables = [rows_table(project_id, run_id, singles)]
    for path, typ, steps, ts, values in (r for r in rows if isinstance(r, tuple)):
        tables.append(series_table(project_id, run_id, path, typ, values, micro_steps(steps), ts))
    return pa.concat_tables(tables)


# -- 2.x async queues as the real client leaves them ---------------------------------
# The real `neptune` 1.x client in async mode (its AsyncOperationProcessor, DiskQueue and
# acknowledgements), talking to the client's own in-memory backend instead of the hosted
# service; like HostedNeptuneBackend.execute_operations, the backend deletes an upload's
# temporary file once it has been sent.  The process ends with os._exit, as a killed
# training does, so the queues stay on disk: acknowledged operations and a pending tail.
_ASYNC_WRITER = r'''
import os, sys, threading
os.environ["NEPTUNE_DATA_DIRECTORY"] = sys.argv[1]
import neptune
import neptune.metadata_containers.metadata_container as mc
from neptune.internal.backends.neptune_backend_mock import NeptuneBackendMock
from neptune.internal.container_type import ContainerType
from neptune.types import File


class Server(NeptuneBackendMock):
    created = None

    def create_run(self, *args, **kwargs):
        self.created = super().create_run(*args, **kwargs)
        return self.created

    def get_metadata_container(self, container_id, expected_container_type):
        if expected_container_type == ContainerType.RUN and self.created is not None:
            return self.created                                 # resuming the run created above
        return super().get_metadata_container(container_id, expected_container_type)

    def execute_operations(self, container_id, container_type, operations, operation_storage):
        if any(getattr(op, "path", None) == ["files", "pending"] for op in operations):
            threading.Event().wait()            # the network is gone: this upload is never sent
        out = super().execute_operations(container_id, container_type, operations, operation_storage)
        for op in operations:
            op.clean(operation_storage=operation_storage)
        return out


server = Server()
mc.get_backend = lambda mode, api_token=None, proxies=None: server
quiet = dict(project="ws/proj", mode="async", flush_period=1000, capture_hardware_metrics=False,
             capture_stdout=False, capture_stderr=False, capture_traceback=False, git_ref=False, source_files=[])
run = neptune.init_run(**quiet)
run["params/lr"] = 0.1
for i in range(3):
    run["train/loss"].append(1.0 / (i + 1))                    # no step: numbered 0, 1, 2
run["train/loss"].append(9.0, step=10)
run["train/loss"].append(8.0)                                  # 11
run["monitoring/stdout"].append("line a")                      # 0 (its own series)
run["files/sent"].upload(File.from_content(b"sent bytes", extension="bin"))
run.wait()                                                     # acknowledged: the tmp file is gone
# a second execution of the same run (resumed by its id), its own queue folder
again = neptune.init_run(with_id=run["sys/id"].fetch(), **quiet)
again["train/loss"].append(7.0)                                # 12: continues the series
again["files/pending"].upload(File.from_content(b"pending bytes", extension="bin"))
again._op_processor._queue.flush()                            # pending: on disk, never sent
mv = neptune.init_model_version(model="PROJ-MOD", **{k: v for k, v in quiet.items() if k in ("project", "mode", "flush_period")})
mv["val/acc"].append(0.5)
mv["val/acc"].append(0.75)
mv.wait()
os._exit(0)
'''


def write_sdk2_async(data_dir: Path) -> None:
    """Run the writer above in its own process (it ends with os._exit)."""
    import subprocess
    import sys

    data_dir.mkdir(parents=True, exist_ok=True)
    script = data_dir.parent / "async_writer.py"
    script.write_text(_ASYNC_WRITER)
    done = subprocess.run([sys.executable, str(script), str(data_dir)], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
