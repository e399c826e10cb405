#!/usr/bin/env python
"""Write the sample export shipped in examples/sample-export/.

It is laid out exactly as neptune-exporter writes an export (no trackport
manifests), so `trackport inspect`, `load` and the docs can be tried without
any tracker account:

    acme/image-classification   IMG-1  a plain training run
                                IMG-2  a longer run, written in 3 parts
                                IMG-3  fractional (epoch) steps
    acme/llm-finetune           LLM-1  console output, a histogram series, a file and an image series
                                LLM-2  forked from LLM-1 at step 400

Deterministic: values come from seeded numpy generators and only IEEE-exact
arithmetic, so a rerun writes equal tables and equal files (and, with the same
pyarrow version, byte-identical parquet).  Run from anywhere:

    python scripts/make_sample_export.py [--out DIR]
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import numpy as np

from trackport.testing.corpus import (
    BASE_MS,
    CorpusRun,
    concat,
    file_path,
    increasing_ms,
    micro_steps,
    png_bytes,
    rows_table,
    series_table,
)
from trackport.testing.exporter_layout import write_exporter_export

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "examples" / "sample-export"
SEED = 4242
MULTI_PART_ROWS = 1000
IMAGES = "acme/image-classification"
LLM = "acme/llm-finetune"
_MIN = 60_000


def _rng(*key: int) -> np.random.Generator:
    return np.random.default_rng([SEED, *key])


def _sys(name: str, created_ms: int, minutes: int, tags: list[str], description: str = "") -> list[dict]:
    rows = [
        {"path": "sys/name", "type": "string", "value": name},
        {"path": "sys/creation_time", "type": "datetime", "value": created_ms},
        {"path": "sys/modification_time", "type": "datetime", "value": created_ms + minutes * _MIN + 417},
        {"path": "sys/owner", "type": "string", "value": "alice"},
        {"path": "sys/tags", "type": "string_set", "value": tags},
        {"path": "sys/failed", "type": "bool", "value": False},
    ]
    if description:
        rows.append({"path": "sys/description", "type": "string", "value": description})
    return rows


def _image_run(run_id: str, index: int, steps: int, lr: float, batch: int) -> CorpusRun:
    rng = _rng(1, index)
    created = BASE_MS + index * 86_400_000 + 250
    s = np.arange(steps, dtype=np.int64)
    ts = increasing_ms(rng, created, steps, 200, 400)
    loss = 2.3 / (1.0 + 0.01 * s) + rng.random(steps) * 0.05
    acc = 1.0 - 0.9 / (1.0 + 0.005 * s) - rng.random(steps) * 0.02
    eval_steps = np.arange(99, steps, 100, dtype=np.int64)
    eval_ts = ts[eval_steps]
    eval_acc = 1.0 - 0.9 / (1.0 + 0.005 * eval_steps) - rng.random(len(eval_steps)) * 0.01
    cpu_n = steps // 10
    cpu_ts = increasing_ms(rng, created, cpu_n, 2000, 2100)
    cpu = np.round(20.0 + rng.random(cpu_n) * 60.0, 1)
    stdout = [f"epoch {e}: loss={2.3 / (1.0 + e):.4f}" for e in range(steps // 100)]
    stdout_ts = ts[np.arange(len(stdout)) * 100]
    params = _sys(f"resnet-{run_id.lower()}", created, int((ts[-1] - created) // _MIN) + 1, ["resnet", "baseline"]) + [
        {"path": "config/lr", "type": "float", "value": lr},
        {"path": "config/batch_size", "type": "int", "value": batch},
        {"path": "config/optimizer", "type": "string", "value": "sgd"},
        {"path": "config/augment", "type": "bool", "value": True},
        {"path": "config/dataset/name", "type": "string", "value": "cifar10"},
        {"path": "config/dataset/classes", "type": "string_set", "value": ["airplane", "cat", "dog"]},
    ]
    return CorpusRun(IMAGES, run_id, concat([
        rows_table(IMAGES, run_id, params),
        series_table(IMAGES, run_id, "train/loss", "float_series", loss, s * 10**6, ts),
        series_table(IMAGES, run_id, "train/accuracy", "float_series", acc, s * 10**6, ts),
        series_table(IMAGES, run_id, "eval/accuracy", "float_series", eval_acc, eval_steps * 10**6, eval_ts),
        series_table(IMAGES, run_id, "monitoring/cpu", "float_series", cpu, None, cpu_ts),
        series_table(IMAGES, run_id, "monitoring/stdout", "string_series", stdout, None, stdout_ts),
    ]))


def _epoch_run() -> CorpusRun:
    """IMG-3: steps are epochs, logged every quarter (loss) and half (eval) epoch."""
    run_id, rng = "IMG-3", _rng(1, 3)
    created = BASE_MS + 3 * 86_400_000 + 250
    quarters = np.arange(1, 201, dtype=np.int64)           # 0.25 .. 50.0 epochs
    steps = quarters * 250_000                              # millionths
    ts = increasing_ms(rng, created, len(quarters), 5_000, 6_000)
    loss = 2.0 / (1.0 + 0.1 * quarters) + rng.random(len(quarters)) * 0.03
    halves = micro_steps([f"{h / 2:.1f}" for h in range(1, 101)])
    eval_ts = ts[1::2]
    eval_acc = 1.0 - 1.0 / (1.0 + 0.2 * np.arange(1, 101)) - rng.random(100) * 0.01
    params = _sys("epoch-steps", created, int((ts[-1] - created) // _MIN) + 1, ["epochs"],
                  "Steps are fractional epochs (0.25, 0.5, ...).") + [
        {"path": "config/lr", "type": "float", "value": 0.05},
        {"path": "config/epochs", "type": "int", "value": 50},
    ]
    return CorpusRun(IMAGES, run_id, concat([
        rows_table(IMAGES, run_id, params),
        series_table(IMAGES, run_id, "train/loss", "float_series", loss, steps, ts),
        series_table(IMAGES, run_id, "eval/accuracy", "float_series", eval_acc, halves, eval_ts),
    ]))


def _llm_runs() -> list[CorpusRun]:
    out = []
    # LLM-1: the parent.
    rng = _rng(2, 1)
    created = BASE_MS + 10 * 86_400_000 + 999
    n = 800
    s = np.arange(n, dtype=np.int64)
    ts = increasing_ms(rng, created, n, 900, 1100)
    loss = 3.5 / (1.0 + 0.004 * s) + rng.random(n) * 0.05
    stdout = [f"[step {i * 50}] tokens/s={1200 + i}" for i in range(16)]
    stderr = ["WARNING: gradient overflow, skipping step", "WARNING: loss scale reduced to 32768.0"]
    hist_edges = [-0.1 + 0.025 * i for i in range(9)]
    hists = [
        {"type": "COUNTING", "edges": hist_edges, "values": [float(v) for v in rng.integers(0, 500, 8)]}
        for _ in range(5)
    ]
    files = {}
    adapter = file_path(LLM, "LLM-1", "checkpoints/adapter")
    files[adapter] = rng.integers(0, 256, size=2048, dtype=np.uint8).tobytes()
    attention_dir = file_path(LLM, "LLM-1", "samples/attention")
    file_rows = [{"path": "checkpoints/adapter", "type": "file", "value": adapter}]
    for step in (0, 400, 799):
        p = f"{attention_dir}/{step}.png"
        files[p] = png_bytes(1000 + step, size=16)
        file_rows.append({"path": "samples/attention", "type": "file_series", "value": p, "step": step})
    params = _sys("llama-lora", created, int((ts[-1] - created) // _MIN) + 1, ["lora", "llm"],
                  "LoRA fine-tune; forked at step 400 as LLM-2.") + [
        {"path": "config/model/name", "type": "string", "value": "llama-3-8b"},
        {"path": "config/model/lora/rank", "type": "int", "value": 16},
        {"path": "config/model/lora/alpha", "type": "float", "value": 32.0},
        {"path": "config/optimizer/lr", "type": "float", "value": 0.0002},
        {"path": "config/optimizer/warmup_steps", "type": "int", "value": 50},
        {"path": "config/started_at", "type": "datetime", "value": created - 5_000},
    ]
    out.append(CorpusRun(LLM, "LLM-1", concat([
        rows_table(LLM, "LLM-1", params),
        series_table(LLM, "LLM-1", "train/loss", "float_series", loss, s * 10**6, ts),
        series_table(LLM, "LLM-1", "monitoring/stdout", "string_series", stdout, None, ts[::50]),
        series_table(LLM, "LLM-1", "monitoring/stderr", "string_series", stderr, None, ts[[123, 456]]),
        series_table(LLM, "LLM-1", "train/grad_hist", "histogram_series", hists,
                     micro_steps([0, 200, 400, 600, 799]), ts[[0, 200, 400, 600, 799]]),
        rows_table(LLM, "LLM-1", file_rows),
    ]), files))
    # LLM-2: forked from LLM-1 at step 400, logs its own steps after the fork.
    rng = _rng(2, 2)
    created2 = int(ts[400]) + 60_000
    s2 = np.arange(401, 1001, dtype=np.int64)
    ts2 = increasing_ms(rng, created2, len(s2), 900, 1100)
    loss2 = 3.5 / (1.0 + 0.005 * s2) + rng.random(len(s2)) * 0.05
    params2 = _sys("llama-lora-higher-lr", created2, int((ts2[-1] - created2) // _MIN) + 1, ["lora", "llm", "fork"]) + [
        {"path": "sys/forking/parent", "type": "string", "value": "LLM-1"},
        {"path": "sys/forking/step", "type": "float", "value": 400.0},
        {"path": "config/optimizer/lr", "type": "float", "value": 0.0004},
    ]
    out.append(CorpusRun(LLM, "LLM-2", concat([
        rows_table(LLM, "LLM-2", params2),
        series_table(LLM, "LLM-2", "train/loss", "float_series", loss2, s2 * 10**6, ts2),
    ])))
    return out


def sample_runs() -> tuple[list[CorpusRun], list[CorpusRun]]:
    """(runs written in one part, runs written in parts of MULTI_PART_ROWS rows)."""
    single = [_image_run("IMG-1", 1, 500, 0.1, 128), _epoch_run(), *_llm_runs()]
    multi = [_image_run("IMG-2", 2, 1200, 0.05, 256)]
    return single, multi


README = """\
# Sample export

A small export in the layout neptune-exporter writes (and trackport reads):

    data/<safe(project)>/<safe(run)>_part_<n>.parquet
    files/<safe(project)>/<project>/<run>/<attribute path>

| project | run | what it shows |
|---|---|---|
| acme/image-classification | IMG-1 | params, metrics, `monitoring/cpu`, `monitoring/stdout` |
| acme/image-classification | IMG-2 | a longer run written in three parts (`_part_0` .. `_part_2`) |
| acme/image-classification | IMG-3 | fractional steps (epochs 0.25, 0.5, ...) |
| acme/llm-finetune | LLM-1 | stdout/stderr, a histogram series, a file and an image series |
| acme/llm-finetune | LLM-2 | a fork of LLM-1 at step 400 (`sys/forking/*`) |

Generated by `python scripts/make_sample_export.py`; do not edit by hand.
"""


def build_sample(out: Path) -> None:
    """Write the sample export into `out` (which is replaced)."""
    out = Path(out)
    if out.exists():
        unexpected = sorted(p.name for p in out.iterdir() if p.name not in {"data", "files", "README.md"})
        if unexpected:
            raise SystemExit(f"{out} holds {unexpected}; refusing to replace a directory that is not a sample export")
        shutil.rmtree(out)
    out.mkdir(parents=True)
    single, multi = sample_runs()
    write_exporter_export(out, single)
    write_exporter_export(out, multi, part_rows=MULTI_PART_ROWS)
    (out / "README.md").write_text(README, encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"target directory (default {DEFAULT_OUT})")
    args = parser.parse_args(argv)
    build_sample(args.out)
    size = sum(p.stat().st_size for p in args.out.rglob("*") if p.is_file())
    print(f"wrote {args.out} ({size:,} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
