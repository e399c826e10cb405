"""The spine's pure parts: safe names, exact step arithmetic, URIs, schema casting."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from decimal import Decimal

import numpy as np
import pyarrow as pa
import pytest

from trackport.core import layout, steps
from trackport.core.errors import MissingExtraError, UsageError
from trackport.core.registry import open_sink, parse_uri, redact
from trackport.core.schema import SCHEMA, STEP_TYPE, SchemaError, check_types, conform, rows_to_table


def test_safe_follows_the_layout_rule():
    digest = hashlib.blake2b(b"ws/proj x", digest_size=8).hexdigest()
    assert layout.safe("ws/proj x") == f"ws_proj_x-{digest}"
    assert layout.safe("RUN-1_a") == "RUN-1_a-" + hashlib.blake2b(b"RUN-1_a", digest_size=8).hexdigest()
    # Non-ASCII letters are outside [A-Za-z0-9_-]; old neptune-exporter kept them, both are looked up.
    assert layout.safe("ü").startswith("_-")
    assert layout.safe_variants("ü")[1].startswith("ü-")


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
    with pytest.raises(UsageError, match="known schemes: mlflow"):
        parse_uri("comet://ws/proj")
    assert redact("mlflow+https://user:s3cret@host:5000/x?token=abc") == "mlflow+https://host:5000/x?token=***"


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
        "                   'tensorboard', 'tensorboardX', 'pyarrow', 'pandas') if m in new]\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
