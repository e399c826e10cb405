"""Reproduce the benchmark table of docs/benchmarks.md in one invocation.

    python benchmarks/bench.py                    # full size (about an hour on 2 cores)
    python benchmarks/bench.py --scale quick      # every case at 1/20 (a few minutes)
    python benchmarks/bench.py --cases standard,wide --paths rest,sqlite

For every synthetic workload (benchmarks/workloads.py) and path it runs
trackport as a child process and the reference on the same data and server,
in the same invocation, and reports the ratio:

    rest     parquet -> MLflow server over REST   vs raw `log_batch` client, same threads
             (rates are float-series points/s; trackport's time also covers the run's
             params, string series, histograms and files, which the reference skips)
    sqlite   parquet -> MLflow sqlite:/// store   vs raw store `log_batch`, same threads
    parquet  parquet -> parquet export (copy)     rows/s (no reference)
    export   MLflow sqlite store -> parquet       rows/s
    inspect  `trackport inspect` of the export    rows/s

Peak memory is the child's own peak RSS (`VmHWM`), and the CLI start time the
median of `trackport --help`.  Results go to a JSON file and replace the
generated part of docs/benchmarks.md; the hand-written notes there stay.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT / "tests"))

from workloads import Workload, workloads, write_workload  # noqa: E402

BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"
PATHS = ("rest", "sqlite", "parquet", "export", "inspect")
# The raw reference holds every Metric object in memory: not for the 10M run.
REFERENCE_MAX_POINTS = 2_000_000
# Through the MLflow SDK, 10M points take hours; the long run measures memory on the parquet path.
MLFLOW_MAX_POINTS = 2_000_000


@dataclass
class Child:
    seconds: float
    peak_rss_mb: float
    code: int
    stdout: str
    stderr: str


@dataclass
class Measure:
    case: str
    path: str
    points: int
    rows: int
    seconds: float
    rate: float
    peak_rss_mb: float
    reference_rate: float | None = None
    ratio: float | None = None
    notes: list[str] = field(default_factory=list)


def run_child(cmd: list[str], env: dict | None = None) -> Child:
    """Run `cmd`; its wall time and its own peak RSS.

    The peak is the child's `VmHWM`, polled from /proc while it runs: `ru_maxrss`
    from `wait4` would not do, since Linux carries the parent's high-water mark
    over into a forked child at exec (fs/exec.c `exec_mmap` -> `setmax_mm_hiwater_rss`),
    and this parent holds generated workloads.
    """
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env)
        peak_kb = 0
        status_file = f"/proc/{proc.pid}/status"
        while proc.poll() is None:
            try:
                with open(status_file) as fh:
                    for line in fh:
                        if line.startswith("VmHWM:"):
                            peak_kb = max(peak_kb, int(line.split()[1]))
                            break
            except (OSError, ValueError):
                pass
            time.sleep(0.02)
        seconds = time.perf_counter() - started
        out.seek(0)
        err.seek(0)
        return Child(seconds, peak_kb / 1024, proc.returncode,
                     out.read().decode(errors="replace"), err.read().decode(errors="replace"))


def trackport(*args: str) -> list[str]:
    return [sys.executable, "-m", "trackport.cli", *args, "--json", "--no-progress"]


def checked(child: Child, what: str) -> dict:
    if child.code != 0:
        raise SystemExit(f"{what} failed with exit {child.code}:\n{child.stderr[-3000:]}\n{child.stdout[-2000:]}")
    return json.loads(child.stdout) if child.stdout.strip().startswith("{") else {}


def prepare_sqlite(uri: str) -> None:
    """Create the store (MLflow's migrations) outside the timed part, for both sides alike."""
    subprocess.run([sys.executable, "-c",
                    "import os; os.environ['MLFLOW_DISABLE_TELEMETRY']='true'\n"
                    "from mlflow.tracking import MlflowClient\n"
                    f"MlflowClient({uri!r})._tracking_client.store"], check=True)


def reference(export: Path, uri: str, threads: int, experiment: str) -> tuple[float, int]:
    child = run_child([sys.executable, str(HERE / "raw_mlflow.py"), str(export), uri,
                       "--threads", str(threads), "--experiment", experiment])
    result = checked(child, "raw reference")
    return result["points"] / result["seconds"], result["points"]


def bench_case(w: Workload, paths: list[str], work: Path, server: str | None, threads: int) -> list[Measure]:
    export = work / f"export-{w.name}"
    rows = write_workload(export, w)

    def state(tag: str) -> list[str]:
        return ["--state-dir", str(work / f"state-{w.name}-{tag}")]

    out: list[Measure] = []
    mlflow_ok = w.metric_points <= MLFLOW_MAX_POINTS
    ref_ok = w.metric_points <= REFERENCE_MAX_POINTS
    sqlite_db = work / f"tp-{w.name}.db"

    def add(path: str, child: Child, points: int, reference_rate: float | None = None, notes=()):
        rate = points / child.seconds if child.seconds else 0.0
        ratio = rate / reference_rate if reference_rate else None
        out.append(Measure(w.name, path, points, rows, round(child.seconds, 2), round(rate),
                           round(child.peak_rss_mb, 1),
                           round(reference_rate) if reference_rate else None,
                           round(ratio, 3) if ratio else None, list(notes)))
        print(f"  {w.name:10s} {path:8s} {rate:>12,.0f}/s  rss {child.peak_rss_mb:7.1f} MB"
              + (f"  ratio {ratio:.2f}" if ratio else ""), flush=True)

    if "rest" in paths and server and mlflow_ok:
        child = run_child(trackport("copy", f"parquet:{export}", f"mlflow+{server}", "--workers", str(threads),
                                    "--mlflow-experiment", f"tp-{w.name}", *state("rest")))
        checked(child, "trackport copy (REST)")
        points = w.metric_points
        ref = reference(export, server, threads, f"raw-{w.name}")[0] if ref_ok else None
        add("rest", child, points, ref)
    if ("sqlite" in paths or "export" in paths) and mlflow_ok:
        uri = f"sqlite:///{sqlite_db}"
        prepare_sqlite(uri)
        child = run_child(trackport("copy", f"parquet:{export}", f"mlflow:{uri}", "--workers", str(threads),
                                    *state("sqlite")))
        checked(child, "trackport copy (sqlite)")
        points = w.metric_points
        if "sqlite" in paths:
            ref = None
            if ref_ok:
                raw_uri = f"sqlite:///{work / f'raw-{w.name}.db'}"
                prepare_sqlite(raw_uri)
                ref = reference(export, raw_uri, threads, f"raw-{w.name}")[0]
            add("sqlite", child, points, ref)
        if "export" in paths:
            back = work / f"back-{w.name}"
            child = run_child(trackport("export", f"mlflow:{uri}", str(back), "--workers", str(threads),
                                        *state("export")))
            checked(child, "trackport export")
            add("export", child, rows, notes=["rate in canonical rows/s"])
    if "parquet" in paths:
        child = run_child(trackport("copy", f"parquet:{export}", f"parquet:{work / f'copy-{w.name}'}",
                                    "--workers", str(threads), *state("parquet")))
        checked(child, "trackport copy (parquet)")
        add("parquet", child, rows, notes=["rate in canonical rows/s"])
    if "inspect" in paths:
        child = run_child([sys.executable, "-m", "trackport.cli", "inspect", str(export), "--json"])
        checked(child, "trackport inspect")
        add("inspect", child, rows, notes=["rate in canonical rows/s"])
    shutil.rmtree(export, ignore_errors=True)
    return out


def cli_start_seconds(repeats: int = 7) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        subprocess.run(["trackport", "--help"], check=True, stdout=subprocess.DEVNULL)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def python_start_seconds(repeats: int = 7) -> float:
    """The interpreter alone (site hooks of installed packages included), for comparison."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], check=True)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def machine() -> dict:
    from importlib.metadata import version

    versions = {}
    for dist in ("trackport", "pyarrow", "mlflow", "numpy"):
        try:
            versions[dist] = version(dist)
        except Exception:  # noqa: BLE001 - a missing distribution is just not listed
            pass
    return {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version(),
            "versions": versions}


def markdown(result: dict) -> str:
    m = result["machine"]
    lines = [
        f"Generated by `python benchmarks/bench.py --scale {result['scale']}` on {result['date']}: "
        f"{m['platform']}, {m['cpus']} CPUs, Python {m['python']}, "
        + ", ".join(f"{k} {v}" for k, v in m["versions"].items()) + f"; {result['threads']} threads.",
        "",
        f"CLI start (`trackport --help`, median): **{result['cli_start_s']:.2f} s** "
        f"(the bare interpreter with this environment's site hooks: {result['python_start_s']:.2f} s).",
        "",
        "| case | path | points or rows | seconds | trackport /s | reference /s | ratio | peak RSS MB |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["measures"]:
        ref = f"{r['reference_rate']:,}" if r["reference_rate"] else "–"
        ratio = f"{r['ratio']:.2f}" if r["ratio"] else "–"
        lines.append(f"| {r['case']} | {r['path']} | {r['points']:,} | {r['seconds']} | {r['rate']:,} | "
                     f"{ref} | {ratio} | {r['peak_rss_mb']} |")
    lines += ["", "Workloads: " + "; ".join(f"{w['name']}: {w['shape']}" for w in result["workloads"]) + "."]
    return "\n".join(lines)


def write_markdown(path: Path, table: str) -> None:
    text = path.read_text() if path.exists() else f"# Benchmarks\n\n{BEGIN}\n{END}\n"
    if BEGIN not in text:
        text += f"\n{BEGIN}\n{END}\n"
    head, rest = text.split(BEGIN, 1)
    tail = rest.split(END, 1)[1] if END in rest else ""
    path.write_text(f"{head}{BEGIN}\n{table}\n{END}{tail}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", choices=("full", "quick", "smoke"), default="full")
    parser.add_argument("--cases", help="comma-separated workload names (default: all)")
    parser.add_argument("--paths", default=",".join(PATHS), help=f"comma-separated, from {', '.join(PATHS)}")
    parser.add_argument("--threads", type=int, default=4, help="concurrency of both trackport and the reference")
    parser.add_argument("--out", type=Path, default=HERE / "results.json")
    parser.add_argument("--markdown", type=Path, default=ROOT / "docs" / "benchmarks.md")
    parser.add_argument("--work", type=Path, help="working folder (default: a temporary one, removed after)")
    args = parser.parse_args()

    os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
    paths = [p for p in args.paths.split(",") if p]
    unknown = set(paths) - set(PATHS)
    if unknown:
        parser.error(f"unknown paths {sorted(unknown)}")
    cases = workloads(args.scale)
    if args.cases:
        wanted = set(args.cases.split(","))
        cases = [w for w in cases if w.name in wanted]
    work = args.work or Path(tempfile.mkdtemp(prefix="trackport-bench-"))
    work.mkdir(parents=True, exist_ok=True)

    server_proc = server = None
    if "rest" in paths:
        from mlflow_server import start_mlflow_server, stop_mlflow_server

        server_proc, server = start_mlflow_server(work / "server", workers=args.threads)
    measures: list[Measure] = []
    try:
        for w in cases:
            print(f"{w.name}: {w.describe()}", flush=True)
            measures += bench_case(w, paths, work, server, args.threads)
    finally:
        if server_proc is not None:
            stop_mlflow_server(server_proc)
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)

    result = {
        "scale": args.scale, "date": time.strftime("%Y-%m-%d"), "threads": args.threads, "machine": machine(),
        "cli_start_s": round(cli_start_seconds(), 3), "python_start_s": round(python_start_seconds(), 3),
        "workloads": [{"name": w.name, "shape": w.describe()} for w in cases],
        "measures": [asdict(m) for m in measures],
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    write_markdown(args.markdown, markdown(result))
    print(f"wrote {args.out} and {args.markdown}")


if __name__ == "__main__":
    main()
