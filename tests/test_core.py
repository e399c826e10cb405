"""The spine's pure parts: safe names, exact step arithmetic, URIs, schema casting."""

from __future__ import annotations

import hashlib
import io
import os
import re
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from trackport.connectors.parquet.layout import safe_variants
from trackport.core import layout, steps
from trackport.core.connector import FileAccess
from trackport.core.errors import MissingExtraError, RunError, RunScoped, UsageError
from trackport.core.files import DirectoryFiles, materialise
from trackport.core.model import RunRef
from trackport.core.registry import open_sink, parse_uri, redact
from trackport.core.schema import (SCHEMA, STEP_TYPE, SchemaError, check_types, conform, ms_from_datetime,
                                   rows_to_table)


def test_safe_follows_the_layout_rule():
    digest = hashlib.blake2b(b"ws/proj x", digest_size=8).hexdigest()
    assert layout.safe("ws/proj x") == f"ws_proj_x-{digest}"
    assert layout.safe("RUN-1_a") == "RUN-1_a-" + hashlib.blake2b(b"RUN-1_a", digest_size=8).hexdigest()
    # Non-ASCII letters are outside [A-Za-z0-9_-]; old neptune-exporter kept them, both are looked up.
    assert layout.safe("ü").startswith("_-")
    assert safe_variants("ü") == ["_-" + hashlib.blake2b("ü".encode(), digest_size=8).hexdigest(),
                                  "ü-" + hashlib.blake2b("ü".encode(), digest_size=8).hexdigest()]


def test_resolve_inside_refuses_escapes(tmp_path):
    (tmp_path / "root").mkdir()
    (tmp_path / "secret").write_text("x")
    (tmp_path / "root" / "link").symlink_to(tmp_path / "secret")
    assert layout.resolve_inside(tmp_path / "root", "a/b.txt") == tmp_path / "root" / "a" / "b.txt"
    for bad in ("../secret", "a/../../secret", "/etc/passwd", "link", ""):
        with pytest.raises(ValueError):
            layout.resolve_inside(tmp_path / "root", bad)


def _steps(*values):
    return pa.array([None if v is None else Decimal(v) for v in values], STEP_TYPE)


def test_unscaled_and_places_are_exact():
    arr = _steps("1.5", "-2.25", None, "1000000.125", "0.000001")
    assert steps.unscaled(arr).tolist() == [1_500_000, -2_250_000, 0, 1_000_000_125_000, 1]
    assert steps.unscaled(arr.slice(1, 2)).tolist() == [-2_250_000, 0]
    assert steps.decimal_places(steps.unscaled(_steps("1", "2", "30"))) == 0
    assert steps.decimal_places(steps.unscaled(_steps("1.5", "2.25"))) == 2
    assert steps.decimal_places(steps.unscaled(_steps("0.000001"))) == 6


def test_step_text_is_the_shortest_exact_decimal():
    assert [steps.step_text(Decimal(v)) for v in ("7.500000", "-0.500000", "100.000000", "0.000001", "0")] == [
        "7.5", "-0.5", "100", "0.000001", "0"]
    assert steps.step_text(None) is None and steps.step_text(3) == "3"
    assert [steps.unscaled_text(u) for u in (7_500_000, -500_000, 3_000_000, 1, 0, None)] == [
        "7.5", "-0.5", "3", "0.000001", "0", None]
    big = 10**18 - 1      # the largest decimal(18,6) step: both spellings agree, no float rounding
    assert steps.unscaled_text(big) == steps.step_text(Decimal(big).scaleb(-6)) == "999999999999.999999"


def test_ms_from_datetime_is_exact():
    when = datetime(2024, 5, 6, 7, 8, 9, 123_999, tzinfo=timezone.utc)
    ms = 1_714_979_289_123          # floored to the ms, never rounded through a float
    assert ms_from_datetime(when) == ms
    assert ms_from_datetime(when.replace(tzinfo=None)) == ms                      # naive = UTC
    assert ms_from_datetime(when.astimezone(timezone(timedelta(hours=2)))) == ms
    assert ms_from_datetime(np.datetime64(ms, "ms")) == ms == ms_from_datetime(np.int64(ms))
    assert ms_from_datetime(None) is None and ms_from_datetime(float("nan")) is None
    with pytest.raises(TypeError):
        ms_from_datetime("2024-05-06")


def test_converter_never_goes_through_floats():
    # 0.1 + 0.2 style values that float multiplication gets wrong
    arr = _steps("0.29", "0.57", "1.13", "999999999999.999999")
    dest, floored = steps.StepConverter(1_000_000).convert(arr)
    assert dest.to_pylist() == [290_000, 570_000, 1_130_000, 999_999_999_999_999_999]
    assert floored == 0
    assert int(float(Decimal("0.29")) * 100) == 28  # what the naive way gives
    dest, floored = steps.StepConverter(100).convert(arr.slice(0, 3))
    assert dest.to_pylist() == [29, 57, 113] and floored == 0


def test_converter_floors_and_counts_and_keeps_nulls():
    dest, floored = steps.StepConverter(10).convert(_steps("1.25", None, "1.2", "-0.05"))
    assert dest.to_pylist() == [12, None, 12, -1]
    assert floored == 2


def test_converter_refuses_overflow():
    with pytest.raises(OverflowError):
        steps.StepConverter(10**9).convert(_steps("999999999999"))


def test_collisions_are_found_per_series():
    attr = pa.array(["a", "a", "b", "b"])
    src = np.array([1_250_000, 1_200_000, 1_000_000, 2_000_000])
    dst = np.array([12, 12, 10, 20])
    assert steps.find_collisions(attr, src, dst) == ["a at destination step 12"]


def test_conform_casts_and_keeps_extra_columns():
    table = pa.table({
        "project_id": pa.array(["p"]).dictionary_encode(),
        "run_id": ["r"], "attribute_path": ["x"], "attribute_type": ["float_series"],
        "step": pa.array([1.5], pa.float64()),
        "timestamp": pa.array([1_700_000_000_000_000], pa.timestamp("us")),
        "float_value": [2.0], "extra_col": [7],
    })
    out = conform(table, "t")
    assert out.schema.field("step").type == STEP_TYPE
    assert out.column("step")[0].as_py() == Decimal("1.5")
    assert out.column("timestamp").type == SCHEMA.field("timestamp").type
    assert out.column("extra_col").to_pylist() == [7]
    assert out.column("histogram_value").null_count == 1


def test_conform_names_the_bad_column():
    table = pa.table({"attribute_path": ["x"], "attribute_type": ["int"], "int_value": ["not a number"]})
    with pytest.raises(SchemaError, match="int_value"):
        conform(table, "part.parquet")
    weird = rows_to_table([dict(attribute_path="x", attribute_type="quaternion")])
    with pytest.raises(SchemaError, match="quaternion"):
        check_types(weird, "part.parquet")


def test_uris():
    assert parse_uri("mlflow+http://127.0.0.1:5000").rest == "http://127.0.0.1:5000"
    assert parse_uri("mlflow:sqlite:////tmp/x.db").rest == "sqlite:////tmp/x.db"
    assert parse_uri("./exports").scheme == "parquet"
    assert parse_uri("parquet:/x").rest == "/x"
    with pytest.raises(UsageError, match=r"unknown scheme 'nosuchtracker'.*trackport connectors.*mlflow:sqlite"):
        parse_uri("nosuchtracker://ws/proj")
    assert redact("mlflow+https://user:s3cret@host:5000/x?token=abc") == "mlflow+https://host:5000/x?token=***"


def test_directory_uris(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    example = "tensorboard:./logs"
    for text in ("tensorboard:logs", "tensorboard: logs ", "tensorboard://logs"):
        assert parse_uri(text).directory(example) == tmp_path / "logs"
    for text in ("tensorboard:/abs/logs", "tensorboard:///abs/logs", "tensorboard:file:///abs/logs"):
        assert parse_uri(text).directory(example) == Path("/abs/logs")
    assert parse_uri("tensorboard:a/../b").directory(example) == tmp_path / "a" / ".." / "b"   # not normalised
    assert parse_uri("tensorboard:~/x").directory(example) == Path.home() / "x"
    for text in ("tensorboard:", "tensorboard:  ", "tensorboard://"):
        with pytest.raises(UsageError, match="tensorboard: needs a directory: tensorboard:./logs"):
            parse_uri(text).directory(example)


def test_directory_files_stay_inside_their_root(tmp_path):
    root, run = tmp_path / "root", RunRef("proj", "run-1")
    (root / "set").mkdir(parents=True)
    (root / "a.txt").write_bytes(b"a")
    (root / "set" / "b.txt").write_bytes(b"b")
    (tmp_path / "secret").write_text("x")
    files = DirectoryFiles(root, run, holder="the export")
    assert files.local_path("a.txt") == root / "a.txt" and files.open("a.txt").read() == b"a"
    assert files.measure("set") == (1, 1)
    (root / "link").symlink_to(tmp_path / "secret")
    (root / "inner").symlink_to(root / "a.txt")
    assert files.open("inner").read() == b"a"                  # a symlink that stays inside is followed
    refused = {"../secret": "escapes the files root", "link": "leads outside the files root",
               "/etc/passwd": "absolute", "nope.txt": "file missing from the export"}
    (root / "set" / "out").symlink_to(tmp_path / "secret")      # a folder carrying a file from elsewhere
    refused["set"] = "'out', a symlink that leads outside"
    os.mkfifo(root / "pipe")                                   # opening it would wait for a writer
    refused["pipe"] = "named pipe"
    for path, reason in refused.items():
        with pytest.raises(RunError, match=re.escape(reason)) as caught:
            files.open(path)
        assert (caught.value.project_id, caught.value.run_id, caught.value.file) == ("proj", "run-1", path)


class _Streamed(FileAccess):
    """A source whose files have no local path: only bytes."""

    def __init__(self, data: dict[str, bytes]):
        self.data = data

    def open(self, path: str):
        if path not in self.data:
            raise FileNotFoundError(path)
        return io.BytesIO(self.data[path])


class _Run(RunScoped):
    err_run = RunRef("proj", "run-1")


def test_materialise_streams_into_scratch_or_uses_the_local_file(tmp_path):
    streamed = _Streamed({"a/model.bin": b"one", "b/model.bin": b"two"})
    first = materialise(streamed, "a/model.bin", tmp_path / "s", _Run()._err)
    second = materialise(streamed, "b/model.bin", tmp_path / "s", _Run()._err)
    assert first.name == second.name == "model.bin" and first != second       # one base name, two files
    assert (first.read_bytes(), second.read_bytes()) == (b"one", b"two")
    named = materialise(streamed, "a/model.bin", tmp_path / "s", _Run()._err, name="fixed")
    assert named == tmp_path / "s" / "fixed" and named.read_bytes() == b"one"
    with pytest.raises(RunError, match="cannot read file") as caught:
        materialise(streamed, "gone.bin", tmp_path / "s", _Run()._err)
    assert (caught.value.run_id, caught.value.file) == ("run-1", "gone.bin")
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "x.txt").write_bytes(b"x")
    on_disk = DirectoryFiles(tmp_path / "root", RunRef("proj", "run-1"))
    assert materialise(on_disk, "x.txt", tmp_path / "s2", _Run()._err) == tmp_path / "root" / "x.txt"
    assert not (tmp_path / "s2").exists()                       # nothing copied


def test_missing_extra_names_the_pip_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # how Python spells "not installed"
    with pytest.raises(MissingExtraError, match=r"pip install 'trackport\[mlflow\]'"):
        open_sink("mlflow:sqlite:////tmp/never.db")


def test_import_and_help_load_no_tracker_sdk():
    # pluto-ml's .pth hook imports `pluto` at interpreter start, before any
    # code of ours runs: only what trackport itself imports counts.
    code = (
        "import sys\n"
        "before = set(sys.modules)\n"
        "import trackport, trackport.cli\n"
        "from click.testing import CliRunner\n"
        "r = CliRunner().invoke(trackport.cli.cli, ['--help'])\n"
        "assert r.exit_code == 0, r.output\n"
        "new = set(sys.modules) - before\n"
        "bad = [m for m in ('mlflow', 'wandb', 'neptune', 'neptune_scale', 'neptune_query', 'pluto',\n"
        "                   'tensorboard', 'tensorboardX', 'pyarrow', 'pandas', 'fsspec', 's3fs') if m in new]\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_the_version_is_the_one_pyproject_declares():
    import re
    from pathlib import Path

    import trackport

    declared = re.search(r'^version = "([^"]+)"', (Path(__file__).resolve().parents[1] / "pyproject.toml")
                         .read_text(), re.M).group(1)
    assert trackport.__version__ == declared
