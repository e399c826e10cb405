"""The hostile input corpus: exports and tracker files that try to break a reader.

`write_hostile_export(folder)` writes, deterministically, one export in
neptune-exporter's layout (no trackport manifests) where every hostile case is
its own run -- or its own project, when the case is about projects -- next to
two good runs, plus a folder `outside/` beside the export that the escaping
file paths aim at.  `write_torn_tracker_files` (or `write_torn_wandb_run`,
`write_torn_neptune_queue` alone) has the real W&B and Neptune SDKs write
offline runs in child processes, then tears their last record.

Each case carries the outcome trackport defines for it: `outcome` into a
destination with integer steps (MLflow, with `--step-multiplier 1`),
`outcome_for(parquet=True)` into a parquet export:

    moved        the run moves unchanged
    transformed  the run moves; a declared transformation is counted
    failed       the run fails with an error naming the run and the file (and
                 the fix); every other run still moves, and the exit code is 1
    absent       nothing to move, nothing reported (an empty project)

The torn tracker files move up to the tear, with a warning in the run's report.
tests/test_hostile.py asserts each outcome; docs/format.md ("Hostile input")
tables them.  The tracker SDKs run only in the child processes.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from trackport.core.layout import safe
from trackport.core.schema import SCHEMA

from .corpus import BASE_MS, concat, micro_steps, rows_table, series_table

PROJECT = "hostile/main"
EMPTY_PROJECT = "hostile/empty"
LINKED_PROJECT = "hostile/linked"
# unicode, '/', '..', quotes and control characters in every name
ODD_PROJECT = "hostile/ünï ..\"q'\x07/проект"
ODD_RUN = "../ünï/\"q'\n\t\x1b[31m\x00run"
ODD_ATTRIBUTES = ("../../up", "a//b/./c/", "/lead", "\"quoted\" 'key'", "ctrl\x00\x07\x1b[0m", "ключ/ünï ✓", "..")
SECRET = b"outside the export: must never be copied\n"
MEGABYTE = 1 << 20
WIDE_ATTRIBUTES = 100_000

MOVED, TRANSFORMED, FAILED, ABSENT = "moved", "transformed", "failed", "absent"


@dataclass(frozen=True)
class HostileCase:
    """One hostile case, where it lives and what trackport does with it."""

    case: str
    project_id: str
    run_id: str              # the run's id in the data ("" for a project-level case)
    outcome: str
    what: str                # the hostile input, in a few words
    expect: str              # the defined outcome, in a few words (docs/format.md)
    identity_lost: bool = False  # the part that names the run is unreadable: reported as "?<file stem>"
    files: tuple[str, ...] = ()  # file_value.path values the case references
    parquet_outcome: str | None = None   # into a parquet export (decimal steps), when it differs

    def outcome_for(self, parquet: bool) -> str:
        return (self.parquet_outcome or self.outcome) if parquet else self.outcome

    @property
    def stem(self) -> str:
        return safe(self.run_id)


@dataclass
class HostileExport:
    root: Path                               # the export: give it to trackport as the source
    outside: Path                            # beside the export; escaping paths aim here
    cases: dict[str, HostileCase] = field(default_factory=dict)

    def case(self, name: str) -> HostileCase:
        return self.cases[name]

    def by_outcome(self, *outcomes: str, parquet: bool = False) -> list[HostileCase]:
        """The cases with one of `outcomes`: into a parquet export, or into MLflow
        (integer steps, `--step-multiplier 1`)."""
        return [c for c in self.cases.values() if c.outcome_for(parquet) in outcomes]


# ---------------------------------------------------------------------------
# writing runs exactly as neptune-exporter lays them out (no checks: hostile on purpose)


def _write_parts(root: Path, project_id: str, run_id: str, tables: list[pa.Table]) -> list[Path]:
    folder = root / "data" / safe(project_id)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for n, table in enumerate(tables):
        path = folder / f"{safe(run_id)}_part_{n}.parquet"
        pq.write_table(table, path, compression="snappy")
        paths.append(path)
    return paths


def _put_file(root: Path, project_id: str, rel: str, data: bytes) -> None:
    target = root / "files" / safe(project_id) / rel
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)


def _name(project_id: str, run_id: str, name: str | None = None) -> pa.Table:
    return rows_table(project_id, run_id, [{"path": "sys/name", "type": "string", "value": name or run_id}])


def _loss(project_id: str, run_id: str, n: int = 50, steps=None, values=None, path: str = "metrics/loss") -> pa.Table:
    if steps is None:
        steps = range(n if values is None else len(values))
    steps = micro_steps(steps)
    values = np.linspace(2.0, 0.25, len(steps)) if values is None else values
    ts = BASE_MS + np.arange(len(steps), dtype=np.int64) * 1000
    return series_table(project_id, run_id, path, "float_series", values, steps, ts)


def _flip(path: Path, offset: int, n: int = 8) -> None:
    data = bytearray(path.read_bytes())
    for i in range(offset, min(offset + n, len(data))):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def _column_offset(path: Path, column: str) -> int:
    """Where the first page header of `column` starts in a part (from the footer)."""
    meta = pq.ParquetFile(path).metadata.row_group(0)
    for i in range(meta.num_columns):
        chunk = meta.column(i)
        if chunk.path_in_schema == column:
            return chunk.dictionary_page_offset or chunk.data_page_offset
    raise KeyError(column)


# ---------------------------------------------------------------------------
# the export


def write_hostile_export(folder: Path, wide_attributes: int = WIDE_ATTRIBUTES) -> HostileExport:
    """Write the hostile export under `folder/export` and its escape targets under `folder/outside`."""
    folder = Path(folder)
    root = folder / "export"
    outside = folder / "outside"
    outside.mkdir(parents=True, exist_ok=True)
    (outside / "secret.txt").write_bytes(SECRET)
    out = HostileExport(root, outside)
    main = PROJECT

    def add(case: HostileCase) -> None:
        out.cases[case.case] = case

    # -- good runs ----------------------------------------------------------------
    for run_id, n in (("GOOD-1", 50), ("GOOD-2", 7)):
        rel = f"{main}/{run_id}/files/model.bin"
        _put_file(root, main, rel, f"weights of {run_id}".encode() * 10)
        _write_parts(root, main, run_id, [concat([
            rows_table(main, run_id, [
                {"path": "sys/name", "type": "string", "value": f"good {run_id}"},
                {"path": "config/lr", "type": "float", "value": 0.001},
                {"path": "config/epochs", "type": "int", "value": n},
                {"path": "files/model", "type": "file", "value": rel},
            ]),
            _loss(main, run_id, n),
            series_table(main, run_id, "monitoring/stdout", "string_series", ["start", "ünïcode ✓", "end"],
                         micro_steps([0, 1, 2]), BASE_MS + np.array([0, 10, 20])),
        ])])
        add(HostileCase(f"good_{run_id[-1]}", main, run_id, MOVED, "a good run beside the hostile ones",
                        "moves; `verify` is clean", files=(rel,)))

    # -- unreadable parts ---------------------------------------------------------------
    run_id = "CORRUPT"
    parts = _write_parts(root, main, run_id, [concat([_name(main, run_id), _loss(main, run_id, 20)]), _loss(main, run_id, 20, range(20, 40))])
    _flip(parts[1], _column_offset(parts[1], "float_value"))
    add(HostileCase("corrupt_part", main, run_id, FAILED, "bytes flipped in a page header of part_1",
                    "fails naming the run and `_part_1.parquet`; nothing of it is written"))

    run_id = "TRUNCATED"
    (part,) = _write_parts(root, main, run_id, [concat([_name(main, run_id), _loss(main, run_id, 20)])])
    part.write_bytes(part.read_bytes()[: part.stat().st_size // 2])
    add(HostileCase("truncated_part", main, run_id, FAILED, "part_0 cut in half (no footer)",
                    "fails as `?<file stem>` (the run id is inside the lost footer), naming `_part_0.parquet`",
                    identity_lost=True))

    run_id = "STEP-AS-TEXT"
    table = concat([_name(main, run_id), _loss(main, run_id, 5, ["0", "1", "2.5", "3", "4"])])
    i = table.schema.get_field_index("step")
    texts = pa.array([None if v is None else str(v) for v in table.column("step").to_pylist()], pa.string())
    _write_parts(root, main, run_id, [table.set_column(i, "step", texts)])
    add(HostileCase("step_as_string", main, run_id, FAILED, "`step` column of type string (\"2.500000\")",
                    "fails naming the run, the part and the column; no silent parse"))

    run_id = "FLOAT-AS-TEXT"
    table = concat([_name(main, run_id), _loss(main, run_id, 5)])
    i = table.schema.get_field_index("float_value")
    texts = pa.array([None if v is None else repr(v) for v in table.column("float_value").to_pylist()], pa.string())
    _write_parts(root, main, run_id, [table.set_column(i, "float_value", texts)])
    add(HostileCase("float_as_string", main, run_id, FAILED, "`float_value` column of type string",
                    "fails naming the run, the part and the column"))

    run_id = "UNKNOWN-TYPE"
    table = concat([_name(main, run_id), rows_table(main, run_id, [{"path": "q", "type": "string", "value": "1,0,0,0"}])])
    i = table.schema.get_field_index("attribute_type")
    _write_parts(root, main, run_id, [table.set_column(i, "attribute_type", pa.array(["string", "quaternion"]))])
    add(HostileCase("unknown_attribute_type", main, run_id, FAILED, "attribute_type `quaternion`",
                    "fails naming the run, the part and the unknown type"))

    run_id = "FOREIGN-ROWS"
    _write_parts(root, main, run_id, [concat([_name(main, run_id), _loss(main, run_id, 5), _loss(main, "GOOD-2", 3)])])
    add(HostileCase("rows_of_another_run", main, run_id, FAILED, "a part holding rows of another run (GOOD-2)",
                    "fails naming the run, the part and the other run id; GOOD-2 itself is not touched"))

    run_id = "NULL-PATH"
    table = concat([_name(main, run_id), _loss(main, run_id, 3)])
    paths = pa.array(["sys/name", "metrics/loss", None, "metrics/loss"])
    _write_parts(root, main, run_id, [table.set_column(table.schema.get_field_index("attribute_path"), "attribute_path", paths)])
    add(HostileCase("null_attribute_path", main, run_id, FAILED, "a row whose attribute_path is null",
                    "fails naming the run, the part and the column"))

    # -- files that are not where they claim -----------------------------------------------
    files_root = root / "files" / safe(main)
    escapes = {
        "ESCAPE-DOTDOT": ("escape_dotdot", "../../../outside/secret.txt", "`file_value.path` `../../../outside/secret.txt`"),
        "ESCAPE-ABSOLUTE": ("escape_absolute", str(outside / "secret.txt"), "an absolute `file_value.path`"),
        "ESCAPE-SYMLINK": ("escape_symlink", "link/secret.txt", "a path through a symlink that points outside the files root"),
        "ESCAPE-IN-SET": ("escape_symlink_in_file_set", f"{main}/ESCAPE-IN-SET/code",
                          "a `file_set` directory holding a symlink to a file outside the files root"),
        "MISSING-FILE": ("missing_file", f"{main}/MISSING-FILE/files/gone.bin", "a file that is not in the export"),
    }
    files_root.mkdir(parents=True, exist_ok=True)
    (files_root / "link").symlink_to(outside, target_is_directory=True)
    code_dir = files_root / main / "ESCAPE-IN-SET" / "code"
    code_dir.mkdir(parents=True, exist_ok=True)
    (code_dir / "train.py").write_text("print('fine')\n")
    (code_dir / "stolen.txt").symlink_to(outside / "secret.txt")
    for run_id, (case, rel, what) in escapes.items():
        kind = "file_set" if case == "escape_symlink_in_file_set" else "file"
        _write_parts(root, main, run_id, [concat([_name(main, run_id), _loss(main, run_id, 5), rows_table(main, run_id, [
            {"path": "files/thing", "type": kind, "value": rel}])])])
        add(HostileCase(case, main, run_id, FAILED, what,
                        "fails naming the run and the file, before anything is written; "
                        "`--allow-drops` moves the run without it (drop counted)", files=(rel,)))

    run_id = "NAMED-PIPE"
    rel = f"{main}/{run_id}/files/pipe"
    (files_root / rel).parent.mkdir(parents=True, exist_ok=True)
    os.mkfifo(files_root / rel)        # opening it for reading would wait for a writer forever
    _write_parts(root, main, run_id, [concat([_name(main, run_id), _loss(main, run_id, 5), rows_table(main, run_id, [
        {"path": "files/thing", "type": "file", "value": rel}])])])
    add(HostileCase("named_pipe", main, run_id, FAILED, "a `file_value.path` that is a named pipe",
                    "fails naming the run and the file before anything is read from it (no hang); "
                    "`--allow-drops` moves the run without it (drop counted)", files=(rel,)))

    # a project whose files folder is a symlink out of the export: every path below it resolves
    # "inside" that folder, so each component from the export root down is checked
    run_id = "LINKED-FOLDER"
    (root / "files").mkdir(parents=True, exist_ok=True)
    (root / "files" / safe(LINKED_PROJECT)).symlink_to(outside, target_is_directory=True)
    _write_parts(root, LINKED_PROJECT, run_id, [concat([_name(LINKED_PROJECT, run_id), _loss(LINKED_PROJECT, run_id, 5),
                                                        rows_table(LINKED_PROJECT, run_id, [
                                                            {"path": "files/thing", "type": "file",
                                                             "value": "secret.txt"}])])])
    add(HostileCase("files_folder_symlinked_out", LINKED_PROJECT, run_id, FAILED,
                    "the project's files folder `files/<safe(project)>` is a symlink to a folder outside the export",
                    "fails naming the run, the file and the folder; nothing is read through it", files=("secret.txt",)))

    # -- parts missing ---------------------------------------------------------------------------
    run_id = "PART-GAP"
    _write_parts(root, main, run_id, [concat([_name(main, run_id), _loss(main, run_id, 10)]),
                                      _loss(main, run_id, 10, range(10, 20)), _loss(main, run_id, 10, range(20, 30))])
    layout_gap = root / "data" / safe(main) / f"{safe(run_id)}_part_1.parquet"
    layout_gap.unlink()
    add(HostileCase("part_gap", main, run_id, FAILED, "`_part_0` and `_part_2` without `_part_1`",
                    "fails as a damaged run naming the missing part; nothing of it is written"))

    # -- points that clash or are not numbers ------------------------------------------------
    run_id = "DUP-SAME"
    _write_parts(root, main, run_id, [concat([_name(main, run_id), _loss(main, run_id, 5),
                                           _loss(main, run_id, 5).slice(3, 1)])])
    add(HostileCase("duplicate_points_same_value", main, run_id, MOVED,
                    "two identical rows for one (run, attribute, step)",
                    "moves as is: a parquet export keeps both rows; MLflow's metric table keeps one "
                    "(its key is key, step, timestamp, value), the run's manifest counts the copy "
                    "(`duplicate_point_in_manifest`), read back whole, `verify` clean"))

    run_id = "DUP-DIFFERENT"
    clash = _loss(main, run_id, 5).slice(3, 1)
    clash = clash.set_column(clash.schema.get_field_index("float_value"), "float_value", pa.array([99.0]))
    _write_parts(root, main, run_id, [concat([_name(main, run_id), _loss(main, run_id, 5), clash])])
    # MLflow itself keeps several values at one step (a metric logged twice without a step),
    # so repeats are data, not an error: every value moves.
    add(HostileCase("duplicate_points_different_values", main, run_id, MOVED,
                    "two rows for one (run, attribute, step) with different values",
                    "moves as is: both values kept (parquet and MLflow), `verify` clean"))

    run_id = "STEP-COLLIDE"
    _write_parts(root, main, run_id, [concat([_name(main, run_id), _loss(main, run_id, steps=["1", "1.25", "1.5", "2"])])])
    add(HostileCase("steps_collide_after_int", main, run_id, FAILED,
                    "steps 1.25 and 1.5 with `--step-multiplier 1` (both become 1)",
                    "fails before anything is written, naming the series and the step; "
                    "without the option the multiplier (100) keeps them apart; parquet: unchanged",
                    parquet_outcome=MOVED))

    run_id = "STEP-FLOOR"
    _write_parts(root, main, run_id, [concat([_name(main, run_id), _loss(main, run_id, steps=["0", "1.5", "3"])])])
    add(HostileCase("step_floored", main, run_id, TRANSFORMED, "step 1.5 with `--step-multiplier 1`, no clash",
                    "moves; `step_floored` counted; parquet: unchanged", parquet_outcome=MOVED))

    run_id = "NAN-INF"
    values = np.array([float("nan"), float("inf"), float("-inf"), -0.0, 1.0])
    _write_parts(root, main, run_id, [concat([_name(main, run_id), _loss(main, run_id, values=values), rows_table(main, run_id, [
        {"path": "config/nan", "type": "float", "value": float("nan")},
        {"path": "config/inf", "type": "float", "value": float("inf")},
        {"path": "config/ninf", "type": "float", "value": float("-inf")},
    ])])])
    add(HostileCase("nan_inf", main, run_id, TRANSFORMED, "NaN, +inf, -inf in a series and as params",
                    "parquet: moves unchanged; MLflow: `inf_to_float_max` counted (read back as inf)",
                    parquet_outcome=MOVED))

    # -- size ------------------------------------------------------------------------------
    run_id = "LONG-STRINGS"
    big = ("0123456789abcdef" * (MEGABYTE // 16))
    _write_parts(root, main, run_id, [concat([_name(main, run_id),
                                           rows_table(main, run_id, [{"path": "config/huge", "type": "string", "value": big}]),
                                           series_table(main, run_id, "logs/huge", "string_series", ["short", big],
                                                        micro_steps([0, 1]), BASE_MS + np.array([0, 1]))])])
    add(HostileCase("one_megabyte_strings", main, run_id, TRANSFORMED, "a 1 MB param and a 1 MB string-series value",
                    "parquet: unchanged; MLflow: `param_to_artifact`, `series_to_artifact` counted, read back whole",
                    parquet_outcome=MOVED))

    run_id = "WIDE"
    n = wide_attributes
    names = pa.array([f"config/p{i:06d}" for i in range(n)], pa.string())
    wide = pa.Table.from_arrays(
        [pa.array([main] * n), pa.array([run_id] * n), names, pa.array(["float"] * n)]
        + [pa.array(np.arange(n, dtype=np.float64)) if f.name == "float_value" else pa.nulls(n, f.type)
           for f in SCHEMA][4:],
        schema=SCHEMA)
    _write_parts(root, main, run_id, [concat([_name(main, run_id), wide])])
    add(HostileCase("wide_run", main, run_id, MOVED, f"{n:,} attributes in one run",
                    "moves; tested into a parquet export only: MLflow's SQL store slows down as a run's "
                    "params grow (36,700 of 100,000 params took 13 minutes here)"))

    run_id = "EMPTY"
    _write_parts(root, main, run_id, [_name(main, run_id)])
    add(HostileCase("empty_run", main, run_id, MOVED, "a run with nothing but `sys/name`", "moves"))

    run_id = "NO-ROWS"
    _write_parts(root, main, run_id, [SCHEMA.empty_table()])
    add(HostileCase("zero_row_part", main, run_id, FAILED, "a part_0 with zero rows (no run id inside)",
                    "fails as `?<file stem>` naming the part: a run that names itself nowhere cannot be moved",
                    identity_lost=True))

    (root / "data" / safe(EMPTY_PROJECT)).mkdir(parents=True, exist_ok=True)
    (root / "files" / safe(EMPTY_PROJECT)).mkdir(parents=True, exist_ok=True)
    add(HostileCase("empty_project", EMPTY_PROJECT, "", ABSENT, "a project folder with no runs",
                    "nothing listed, nothing reported, no error"))

    # -- names -------------------------------------------------------------------------------
    rel = "ünï/\"q'\x07 ../file.txt"
    _put_file(root, ODD_PROJECT, rel, b"odd file")
    rows = [{"path": "sys/name", "type": "string", "value": ODD_RUN}]
    rows += [{"path": a, "type": "string", "value": f"value of {a}"} for a in ODD_ATTRIBUTES]
    rows.append({"path": "files/odd \"name\"", "type": "file", "value": rel})
    _write_parts(root, ODD_PROJECT, ODD_RUN, [concat([rows_table(ODD_PROJECT, ODD_RUN, rows),
                                                      _loss(ODD_PROJECT, ODD_RUN, 3, path="ünï/../\"loss\"\x07")])])
    add(HostileCase("odd_names", ODD_PROJECT, ODD_RUN, TRANSFORMED,
                    "unicode, `/`, `..`, quotes and control characters in project, run id and attribute paths",
                    "parquet: unchanged; MLflow: `key_sanitized` counted, original names kept", files=(rel,),
                    parquet_outcome=MOVED))
    return out


# ---------------------------------------------------------------------------
# torn tracker files, written by the real SDKs in a child process


def _child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "PLUTO_", "NEPTUNE_"))}
    env["WANDB_SILENT"] = "true"
    src = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [src, env.get("PYTHONPATH", "")]))
    return env


def _start_child(kind: str, folder: Path) -> subprocess.Popen:
    folder.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen([sys.executable, "-m", "trackport.testing.hostile", kind, str(folder)],
                            env=_child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_child(kind: str, child: subprocess.Popen) -> None:
    try:
        _, err = child.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        child.kill()
        _, err = child.communicate()
    if child.returncode != 0:
        raise RuntimeError(f"writing the {kind} run failed:\n{err[-3000:]}")


def write_torn_tracker_files(folder: Path) -> tuple[Path, Path]:
    """Both torn fixtures at once (the SDK imports take most of the time, so they run side
    by side): (the torn `.wandb` log under folder/w, the torn Neptune queue under folder/n)."""
    children = {"wandb": _start_child("wandb", folder / "w"), "neptune": _start_child("neptune", folder / "n")}
    for kind, child in children.items():
        _wait_child(kind, child)
    return _tear_wandb(folder / "w"), _tear_neptune(folder / "n")


TORN_WANDB_RUN = "torn0001"
TORN_WANDB_STEPS = (0, 1, 2, 3)      # step 3 lies past the tear


def write_torn_wandb_run(folder: Path) -> Path:
    """A real W&B offline run whose `.wandb` log is cut inside its last history record; the log's path."""
    _wait_child("wandb", _start_child("wandb", folder))
    return _tear_wandb(folder)


def write_torn_neptune_queue(folder: Path) -> Path:
    """A real Neptune (2.x client) offline run whose queue ends in a torn JSON line; the queue file."""
    _wait_child("neptune", _start_child("neptune", folder))
    return _tear_neptune(folder)


def _tear_wandb(folder: Path) -> Path:
    from trackport.connectors.wandb.client import internal_pb2
    from trackport.connectors.wandb.datastore import LogReader

    (log,) = sorted((folder / "wandb").glob(f"offline-run-*-{TORN_WANDB_RUN}/*.wandb"))
    pb = internal_pb2()
    last = None
    for payload in LogReader(log):
        record = pb.Record()
        record.ParseFromString(payload)
        if record.WhichOneof("record_type") == "history":
            last = payload
    if last is None:
        raise RuntimeError(f"{log}: no history record")
    data = log.read_bytes()
    log.write_bytes(data[: data.index(last) + len(last) // 2])
    return log


def _tear_neptune(folder: Path) -> Path:
    (log,) = sorted((folder / ".neptune").rglob("data-1.log"))
    with open(log, "ab") as fh:
        fh.write(b'{"obj": {"type": "AssignString", "path": ["config", "late"], "val')
    return log


def _write_wandb(folder: Path) -> None:
    from trackport.connectors.wandb.client import import_wandb

    wandb = import_wandb()
    settings = wandb.Settings(mode="offline", x_disable_meta=True, save_code=False, x_disable_stats=True,
                              console="off", silent=True)
    run = wandb.init(project="torn", entity="hostile", id=TORN_WANDB_RUN, dir=str(folder), config={"lr": 0.1},
                     settings=settings)
    for step in TORN_WANDB_STEPS:
        run.log({"loss": 1.0 / (step + 1), "_timestamp": BASE_MS / 1000 + step}, step=step)
    run.finish()


def _write_neptune(folder: Path) -> None:
    os.environ["NEPTUNE_DATA_DIRECTORY"] = str(folder / ".neptune")
    import neptune

    run = neptune.init_run(mode="offline", project="hostile/torn", name="torn queue",
                           capture_hardware_metrics=False, capture_stdout=False, capture_stderr=False,
                           capture_traceback=False, git_ref=False, source_files=[])
    try:
        run["config/lr"] = 0.1
        run["train/loss"].extend([0.5, 0.25], steps=[0, 1], timestamps=[BASE_MS / 1000, BASE_MS / 1000 + 1])
    finally:
        run.stop()


if __name__ == "__main__":
    {"wandb": _write_wandb, "neptune": _write_neptune}[sys.argv[1]](Path(sys.argv[2]))
