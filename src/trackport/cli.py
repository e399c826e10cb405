"""The `trackport` command.  Imports nothing heavy until a command runs.

Exit codes: 0 everything requested was moved (or verified); 1 a run failed,
differs, or data was dropped without --allow-drops; 2 usage errors.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import click

from .core.registry import connector_options, specs

def shared_options(fn):
    options = [
        click.option("--project", "projects", multiple=True, help="Only this source project (repeatable)."),
        click.option("--run", "run_pattern", help="Only runs whose id matches this regex."),
        click.option("--attribute", "attribute_pattern", help="Only attributes whose path matches this regex (sys/* always kept)."),
        click.option("--classes", default="params,metrics,series,files,artifacts", show_default=True,
                     help="Data classes to move: params, metrics, series, files of runs; artifacts: "
                          "artifact and model versions (moved whole)."),
        click.option("--workers", type=click.IntRange(1, 256), default=4, show_default=True,
                     help="Runs moved in parallel; also the requests in flight to a destination "
                          "that takes requests (one pool shared by all runs)."),
        click.option("--step-multiplier", type=click.IntRange(1), default=None,
                     help="Integer steps = decimal step x this (default: auto, the smallest exact power of 10 per run)."),
        click.option("--allow-drops", is_flag=True, help="Move runs even when some data cannot be (missing files...); drops are still reported, exit 0."),
        click.option("--json", "as_json", is_flag=True, help="Print the machine-readable report on stdout."),
        click.option("--report", "report_path", type=click.Path(dir_okay=False, path_type=Path),
                     help="Also write the JSON report to this file."),
        click.option("--no-progress", is_flag=True, help="No progress bars."),
        click.option("--log-file", type=click.Path(dir_okay=False, path_type=Path), help="Write a debug log here."),
        click.option("--state-dir", type=click.Path(file_okay=False, path_type=Path), default=Path(".trackport"),
                     show_default=True, help="Where the local ledger lives."),
        click.option("--retry-max-attempts", type=click.IntRange(1), default=8, show_default=True,
                     help="Attempts per request (and per run) on rate limits, 5xx and dropped connections."),
        click.option("--retry-max-seconds", type=click.FloatRange(0), default=600.0, show_default=True,
                     help="Stop retrying a request (and fail its run) this many seconds after its first failure; "
                          "a destination failing that long without one success fails each new run at once."),
        click.option("--request-timeout", type=click.FloatRange(0.1), default=None,
                     help="Seconds to wait for a server's answer to one request (default: the tracker's own "
                          "setting when set, e.g. MLFLOW_HTTP_REQUEST_TIMEOUT, else 60); connecting waits at "
                          "most 10 s."),
    ]
    options.extend(_connector_option(spec) for spec in connector_options())
    for option in reversed(options):
        fn = option(fn)
    return fn


def _connector_option(spec):
    kinds = {"int": click.IntRange(1), "count": click.IntRange(0), "float": click.FloatRange(0), "str": None}
    if spec.kind == "flag":
        return click.option(spec.flag, spec.name, is_flag=True, default=None, envvar=list(spec.envvar) or None,
                            help=spec.help)
    kind = click.Choice(spec.choices) if spec.choices else kinds[spec.kind]
    return click.option(spec.flag, spec.name, type=kind, envvar=list(spec.envvar) or None,
                        show_envvar=bool(spec.envvar), help=spec.help)


def _fail_usage(message: str) -> None:
    from .core.logs import printable, scrub

    click.echo(f"trackport: error: {printable(scrub(message))}", err=True)
    sys.exit(2)


INTERRUPT_GRACE_S = 2.0
_interrupted = False


def _exit_interrupted() -> None:
    """Exit 130 now.  Runs still open in worker threads (or a request still waiting on a socket)
    are left as a crash would leave them (resumable); a normal exit would wait for them."""
    import os

    try:
        click.echo("trackport: interrupted; rerun the same command to resume", err=True)
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(130)


def _on_interrupt(signum, frame) -> None:
    """Ctrl-C: unwind the main thread (KeyboardInterrupt), and whatever it is waiting for
    (an abort's last requests, a sink's pool), exit 130 within INTERRUPT_GRACE_S anyway.
    A second Ctrl-C exits at once."""
    global _interrupted
    import threading

    if _interrupted:
        _exit_interrupted()
    _interrupted = True
    timer = threading.Timer(INTERRUPT_GRACE_S, _exit_interrupted)
    timer.daemon = True
    timer.start()
    raise KeyboardInterrupt


def _install_interrupt_handler() -> None:
    import signal
    import threading

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, _on_interrupt)


def handles_errors(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from .core.errors import UsageError

        try:
            return fn(*args, **kwargs)
        except UsageError as exc:
            _fail_usage(str(exc))
        except KeyboardInterrupt:
            _exit_interrupted()
        except Exception as exc:  # a bug or an SDK surprise outside any run: one scrubbed line, exit 1
            import logging

            from .core.logs import printable, scrub

            logging.getLogger("trackport").debug("unexpected error", exc_info=True)
            click.echo(f"trackport: unexpected {type(exc).__name__}: {printable(scrub(str(exc)))} "
                       f"(details with --log-file)", err=True)
            sys.exit(1)
    return wrapper


def _check_report_path(path: Path) -> None:
    """The --report file can be written (checked before any work; written at the end)."""
    from .core.connector import probe_write
    from .core.errors import UsageError

    if path.is_dir():
        raise UsageError(f"--report {path} is a folder; fix: give a file name, e.g. --report {path / 'report.json'}")
    parent = path.parent
    if not parent.is_dir():
        raise UsageError(f"--report {path}: folder {parent} does not exist; fix: create it or "
                         f"give another path")
    try:
        if path.exists():
            with open(path, "a"):
                pass
        else:
            probe_write(parent)
    except OSError as exc:
        raise UsageError(f"--report {path} cannot be written ({exc.strerror or type(exc).__name__}); "
                         f"fix: give a path you can write to") from None


def _prepare(kw: dict) -> dict:
    """What only the command line does before a command (its scratch folder, the --report
    check, logging), then the Python API's arguments from the shared options."""
    from .core.errors import UsageError
    from .core.logs import setup_logging
    from .core.progress import make_progress
    from .core.scratch import use_process_scratch

    try:
        use_process_scratch()
    except OSError as exc:
        import tempfile

        raise UsageError(f"cannot make a working folder in {tempfile.gettempdir()} "
                         f"({exc.strerror or exc}); fix: point TMPDIR at a writable folder") from None
    if kw.get("report_path") is not None:
        _check_report_path(kw["report_path"])
    setup_logging(kw.get("log_file"))
    args = {
        "projects": tuple(kw.get("projects") or ()),
        "run": kw.get("run_pattern"),
        "attribute": kw.get("attribute_pattern"),
        "classes": kw["classes"],
        "workers": kw["workers"],
        "step_multiplier": kw.get("step_multiplier"),
        "allow_drops": kw["allow_drops"],
        "retry_max_attempts": kw["retry_max_attempts"],
        "retry_max_seconds": kw["retry_max_seconds"],
        "request_timeout": kw.get("request_timeout"),
        "progress": make_progress(enabled=not kw["no_progress"], as_json=kw["as_json"]),
        # connectors' own options: click already read their environment variables
        **{spec.name: kw.get(spec.name) for spec in connector_options() if kw.get(spec.name) is not None},
    }
    return args


def _finish(report, kw: dict) -> None:
    from .core.render import render_report

    if kw.get("report_path"):
        kw["report_path"].write_text(report.dumps())
    if kw["as_json"]:
        click.echo(report.dumps())
    else:
        render_report(report)
    sys.exit(report.exit_code)


def _run(command: str, kw: dict, *args, **own) -> None:
    """`trackport.<command>(*args, ...)` with the shared options (and the command's `own`);
    print its report, exit with its code."""
    from . import api

    call = _prepare(kw)
    if command in ("copy", "export", "load"):
        call.update(state_dir=kw["state_dir"], raise_on_failure=False, executor=kw["executor"],
                    ray_address=kw.get("ray_address"))
    call.update({k: v for k, v in own.items() if v is not None})
    _finish(getattr(api, command)(*args, **call), kw)


def executor_options(fn):
    """--executor and --ray-address, for the commands that move runs."""
    fn = click.option("--ray-address", help="With --executor ray: the Ray cluster to use (default: RAY_ADDRESS, "
                      "else a local Ray instance).")(fn)
    return click.option("--executor", type=click.Choice(["local", "ray"]), default="local", show_default=True,
                        help="local: threads of this process; ray: Ray tasks across a cluster "
                             "(pip install 'trackport[ray]'; docs/scale-out.md).")(fn)


def with_uris(fn):
    """Append the installed connectors' URI forms (their specs' summaries) to a command's help."""
    lines = []
    for spec in specs():
        way = "source, destination" if spec.source and spec.destination else (
            "source" if spec.source else "destination")
        lines.append(f"  {spec.summary} [{way}]")
    fn.__doc__ = (fn.__doc__ or "").rstrip() + "\n\n\b\nURIs (`trackport connectors` for more):\n" + "\n".join(lines)
    return fn


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="trackport")
@with_uris
def cli():
    """Move ML experiment history between trackers, losslessly.

    Credentials come from each tracker's own environment variables, never from URIs.
    """


@cli.command()
@click.argument("src")
@click.argument("dst", required=False)
@shared_options
@executor_options
@handles_errors
@with_uris
def copy(src, dst, **kw):
    """Stream runs from SRC to DST (default: a local MLflow store, mlflow:sqlite:///<cwd>/mlflow.db)."""
    _run("copy", kw, src, dst)


@cli.command()
@click.argument("src")
@click.argument("directory")
@shared_options
@executor_options
@handles_errors
def export(src, directory, **kw):
    """Export runs from SRC into a parquet export at DIRECTORY."""
    _run("export", kw, src, directory)


@cli.command()
@click.argument("directory")
@click.argument("dst", required=False)
@shared_options
@executor_options
@handles_errors
def load(directory, dst, **kw):
    """Load a parquet export at DIRECTORY into DST (default: local MLflow store)."""
    _run("load", kw, directory, dst)


@cli.command()
@click.argument("src")
@click.argument("dst", required=False)
@shared_options
@handles_errors
@with_uris
def plan(src, dst, **kw):
    """Show what copy would do: runs, points, files, bytes, and every transformation or drop. Writes nothing."""
    _run("plan", kw, src, dst)


@cli.command()
@click.argument("src")
@click.argument("dst", required=False)
@shared_options
@handles_errors
@with_uris
@click.option("--html", "html", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write the visual report (as `trackport report`) to this HTML file.")
def verify(src, dst, html, **kw):
    """Compare every run of SRC with its copy in DST; exit 1 on any undeclared difference."""
    _run("verify", kw, src, dst, html=html)


@cli.command()
@click.argument("src")
@click.argument("dst", required=False)
@click.option("--html", "html", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="The HTML file to write: self-contained, it opens without a network.")
@click.option("--copy-report", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="The JSON a `trackport copy ... --report FILE` wrote: its moved/repaired/failed counts, "
                   "transformations and drops go into the summary.")
@shared_options
@handles_errors
@with_uris
def report(src, dst, html, copy_report, **kw):
    """Verify SRC against DST and draw it into one HTML file: every run's float series, source over
    destination (min..max band and mean per step bin), values side by side, files by digest."""
    _run("report", kw, src, dst, html=html, copy_report=copy_report)


def _seconds(text: str) -> float:
    """`--every`: seconds, or a number with s, m or h (90, 90s, 5m, 1h)."""
    import re

    from .core.errors import UsageError

    found = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*", text or "")
    if not found:
        raise UsageError(f"--every {text!r} is not a duration; give seconds or a number with s, m or h (60s, 5m, 1h)")
    return float(found.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[found.group(2)]


@cli.command()
@click.argument("src")
@click.argument("dst", required=False)
@click.option("--every", default="60s", show_default=True, help="Time from the start of one round to the next (90, 90s, 5m, 1h).")
@click.option("--rounds", type=click.IntRange(1), default=None, help="Stop after this many rounds (default: run until Ctrl-C).")
@shared_options
@handles_errors
@with_uris
def sync(src, dst, every, rounds, **kw):
    """Keep DST up to date with SRC while training goes on: a copy every --every, each adding only
    what is new (new runs, and runs that grew since the last round, refreshed in place).

    One line per round (a JSON object per round with --json).  A round that cannot reach DST is
    reported and the next one tries again.  Ctrl-C between rounds stops at once (exit: the last
    round's code); during a round it stops that round before its next batch (exit 130; the next
    sync or copy resumes it).  A second Ctrl-C exits at once."""
    import json
    import signal
    import threading

    from . import api
    from .core.errors import Cancelled
    from .core.logs import printable

    period = _seconds(every)
    call = _prepare(kw)
    call.update(state_dir=kw["state_dir"])
    stop = threading.Event()
    call["cancel"] = stop

    def on_interrupt(signum, frame):
        if stop.is_set():
            _exit_interrupted()
        stop.set()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, on_interrupt)

    def on_round(number, report, error):
        if kw["as_json"]:
            line = {"round": number, "error": error,
                    "totals": report.totals.to_json() if report is not None else None,
                    "exit_code": 1 if error else report.exit_code}
            click.echo(json.dumps(line, default=str))
            return
        if error:
            click.echo(f"round {number}: could not run: {printable(error)}", err=True)
            return
        totals = report.totals
        statuses = ", ".join(f"{n} {k}" for k, n in sorted(totals.statuses.items())) or "no runs"
        click.echo(f"round {number}: {statuses}; {totals.points:,} points", err=True)
        for run in report.runs:
            if run.error:
                click.echo(f"  {printable(run.project_id)}/{printable(run.run_id)}: {printable(run.error)}", err=True)

    try:
        done = api.sync(src, dst, every=period, rounds=rounds, on_round=on_round, **call)
    except Cancelled:
        _exit_interrupted()
    if kw.get("report_path"):
        kw["report_path"].write_text(json.dumps(done.to_json(), indent=2, default=str))
    if not kw["as_json"]:
        statuses = ", ".join(f"{n} {k}" for k, n in sorted(done.statuses.items())) or "no runs"
        click.echo(f"sync: {done.rounds} round(s), {done.failed_rounds} could not run; {statuses}; "
                   f"{done.points:,} points", err=True)
    sys.exit(done.exit_code)


@cli.command()
@click.argument("directory")
@click.option("--project", "projects", multiple=True, help="Only this project (repeatable).")
@click.option("--run", "run_pattern", help="Only runs whose id matches this regex.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--check", is_flag=True, help="Also compare each run's parts with the checksum in its run "
              "manifest (reads every part once more). Row counts, part lists and part numbers are always checked.")
@click.option("--no-progress", is_flag=True, hidden=True, help="Accepted for symmetry; inspect draws no bars.")
@handles_errors
def inspect(directory, projects, run_pattern, as_json, check, no_progress):
    """Summarise a parquet export: projects, runs, attribute types, steps, rows, bytes on disk."""
    import json

    from .api import inspect as run_inspect

    found = run_inspect(directory, projects=projects, run=run_pattern, check=check)
    if as_json:
        click.echo(json.dumps(found.to_json(), indent=2, default=str))
    else:
        found.render()
    sys.exit(found.exit_code)


@cli.command("connectors")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def connectors_command(as_json):
    """List every installed connector: schemes, directions, extra, options, capabilities."""
    import json

    from .core.registry import describe, problems

    listed = [describe(spec) for spec in specs()]
    trouble = problems()
    if as_json:
        click.echo(json.dumps({"connectors": listed, "problems": trouble}, indent=2, default=str))
        sys.exit(0)
    for item in listed:
        ways = "/".join(w for w, on in (("source", item["source"]), ("destination", item["destination"])) if on)
        state = "installed" if item["installed"] else f"NOT installed: {item['install']}"
        click.echo(f"{item['name']}  [{', '.join(item['schemes'])}]  {ways}  ({state})")
        click.echo(f"  {item['summary']}")
        for option in item["options"]:
            env = f" [env: {', '.join(option['envvar'])}]" if option["envvar"] else ""
            click.echo(f"  {option['flag']}{env}: {option['help']}")
        for scheme, caps in item["capabilities"].items():
            made = ", ".join(sorted(caps.get("transformations", {}))) or "none"
            click.echo(f"  {scheme} destination transformations: {made}")
        click.echo("")
    for line in trouble:
        click.echo(f"problem: {line}", err=True)
    sys.exit(0)


def _bounded_arrow_memory() -> None:
    """Arrow's jemalloc pool, returning freed pages at once: 50-60 MB less peak RSS on every
    path (docs/benchmarks.md, "Memory").  Read by Arrow at its first allocation; a user's own
    ARROW_DEFAULT_MEMORY_POOL wins."""
    import os

    if sys.platform.startswith("linux") and "ARROW_DEFAULT_MEMORY_POOL" not in os.environ:
        os.environ["ARROW_DEFAULT_MEMORY_POOL"] = "jemalloc"
        os.environ.setdefault("JE_ARROW_MALLOC_CONF", "dirty_decay_ms:0,muzzy_decay_ms:0")


def main() -> None:
    _bounded_arrow_memory()
    _install_interrupt_handler()
    cli(prog_name="trackport")


if __name__ == "__main__":
    main()
