"""`gpuhc report --format html`: one self-contained file (styles and plots inline, nothing fetched, no
script): the sections of report_render.sections() as tables, with the plots of fleet/svg.py beside them."""
from __future__ import annotations

from html import escape
from typing import Any, Dict, List, Optional

from ..text import clean
from . import report_render as RR
from . import scoring as S
from . import svg

CSS = """
body{font-family:DejaVu Sans,Arial,Helvetica,sans-serif;margin:24px auto;max-width:1180px;color:#212121;font-size:13px}
h1{font-size:22px;margin-bottom:4px}h2{font-size:17px;border-bottom:2px solid #1565c0;padding-bottom:3px;margin-top:30px}
h3{font-size:13px;margin:14px 0 4px}.sub{color:#555}
table{border-collapse:collapse;margin:4px 0 10px}td,th{border:1px solid #ddd;padding:2px 7px;text-align:left;vertical-align:top;
white-space:nowrap}td.long{white-space:normal;min-width:260px}.side{display:flex;flex-wrap:wrap;gap:28px;align-items:flex-start}
th{background:#eceff1}td.n{text-align:right}.tiles{display:flex;flex-wrap:wrap;gap:10px;margin:10px 0}
.tile{border-radius:6px;padding:8px 14px;min-width:110px;background:#eceff1}.tile b{display:block;font-size:22px}
.t-bad{background:#ffcdd2}.t-warn{background:#fff3c4}.t-ok{background:#c8e6c9}.plots{display:flex;flex-wrap:wrap;gap:8px}
.s0{background:#ffcdd2}.s1{background:#ffe0b2}.s2{background:#fff9c4}.s3{background:#f1f8e9}
.note{color:#555;margin:2px 0}.ev{max-width:520px}.problem{font-weight:bold;color:#b71c1c}
"""
SEVERITY_COLOR = {"MONITOR": svg.COLORS["MONITOR"], "RESET": svg.COLORS["RESET"], "REBOOT": svg.COLORS["REBOOT"],
                  "ISOLATE": svg.COLORS["ISOLATE"], "ERROR": svg.COLORS["ERROR"]}


def _cell(value: Any) -> str:
    if value is None:
        return "<td></td>"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return '<td class="n">%s</td>' % escape(str(value))
    text = clean(value)
    return '<td%s>%s</td>' % (' class="long"' if len(text) > 48 else "", escape(text))


def _score_cell(value: Any) -> str:
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool):
        return _cell(value)
    band = 0 if value < 40 else 1 if value < 60 else 2 if value < 80 else 3
    return '<td class="n s%d">%d</td>' % (band, value)


def table(caption: str, heads: List[str], rows: List[List[Any]], score_cols: Optional[set] = None) -> str:
    if not rows:
        return ""
    out = ["<h3>%s</h3><table><tr>%s</tr>" % (escape(caption), "".join("<th>%s</th>" % escape(clean(h)) for h in heads))]
    for row in rows:
        out.append("<tr>%s</tr>" % "".join(_score_cell(c) if score_cols and n in score_cols else _cell(c)
                                            for n, c in enumerate(row)))
    out.append("</table>")
    return "".join(out)


def _tiles(rep: Dict[str, Any]) -> str:
    s = rep["summary"]
    h = s["health"]
    bad = sum(h.get(k, 0) for k in ("drained", "quarantine", "unhealthy", "would-drain"))
    needs = sum(len(v) for v in s["needs_person"].values())
    scored = [r["overall"] for r in rep["scores"]["nodes"] if r["overall"] is not None]
    tiles = [("nodes", s["nodes"], ""), ("healthy", h.get("healthy", 0), "t-ok"),
             ("out of service (gpuhc)", bad, "t-bad" if bad else "t-ok"),
             ("drained by operators", h.get("drained-admin", 0), ""),
             ("stale or never checked", h.get("stale", 0) + h.get("never-checked", 0), "t-warn" if h.get("stale") else ""),
             ("need a person", needs, "t-bad" if needs else "t-ok"),
             ("incidents in window", s["incidents"], "t-warn" if s["incidents"] else "t-ok"),
             ("median score", sorted(scored)[len(scored) // 2] if scored else "-", "")]
    return '<div class="tiles">%s</div>' % "".join(
        '<div class="tile %s"><b>%s</b>%s</div>' % (cls, escape(str(v)), escape(k)) for k, v, cls in tiles)


def _health_plot(rep: Dict[str, Any]) -> str:
    hot = rep["health_over_time"]
    layers = [(st if st != "none" else "no result / stale", svg.COLORS[st], hot["counts"][st]) for st in hot["states"]]
    return svg.stacked_area("Health over time (nodes by tier; drained nodes at the tier that drained them)",
                            hot["edges"], layers)


def _score_plots(rep: Dict[str, Any]) -> str:
    dist = rep["scores"]["distribution"]
    names = ["%d" % (10 * b) for b in range(10)]
    colors = ["#c62828", "#d84315", "#ef6c00", "#f9a825", "#fbc02d", "#c0ca33", "#9ccc65", "#66bb6a", "#43a047", "#2e7d32"]
    return '<div class="plots">%s</div>' % "".join(
        svg.bars("Score: %s" % dim, names, dist[dim], colors, x_label="score band (nodes)") for dim in dist)


def _bench_plots(rep: Dict[str, Any]) -> str:
    strag: Dict[tuple, str] = {}
    for x in rep["anomalies"]["stragglers"]:
        strag[(x["group"], x["node"], x["metric"])] = ", ".join(x["why"])
    out = []
    for profile, metrics in rep["benchmarks"].items():
        for metric, m in metrics.items():
            marked = {n: strag[(profile, n, metric)] for n in m["values"] if (profile, n, metric) in strag}
            out.append(svg.strip("%s: %s (stragglers in red)" % (profile, metric), m["values"], m["median"], marked,
                                 unit=metric.rsplit("_", 1)[-1], expected=m["expected"]))
    return "".join(out)


def _allreduce_plot(rep: Dict[str, Any]) -> str:
    ar = rep["allreduce"]
    series = []
    for n, (profile, p) in enumerate(sorted(ar["single_node"].items())):
        series.append(("%s median (1 node)" % profile, svg.SERIES[n % len(svg.SERIES)],
                       {float(k): v for k, v in p["median"].items()}, ""))
        for node, pts in sorted(p["nodes"].items())[:5]:
            series.append(("%s (straggler)" % node, svg.BAD, {float(k): v for k, v in pts.items()}, "5 3"))
    if ar["multi_node"]["busbw_by_size"]:
        series.append(("multi-node median (%d runs)" % ar["multi_node"]["runs"], "#6d4c41",
                       {float(k): v for k, v in ar["multi_node"]["busbw_by_size"].items()}, "2 2"))
    if not series:
        return ""
    return svg.lines("All-reduce bus bandwidth against message size", series, "message size", "busbw GB/s",
                     log2_x=True, x_format=lambda v: RR.size_text(int(v)))


def _pair_plot(rep: Dict[str, Any]) -> str:
    pm = rep["pairs"]["matrix"]
    if not pm["nodes"]:
        return ""
    index = {n: i for i, n in enumerate(pm["nodes"])}

    def cell(a: str, b: str):
        if a == b:
            return "#eceff1", a
        runs, failed = pm["cells"][index[a]][index[b]]
        if not runs:
            return None, "%s + %s: no run" % (a, b)
        share = failed / runs
        color = "#43a047" if share == 0 else "#fbc02d" if share < 0.5 else svg.BAD
        return color, "%s + %s: %d of %d runs failed" % (a, b, failed, runs)
    return svg.heatmap("Pair history of multi-node all-reduce runs (failed share)", pm["nodes"], pm["nodes"], cell,
                       legend=[("all passed", "#43a047"), ("some failed", "#fbc02d"), ("half or more failed", svg.BAD),
                               ("no run", "#f5f5f5")])


def _check_plot(rep: Dict[str, Any], most: int = 60) -> str:
    ch = rep["checks"]
    rows = ch["rows"][:most]
    if not rows:
        return ""
    cols = ch["columns"]
    cells = {r["node"]: r["cells"] for r in rows}

    def cell(node: str, check: str):
        sev = cells[node].get(check)
        if sev is None:
            return "#c8e6c9", "%s %s: PASS or not run" % (node, check)
        return SEVERITY_COLOR.get(sev, "#999"), "%s %s: worst %s in the window" % (node, check, sev)
    return svg.heatmap("Node x check: worst finding in the window (lowest scores first)", [r["node"] for r in rows],
                       cols, cell, legend=[(k, v) for k, v in SEVERITY_COLOR.items()] + [("pass", "#c8e6c9")])


def _trend_plots(rep: Dict[str, Any], most: int = 12) -> str:
    def moving(t: Dict[str, Any]) -> bool:       # something to see: the median moves, or the nodes spread
        pts = [p for p in t["points"] if p["median"] is not None]
        return len({p["median"] for p in pts}) > 1 or any(p["p25"] != p["p75"] for p in pts)
    trends = [t for t in rep["trends"] if any(p["median"] is not None for p in t["points"])]
    shown = ([t for t in trends if t["drift"]] + [t for t in trends if moving(t) and not t["drift"]]
             + [t for t in trends if not moving(t) and not t["drift"]])[:most]
    return '<div class="plots">%s</div>' % "".join(svg.band("%s: %s" % (t["profile"], t["label"]), t["points"])
                                                   for t in shown)


def html(rep: Dict[str, Any]) -> str:
    plots = {
        "summary": _health_plot(rep),
        "scores": _score_plots(rep),
        "trends": _trend_plots(rep),
        "benchmarks": _bench_plots(rep) + _allreduce_plot(rep),
        "pairs": _pair_plot(rep),
        "checks": _check_plot(rep),
    }
    problems = rep["summary"]["problem_nodes"]
    body = ["<h1>gpuhc fleet report</h1>", '<p class="sub">%s</p>' % escape(RR.header(rep)), _tiles(rep)]
    if problems:
        body.append('<p>Problem nodes: %s</p>' % ", ".join('<span class="problem">%s</span>' % escape(n)
                                                           for n in problems[:60]))
    for sid, title, tables, notes in RR.sections(rep):
        body.append('<section id="%s"><h2>%s</h2>' % (sid, escape(title)))
        if sid in ("scores", "trends", "checks", "pairs"):
            body.append(plots.get(sid, ""))
        if sid == "summary":
            body.append('<div class="side"><div>')
        for caption, heads, rows in tables:
            score_cols = set(range(2, 3 + len(S.DIMENSIONS))) if caption == "Nodes below 100" else \
                ({1} if caption == "Nodes with findings" else None)
            body.append(table(caption, heads, rows, score_cols))
        if sid == "summary":
            body.append("</div><div>%s</div></div>" % plots["summary"])
        if sid == "benchmarks":
            body.append(plots["benchmarks"])
        for note in notes:
            body.append('<p class="note">%s</p>' % escape(clean(note)))
        body.append("</section>")
    return ('<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>gpuhc fleet report %s</title>'
            '<meta name="generator" content="gpuhc report"><style>%s</style></head><body>%s</body></html>\n'
            % (escape(rep["generated"] or ""), CSS, "\n".join(body)))
