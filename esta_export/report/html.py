"""report.html: one self-contained file (inline CSS and JS, plots as base64 data URIs) that a
person opens in any browser, offline. Every value is HTML-escaped."""

from __future__ import annotations

import base64
import html
import re
import json
from typing import Any

CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#1f2933}
h1{font-size:22px}h2{font-size:18px;margin-top:28px}h3{font-size:15px}
.warn{background:#fff7ed;border-left:4px solid #d97706;padding:8px 12px;margin:6px 0}
.ok{color:#16a34a}.bad{color:#dc2626}
table{border-collapse:collapse;font-size:12px;margin-top:8px}
th,td{border:1px solid #d5dbe1;padding:3px 6px;text-align:right}
th{background:#f1f5f9;cursor:pointer;user-select:none}th:hover{background:#e2e8f0}
td.l,th.l{text-align:left}tr.front td{background:#eff6ff}tr.sel td{font-weight:600}
img.plot{max-width:100%;border:1px solid #e5e7eb;margin:6px 8px 6px 0}
.muted{color:#6b7280}code{background:#f1f5f9;padding:0 3px}
"""

# Sort a table by the clicked column; numbers by value, empty cells last.
JS = """
document.querySelectorAll('table.sortable th').forEach(function(th, col){
  th.addEventListener('click', function(){
    var table = th.closest('table'), body = table.tBodies[0];
    var asc = th.dataset.dir !== 'asc'; th.dataset.dir = asc ? 'asc' : 'desc';
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function(a, b){
      var x = a.cells[col].dataset.v, y = b.cells[col].dataset.v;
      if (x === '') return 1; if (y === '') return -1;
      var nx = parseFloat(x), ny = parseFloat(y);
      var c = (!isNaN(nx) && !isNaN(ny)) ? nx - ny : String(x).localeCompare(String(y));
      return asc ? c : -c;
    });
    rows.forEach(function(r){ body.appendChild(r); });
  });
});
"""

COLUMNS = [("id", "id"), ("route", "route"), ("FLOPs", "flops_scaled"), ("M params", "mparams"),
           ("latency source", "latency_source"), ("min ms", "min"), ("median ms", "median"),
           ("median 95% CI ms", "median_ci"), ("switch-in ms", "switch_in"),
           ("p90 ms", "p90"), ("p95 ms", "p95"), ("p99 ms", "p99"), ("CV", "cv"),
           ("unstable", "unstable"), ("peak RSS MB", "peak_rss_mb"), ("accuracy", "accuracy"),
           ("front", "on_front"), ("tie with", "tie_with"), ("dominated by", "dominated_by")]
_LEFT = {"route", "latency_source"}


def _e(v: Any) -> str:
    return html.escape("" if v is None else str(v))


def _fmt(key: str, v: Any) -> str:
    if v is None:
        return "—"
    if isinstance(v, bool):
        return "yes" if v else ""
    if key == "cv":
        return f"{v:.1%}"
    if key == "accuracy":
        return f"{v:.4f}"
    if key == "median_ci" and isinstance(v, (list, tuple)) and len(v) == 2:
        return f"{v[0]:.3f}-{v[1]:.3f}"
    if key == "tie_with" and isinstance(v, list):
        return ", ".join(map(str, v))
    if isinstance(v, float):
        return f"{v:.3f}"
    return str(v)


def _row_values(s: dict[str, Any]) -> dict[str, Any]:
    lat = s.get("latency_ms") or {}
    out = {k: s.get(k) for k in ("id", "route", "latency_source", "unstable", "peak_rss_mb",
                                 "accuracy", "accuracy_source", "on_front", "dominated_by")}
    out["flops_scaled"] = None if s.get("flops") is None else s["flops"] / _flops_scale(s["flops"])
    out["mparams"] = None if s.get("params") is None else s["params"] / 1e6
    for k in ("min", "p90", "p95", "p99", "cv"):
        out[k] = lat.get(k)
    # A predicted stitch has only a median estimate.
    out["median"] = lat.get("median", s.get("latency"))
    out["median_ci"] = s.get("latency_ci")
    out["switch_in"] = (s.get("switch_in_ms") or {}).get("median")
    out["tie_with"] = s.get("tie_with") or None
    return out


def _flops_scale(flops: float) -> float:
    return 1e9 if flops >= 1e8 else 1e6


def _table(sel: dict[str, Any]) -> str:
    chosen = set(map(str, sel.get("selected", [])))
    biggest = max((s.get("flops") or 0 for s in sel["stitches"]), default=0)
    unit = "GFLOPs" if _flops_scale(biggest) == 1e9 else "MFLOPs"
    # One scale for the whole column, chosen by its largest value.
    rows = []
    for s in sel["stitches"]:
        v = _row_values(s)
        if s.get("flops") is not None:
            v["flops_scaled"] = s["flops"] / (1e9 if unit == "GFLOPs" else 1e6)
        rows.append((s, v))
    head = "".join(f'<th class="{"l" if k in _LEFT else ""}">{_e(unit if k == "flops_scaled" else n)}</th>'
                   for n, k in COLUMNS)
    sources = sorted({str(s.get("accuracy_source")) for s in sel["stitches"] if s.get("accuracy_source")})
    body = []
    for s, v in rows:
        cls = " ".join(c for c, on in (("front", s.get("on_front")), ("sel", str(s["id"]) in chosen))
                       if on)
        cells = "".join(
            f'<td class="{"l" if k in _LEFT else ""}" data-v="{_e("" if v[k] is None else v[k])}">'
            f'{_e(_fmt(k, v[k]))}</td>' for _, k in COLUMNS)
        body.append(f'<tr class="{cls}" data-id="{_e(s["id"])}">{cells}</tr>')
    note = f'<p class="muted">accuracy: {_e("; ".join(sources))}</p>' if sources else ""
    return (f'{note}<table class="sortable stitches"><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table>')


def _value_table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return '<p class="muted">not enough measured stitches with accuracy to compare.</p>'
    head = ("<tr><th>budget ms</th><th class=l>pick by measured latency</th><th>accuracy</th>"
            "<th class=l>pick by FLOPs</th><th>accuracy</th><th>its latency ms</th>"
            "<th>accuracy lost</th></tr>")
    body = []
    for r in rows:
        over = r.get("flops_pick_over_budget")
        lost = ("misses the budget" if over else _fmt("accuracy", r.get("accuracy_lost")))
        body.append(
            f"<tr><td>{r['budget_ms']:.3f}</td><td class=l>{_e(r['measured_pick'])}</td>"
            f"<td>{_e(_fmt('accuracy', r['measured_accuracy']))}</td>"
            f"<td class=l>{_e(r['flops_pick'])}</td><td>{_e(_fmt('accuracy', r['flops_accuracy']))}</td>"
            f"<td class={'bad' if over else ''}>{_e(_fmt('x', r['flops_pick_latency_ms']))}</td>"
            f"<td class={'bad' if over else ''}>{_e(lost)}</td></tr>")
    return f"<table>{head}{''.join(body)}</table>"


_UNSTABLE = re.compile(r"^(\[[^\]]+\] )?stitch (\S+) latency is unstable \((\w+) ([0-9.]+)%")


def _warnings(warnings: list[str]) -> list[str]:
    """Each warning once; per-stitch instability folded into one line per target (details on click)."""
    seen, plain, unstable = set(), [], {}
    for w in warnings:
        if w in seen:
            continue
        seen.add(w)
        m = _UNSTABLE.match(w)
        if m:
            unstable.setdefault(m.group(1) or "", []).append((m.group(2), m.group(3), float(m.group(4)), w))
        else:
            plain.append(w)
    out = [f'<div class="warn">{_e(w)}</div>' for w in plain]
    for prefix, items in unstable.items():
        values = [v for _, _, v, _ in items]
        out.append(f'<details class="warn"><summary>{_e(prefix)}{len(items)} stitches have unstable latency '
                   f'({_e(items[0][1])} {min(values):.0f}-{max(values):.0f}% after re-measuring): their '
                   f'numbers are shown but flagged; re-profile --fresh on a quiet machine</summary>'
                   + "".join(f"<div>{_e(w)}</div>" for *_, w in items) + "</details>")
    return out or ['<p class="ok">none</p>']


def render_html(report: dict[str, Any], images: dict[str, bytes]) -> str:
    parts = [f"<!doctype html><html lang=en><head><meta charset=utf-8>"
             f"<meta name=viewport content='width=device-width,initial-scale=1'>"
             f"<title>esta-export report</title><style>{CSS}</style></head><body>",
             "<h1>esta-export report</h1>",
             f"<p class=muted>generated {_e(report['generated'])} by esta-export "
             f"{_e(report['tool_version'])}; report schema {_e(report['schema_version'])}</p>"]
    parts.append("<h2>Warnings</h2>")
    parts += _warnings(report["warnings"])
    for t in report["targets"]:
        sel = t["selection"]
        name = t["target"]
        parts.append(f"<h2 id='t-{_e(name)}'>Target {_e(name)}</h2>")
        ver = t.get("verified_on_hardware")
        parts.append(
            f"<p>backend {_e(t.get('backend'))}, precision {_e(t.get('precision'))}, "
            f"{_e(t.get('compiled'))} compiled, {len(t.get('failed') or [])} failed; "
            + (f"<span class=ok>verified on hardware ({_e(ver)})</span>" if ver else
               "<span class=bad>not verified on hardware</span>") + "</p>")
        fleet = t.get("fleet")
        if fleet:
            parts.append(
                f"<p>profiled on a fleet of {len(fleet['boards'])} boards "
                f"({_e(', '.join(fleet['boards']))}): board-to-board spread over the common set up to "
                f"<b>{fleet['max_spread']:.1%}</b>; per board, latency / boards' median: "
                + _e(", ".join(f"{b} {f:.3f}" for b, f in fleet["board_factor"].items())) + "</p>")
        parts.append(
            f"<p>selection: {_e(sel.get('mode'))} over {_e(', '.join(sel.get('objectives', [])))}; "
            f"accuracy from <b>{_e(sel.get('accuracy_source'))}</b>; latency = "
            f"{_e(sel.get('latency_metric'))} of measured runs, batch {_e(sel.get('batch'))}. "
            f"Front: {_e(', '.join(map(str, sel.get('front', []))))}. "
            f"Selected: <b>{_e(', '.join(map(str, sel.get('selected', []))))}</b>.</p>")
        for fname in t.get("plots", []):
            data = base64.b64encode(images[fname]).decode()
            parts.append(f'<img class="plot" alt="{_e(fname)}" src="data:image/png;base64,{data}">')
        tau = sel.get("kendall_tau")
        dom = sel.get("flops_dominated_on_device") or []
        parts.append("<h3>FLOPs vs measured latency</h3>")
        iv = sel.get("intervals") or {}
        tci, vci = iv.get("kendall_tau_ci"), iv.get("selection_value_mean_ci")
        parts.append(f"<p>Kendall tau between FLOPs and latency: "
                     f"{_e('n/a' if tau is None else f'{tau:.3f}')}"
                     + (f" ({tci[0]:.3f} to {tci[1]:.3f} with the pairs the latencies' "
                        f"{_e(round(100 * iv['level']))}% intervals cannot order read either way)"
                        if tci else "")
                     + " over "
                     f"{_e(sel.get('kendall_tau_n'))} measured stitches. FLOPs front: "
                     f"{_e(', '.join(map(str, sel.get('flops_front', []))))}. "
                     f"On the FLOPs front but dominated on the device: "
                     + (_e(", ".join(f"{d['id']} (by {d['dominated_by']})" for d in dom)) or "none")
                     + "</p>")
        parts.append("<h3>Selection value: choosing by FLOPs instead of measured latency</h3>")
        parts.append(_value_table(sel.get("selection_value") or []))
        if iv.get("selection_value_mean") is not None:
            parts.append(f"<p>Mean accuracy lost over these budgets: "
                         f"{100 * iv['selection_value_mean']:.2f} points"
                         + (f" ({_e(round(100 * iv['level']))}% interval {100 * vci[0]:.2f} to "
                            f"{100 * vci[1]:.2f})" if vci else "")
                         + f"; intervals: {_e(iv.get('method'))}, {_e(iv.get('draws'))} draws.</p>")
        pred = sel.get("predictor")
        if pred:
            loo = pred.get("leave_one_out") or {}
            parts.append(f"<p>Latency predictor ({_e((pred.get('model') or {}).get('kind'))} "
                         f"model): leave-one-out MAPE "
                         f"{_e('n/a' if loo.get('mape') is None else format(loo['mape'], '.1%'))}, "
                         f"within +-10%: "
                         f"{_e('n/a' if loo.get('within_10pct') is None else format(loo['within_10pct'], '.0%'))} "
                         f"(n={_e(loo.get('n_eval'))}).</p>")
        parts.append("<h3>Stitches</h3><p class=muted>click a column to sort; blue rows are on the "
                     "front, bold rows are selected.</p>")
        parts.append(_table(sel))
        parts.append("<h3>Environment</h3><ul>" + "".join(
            f"<li>{_e(line)}</li>" for line in t.get("environment_lines", [])) + "</ul>")
        parts.append(f"<details><summary>full environment record</summary><pre>"
                     f"{_e(json.dumps(t.get('environment'), indent=2, default=str))}</pre></details>")
    parts.append(f"<script>{JS}</script></body></html>")
    return "\n".join(parts)
