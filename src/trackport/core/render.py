"""Human-readable output of reports (the JSON report is the contract; this is the view)."""

from __future__ import annotations

from .report import FAILED, DIFFERENT, MISSING, CommandReport

_MAX_ROWS = 60
_PROBLEMS = (FAILED, DIFFERENT, MISSING)


def _console():
    from rich.console import Console

    return Console(highlight=False, soft_wrap=True)


def _plain(text) -> str:
    """Data (run names, paths, error texts) shown as it is: `[/x]` in a name is not markup,
    an escape sequence is not sent to the terminal."""
    from rich.markup import escape

    from .logs import printable

    return escape(printable(str(text)))


def render_report(report: CommandReport) -> None:
    from rich.table import Table

    console = _console()
    data = report.to_json()
    totals = data["totals"]
    console.print(f"[bold]{report.command}[/bold] {_plain(report.source or '')} -> {_plain(report.destination or '')}")
    if report.command == "plan":
        for line in data.get("destination_capabilities", []):
            console.print(f"  destination {_plain(line)}")
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
            for line in (r.details.get("differences") or [])[1:4]:
                notes.append(line)
            style = "red" if r.status in _PROBLEMS else None
            table.add_row(_plain(r.project_id), _plain(r.run_id),
                          f"[{style}]{r.status}[/{style}]" if style else r.status,
                          f"{r.points:,}", f"{r.params:,}", f"{r.files:,}", _plain("\n".join(notes)))
        console.print(table)
        if len(shown) < len(runs):
            console.print(f"... {len(runs) - len(shown)} more run(s); --json for all")
    counts = ", ".join(f"{k} {v}" for k, v in totals.items()
                       if k not in ("transformations", "drops", "runs", "points", "params", "files", "bytes") and v)
    console.print(f"runs {totals['runs']} ({counts or 'none'}); points {totals['points']:,}; "
                  f"params {totals['params']:,}; files {totals['files']:,} ({totals['bytes']:,} bytes)")
    if totals["transformations"]:
        console.print("transformations: " + _plain(", ".join(f"{k} {v:,}" for k, v in sorted(totals["transformations"].items()))))
    if totals["drops"]:
        allowed = " (allowed by --allow-drops)" if report.allow_drops else " (exit 1; --allow-drops to accept)"
        console.print("[red]dropped[/red]: " + _plain(", ".join(f"{k} {v:,}" for k, v in sorted(totals["drops"].items()))) + allowed)
    for note in data["notes"]:          # scrubbed by to_json
        console.print(f"note: {_plain(note)}")


def render_inspect(summary: dict) -> None:
    from rich.table import Table

    console = _console()
    t = summary["totals"]
    console.print(f"[bold]{_plain(summary['root'])}[/bold] ({_plain(summary['format'])})")
    console.print(f"projects {t['projects']}, runs {t['runs']}, rows {t['rows']:,}, "
                  f"parquet {t['data_bytes']:,} bytes, files {t['file_bytes']:,} bytes")
    table = Table()
    for col in ("project", "runs", "rows", "attributes", "types", "steps", "parquet bytes", "files"):
        table.add_column(col, overflow="fold")
    for p in summary["projects"]:
        # a hostile part may hold a null or odd type name: sorted as text, shown as data
        counts = sorted(p["attribute_types"].items(), key=lambda kv: str(kv[0]))
        types = ", ".join(f"{_plain(k)} {v:,}" for k, v in counts)
        steps = "-" if p["min_step"] is None else f"{p['min_step']} .. {p['max_step']}"
        runs = f"{p['runs']}" + (f" ({p['incomplete_runs']} incomplete)" if p["incomplete_runs"] else "")
        table.add_row(_plain(p["project_id"]), runs, f"{p['rows']:,}", f"{p.get('attributes', 0):,}", types, steps,
                      f"{p['data_bytes']:,}", f"{p['files']:,} ({p['file_bytes']:,} B)")
    console.print(table)
    for p in summary["projects"]:
        for line in p["unreadable"]:
            console.print(f"[red]unreadable[/red]: {_plain(line)}")
