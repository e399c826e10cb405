"""TensorBoard connector: real event files written by tensorboardX, read back and moved.

TensorBoard's own reader (`plugin_event_accumulator`, the one the TensorBoard
UI loads runs with) is the independent oracle: what the source reads must be
what it reads, and what the sink writes must be what it shows.
"""

from __future__ import annotations

import json
import logging
import struct
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from support import read_plain_export, run_cli, runs_by_id
from trackport.connectors.parquet.layout import project_files_dir
from trackport.core.model import Selection
from trackport.core.registry import open_source
from trackport.testing.corpus import build_corpus
from trackport.testing.exporter_layout import write_exporter_export

WALL0 = 1_700_000_000.0
STEPS = [0, 3, 10, 11, 50, 1000]          # uneven, as real trainings log
SUBDIRS = {"train": 1.0, "validation": 2.0}


def _accumulator(directory: Path):
    """TensorBoard's own loader of one run directory (what the UI shows)."""
    from tensorboard.backend.event_processing import plugin_event_accumulator as pea

    acc = pea.EventAccumulator(str(directory), size_guidance={k: 0 for k in (
        pea.TENSORS, pea.GRAPH, pea.META_GRAPH, pea.RUN_METADATA)})
    acc.Reload()
    return acc


def _ms(wall: float) -> datetime:
    return datetime.fromtimestamp(round(wall * 1000) / 1000, tz=timezone.utc)


def write_training(logdir: Path, steps=STEPS, wall0=WALL0, hparams=True, suffix: str = "") -> None:
    """One training with two sub-directories: scalars, histogram, image, audio, text, hparams.
    tensorboardX names event files by the second and the host (event_file_writer.py): `suffix`
    tells apart a training written within the same second as another."""
    from tensorboardX import SummaryWriter
    from tensorboardX.summary import hparams as hparams_summary

    for sub, scale in SUBDIRS.items():
        writer = SummaryWriter(str(logdir / "exp1" / sub), filename_suffix=suffix)
        for i, step in enumerate(steps):
            writer.add_scalar("loss", scale / (i + 1 + step), step, walltime=wall0 + step * 1.25 + scale)
        first = steps[0]
        writer.add_histogram_raw("weights", min=-1.0, max=2.0, num=6, sum=4.0, sum_squares=6.0,
                                 bucket_limits=[0.0, 1.0, 2.0], bucket_counts=[1, 2, 3 + first],
                                 global_step=first + 3, walltime=wall0 + 100.5 + first)
        image = (np.arange(3 * 4 * 5) % 251).astype(np.uint8).reshape(3, 4, 5)
        writer.add_image("sample", image * (first + 1), first + 5, walltime=wall0 + 200.25 + first)
        writer.add_audio("voice", np.sin(np.arange(800) / 10.0) * scale / 3, first + 6, sample_rate=8000,
                         walltime=wall0 + 250 + first)
        writer.add_text("notes", f"{sub} epoch {first} é ✓", first + 7, walltime=wall0 + 300.125 + first)
        if hparams:
            for summary in hparams_summary({"lr": 0.1 * scale, "opt": "adam", "layers": 3, "amp": True}, {}):
                writer.file_writer.add_summary(summary, walltime=wall0)
        writer.close()


def _series(table: pa.Table, attribute_type: str) -> dict[str, list[tuple]]:
    rows = table.filter(pc.equal(table.column("attribute_type"), attribute_type))
    out: dict[str, list[tuple]] = {}
    col = {"float_series": "float_value", "string_series": "string_value",
           "histogram_series": "histogram_value", "file_series": "file_value"}[attribute_type]
    for row in rows.select(["attribute_path", "step", "timestamp", col]).to_pylist():
        out.setdefault(row["attribute_path"], []).append((row["step"], row["timestamp"], row[col]))
    return {k: sorted(v, key=lambda r: r[0]) for k, v in out.items()}


def _expected_from_tensorboard(run_dir: Path, prefix: str) -> dict[str, dict]:
    """Every point TensorBoard itself reads from one sub-directory, by plugin."""
    from tensorboard.util import tensor_util

    acc = _accumulator(run_dir)
    out: dict[str, dict] = {"scalars": {}, "text": {}, "images": {}, "audio": {}, "histograms": {}}
    for plugin, tags in out.items():
        for tag in acc.PluginTagToContent(plugin) if plugin in acc.ActivePlugins() else ():
            points = []
            for ev in acc.Tensors(tag):
                arr = tensor_util.make_ndarray(ev.tensor_proto)
                points.append((Decimal(ev.step), _ms(ev.wall_time), arr))
            tags[prefix + tag] = points
    return out


# -- source ------------------------------------------------------------------------


def test_source_reads_every_plugin_with_steps_and_wall_times(tmp_path):
    logdir = tmp_path / "lightning_logs"
    write_training(logdir)
    out = tmp_path / "export"
    code, report, text = run_cli("export", f"tensorboard:{logdir}", str(out), "--tensorboard-subdirs-as-prefixes")
    assert code == 0, text
    tables = read_plain_export(out)
    assert list(tables) == [("lightning_logs", "exp1")]
    table = tables[("lightning_logs", "exp1")]

    scalars = _series(table, "float_series")
    texts = _series(table, "string_series")
    hists = _series(table, "histogram_series")
    files = _series(table, "file_series")
    files_root = project_files_dir(out, "lightning_logs")
    for sub, scale in SUBDIRS.items():
        seen = _expected_from_tensorboard(logdir / "exp1" / sub, f"{sub}/")
        # scalars: every step, its wall time, the float32 value TensorBoard stores
        want = [(s, t, float(a)) for s, t, a in seen["scalars"][f"{sub}/loss"]]
        assert scalars[f"{sub}/loss"] == want
        assert [p[0] for p in want] == [Decimal(s) for s in STEPS]
        assert want[1][1] == _ms(WALL0 + 3 * 1.25 + scale)
        # text (tensorboardX appends /text_summary to the tag)
        (step, ts, value), = texts[f"{sub}/notes/text_summary"]
        assert (step, ts, value) == (Decimal(7), _ms(WALL0 + 300.125), f"{sub} epoch 0 é ✓")
        # histogram: edges are [min] + bucket limits, counts exact
        (step, ts, hist), = hists[f"{sub}/weights"]
        assert (step, ts) == (Decimal(3), _ms(WALL0 + 100.5))
        # (num = 6 is the sum of the counts and max = 2 the last edge: only sum and sum_squares are kept)
        assert hist == {"type": "COUNTING;sum=4.0;sum_squares=6.0", "edges": [-1.0, 0.0, 1.0, 2.0],
                        "values": [1.0, 2.0, 3.0]}
        # images and audio: the encoded bytes, byte for byte
        for plugin, tag, at in (("images", "sample", 5), ("audio", "voice", 6)):
            (step, ts, cell), = files[f"{sub}/{tag}"]
            assert step == Decimal(at)
            (_, tb_ts, arr), = seen[plugin][f"{sub}/{tag}"]
            encoded = arr.reshape(-1)[2] if plugin == "images" else arr.reshape(-1)[0]
            assert ts == tb_ts
            assert (files_root / cell["path"]).read_bytes() == encoded
            assert encoded[:4] in (b"\x89PNG", b"RIFF")
    # hparams -> params, typed; the run's creation time is its first event
    params = {r["attribute_path"]: r for r in table.filter(pc.is_null(table.column("step"))).to_pylist()}
    assert params["train/hparams/lr"]["float_value"] == pytest.approx(0.1)
    assert params["validation/hparams/layers"]["int_value"] == 3
    assert params["train/hparams/opt"]["string_value"] == "adam"
    assert params["train/hparams/amp"]["bool_value"] is True
    assert params["sys/creation_time"]["datetime_value"] == _ms(WALL0)
    assert params["sys/name"]["string_value"] == "exp1"


def _png(seed: int) -> bytes:
    from trackport.testing.corpus import png_bytes

    return png_bytes(seed)


def test_source_reads_tensor_summaries_as_tf2_and_keras_write_them(tmp_path):
    """`tf.summary` (TF2, Keras) writes tensors with plugin metadata on a tag's first value only."""
    from tensorboard.compat.proto.event_pb2 import Event
    from tensorboard.compat.proto.summary_pb2 import Summary, SummaryMetadata
    from tensorboard.util.tensor_util import make_tensor_proto
    from tensorboardX.record_writer import RecordWriter

    run_dir = tmp_path / "keras" / "fit"
    run_dir.mkdir(parents=True)
    writer = RecordWriter(str(run_dir / "events.out.tfevents.1700000000.host.v2"))
    writer.write(Event(wall_time=WALL0 - 5, file_version="brain.Event:2").SerializeToString())

    def value(tag, plugin, array, first):
        v = Summary.Value(tag=tag, tensor=make_tensor_proto(array))
        if first:
            v.metadata.CopyFrom(SummaryMetadata(plugin_data=SummaryMetadata.PluginData(plugin_name=plugin)))
        return v

    hist = np.array([[0.0, 1.0, 4.0], [1.0, 2.5, 0.0], [2.5, 3.0, 7.0]])
    for i, step in enumerate([1, 2, 5]):
        values = [
            value("epoch_loss", "scalars", np.float32(1.0 / step), i == 0),
            value("kernel", "histograms", hist * step, i == 0),
            value("samples", "images", np.array([b"4", b"4", _png(step), _png(step + 10)], dtype=object), i == 0),
            value("log", "text", np.array(f"step {step}".encode()), i == 0),
            value("voice", "audio", np.array([[b"RIFF" + bytes([step]), b"label"]], dtype=object), i == 0),
            value("pr", "pr_curves", np.ones((2, 3), np.float32) * step, i == 0),
        ]
        event = Event(wall_time=WALL0 + step, step=step, summary=Summary(value=values))
        writer.write(event.SerializeToString())
    writer.close()

    source = open_source(f"tensorboard:{tmp_path / 'keras'}", {})
    (ref,) = list(source.list_runs(Selection()))
    assert (ref.project_id, ref.run_id) == ("keras", "fit")
    table = pa.concat_tables(source.read_run(ref, Selection()))
    files = source.files(ref)
    steps = [Decimal(s) for s in (1, 2, 5)]
    stamps = [_ms(WALL0 + s) for s in (1, 2, 5)]
    assert _series(table, "float_series")["epoch_loss"] == [
        (d, t, float(np.float32(1.0 / s))) for d, t, s in zip(steps, stamps, (1, 2, 5))]
    assert [h[2] for h in _series(table, "histogram_series")["kernel"]] == [
        {"type": "COUNTING", "edges": [0.0, 1.0 * s, 2.5 * s, 3.0 * s], "values": [4.0 * s, 0.0, 7.0 * s]}
        for s in (1, 2, 5)]
    assert [h[2] for h in _series(table, "string_series")["log"]] == ["step 1", "step 2", "step 5"]
    series = _series(table, "file_series")
    for k, offset in ((0, 0), (1, 10)):
        got = series[f"samples/{k}"]
        assert [(p[0], p[1]) for p in got] == list(zip(steps, stamps))
        assert [files.open(p[2]["path"]).read() for p in got] == [_png(s + offset) for s in (1, 2, 5)]
    assert [files.open(p[2]["path"]).read() for p in series["voice"]] == [b"RIFF" + bytes([s]) for s in (1, 2, 5)]
    # a plugin without a mapping: its tensor, kept whole as a file
    from tensorboard.compat.proto.tensor_pb2 import TensorProto
    from tensorboard.util.tensor_util import make_ndarray

    (first, *_) = series["pr"]
    kept = make_ndarray(TensorProto.FromString(files.open(first[2]["path"]).read()))
    assert kept.tolist() == [[1.0, 1.0, 1.0], [1.0, 1.0, 1.0]]
    params = {r["attribute_path"]: r for r in table.filter(pc.is_null(table.column("step"))).to_pylist()}
    assert params["sys/creation_time"]["datetime_value"] == _ms(WALL0 - 5)


def test_run_layout_options(tmp_path):
    logdir = tmp_path / "logs"
    write_training(logdir, steps=[0, 1], hparams=False)
    write_training(logdir / "group", steps=[0, 1], hparams=False)   # group/exp1/{train,validation}

    def runs(**options):
        source = open_source(f"tensorboard:{logdir}", options)
        return [(r.project_id, r.run_id) for r in source.list_runs(Selection())]

    assert runs() == [("logs", "exp1/train"), ("logs", "exp1/validation"),
                      ("logs", "group/exp1/train"), ("logs", "group/exp1/validation")]
    assert runs(tensorboard_subdirs_as_prefixes=True) == [("logs", "exp1"), ("logs", "group/exp1")]
    assert runs(tensorboard_run_depth=1, tensorboard_project="p") == [("p", "exp1"), ("p", "group")]
    source = open_source(f"tensorboard:{logdir}", {"tensorboard_run_depth": 1})
    ref = [r for r in source.list_runs(Selection()) if r.run_id == "group"][0]
    table = pa.concat_tables(source.read_run(ref, Selection()))
    assert "exp1/validation/loss" in set(table.column("attribute_path").to_pylist())


def _records(path: Path) -> list[int]:
    """Start offsets of the TFRecords of a file (from the length headers)."""
    data, offsets, pos = path.read_bytes(), [], 0
    while pos < len(data):
        offsets.append(pos)
        (length,) = struct.unpack("<Q", data[pos:pos + 8])
        pos += 12 + length + 4
    return offsets


def test_a_torn_event_file_is_read_up_to_the_tear_and_reported(tmp_path, caplog):
    logdir = tmp_path / "torn"
    write_training(logdir, steps=list(range(10)), hparams=False)
    train = next((logdir / "exp1" / "train").glob("*tfevents*"))
    valid = next((logdir / "exp1" / "validation").glob("*tfevents*"))
    # train: cut in the middle of the 6th scalar record; validation: one flipped byte in the 4th
    offsets = _records(train)
    with open(train, "r+b") as fh:
        fh.truncate(offsets[6] + 20)
    blob = bytearray(valid.read_bytes())
    blob[_records(valid)[4] + 14] ^= 0xFF
    valid.write_bytes(bytes(blob))

    out = tmp_path / "export"
    with caplog.at_level(logging.WARNING):
        code, report, text = run_cli("export", f"tensorboard:{logdir}", str(out),
                                     "--tensorboard-subdirs-as-prefixes")
    assert code == 0, text
    table = read_plain_export(out)[("torn", "exp1")]
    scalars = _series(table, "float_series")
    assert [p[0] for p in scalars["train/loss"]] == [Decimal(s) for s in range(5)]
    assert [p[0] for p in scalars["validation/loss"]] == [Decimal(s) for s in range(3)]
    assert "train/weights" not in _series(table, "histogram_series")
    for warnings in ([r.getMessage() for r in caplog.records if r.levelno == logging.WARNING],
                     runs_by_id(report)["exp1"]["warnings"]):   # in the log and in the run's report
        assert any(str(train) in w and "cut short" in w and str(offsets[6]) in w for w in warnings), warnings
        assert any(str(valid) in w and "checksum mismatch" in w for w in warnings), warnings
    assert report["totals"]["warnings"] == 2
    logged = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and str(train) in r.getMessage()]
    assert len(logged) == 1, logged     # the run is read twice (scan, write): the tear is said once


def test_runs_logging_one_image_tag_and_step_export_their_own_files(tmp_path):
    """Issue 25 item 6: every exported file path is unique per run, even at --workers 8."""
    from tensorboardX import SummaryWriter

    logdir = tmp_path / "logs"
    runs = [f"run{k}" for k in range(8)]
    for k, name in enumerate(runs):
        writer = SummaryWriter(str(logdir / name))
        for step in range(3):
            image = np.full((3, 32, 32), (k * 29 + step * 7) % 256, dtype=np.uint8)
            writer.add_image("sample", image, step, walltime=WALL0 + step)
        writer.close()
    out = tmp_path / "export"
    code, report, text = run_cli("export", f"tensorboard:{logdir}", str(out), "--workers", "8")
    assert code == 0, text
    files_root = project_files_dir(out, "logs")
    source = open_source(f"tensorboard:{logdir}", {})
    refs = {r.run_id: r for r in source.list_runs(Selection())}
    paths = set()
    for (project, run_id), table in read_plain_export(out).items():
        series = _series(table, "file_series")["sample"]
        files = source.files(refs[run_id])
        assert [p[0] for p in series] == [Decimal(s) for s in range(3)]
        for _, _, cell in series:
            paths.add(cell["path"])
            assert (files_root / cell["path"]).read_bytes() == files.open(cell["path"]).read(), (run_id, cell)
    assert len(paths) == 3 * len(runs)
    assert not list(files_root.rglob("*.tmp"))
    code, report, text = run_cli("verify", f"tensorboard:{logdir}", str(out))
    assert code == 0, text


def test_the_parquet_sink_never_puts_two_runs_bytes_in_one_file_path(tmp_path):
    """The invariant lives in the sink: two runs of a project naming one file path share it only
    when their bytes are the same (an MLflow experiment holding a run and trackport's copy of
    it); other bytes for a path another run wrote fail that run, naming the path and the run."""
    from trackport.connectors.parquet import open_sink
    from trackport.core.errors import RunError
    from trackport.core.registry import parse_uri
    from trackport.testing.corpus import CorpusRun, rows_table

    src = tmp_path / "src"
    shared = "shared/model.bin"
    runs = [CorpusRun("p", rid, rows_table("p", rid, [{"path": "model", "type": "file", "value": shared}]),
                      files={shared: b"one file for two runs"}) for rid in ("r1", "r2")]
    write_exporter_export(src, runs)
    out = tmp_path / "out"
    code, report, text = run_cli("export", str(src), str(out), "--workers", "2")
    assert code == 0, text
    assert sorted(r["status"] for r in report["runs"]) == ["moved", "moved"]
    assert [p.read_bytes() for p in (out / "files").rglob("model.bin")] == [b"one file for two runs"]
    assert run_cli("verify", str(src), str(out))[0] == 0

    sink = open_sink(parse_uri(f"parquet:{tmp_path / 'other'}"), {})
    (tmp_path / "a.bin").write_bytes(b"first")
    (tmp_path / "b.bin").write_bytes(b"second")
    assert sink.claim_file("p", "r1", "x.bin", tmp_path / "a.bin") is True
    with pytest.raises(RunError) as refused:
        sink.claim_file("p", "r2", "x.bin", tmp_path / "b.bin")
    assert "x.bin" in str(refused.value) and "'r1'" in str(refused.value)


SENTINEL = 1.7976931348623157e308     # DBL_MAX: TF1 and Keras histograms end their buckets with it
CKPT = "/models/run1/model.ckpt-3"


def write_tf1_training(run_dir: Path) -> dict:
    """An Estimator-like TF1 run written with TensorBoard's own protos: graph and meta graph per
    session, simple_value scalars, a `histo` with the sentinel bucket limit, a CHECKPOINT session
    log, the hparams experiment / session start / session end records, and a restart (a second
    session START at step 5 that writes steps 5..7 again)."""
    from tensorboard.compat.proto.event_pb2 import Event, SessionLog
    from tensorboard.compat.proto.graph_pb2 import GraphDef
    from tensorboard.compat.proto.meta_graph_pb2 import MetaGraphDef
    from tensorboard.compat.proto.node_def_pb2 import NodeDef
    from tensorboard.compat.proto.summary_pb2 import HistogramProto, Summary
    from tensorboardX.record_writer import RecordWriter
    from tensorboardX.summary import hparams as hparams_summary

    run_dir.mkdir(parents=True)
    writer = RecordWriter(str(run_dir / "events.out.tfevents.1700000000.host"))
    out = {"graphs": [], "meta_graphs": []}

    def write(**fields):
        writer.write(Event(**fields).SerializeToString())

    def session(first_step: int, steps: range, seed: int) -> None:
        write(wall_time=WALL0 + first_step, step=first_step, session_log=SessionLog(status=SessionLog.START))
        graph = GraphDef(node=[NodeDef(name=f"dense_{seed}", op="MatMul")]).SerializeToString()
        meta = MetaGraphDef(graph_def=GraphDef(node=[NodeDef(name=f"meta_{seed}", op="Const")]))
        meta.meta_info_def.tags.append("serve")
        write(wall_time=WALL0 + first_step, step=first_step, graph_def=graph)
        write(wall_time=WALL0 + first_step + 0.5, step=first_step, meta_graph_def=meta.SerializeToString())
        out["graphs"].append(graph)
        out["meta_graphs"].append(meta.SerializeToString())
        for step in steps:
            write(wall_time=WALL0 + step + 1, step=step, summary=Summary(value=[
                Summary.Value(tag="loss", simple_value=seed + 1.0 / (step + 1))]))
        write(wall_time=WALL0 + steps[-1] + 1.5, step=steps[-1], summary=Summary(value=[
            Summary.Value(tag="dense/kernel", histo=HistogramProto(
                min=-0.5, max=0.75, num=4.0, sum=0.5, sum_squares=1.125,
                bucket_limit=[0.0, 0.5, SENTINEL], bucket=[1.0, 2.0, 1.0]))]))

    write(wall_time=WALL0 - 1, file_version="brain.Event:2")
    for summary in hparams_summary({"lr": 0.01, "optimizer": "sgd"}, {"loss": 0.0}):
        write(wall_time=WALL0, step=0, summary=Summary.FromString(summary.SerializeToString()))
    session(0, range(0, 8), 0)
    write(wall_time=WALL0 + 9, step=3, session_log=SessionLog(
        status=SessionLog.CHECKPOINT, msg="saved", checkpoint_path=CKPT))
    session(5, range(5, 10), 10)
    writer.close()
    return out


def _tf1_export(tmp_path, *args: str):
    logdir = tmp_path / "estimator"
    written = write_tf1_training(logdir / "model")
    out = tmp_path / "export"
    code, report, text = run_cli("export", f"tensorboard:{logdir}", str(out), *args)
    assert code == 0, text
    (table,) = read_plain_export(out).values()
    return logdir, written, out, table, runs_by_id(report)["model"]


def test_meta_graphs_move_like_graphs(tmp_path):
    """Issue 25 item 7: `meta_graph_def` records were dropped; every graph record moves too."""
    logdir, written, out, table, _ = _tf1_export(tmp_path)
    files = _series(table, "file_series")
    files_root = project_files_dir(out, "estimator")
    for attr, key, steps in (("tensorboard/meta_graph", "meta_graphs", [0, 5]),
                             ("tensorboard/graph", "graphs", [0, 5])):
        points = files[attr]
        assert [p[0] for p in points] == [Decimal(s) for s in steps], attr
        assert [(files_root / p[2]["path"]).read_bytes() for p in points] == written[key], attr
    code, report, text = run_cli("verify", f"tensorboard:{logdir}", str(out))
    assert code == 0, text


def test_histograms_keep_max_sum_and_sum_squares_through_a_round_trip(tmp_path):
    """Issue 25 item 8: TensorBoard takes `max` as the last right edge of a histogram whose buckets
    end with the sentinel; every HistogramProto field survives TensorBoard -> parquet -> TensorBoard."""
    logdir, _, out, table, _ = _tf1_export(tmp_path)
    (_, _, hist), _ = _series(table, "histogram_series")["dense/kernel"]
    assert hist["edges"] == [-0.5, 0.0, 0.5, SENTINEL] and hist["values"] == [1.0, 2.0, 1.0]
    assert hist["type"] == "COUNTING;max=0.75;sum=0.5;sum_squares=1.125"
    tb = tmp_path / "tb"
    code, report, text = run_cli("copy", str(out), f"tensorboard:{tb}")
    assert code == 0, text
    (run_dir,) = [p.parent for p in tb.rglob("trackport-run.json")]
    original, copied = _accumulator(logdir / "model"), _accumulator(run_dir)
    from tensorboard.util import tensor_util

    for acc in (original, copied):   # what TensorBoard draws: the last bucket ends at max
        last = tensor_util.make_ndarray(acc.Tensors("dense/kernel")[-1].tensor_proto)
        assert last[-1].tolist() == [0.5, 0.75, 1.0]
    from tensorboard.compat.proto.event_pb2 import Event

    protos = [e.summary.value[0].histo for e in map(Event.FromString,
              (d for _, d in __import__("trackport.connectors.tensorboard.reader", fromlist=["x"])
               .RecordReader(next(run_dir.glob("*tfevents*")))))
              if e.WhichOneof("what") == "summary" and e.summary.value[0].HasField("histo")]
    assert [(h.min, h.max, h.num, h.sum, h.sum_squares, list(h.bucket_limit)) for h in protos] == [
        (-0.5, 0.75, 4.0, 0.5, 1.125, [0.0, 0.5, SENTINEL])] * 2
    code, report, text = run_cli("verify", str(out), f"tensorboard:{tb}")
    assert code == 0, text


def test_checkpoint_paths_and_hparams_experiment_and_session_end_are_kept(tmp_path):
    """Issue 25 item 9."""
    from tensorboard.plugins.hparams import plugin_data_pb2

    _, _, out, table, _ = _tf1_export(tmp_path)
    texts = _series(table, "string_series")
    assert [(p[0], p[2]) for p in texts["tensorboard/checkpoint_path"]] == [(Decimal(3), CKPT)]
    assert [p[2] for p in texts["tensorboard/session_log"]] == ["START", "CHECKPOINT: saved", "START"]
    params = {r["attribute_path"]: r for r in table.filter(pc.is_null(table.column("step"))).to_pylist()}
    assert params["tensorboard/session_end/status"]["string_value"] == "STATUS_SUCCESS"
    experiment = plugin_data_pb2.HParamsPluginData.FromString(
        (project_files_dir(out, "estimator") / params["tensorboard/hparams_experiment"]["file_value"]["path"])
        .read_bytes()).experiment
    assert sorted(h.name for h in experiment.hparam_infos) == ["lr", "optimizer"]
    assert [m.name.tag for m in experiment.metric_infos] == ["loss"]
    assert params["hparams/lr"]["float_value"] == 0.01


def test_restarts_are_counted_and_tensorboards_views_are_options(tmp_path):
    """Issue 25 item 10: a restart (a second session START at step 5, then steps 5..9 again) is
    counted and reported; every point moves by default; --tensorboard-orphans moves what the real
    `tensorboard` shows with its default loader, or with --load_fast=false."""
    from tensorboard_server import get_json, start_tensorboard, stop_tensorboard, wait_for

    logdir, _, _, table, run = _tf1_export(tmp_path)
    steps = [p[0] for p in _series(table, "float_series")["loss"]]
    assert steps == sorted([Decimal(s) for s in [*range(0, 8), *range(5, 10)]])
    assert run["details"]["tensorboard_restarts"] == 1
    assert run["details"]["tensorboard_step_regressions"] == 1
    assert any("restarted at step 5" in w for w in run["warnings"]), run["warnings"]
    assert sum("do not come after" in w for w in run["warnings"]) == 1, run["warnings"]

    for view, load_fast in (("default-loader", "true"), ("python-loader", "false")):
        proc, url = start_tensorboard(logdir, tmp_path / f"home-{view}", load_fast)
        try:
            assert wait_for(lambda: get_json(url, "/data/plugin/histograms/tags").get("model"))
            shown = {"loss": [(Decimal(p[1]), p[2]) for p in get_json(
                         url, "/data/plugin/scalars/scalars", run="model", tag="loss")],
                     "dense/kernel": [Decimal(p[1]) for p in get_json(
                         url, "/data/plugin/histograms/histograms", run="model", tag="dense/kernel")]}
        finally:
            stop_tensorboard(proc)
        out = tmp_path / view
        code, report, text = run_cli("export", f"tensorboard:{logdir}", str(out), "--tensorboard-orphans", view)
        assert code == 0, text
        (moved,) = read_plain_export(out).values()
        assert [(p[0], p[2]) for p in _series(moved, "float_series")["loss"]] == shown["loss"], view
        assert [p[0] for p in _series(moved, "histogram_series")["dense/kernel"]] == shown["dense/kernel"], view
        hidden = 13 + 2 - len(shown["loss"]) - len(shown["dense/kernel"])
        assert runs_by_id(report)["model"]["transformations"]["orphans_hidden"] == hidden, view
        code, report, text = run_cli("verify", f"tensorboard:{logdir}", str(out), "--tensorboard-orphans", view)
        assert code == 0, text


# -- sink ----------------------------------------------------------------------------


def test_sink_writes_what_tensorboard_shows_and_repairs_without_duplicates(tmp_path):
    corpus = [r for r in build_corpus(big=False) if r.case in ("scalars", "steps", "string_series", "histograms", "files")]
    src = tmp_path / "export"
    write_exporter_export(src, corpus, part_rows=10_000)
    logdir = tmp_path / "tb"
    code, report, text = run_cli("copy", str(src), f"tensorboard:{logdir}")
    assert code == 0, text
    moved = runs_by_id(report)

    for run in corpus:
        run_dir = logdir / moved[run.run_id]["dest_id"]
        mark = json.loads((run_dir / "trackport-run.json").read_text())
        assert mark["complete"] and mark["origin"]["run_id"] == run.run_id
        acc = _accumulator(run_dir)
        series = run.table.filter(pc.is_valid(run.table.column("step")))
        for path, typ in set(zip(series.column("attribute_path").to_pylist(),
                                 series.column("attribute_type").to_pylist())):
            rows = series.filter(pc.equal(series.column("attribute_path"), path))
            plugin = {"float_series": "scalars", "string_series": "text",
                      "histogram_series": "histograms", "file_series": "images"}[typ]
            assert path in acc.PluginTagToContent(plugin), (run.case, path, plugin)
            events = acc.Tensors(path)
            # every point once, at its step, with its wall time (null -> 0)
            multiplier = mark["multiplier"]
            assert sorted(e.step for e in events) == sorted(int(s * multiplier) for s in rows.column("step").to_pylist())
            ms = pc.cast(rows.column("timestamp"), pa.int64()).to_pylist()
            assert sorted(e.wall_time for e in events) == sorted(0.0 if t is None else t / 1000 for t in ms)
        if any(run.table.column("attribute_type").to_pylist()):
            params = [p for p in run.table.column("attribute_type").to_pylist() if p in ("string", "float", "int")]
            if params:
                assert "hparams" in acc.ActivePlugins()

    # a load killed mid-run: the mark is missing and the event file half written
    scal = next(r for r in corpus if r.case == "steps")
    run_dir = logdir / moved[scal.run_id]["dest_id"]
    (run_dir / "trackport-run.json").unlink()
    event_file = next(run_dir.glob("*tfevents*"))
    with open(event_file, "r+b") as fh:
        fh.truncate(event_file.stat().st_size // 2)
    code, report, text = run_cli("copy", str(src), f"tensorboard:{logdir}")
    assert code == 0, text
    statuses = {r["run_id"]: r["status"] for r in report["runs"]}
    assert statuses.pop(scal.run_id) == "repaired"
    assert set(statuses.values()) == {"skipped"}
    acc = _accumulator(run_dir)
    assert acc.PluginTagToContent("scalars")
    for tag in acc.PluginTagToContent("scalars"):
        steps = [e.step for e in acc.Tensors(tag)]
        assert len(steps) == len(set(steps)), f"duplicate points in {tag}"
    code, report, text = run_cli("verify", str(src), f"tensorboard:{logdir}")
    assert code == 0, text
    assert report["totals"]["verified"] == len(corpus)


@pytest.mark.parametrize("load_fast", ["true", "false"])
def test_tensorboard_shows_every_scalar_with_either_loader(tmp_path, load_fast):
    """The real `tensorboard` (HTTP data API) shows every copied scalar with its default Rust loader
    (which ignores DT_DOUBLE scalars) and with the Python one; the exact value still reads back."""
    from tensorboard_server import get_json, start_tensorboard, stop_tensorboard, wait_for

    run = next(r for r in build_corpus(big=False) if r.case == "steps")
    src = tmp_path / "export"
    write_exporter_export(src, [run])
    logdir = tmp_path / "tb"
    code, report, text = run_cli("copy", str(src), f"tensorboard:{logdir}")
    assert code == 0, text
    moved = runs_by_id(report)[run.run_id]
    dest = moved["dest_id"]
    multiplier = json.loads((logdir / dest / "trackport-run.json").read_text())["multiplier"]
    series = run.table.filter(pc.equal(run.table.column("attribute_type"), "float_series"))
    want: dict[str, list] = {}
    for row in series.select(["attribute_path", "step", "float_value"]).to_pylist():
        want.setdefault(row["attribute_path"], []).append(
            (int(row["step"] * multiplier), float(np.float32(row["float_value"]))))
    assert moved["transformations"]["scalar_float32_display"] == series.num_rows   # rng.random(): none float32

    proc, url = start_tensorboard(logdir, tmp_path / "tb-home", load_fast)
    try:
        tags = wait_for(lambda: get_json(url, "/data/plugin/scalars/tags").get(dest))
        assert sorted(tags or {}) == sorted(want), f"TensorBoard shows scalar tags {tags}"
        for tag, points in want.items():
            shown = get_json(url, "/data/plugin/scalars/scalars", run=dest, tag=tag)
            assert sorted((step, value) for _, step, value in shown) == sorted(points), tag
    finally:
        stop_tensorboard(proc)

    source = open_source(f"tensorboard:{logdir}", {})
    (ref,) = list(source.list_runs(Selection()))
    back = _series(pa.concat_tables(source.read_run(ref, Selection())), "float_series")
    assert set(back) == set(want)
    for tag in want:
        rows = series.filter(pc.equal(series.column("attribute_path"), tag))
        assert sorted(v for *_, v in back[tag]) == sorted(rows.column("float_value").to_pylist())


# -- TensorBoard -> MLflow ----------------------------------------------------------


def _mlflow_history(server: str, experiment: str, project: str, run_name: str, key: str
                    ) -> list[tuple[int, int, float]]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=server)
    exp = client.get_experiment_by_name(experiment)
    run = next(r for r in client.search_runs([exp.experiment_id])
               if r.data.tags.get("trackport.origin.run_id") == run_name
               and r.data.tags.get("trackport.origin.project") == project)
    return sorted((m.step, m.timestamp, m.value) for m in client.get_metric_history(run.info.run_id, key))


def _append_training(logdir: Path, steps: list[int], wall0: float) -> None:
    """More training: new records appended to the existing event files (a writer still running)."""
    from tensorboardX.proto.event_pb2 import Event
    from tensorboardX.proto.summary_pb2 import Summary
    from tensorboardX.record_writer import masked_crc32c

    for sub, scale in SUBDIRS.items():
        path = next((logdir / "exp1" / sub).glob("*tfevents*"))
        with open(path, "ab") as fh:
            for step in steps:
                event = Event(wall_time=wall0 + step * 1.25 + scale, step=step, summary=Summary(
                    value=[Summary.Value(tag="loss", simple_value=scale / (step + 1))]))
                data = event.SerializeToString()
                header = struct.pack("<Q", len(data))
                fh.write(header + struct.pack("<I", masked_crc32c(header)) + data
                         + struct.pack("<I", masked_crc32c(data)))


def test_tensorboard_to_mlflow_verify_clean_and_incremental(tmp_path, mlflow_server):
    logdir = tmp_path / "lightning_logs"
    write_training(logdir)
    dest = f"mlflow+{mlflow_server}"
    experiment = f"{tmp_path.name}-tb"
    args = ["--tensorboard-subdirs-as-prefixes", "--mlflow-experiment", experiment]

    # the CLI, end to end: every scalar with step and wall time; verify clean
    code, report, text = run_cli("copy", f"tensorboard:{logdir}", dest, *args)
    assert code == 0, text
    assert report["totals"]["moved"] == 1 and not report["totals"]["drops"]
    code, report, text = run_cli("verify", f"tensorboard:{logdir}", dest, *args)
    assert code == 0, text
    assert report["totals"]["verified"] == 1
    history = _mlflow_history(mlflow_server, experiment, "lightning_logs", "exp1", "validation/loss")
    assert [h[0] for h in history] == STEPS
    assert [h[1] for h in history] == [round((WALL0 + s * 1.25 + 2.0) * 1000) for s in STEPS]
    assert [h[2] for h in history] == [float(np.float32(2.0 / (i + 1 + s))) for i, s in enumerate(STEPS)]

    # incremental: a second logdir mirrored while its training goes on
    live = tmp_path / "live_logs"
    write_training(live, steps=[0, 1, 2])
    code, first, text = run_cli("copy", f"tensorboard:{live}", dest, *args)
    assert code == 0 and [r["status"] for r in first["runs"]] == ["moved"], text
    _append_training(live, [3, 4, 5, 6], WALL0 + 10)
    code, second, text = run_cli("copy", f"tensorboard:{live}", dest, *args)
    assert code == 0 and [r["status"] for r in second["runs"]] == ["repaired"], text
    assert second["runs"][0]["details"]["source_changed"] is True
    history = _mlflow_history(mlflow_server, experiment, "live_logs", "exp1", "train/loss")
    assert [h[0] for h in history] == [0, 1, 2, 3, 4, 5, 6], "only the new points were added"
    code, third, text = run_cli("copy", f"tensorboard:{live}", dest, *args)
    assert code == 0 and [r["status"] for r in third["runs"]] == ["skipped"], text
    assert len(_mlflow_history(mlflow_server, experiment, "live_logs", "exp1", "train/loss")) == 7
    code, report, text = run_cli("verify", f"tensorboard:{live}", dest, *args)
    assert code == 0, text
    assert report["totals"]["verified"] == 1


def test_a_moved_logdir_finds_the_runs_it_loaded(tmp_path):
    """A run's origin is its first event file's name (with its project and run id), not the
    logdir's path: a logdir moved elsewhere under the same name finds its destination runs."""
    logdir = tmp_path / "first" / "lightning_logs"
    write_training(logdir)
    dest = f"mlflow:sqlite:///{tmp_path / 'mlflow.db'}"
    args = ["--tensorboard-subdirs-as-prefixes"]
    assert run_cli("copy", f"tensorboard:{logdir}", dest, *args)[0] == 0
    moved = tmp_path / "second" / "lightning_logs"
    logdir.parent.rename(tmp_path / "second")
    code, report, text = run_cli("copy", f"tensorboard:{moved}", dest, *args)
    assert code == 0 and report["totals"]["skipped"] == 1, text
    code, report, text = run_cli("verify", f"tensorboard:{moved}", dest, *args)
    assert code == 0 and report["totals"]["verified"] == 1, text
    # another training in a logdir of the same name is another run, not this one
    other = tmp_path / "third" / "lightning_logs"
    write_training(other, wall0=WALL0 + 86_400, suffix=".another")   # not the first's file name
    code, report, text = run_cli("copy", f"tensorboard:{other}", dest, *args)
    assert code == 0 and report["totals"]["moved"] == 1, text


# -- conformance (trackport.testing.conformance) ------------------------------------------------
def test_conformance_round_trip(tmp_path):
    from trackport.testing import conformance

    # exact round trip: what TensorBoard cannot hold natively is kept in the run's mark
    conformance.round_trip(conformance.Target(f"tensorboard:{tmp_path / 'dest-logdir'}"), tmp_path)


def test_conformance_run_times(tmp_path):
    from trackport.testing import conformance

    conformance.run_times(conformance.Target(f"tensorboard:{tmp_path / 'dest-logdir'}"), tmp_path)


def test_conformance_files_and_bytes(tmp_path):
    from trackport.testing import conformance

    conformance.files_and_bytes(conformance.Target(f"tensorboard:{tmp_path / 'tb'}"), tmp_path)


def test_conformance_sigkill_heals(tmp_path):
    from trackport.testing import conformance

    conformance.sigkill_heals(conformance.Target(f"tensorboard:{tmp_path / 'dest-logdir'}"), tmp_path)


def test_a_resumed_training_is_copied_again_once_and_an_unchanged_run_is_skipped(tmp_path):
    """TensorBoard -> TensorBoard: a training resumed after the first copy (tensorboardX writes
    a second event file into its folder) has a new run_version; the second copy rewrites the
    destination run in place with every point once; a run that did not change is skipped."""
    from tensorboardX import SummaryWriter

    logdir, dest = tmp_path / "logs", tmp_path / "dest"
    done = SummaryWriter(str(logdir / "exp" / "done"))
    done.add_scalar("loss", 1.0, 0, walltime=WALL0)
    done.close()
    writer = SummaryWriter(str(logdir / "exp" / "live"))
    for step in range(3):
        writer.add_scalar("loss", 1.0 / (step + 1), step, walltime=WALL0 + step)
    writer.close()
    code, report, out = run_cli("copy", f"tensorboard:{logdir}", f"tensorboard:{dest}")
    assert code == 0 and report["totals"]["moved"] == 2, out
    writer = SummaryWriter(str(logdir / "exp" / "live"), filename_suffix=".resumed")
    for step in range(3, 6):
        writer.add_scalar("loss", 1.0 / (step + 1), step, walltime=WALL0 + step)
    writer.close()
    code, report, out = run_cli("copy", f"tensorboard:{logdir}", f"tensorboard:{dest}")
    assert code == 0, out
    statuses = sorted((r["run_id"], r["status"]) for r in report["runs"])
    assert [s for _, s in statuses] == ["skipped", "repaired"], statuses
    assert next(r for r in report["runs"] if r["status"] == "repaired")["details"]["source_changed"] is True
    code, report, out = run_cli("export", f"tensorboard:{dest}", str(tmp_path / "back"))
    assert code == 0, out
    tables = {run_id: t for (_, run_id), t in read_plain_export(tmp_path / "back").items()}
    live = next(t for run_id, t in tables.items() if "live" in run_id)
    assert [s for s, _, _ in _series(live, "float_series")["loss"]] == list(range(6))   # each point once
    assert len(list((dest).rglob("events.out.tfevents.*"))) == 2                        # one file per run
    code, report, out = run_cli("copy", f"tensorboard:{logdir}", f"tensorboard:{dest}")
    assert code == 0 and report["totals"]["skipped"] == 2, out
