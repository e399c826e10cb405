"""Human-readable output of reports (the JSON report is the contract; this is the view).

`make_console` and `plain` are for connectors that draw a view of their own (inspect).
"""

from __future__ import annotations

from .report import CANCELLED, DIFFERENT, FAILED, MISSING, CommandReport

_MAX_ROWS = 60
_PROBLEMS = (FAILED, DIFFERENT, MISSING, CANCELLED)


def make_console():
    from rich.console import Console

    return Console(highlight=False, soft_wrap=True)


def plain(text) -> str:
    """Data (run names, paths, error texts) shown as it is: `[/x]` in a name is not markup,
    an escape sequence is not sent to the terminal."""
    from rich.markup import escape

    from .logs import printable

    return escape(printable(str(text)))


def render_report(report: CommandReport) -> None:
    from rich.table import Table

    console = make_console()
    data = report.to_json()
    totals = data["totals"]
    console.print(f"[bold]{report.command}[/bold] {plain(report.source or '')} -> {plain(report.destination or '')}")
    if report.command == "plan":
        for line in data.get("destination_capabilities", []):
            console.print(f"  destination {plain(line)}")
        sizes = _plan_sizes(report)
        if sizes:
            console.print(sizes)
    show_all = report.command in ("plan", "verify") or len(report.runs) <= _MAX_ROWS
    runs = sorted(report.runs, key=lambda r: (r.status not in _PROBLEMS, r.project_id, r.run_id))
    shown = [r for r in runs if show_all or r.status in _PROBLEMS or r.warnings][:_MAX_ROWS]
    if shown:
        table = Table(show_lines=False)
        for col in ("project", "run", "status", "points", "params", "files", "notes"):
            table.add_column(col, overflow="fold")
        for r in shown:
            notes = []
            if r.error:
                notes.append(r.error)
            if r.transformations:
                notes.append("transformed: " + ", ".join(f"{k} {v}" for k, v in sorted(r.transformations.items())))
            if r.drops:
                notes.append("DROPPED: " + ", ".join(f"{k} {v}" for k, v in sorted(r.drops.items())))
            notes.extend(f"warning: {w}" for w in r.warnings)
            for key in ("step_multiplier", "action"):
                if key in r.details:
                    notes.append(f"{key} {r.details[key]}")
            for line in r.details.get("destination", []) or []:
                notes.append(line)
            notes.extend(d.message for d in r.differences[1:4])
            style = "red" if r.status in _PROBLEMS else None
            table.add_row(plain(r.project_id), plain(r.run_id),
                          f"[{style}]{r.status}[/{style}]" if style else r.status,
                          f"{r.points:,}", f"{r.params:,}",
                          f"{r.files:,} ({_size(r.bytes)})" if r.files else "0", plain("\n".join(notes)))
        console.print(table)
        if len(shown) < len(runs):
            console.print(f"... {len(runs) - len(shown)} more run(s); --json for all")
    counts = ", ".join(f"{k} {v}" for k, v in totals.items()
                       if k not in ("transformations", "drops", "runs", "points", "params", "files", "bytes") and v)
    console.print(f"runs {totals['runs']} ({counts or 'none'}); points {totals['points']:,}; "
                  f"params {totals['params']:,}; files {totals['files']:,} ({totals['bytes']:,} bytes)")
    if totals["transformations"]:
        console.print("transformations: " + plain(", ".join(f"{k} {v:,}" for k, v in sorted(totals["transformations"].items()))))
    if totals["drops"]:
        allowed = " (allowed by --allow-drops)" if report.allow_drops else " (exit 1; --allow-drops to accept)"
        console.print("[red]dropped[/red]: " + plain(", ".join(f"{k} {v:,}" for k, v in sorted(totals["drops"].items()))) + allowed)
    for note in data["notes"]:          # scrubbed by to_json
        console.print(f"note: {plain(note)}")


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:,} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


def _plan_sizes(report: CommandReport) -> str | None:
    """What a plan moves of artifact and model versions (format extensions) and of runs, sizes
    first: artifacts can be most of a migration's bytes."""
    from .registry import is_extension_project

    entries = [r for r in report.runs if is_extension_project(r.project_id)]
    if not entries:
        return None
    runs = [r for r in report.runs if not is_extension_project(r.project_id)]
    return (f"artifact and model versions: {len(entries):,}, {sum(r.files for r in entries):,} files, "
            f"{_size(sum(r.bytes for r in entries))}; runs: {len(runs):,}, "
            f"{sum(r.files for r in runs):,} files, {_size(sum(r.bytes for r in runs))}")
