"""Helpers for the crash matrix (tests/test_crash_matrix.py).

Two ways to SIGKILL trackport at an exact moment, both leaving the trackport
code and the trackers untouched:

- `ProxyKill`: the fault proxy's `on_request` hook kills the client's process
  group when the N-th request of a kind reaches the proxy, then lets that
  request go on to the server ("applied": it took effect, the answer is lost)
  or drops it ("lost": it never reached the server), through the proxy's own
  `target` + `drop-before` fault.
- `python crash_support.py KILL_AT -- <trackport arguments>`: runs the real
  trackport CLI in a process that kills itself at the N-th occurrence of a
  moment it only observes: a call into / return from a function (a profile
  hook) or a Python audit event (`os.rename`, `open`, `shutil.copyfile`, ...;
  https://docs.python.org/3/library/audit_events.html).  Used where no
  network request marks the moment (a parquet export on local disk).

KILL_AT: `call:QUALNAME:N`, `return:QUALNAME:N` or `audit:EVENT:SUBSTRING:N`
(the event's first two arguments must contain SUBSTRING).
"""

from __future__ import annotations

import gc
import os
import signal
import sys
import threading
import types
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

# -- the self-killing child ---------------------------------------------------------


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


_qualnames: dict = {}


def _qualname(code) -> str:
    """The qualified name of a code object: `co_qualname` from Python 3.11 on; before
    that, the `__qualname__` of the function that owns the code (found once, then cached)."""
    name = getattr(code, "co_qualname", None)
    if name is not None:
        return name
    name = _qualnames.get(code)
    if name is None:
        owners = [f for f in gc.get_referrers(code) if isinstance(f, types.FunctionType) and f.__code__ is code]
        name = _qualnames[code] = owners[0].__qualname__ if owners else code.co_name
    return name


def _parse(spec: str) -> tuple[str, str, str | None, int]:
    """(kind, name, substring or None, n) of a KILL_AT spec."""
    kind, rest = spec.split(":", 1)
    rest, n_text = rest.rsplit(":", 1)
    if kind in ("call", "return"):
        return kind, rest, None, int(n_text)
    if kind == "audit":
        event, needle = rest.split(":", 1)
        return kind, event, needle, int(n_text)
    raise SystemExit(f"crash_support: unknown moment kind {kind!r} in {spec!r}")


def arm(specs: list[str], kill: bool) -> Counter:
    """Observe the moments `specs` name; with `kill`, SIGKILL this process at the
    N-th occurrence of the (single) spec.  Returns the live occurrence counts."""
    lock = threading.Lock()
    counts: Counter = Counter()
    parsed = [(spec, *_parse(spec)) for spec in specs]
    by_code = {(kind, name): spec for spec, kind, name, needle, n in parsed if needle is None}
    audits = [(spec, name, needle) for spec, kind, name, needle, n in parsed if needle is not None]
    limit = {spec: n for spec, *_, n in parsed} if kill else {}

    def hit(spec: str) -> None:
        with lock:
            counts[spec] += 1
            if counts[spec] == limit.get(spec):
                _die()

    if by_code:
        short_names = {name.rsplit(".", 1)[-1] for _, name in by_code}

        def profile(frame, event, arg):
            code = frame.f_code
            if code.co_name not in short_names:
                return
            spec = by_code.get((event, _qualname(code)))
            if spec is not None:
                hit(spec)

        threading.setprofile(profile)
        sys.setprofile(profile)
    if audits:
        def audit(event, args):
            for spec, name, needle in audits:
                if event == name and any(needle in str(a) for a in args[:2]):
                    hit(spec)

        sys.addaudithook(audit)
    return counts


def child_main(argv: list[str]) -> None:
    """`KILL_AT -- ARGS` kills at that moment; `count=FILE SPEC... -- ARGS` runs to the
    end and writes how often each moment occurred to FILE (JSON)."""
    if "--" not in argv:
        raise SystemExit("usage: crash_support.py KILL_AT | count=FILE SPEC... -- <trackport arguments>")
    split = argv.index("--")
    head, args = argv[:split], argv[split + 1:]
    from trackport.cli import cli

    if head[0].startswith("count="):
        import atexit
        import json

        counts = arm([f"{spec}:0" for spec in head[1:]], kill=False)
        out = Path(head[0][len("count="):])
        atexit.register(lambda: out.write_text(json.dumps({s: counts[f"{s}:0"] for s in head[1:]})))
    else:
        arm(head, kill=True)
    cli.main(args=args, prog_name="trackport")


def child_command(head: list[str], args: list[str]) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), *head, "--", *args]


# -- killing through the proxy ------------------------------------------------------------

LOST, APPLIED = "lost", "applied"


def request_kind(method: str, path: str, body: bytes) -> str:
    """What an MLflow REST request does, as the crash matrix names its moments."""
    route = path.split("?", 1)[0]
    if "/mlflow-artifacts/artifacts/" in route and method == "PUT":
        return "manifest" if route.endswith("/trackport/attributes.json") else "upload"
    if route.endswith("/runs/create"):
        return "create"
    if route.endswith("/runs/log-batch"):
        # Held data goes out with the next batch or with the completion mark: a request is
        # named by the most telling thing it carries.
        if b"trackport.complete" in body:
            return "complete"
        if b'"params"' in body:
            return "params"
        return "metrics" if b'"metrics"' in body else "tags"
    if route.endswith("/runs/set-tag"):
        return "complete" if b"trackport.complete" in body else "set-tag"
    if route.endswith("/runs/update"):
        return "terminate"
    if route.endswith("/runs/search"):
        return "search"
    if route.endswith("/metrics/get-history"):
        return "history"
    return route


class ProxyKill:
    """SIGKILLs a process group at the N-th request of one kind reaching the proxy.

    Pass `on_request` and `target` to the FaultProxy (with rate=1.0 and
    kinds=("drop-before",)): `target` answers True only for the request that
    triggered the kill in LOST mode, so the proxy drops it unforwarded.  The
    hook holds that request until the test has reaped the killed process.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._local = threading.local()
        self.armed = False
        self.kinds: Counter = Counter()     # requests seen per kind while recording or armed
        self.fired = threading.Event()
        self.reaped = threading.Event()

    def arm(self, pgid: int, kind: str, n: int, mode: str) -> None:
        with self._lock:
            self.pgid, self.kind, self.n, self.mode = pgid, kind, n, mode
            self.count = 0
            self.kinds = Counter()
            self.fired = threading.Event()
            self.reaped = threading.Event()
            self.armed = True

    def record(self) -> None:
        """Only count requests per kind (a clean reference run)."""
        with self._lock:
            self.armed = False
            self.kinds = Counter()

    def disarm(self) -> None:
        with self._lock:
            self.armed = False

    def on_request(self, method: str, path: str, body: bytes) -> None:
        self._local.drop = False
        kind = request_kind(method, path, body)
        with self._lock:
            self.kinds[kind] += 1
            if not self.armed or kind != self.kind or self.fired.is_set():
                return
            self.count += 1
            if self.count != self.n:
                return
            self.fired.set()
        try:
            os.killpg(self.pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.reaped.wait(120)
        self._local.drop = self.mode == LOST

    def target(self, method: str, path: str, body: bytes) -> bool:
        return getattr(self._local, "drop", False)


# -- data ---------------------------------------------------------------------------------

CRASH_PROJECT = "trackport-tests/crash"
CORPUS_CASES = ("scalars", "nan_inf", "steps", "files", "fork_parent", "fork_child", "empty")
# What the MLflow cases move (every run costs server requests in every case): params,
# files, and the long run, which also holds NaN, +-inf and -0.0 points.
MLFLOW_CASES = ("scalars", "files", "long")


def crash_runs():
    """The runs the crash cases move: corpus edge cases plus a run long enough to be
    cut mid-series (3 series x 3,000 points: several MLflow log-batch requests and
    several parquet parts), with NaN, +-inf and -0.0 among its points (the values a
    resume must recognise as already written)."""
    import numpy as np

    from trackport.testing.corpus import (BASE_MS, CorpusRun, build_corpus, concat, increasing_ms,
                                          rows_table, series_table)

    runs = [r for r in build_corpus(big=False) if r.case in CORPUS_CASES]
    rng = np.random.default_rng(20261123)
    run_id = "CRASH-long"
    tables = [rows_table(CRASH_PROJECT, run_id, [
        {"path": "sys/name", "type": "string", "value": "crash-long"},
        {"path": "config/lr", "type": "float", "value": 0.001},
    ])]
    for name in ("loss", "accuracy", "grad_norm"):
        n = 3000
        ts = increasing_ms(rng, BASE_MS, n, 1, 20)
        values = 1.0 + np.cumsum(rng.standard_normal(n) * 0.01)
        values[[100, 1200, 2300, 2900]] = [np.nan, np.inf, -np.inf, -0.0]
        tables.append(series_table(CRASH_PROJECT, run_id, f"train/{name}", "float_series", values,
                                   None, ts))
    runs.append(CorpusRun(CRASH_PROJECT, run_id, concat(tables), {}, "long"))
    return runs


def write_tensorboard_logdir(logdir: Path, runs: int = 2, points: int = 1500) -> None:
    """Real TensorBoard event files (tensorboardX): `runs` runs of two scalar series."""
    from tensorboardX import SummaryWriter

    for r in range(runs):
        writer = SummaryWriter(str(logdir / f"run{r}"))
        for step in range(points):
            wall = 1_714_521_600 + r * 10_000 + step * 0.25
            writer.add_scalar("loss", 1.0 / (1 + step + r), step, walltime=wall)
            writer.add_scalar("lr", 0.1 * (0.999 ** step), step, walltime=wall)
        writer.close()


# -- what the destination holds -----------------------------------------------------------


@dataclass
class MlflowRunCensus:
    mlflow_id: str
    complete: bool
    metric_points: dict[str, int]       # key -> points in its full history
    artifacts: dict[str, int]           # path -> size
    params: dict[str, str]


def mlflow_census(server: str, experiment: str) -> dict[tuple[str, str], list[MlflowRunCensus]]:
    """Every MLflow run of `experiment` by its origin (project, run id): a list, so a
    duplicate shows as two entries.  Read straight from the server (no proxy)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=server)
    exp = client.get_experiment_by_name(experiment)
    out: dict[tuple[str, str], list[MlflowRunCensus]] = {}
    if exp is None:
        return out
    for run in client.search_runs([exp.experiment_id], max_results=1000):
        tags = run.data.tags
        key = (tags.get("trackport.origin.project"), tags.get("trackport.origin.run_id"))
        points = {k: len(client.get_metric_history(run.info.run_id, k)) for k in run.data.metrics}
        artifacts = {}
        stack = [None]
        while stack:
            for info in client.list_artifacts(run.info.run_id, stack.pop()):
                if info.is_dir:
                    stack.append(info.path)
                else:
                    artifacts[info.path] = info.file_size
        out.setdefault(key, []).append(MlflowRunCensus(
            run.info.run_id, tags.get("trackport.complete") == "true", points, artifacts,
            dict(run.data.params)))
    return out


def leftovers(root: Path) -> list[str]:
    """Temporary files a finished export must not hold."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")
                  if p.is_file() and (p.name.endswith(".tmp") or ".tmp" in p.suffixes))


if __name__ == "__main__":
    child_main(sys.argv[1:])
