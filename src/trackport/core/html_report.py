"""`trackport report` / `verify --html`: one self-contained HTML file (no network when it is
viewed: styles, script and data inline) with the summary and, per run, every float series
drawn source over destination (core/fidelity.py), params side by side and files by digest.

Runs are sections drawn when opened: a report of up to 25 runs opens them all; a larger one
opens the runs that differ, are missing or failed (up to 25) and its first run, the others
drawing when opened, so a page of 1,000 runs opens at once.  The page sets `data-drawn`
(series drawn) and `data-errors` (script errors) on <body>, which the tests read in a
headless browser.
"""

from __future__ import annotations

import html
import json
from datetime import datetime
from pathlib import Path
from typing import Any

from .fidelity import Drawings, RunDrawing
from .logs import scrub
from .report import VERIFIED, CommandReport

OPEN_AT_FIRST = 25     # a report of this many runs opens (and draws) them all when the page loads;
                       # a larger one opens this many that are not verified, and its first run

_STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#222;background:#fff}
h1{font-size:20px;margin:0 0 4px} h2{font-size:16px;margin:24px 0 8px}
.uris{color:#555;font-family:monospace;word-break:break-all}
.cards{display:flex;flex-wrap:wrap;gap:8px;margin:12px 0}
.card{border:1px solid #ddd;border-radius:6px;padding:6px 10px;min-width:90px}
.card b{display:block;font-size:18px}
table{border-collapse:collapse;margin:6px 0} td,th{border:1px solid #e3e3e3;padding:2px 6px;text-align:left;
vertical-align:top;font-family:monospace;font-size:12px;max-width:520px;overflow-wrap:anywhere}
th{background:#f6f6f6;font-family:system-ui,sans-serif}
.bad{background:#fde8e8} .status-verified{color:#16794a} .status-different,.status-failed,.status-missing{color:#b42318}
details.run{border:1px solid #ddd;border-radius:6px;margin:8px 0;padding:4px 10px}
details.run>summary{cursor:pointer;font-weight:600}
.grid{display:flex;flex-wrap:wrap;gap:10px;margin:8px 0}
.chart{border:1px solid #e3e3e3;border-radius:4px;padding:4px;width:340px}
.chart.differs{border:2px solid #b42318}
.chart .name{font-family:monospace;font-size:12px;overflow-wrap:anywhere}
.chart .meta{color:#666;font-size:11px}
.legend span{display:inline-block;width:18px;height:3px;margin:0 4px 3px 8px;vertical-align:middle}
"""

_SCRIPT = r"""
(function(){
  var errors = 0, drawn = 0;
  window.addEventListener('error', function(){ errors++; document.body.dataset.errors = errors; });
  document.body.dataset.errors = 0;
  function decode(b64, n){
    if(!b64) return null;
    var raw = atob(b64), view = new DataView(new ArrayBuffer(raw.length)), out = [];
    for(var i=0;i<raw.length;i++) view.setUint8(i, raw.charCodeAt(i));
    for(var k=0;k<3;k++){ var row=[]; for(var j=0;j<n;j++) row.push(view.getUint16((k*n+j)*2, true)); out.push(row); }
    return out;
  }
  var W=330, H=120, P=4, NS='http://www.w3.org/2000/svg';
  function el(name, attrs){ var e=document.createElementNS(NS,name); for(var a in attrs) e.setAttribute(a, attrs[a]); return e; }
  function side(svg, q, n, color, dst){
    if(!q) return;
    function x(i){ return P + (n===1 ? (W-2*P)/2 : (i+0.5)/n*(W-2*P)); }
    function y(v){ return H-P - v/65534*(H-2*P); }
    var seg=[], segs=[], used=[];
    for(var i=0;i<n;i++){ if(q[0][i]===65535){ if(seg.length) segs.push(seg); seg=[]; } else { seg.push(i); used.push(i); } }
    if(seg.length) segs.push(seg);
    segs.forEach(function(s){   // the min..max band over each run of filled bins
      if(s.length<2) return;
      var top=s.map(function(i){return x(i)+','+y(q[1][i]);}), bottom=s.slice().reverse().map(function(i){return x(i)+','+y(q[0][i]);});
      svg.appendChild(el('polygon',{points: top.concat(bottom).join(' '), fill: color, 'fill-opacity': 0.18, stroke: 'none'}));
    });
    // the mean through every filled bin (a sparse series is still one line), dots where few
    if(used.length>1) svg.appendChild(el('path',{d: 'M'+used.map(function(i){return x(i)+','+y(q[2][i]);}).join('L'),
      fill:'none', stroke: color, 'stroke-width': dst ? 1.2 : 2.6, 'stroke-dasharray': dst ? '4 3' : '', 'class': dst ? 'dst' : 'src'}));
    if(used.length<=60) used.forEach(function(i){
      if(q[1][i]!==q[0][i]) svg.appendChild(el('line',{x1:x(i), x2:x(i), y1:y(q[0][i]), y2:y(q[1][i]), stroke: color, 'stroke-width': 1}));
      svg.appendChild(el('circle',{cx:x(i), cy:y(q[2][i]), r: dst ? 1.8 : 3, fill: dst ? 'none' : color, stroke: color, 'class': dst ? 'dst' : 'src'}));
    });
  }
  function draw(details){
    if(details.dataset.done) return;
    details.dataset.done = 1;
    var data = JSON.parse(details.querySelector('script[type="application/json"]').textContent);
    var grid = details.querySelector('.grid');
    data.series.forEach(function(s){
      var box=document.createElement('div'); box.className='chart'+(s.differs?' differs':'');
      var name=document.createElement('div'); name.className='name'; name.textContent=s.path+(s.differs?'  (differs)':'');
      var meta=document.createElement('div'); meta.className='meta';
      meta.textContent='points '+s.n[0]+' / '+s.n[1]+'  steps '+s.x[0]+'..'+s.x[1]+'  values '+s.y[0].toPrecision(5)+'..'+s.y[1].toPrecision(5)
        +((s.nonfinite[0]||s.nonfinite[1]) ? '  non-finite '+s.nonfinite[0]+' / '+s.nonfinite[1] : '');
      var svg=el('svg',{width:W, height:H, viewBox:'0 0 '+W+' '+H});
      side(svg, decode(s.src, s.bins), s.bins, '#1f6feb', false);
      side(svg, decode(s.dst, s.bins), s.bins, '#e8710a', true);
      box.appendChild(name); box.appendChild(svg); box.appendChild(meta); grid.appendChild(box);
      drawn++;
    });
    document.body.dataset.drawn = drawn;
  }
  document.querySelectorAll('details.run').forEach(function(d){
    d.addEventListener('toggle', function(){ if(d.open) draw(d); });
    if(d.open) draw(d);
  });
  document.body.dataset.drawn = drawn;
  document.body.dataset.ready = 1;
})();
"""


def _e(value: Any) -> str:
    if isinstance(value, datetime):
        value = value.isoformat()
    return html.escape(scrub(value if isinstance(value, str) else repr(value)), quote=True)


def _json_script(data: dict) -> str:
    text = json.dumps(data, separators=(",", ":"), default=str)
    return text.replace("</", "<\\/").replace("<!--", "<\\!--")


def _cards(items: list[tuple[str, Any]]) -> str:
    return '<div class="cards">' + "".join(f'<div class="card"><b>{_e(v) if not isinstance(v, int) else f"{v:,}"}</b>{_e(k)}</div>'
                                           for k, v in items) + "</div>"


def _counts_table(title: str, counts: dict[str, int], meanings: dict[str, str]) -> str:
    if not counts and not meanings:
        return ""
    kinds = sorted(set(counts) | set(meanings), key=lambda k: (not counts.get(k), k))   # what happened first
    rows = "".join(f"<tr><td>{_e(k)}</td><td>{counts.get(k, 0):,}</td><td>{_e(meanings.get(k, ''))}</td></tr>"
                   for k in kinds)
    return f"<h2>{_e(title)}</h2><table><tr><th>kind</th><th>count</th><th>meaning</th></tr>{rows}</table>"


def _run_section(index: int, run: RunDrawing, open_: bool) -> str:
    parts = [f'<details class="run" id="run-{index}"{" open" if open_ else ""}>',
             f'<summary><span class="status-{_e(run.status)}">{_e(run.status)}</span> {_e(run.name)} '
             f'<small>({_e(run.project_id)} / {_e(run.run_id)}; {len(run.series)} series, {len(run.params)} values, '
             f'{len(run.files)} files)</small></summary>']
    if run.error:
        parts.append(f"<p class='bad'>{_e(run.error)}</p>")
    if run.differences:
        parts.append("<ul>" + "".join(f"<li>{_e(d)}</li>" for d in run.differences) + "</ul>")
    parts.append('<div class="legend"><span style="background:#1f6feb"></span>source<span style="background:#e8710a">'
                 '</span>destination (band: min..max per step bin; line: mean)</div>')
    parts.append('<div class="grid"></div>')
    if run.params:
        rows = "".join(f"<tr{' class=bad' if bad else ''}><td>{_e(p)}</td><td>{_e(s)}</td><td>{_e(d)}</td></tr>"
                       for p, s, d, bad in run.params)
        parts.append(f"<table><tr><th>value</th><th>source</th><th>destination</th></tr>{rows}</table>")
    if run.files:
        rows = "".join(f"<tr{' class=bad' if bad else ''}><td>{_e(p)}</td><td>{_e(s)}</td><td>{_e(d)}</td></tr>"
                       for p, s, d, bad in run.files)
        parts.append(f"<table><tr><th>file</th><th>source size/digest</th><th>destination size/digest</th></tr>{rows}</table>")
    parts.append(f'<script type="application/json">{_json_script({"series": [s.to_json() for s in run.series]})}</script>')
    parts.append("</details>")
    return "".join(parts)


def write_html(path: Path, report: CommandReport, drawings: Drawings, declared: dict[str, str],
               copy_report: dict | None = None) -> None:
    """Write the page to `path` (through a temporary file, renamed).  `declared`: the
    destination's transformations and their meanings; `copy_report`: the JSON a `copy --report`
    wrote, whose moved/repaired/failed counts, transformations and drops the summary shows."""
    totals = report.totals
    runs = sorted(drawings.runs, key=lambda r: (r.status == VERIFIED, r.project_id, r.run_id))
    out = ["<!doctype html><html><head><meta charset='utf-8'><title>trackport report</title>",
           f"<style>{_STYLE}</style></head><body>",
           "<h1>trackport report</h1>",
           f"<div class='uris'>{_e(report.source or '')} &rarr; {_e(report.destination or '')}</div>",
           "<h2>Verification</h2>",
           _cards([("runs", totals.runs), *sorted(totals.statuses.items()), ("points compared", totals.points),
                   ("values", totals.params), ("files", totals.files), ("bytes", totals.bytes)])]
    if copy_report:
        moved = copy_report.get("totals", {})
        out.append("<h2>Copy</h2>")
        out.append(_cards([(k, v) for k, v in moved.items() if isinstance(v, int) and not isinstance(v, bool)]))
        out.append(_counts_table("Transformations in the copy", moved.get("transformations") or {}, declared))
        out.append(_counts_table("Drops in the copy", moved.get("drops") or {}, {}))
    else:
        out.append(_counts_table("Transformations the destination declares", {}, declared))
    if report.all_notes:
        out.append("<h2>Notes</h2><ul>" + "".join(f"<li>{_e(n)}</li>" for n in report.all_notes) + "</ul>")
    out.append("<h2>Runs</h2><table><tr><th>status</th><th>run</th><th>project</th><th>series</th>"
               "<th>differences</th></tr>")
    for i, run in enumerate(runs):
        out.append(f"<tr><td class='status-{_e(run.status)}'>{_e(run.status)}</td><td><a href='#run-{i}'>"
                   f"{_e(run.name)}</a></td><td>{_e(run.project_id)}</td><td>{len(run.series)}</td>"
                   f"<td>{len(run.differences)}</td></tr>")
    out.append("</table>")
    for i, run in enumerate(runs):
        # a small report opens every run; a large one what needs looking at, and its first run
        small = len(runs) <= OPEN_AT_FIRST
        out.append(_run_section(i, run, open_=small or (run.status != VERIFIED and i < OPEN_AT_FIRST) or i == 0))
    out.append(f"<script>{_SCRIPT}</script></body></html>")
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(out), encoding="utf-8")
    tmp.replace(path)
