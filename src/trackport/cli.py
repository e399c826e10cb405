"""The `trackport` command.  Imports nothing heavy until a command runs.

Exit codes: 0 everything requested was moved (or verified); 1 a run failed,
differs, or data was dropped without --allow-drops; 2 usage errors.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import click

from .core.registry import connector_options

DEFAULT_DESTINATION_HELP = "mlflow:sqlite:///<cwd>/mlflow.db"


def default_destination() -> str:
    return f"mlflow:sqlite:///{Path.cwd() / 'mlflow.db'}"


def shared_options(fn):
    options = [
        click.option("--project", "projects", multiple=True, help="Only this source project (repeatable)."),
        click.option("--run", "run_pattern", help="Only runs whose id matches this regex."),
        click.option("--attribute", "attribute_pattern", help="Only attributes whose path matches this regex (sys/* always kept)."),
        click.option("--classes", default="params,metrics,series,files", show_default=True,
                     help="Data classes to move: params, metrics, series, files."),
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
                     help="Stop retrying a request (and fail its run) this many seconds after its first failure."),
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


def handles_errors(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from .core.errors import UsageError

        try:
            return fn(*args, **kwargs)
        except UsageError as exc:
            _fail_usage(str(exc))
        except KeyboardInterrupt:
            import os

            click.echo("trackport: interrupted; rerun the same command to resume", err=True)
            sys.stdout.flush()
            sys.stderr.flush()
            # Runs still open in worker threads are left as a crash would leave them (resumable);
            # a normal exit would wait for them to finish.
            os._exit(130)
        except Exception as exc:  # a bug or an SDK surprise outside any run: one scrubbed line, exit 1
            import logging

            from .core.logs import printable, scrub

            logging.getLogger("trackport").debug("unexpected error", exc_info=True)
            click.echo(f"trackport: unexpected {type(exc).__name__}: {printable(scrub(str(exc)))} "
                       f"(details with --log-file)", err=True)
            sys.exit(1)
    return wrapper


class Context:
    """Everything the shared options configure."""

    def __init__(self, command: str, kw: dict):
        from .core.logs import setup_logging
        from .core.model import Selection
        from .core.errors import UsageError
        from .core.schema import CLASSES
        import re

        from .core import retry

        from .core.scratch import use_process_scratch

        self.command = command
        self.kw = kw
        use_process_scratch()
        setup_logging(kw.get("log_file"))
        retry.configure(kw["retry_max_attempts"], kw["retry_max_seconds"])  # connectors' request retries
        classes = frozenset(c.strip() for c in kw["classes"].split(",") if c.strip())
        unknown = classes - set(CLASSES)
        if unknown or not classes:
            raise UsageError(f"unknown --classes {', '.join(sorted(unknown)) or '(empty)'}; choose from {', '.join(CLASSES)}")
        try:
            run_re = re.compile(kw["run_pattern"]) if kw.get("run_pattern") else None
            attr_re = re.compile(kw["attribute_pattern"]) if kw.get("attribute_pattern") else None
        except re.error as exc:
            raise UsageError(f"bad regex: {exc}") from None
        self.select = Selection(tuple(kw.get("projects") or ()), run_re, attr_re, classes)
        self.connector_options = {
            "workers": kw["workers"],
            "allow_drops": kw["allow_drops"],
            **{spec.name: kw.get(spec.name) for spec in connector_options()},
        }

    def progress(self):
        from .core.progress import make_progress

        return make_progress(enabled=not self.kw["no_progress"] and not self.kw["as_json"])

    def pipeline_options(self):
        from .core.pipeline import PipelineOptions

        return PipelineOptions(
            select=self.select,
            workers=self.kw["workers"],
            step_multiplier=self.kw.get("step_multiplier"),
            allow_drops=self.kw["allow_drops"],
            max_attempts=self.kw["retry_max_attempts"],
            retry_budget_s=self.kw["retry_max_seconds"],
            connector_options=self.connector_options,
        )

    def finish(self, report) -> None:
        from .core.render import render_report

        if self.kw.get("report_path"):
            self.kw["report_path"].write_text(report.dumps())
        if self.kw["as_json"]:
            click.echo(report.dumps())
        else:
            render_report(report)
        sys.exit(report.exit_code)


def _move(command: str, src: str, dst: str, kw: dict) -> None:
    from .core.ledger import Ledger
    from .core.pipeline import Pipeline
    from .core.registry import open_sink, open_source, redact
    from .core.report import CommandReport

    ctx = Context(command, kw)
    source = open_source(src, ctx.connector_options)
    sink = open_sink(dst, ctx.connector_options)
    report = CommandReport(command, redact(source.uri), redact(sink.uri), allow_drops=kw["allow_drops"])
    ledger = Ledger(kw["state_dir"] / "ledger.sqlite")
    try:
        Pipeline(source, sink, ctx.pipeline_options(), report, ctx.progress(), ledger).run()
        _note_incomplete_sources(source, report)
    finally:
        ledger.close()
        source.close()
    ctx.finish(report)


def _open_read_only(command: str, src: str, dst: str | None, kw: dict):
    """Context, source, sink that must write nothing (plan, verify), and an empty report."""
    from .core.registry import open_sink, open_source, redact
    from .core.report import CommandReport

    ctx = Context(command, kw)
    source = open_source(src, ctx.connector_options)
    sink = open_sink(dst or default_destination(), {**ctx.connector_options, "read_only": True})
    report = CommandReport(command, redact(source.uri), redact(sink.uri), allow_drops=kw["allow_drops"])
    return ctx, source, sink, report


def _note_incomplete_sources(source, report) -> None:
    skipped = getattr(source, "skipped_incomplete", None)
    if skipped:
        report.notes.append(f"{len(skipped)} run(s) incomplete in the source export were not moved: "
                            + ", ".join(skipped[:5]))


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="trackport")
def cli():
    """Move ML experiment history between trackers, losslessly.

    URIs: parquet:DIR (or a bare directory), mlflow:sqlite:///ABS.db,
    mlflow:./mlruns, mlflow+http://HOST:PORT.  Credentials come from each
    tracker's own environment variables, never from URIs.
    """


@cli.command()
@click.argument("src")
@click.argument("dst", required=False)
@shared_options
@handles_errors
def copy(src, dst, **kw):
    """Stream runs from SRC to DST (default: a local MLflow store, mlflow:sqlite:///<cwd>/mlflow.db)."""
    _move("copy", src, dst or default_destination(), kw)


@cli.command()
@click.argument("src")
@click.argument("directory")
@shared_options
@handles_errors
def export(src, directory, **kw):
    """Export runs from SRC into a parquet export at DIRECTORY."""
    _move("export", src, f"parquet:{directory}", kw)


@cli.command()
@click.argument("directory")
@click.argument("dst", required=False)
@shared_options
@handles_errors
def load(directory, dst, **kw):
    """Load a parquet export at DIRECTORY into DST (default: local MLflow store)."""
    src = directory if directory.startswith("parquet:") else f"parquet:{directory}"
    _move("load", src, dst or default_destination(), kw)


@cli.command()
@click.argument("src")
@click.argument("dst", required=False)
@shared_options
@handles_errors
def plan(src, dst, **kw):
    """Show what copy would do: runs, points, files, bytes, and every transformation or drop. Writes nothing."""
    from .core.pipeline import Pipeline

    ctx, source, sink, report = _open_read_only("plan", src, dst, kw)
    report.extra["destination_capabilities"] = sink.capabilities.describe()
    try:
        Pipeline(source, sink, ctx.pipeline_options(), report, ctx.progress()).run(plan_only=True)
        _note_incomplete_sources(source, report)
    finally:
        source.close()
        sink.close()
    ctx.finish(report)


@cli.command()
@click.argument("src")
@click.argument("dst", required=False)
@shared_options
@handles_errors
def verify(src, dst, **kw):
    """Compare every run of SRC with its copy in DST; exit 1 on any undeclared difference."""
    from .core.verify import verify as run_verify

    ctx, source, sink, report = _open_read_only("verify", src, dst, kw)
    try:
        run_verify(source, sink, ctx.select, report, workers=kw["workers"], progress=ctx.progress())
    finally:
        source.close()
        sink.close()
    ctx.finish(report)


@cli.command()
@click.argument("directory")
@click.option("--project", "projects", multiple=True, help="Only this project (repeatable).")
@click.option("--run", "run_pattern", help="Only runs whose id matches this regex.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--no-progress", is_flag=True, hidden=True, help="Accepted for symmetry; inspect draws no bars.")
@handles_errors
def inspect(directory, projects, run_pattern, as_json, no_progress):
    """Summarise a parquet export: projects, runs, attribute types, steps, rows, bytes on disk."""
    import json
    import re

    from .connectors.parquet.source import ParquetSource
    from .core.inspect import inspect_export
    from .core.model import Selection
    from .core.render import render_inspect

    source = ParquetSource(Path(directory).expanduser().resolve(), {})
    summary = inspect_export(source, Selection(tuple(projects), re.compile(run_pattern) if run_pattern else None))
    if as_json:
        click.echo(json.dumps(summary, indent=2, default=str))
    else:
        render_inspect(summary)
    unreadable = any(p["unreadable"] for p in summary["projects"])
    sys.exit(1 if unreadable else 0)


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
    cli(prog_name="trackport")


if __name__ == "__main__":
    main()
