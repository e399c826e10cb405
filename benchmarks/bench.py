"""Reproduce the benchmark table of docs/benchmarks.md in one invocation.

    python benchmarks/bench.py                    # full size (about an hour on 2 cores)
    python benchmarks/bench.py --scale quick      # every case at 1/20 (a few minutes)
    python benchmarks/bench.py --cases standard,wide --paths rest,sqlite

For every synthetic workload (benchmarks/workloads.py) and path it runs
trackport as a child process and the reference on the same data and server,
in the same invocation, and reports the ratio:

    rest     parquet -> MLflow server over REST   vs a raw MLflow client, same threads
             (rates are float-series points/s; both move the runs' params and files
             too, and both are timed as whole processes; the raw client's send-only
             rate, a ceiling, is in the notes)
    sqlite   parquet -> MLflow sqlite:/// store   vs raw store `log_batch`, same threads
    parquet  parquet -> parquet export (copy)     rows/s (no reference)
    export   MLflow sqlite store -> parquet       rows/s
    bulk     parquet -> sqlite:/// with --mlflow-bulk   vs trackport's SDK path into sqlite
             (the copy of the sqlite path above, same data; the target ratio is 20)
    postgres parquet -> a fresh PostgreSQL database (127.0.0.1:5432, user postgres): trackport's
             SDK path vs the raw store `log_batch` (another fresh database), and
             `--mlflow-bulk` (row `postgres-bulk`) vs that SDK path; skipped, saying why,
             when the server is unreachable
    inspect  `trackport inspect` of the export    rows/s

Every rate is over the whole process, from its start to its exit (interpreter, imports,
store set-up, listing, every run): the cases small-4 and small-200 (60,000 points in 4 or
200 runs, with files and series) are where those fixed costs weigh most.

Peak memory is the child's own peak RSS (`VmHWM`), and the CLI start time the
median of `trackport --help`, as run here and with other packages' site hooks
skipped (see `startup`), next to the memory floors of the interpreter, pyarrow
and the MLflow SDK.  Results go to a JSON file and replace the
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
PATHS = ("rest", "sqlite", "parquet", "export", "inspect", "bulk", "postgres")
POSTGRES_ADMIN = "postgresql+psycopg2://postgres@127.0.0.1:5432/test"
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


def run_child(cmd: list[str], env: dict | None = None, cwd: Path | None = None) -> Child:
    """Run `cmd`; its wall time and its own peak RSS.

    The peak is the child's `VmHWM`, polled from /proc while it runs: `ru_maxrss`
    from `wait4` would not do, since Linux carries the parent's high-water mark
    over into a forked child at exec (fs/exec.c `exec_mmap` -> `setmax_mm_hiwater_rss`),
    and this parent holds generated workloads.
    """
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env, cwd=cwd)
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


def reference(export: Path, uri: str, threads: int, experiment: str, cwd: Path | None = None
              ) -> tuple[float, str]:
    """(the raw client's rate over its whole process, like trackport's; a note with its send-only ceiling)."""
    child = run_child([sys.executable, str(HERE / "raw_mlflow.py"), str(export), uri,
                       "--threads", str(threads), "--experiment", experiment], cwd=cwd)
    result = checked(child, "raw reference")
    send_rate = result["points"] / result["seconds"]
    return result["points"] / child.seconds, f"raw send-only ceiling {send_rate:,.0f}/s"


def postgres_database(prefix: str) -> tuple[str, object]:
    """A fresh, uniquely named PostgreSQL database: (URI, drop()); raises OSError saying why not."""
    import uuid

    import sqlalchemy

    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    try:
        engine = sqlalchemy.create_engine(POSTGRES_ADMIN, isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            conn.exec_driver_sql(f"CREATE DATABASE {name}")
    except (ImportError, sqlalchemy.exc.SQLAlchemyError) as exc:
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()
        raise OSError(f"PostgreSQL not reachable on 127.0.0.1:5432: {reason[0] if reason else exc}") from None

    def drop() -> None:
        with engine.connect() as conn:
            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        engine.dispose()

    return f"postgresql+psycopg2://postgres@127.0.0.1:5432/{name}", drop


def bench_postgres(w: Workload, export: Path, work: Path, threads: int, add, state) -> None:
    """The postgres path: SDK path vs raw store, and --mlflow-bulk vs the SDK path, each into a
    fresh database made (MLflow's migrations) outside the timed part."""
    drops = []
    try:
        uris = {}
        for tag in ("sdk", "bulk", "raw"):
            uri, drop = postgres_database(f"tp_bench_{tag}")
            drops.append(drop)
            prepare_sqlite(uri)
            uris[tag] = uri
    except OSError as exc:
        print(f"  {w.name:10s} postgres  skipped: {exc}", flush=True)
        for drop in drops:
            drop()
        return
    try:
        cwd = work / f"pg-{w.name}"   # a database store's artifacts: ./mlartifacts
        cwd.mkdir(exist_ok=True)
        child = run_child(trackport("copy", f"parquet:{export}", f"mlflow:{uris['sdk']}", "--workers",
                                    str(threads), *state("pg-sdk")), cwd=cwd)
        checked(child, "trackport copy (postgres)")
        sdk_rate = w.metric_points / child.seconds
        ref, note = (reference(export, uris["raw"], threads, f"raw-{w.name}", cwd)
                     if w.metric_points <= REFERENCE_MAX_POINTS else (None, None))
        add("postgres", child, w.metric_points, ref, [note] if note else [])
        child = run_child(trackport("copy", f"parquet:{export}", f"mlflow:{uris['bulk']}", "--mlflow-bulk",
                                    "--workers", str(threads), *state("pg-bulk")), cwd=cwd)
        checked(child, "trackport copy (postgres, --mlflow-bulk)")
        add("postgres-bulk", child, w.metric_points, sdk_rate, ["reference: trackport's SDK path into postgres"])
    finally:
        for drop in drops:
            drop()


def warm_up(server: str, work: Path, threads: int) -> None:
    """Send a small load through the raw client first: every server worker process imports and
    caches what it needs before either side is timed (whoever went first paid for it)."""
    small = work / "export-warm-up"
    write_workload(small, Workload("warm-up", runs=threads * 2, metrics=5, steps=400))
    for i in range(2):
        reference(small, server, threads, f"warm-up-{i}")
    shutil.rmtree(small, ignore_errors=True)


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
        ref, note = reference(export, server, threads, f"raw-{w.name}") if ref_ok else (None, None)
        add("rest", child, points, ref, [note] if note else [])
    sdk_rate = None   # trackport's SDK path into sqlite: the reference of the bulk path
    if ("sqlite" in paths or "export" in paths or "bulk" in paths) and mlflow_ok:
        uri = f"sqlite:///{sqlite_db}"
        prepare_sqlite(uri)
        child = run_child(trackport("copy", f"parquet:{export}", f"mlflow:{uri}", "--workers", str(threads),
                                    *state("sqlite")))
        checked(child, "trackport copy (sqlite)")
        points = w.metric_points
        sdk_rate = points / child.seconds
        if "sqlite" in paths:
            ref, note = None, None
            if ref_ok:
                raw_uri = f"sqlite:///{work / f'raw-{w.name}.db'}"
                prepare_sqlite(raw_uri)
                ref, note = reference(export, raw_uri, threads, f"raw-{w.name}")
            add("sqlite", child, points, ref, [note] if note else [])
        if "export" in paths:
            back = work / f"back-{w.name}"
            child = run_child(trackport("export", f"mlflow:{uri}", str(back), "--workers", str(threads),
                                        *state("export")))
            checked(child, "trackport export")
            add("export", child, rows, notes=["rate in canonical rows/s"])
    if "bulk" in paths:
        bulk_uri = f"sqlite:///{work / f'bulk-{w.name}.db'}"
        prepare_sqlite(bulk_uri)
        child = run_child(trackport("copy", f"parquet:{export}", f"mlflow:{bulk_uri}", "--mlflow-bulk",
                                    "--workers", str(threads), *state("bulk")))
        checked(child, "trackport copy (--mlflow-bulk)")
        add("bulk", child, w.metric_points, sdk_rate, ["reference: trackport's SDK path into sqlite"])
    if "postgres" in paths and mlflow_ok:
        bench_postgres(w, export, work, threads, add, state)
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


def _median_seconds(cmd: list[str], env: dict | None = None, repeats: int = 7) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, env=env)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def _without_foreign_hooks() -> dict:
    """The environment for `python -S` with the same packages importable.

    `-S` skips `site`, so no `.pth` file of this environment runs: neither
    pluto-ml's `zzzz_pluto_wandb_hook.pth` (which imports pluto, IPython and httpx,
    about 0.4 s and 60 MB in every process) nor anyone else's.  The site-packages
    folders and trackport's own source folder (an editable install reaches it
    through a `.pth` too) go on PYTHONPATH instead, so imports resolve as before.
    """
    import importlib.util
    import site

    ours = Path(importlib.util.find_spec("trackport").submodule_search_locations[0]).parent
    folders = [str(ours), *site.getsitepackages(), site.getusersitepackages()]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(folders)}


def _cli_script(python: Path) -> list[str]:
    """`trackport` as installed beside `python` (not a version manager's shim in front of it)."""
    script = python.parent / "trackport"
    return [str(script)] if script.exists() else [str(python), "-m", "trackport"]


def _own_import_seconds(env: dict) -> float:
    """trackport's own imports for `--help` (`-X importtime`, cumulative time of trackport.cli)."""
    out = subprocess.run([sys.executable, "-S", "-X", "importtime", "-m", "trackport", "--help"],
                         env=env, capture_output=True, text=True, check=True).stderr
    cumulative = [int(line.split("|")[1]) for line in out.splitlines() if line.rstrip().endswith("| trackport.cli")]
    return cumulative[-1] / 1e6 if cumulative else 0.0


def startup(venv: Path | None = None, repeats: int = 7) -> dict:
    """Start-up times (median of `repeats`, seconds) and memory floors (MB) of a process.

    `cli_start_s` is what a user of this environment waits for; the `_no_hooks`
    figures are the same commands with the site hooks of other packages skipped
    (see `_without_foreign_hooks`), and `venv_*` the same in a separate venv
    (`--venv`).  The floors are the peak RSS of a process that only imports.
    """
    python = Path(sys.executable)
    bare = _without_foreign_hooks()
    result = {
        "cli_start_s": _median_seconds([*_cli_script(python), "--help"], repeats=repeats),
        "python_start_s": _median_seconds([sys.executable, "-c", "pass"], repeats=repeats),
        "cli_start_no_hooks_s": _median_seconds([sys.executable, "-S", "-m", "trackport", "--help"], bare, repeats),
        "python_start_no_hooks_s": _median_seconds([sys.executable, "-S", "-c", "pass"], bare, repeats),
        "cli_own_import_s": _own_import_seconds(bare),
    }
    if venv is not None:
        vpython = venv / "bin" / "python"
        result["venv_cli_start_s"] = _median_seconds([*_cli_script(vpython), "--help"], repeats=repeats)
        result["venv_python_start_s"] = _median_seconds([str(vpython), "-c", "pass"], repeats=repeats)
    floors = {
        "interpreter": "pass",
        "pyarrow": "import pyarrow, pyarrow.compute, pyarrow.parquet",
        "mlflow_sdk": "import pyarrow.parquet, mlflow; from mlflow.tracking import MlflowClient",
    }
    peak = ("\nfor line in open('/proc/self/status'):\n"
            "    if line.startswith('VmHWM'): print(int(line.split()[1]) / 1024)")
    for name, code in floors.items():
        for tag, cmd, env in (("", [sys.executable, "-c"], None), ("_no_hooks", [sys.executable, "-S", "-c"], bare)):
            out = subprocess.run([*cmd, code + peak], env=env, capture_output=True, text=True)
            if out.returncode == 0:
                result[f"floor_{name}{tag}_mb"] = round(float(out.stdout.split()[-1]), 1)
    return {k: round(v, 3) if k.endswith("_s") else v for k, v in result.items()}


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
        f"Generated by `{result.get('command') or 'python benchmarks/bench.py --scale ' + result['scale']}` "
        f"on {result['date']}: "
        f"{m['platform']}, {m['cpus']} CPUs, Python {m['python']}, "
        + ", ".join(f"{k} {v}" for k, v in m["versions"].items()) + f"; {result['threads']} threads.",
        "",
        *startup_lines(result),
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


def startup_lines(result: dict) -> list[str]:
    lines = [
        f"CLI start (`trackport --help`, median): **{result['cli_start_s']:.2f} s** in this environment, "
        f"where the bare interpreter takes {result['python_start_s']:.2f} s (other packages' site hooks); "
        f"with those hooks skipped (`python -S`, same packages importable): "
        f"**{result['cli_start_no_hooks_s']:.2f} s**, bare interpreter {result['python_start_no_hooks_s']:.2f} s; "
        f"trackport's own imports: {result['cli_own_import_s'] * 1000:.0f} ms.",
    ]
    if "venv_cli_start_s" in result:
        lines[0] += (f" In a separate venv: {result['venv_cli_start_s']:.2f} s "
                     f"(interpreter {result['venv_python_start_s']:.2f} s).")
    floors = [(name, result.get(f"floor_{name}_mb"), result.get(f"floor_{name}_no_hooks_mb"))
              for name in ("interpreter", "pyarrow", "mlflow_sdk")]
    if any(f[1] for f in floors):
        lines += ["", "Memory floor (peak RSS of a process that only imports, MB, with / without the site hooks): "
                  + "; ".join(f"{name.replace('_', ' ')} {a} / {b}" for name, a, b in floors if a) + "."]
    return lines


def write_markdown(path: Path, table: str, begin: str = BEGIN, end: str = END) -> None:
    """Replace what lies between the `begin` and `end` markers of `path` with `table`."""
    text = path.read_text() if path.exists() else f"# Benchmarks\n\n{begin}\n{end}\n"
    if begin not in text:
        text += f"\n{begin}\n{end}\n"
    head, rest = text.split(begin, 1)
    tail = rest.split(end, 1)[1] if end in rest else ""
    path.write_text(f"{head}{begin}\n{table}\n{end}{tail}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", choices=("full", "quick", "smoke"), default="full")
    parser.add_argument("--cases", help="comma-separated workload names (default: all)")
    parser.add_argument("--paths", default=",".join(PATHS), help=f"comma-separated, from {', '.join(PATHS)}")
    parser.add_argument("--threads", type=int, default=4, help="concurrency of both trackport and the reference")
    parser.add_argument("--out", type=Path, default=HERE / "results.json")
    parser.add_argument("--markdown", type=Path, default=ROOT / "docs" / "benchmarks.md")
    parser.add_argument("--section", help="write the table between `<!-- SECTION:begin -->` and "
                        "`<!-- SECTION:end -->` of the markdown file instead of the main table's markers "
                        "(a run of some cases beside the full table)")
    parser.add_argument("--work", type=Path, help="working folder (default: a temporary one, removed after)")
    parser.add_argument("--startup-repeats", type=int, default=7, help="runs per start-up time (median)")
    parser.add_argument("--venv", type=Path, help="also time `trackport --help` in this venv (made with e.g. "
                        "`python -m venv V && V/bin/pip install -e '.[mlflow]'`: no other package's site hooks)")
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
        warm_up(server, work, args.threads)
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
        "command": " ".join(["python benchmarks/bench.py", *sys.argv[1:]]),
        "scale": args.scale, "date": time.strftime("%Y-%m-%d"), "threads": args.threads, "machine": machine(),
        **startup(args.venv, args.startup_repeats),
        "workloads": [{"name": w.name, "shape": w.describe()} for w in cases],
        "measures": [asdict(m) for m in measures],
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    markers = (f"<!-- {args.section}:begin -->", f"<!-- {args.section}:end -->") if args.section else (BEGIN, END)
    write_markdown(args.markdown, markdown(result), *markers)
    print(f"wrote {args.out} and {args.markdown}")


if __name__ == "__main__":
    main()
