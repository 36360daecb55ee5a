"""Plots as inline SVG text for the HTML report: stacked areas, histograms, line charts, heat maps.

No library and no JavaScript: each function returns one ``<svg>`` element as a string, with axes, labels
and a ``<title>`` on every mark (the browser shows it on hover; nothing needs a script). Every text that
comes from the data is escaped.
"""
from __future__ import annotations

import math
import time
from html import escape
from typing import Any, Dict, List, Optional, Sequence, Tuple

FONT = "font-family:DejaVu Sans,Arial,Helvetica,sans-serif"
COLORS = {"PASS": "#43a047", "MONITOR": "#fbc02d", "ERROR": "#8e7cc3", "RESET": "#fb8c00", "REBOOT": "#e53935",
          "ISOLATE": "#7f0000", "none": "#cfd8dc"}
SERIES = ["#1e88e5", "#43a047", "#8e24aa", "#fb8c00", "#00897b", "#6d4c41", "#3949ab", "#c0ca33"]
BAD = "#d32f2f"


def _f(x: float) -> str:
    return ("%.1f" % x).rstrip("0").rstrip(".")


def _title(text: str) -> str:
    return "<title>%s</title>" % escape(text) if text else ""


def _nice(top: float) -> float:
    """A round upper bound for an axis."""
    if top <= 0 or not math.isfinite(top):
        return 1.0
    exp = 10 ** math.floor(math.log10(top))
    for m in (1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10):
        if m * exp >= top:
            return m * exp
    return 10 * exp


def _num(x: float) -> str:
    if abs(x) >= 1e6:
        return "%.3gM" % (x / 1e6)
    if abs(x) >= 1e4:
        return "%.3gk" % (x / 1e3)
    return "%.4g" % x


class Canvas:
    def __init__(self, width: int, height: int, label: str, left: int = 56, right: int = 16, top: int = 28,
                 bottom: int = 40) -> None:
        self.w, self.h = width, height
        self.left, self.right, self.top, self.bottom = left, right, top, bottom
        self.parts: List[str] = []
        self.label = label

    @property
    def pw(self) -> float:
        return self.w - self.left - self.right

    @property
    def ph(self) -> float:
        return self.h - self.top - self.bottom

    def add(self, text: str) -> None:
        self.parts.append(text)

    def text(self, x: float, y: float, s: str, size: int = 11, anchor: str = "start", color: str = "#333",
             bold: bool = False, rotate: Optional[float] = None) -> None:
        extra = ' transform="rotate(%s %s %s)"' % (_f(rotate), _f(x), _f(y)) if rotate is not None else ""
        self.add('<text x="%s" y="%s" font-size="%d" text-anchor="%s" fill="%s"%s%s>%s</text>'
                 % (_f(x), _f(y), size, anchor, color, ' font-weight="bold"' if bold else "", extra, escape(s)))

    def rect(self, x: float, y: float, w: float, h: float, fill: str, title: str = "", stroke: str = "") -> None:
        s = ' stroke="%s" stroke-width="0.5"' % stroke if stroke else ""
        self.add('<rect x="%s" y="%s" width="%s" height="%s" fill="%s"%s>%s</rect>'
                 % (_f(x), _f(y), _f(max(w, 0)), _f(max(h, 0)), fill, s, _title(title)))

    def line(self, x1: float, y1: float, x2: float, y2: float, color: str = "#999", width: float = 1,
             dash: str = "", title: str = "") -> None:
        d = ' stroke-dasharray="%s"' % dash if dash else ""
        self.add('<line x1="%s" y1="%s" x2="%s" y2="%s" stroke="%s" stroke-width="%s"%s>%s</line>'
                 % (_f(x1), _f(y1), _f(x2), _f(y2), color, _f(width), d, _title(title)))

    def poly(self, points: Sequence[Tuple[float, float]], fill: str = "none", stroke: str = "none", width: float = 1.5,
             title: str = "", closed: bool = False, dash: str = "", opacity: float = 1.0) -> None:
        tag = "polygon" if closed else "polyline"
        pts = " ".join("%s,%s" % (_f(x), _f(y)) for x, y in points)
        d = ' stroke-dasharray="%s"' % dash if dash else ""
        o = ' fill-opacity="%s"' % _f(opacity) if opacity < 1 else ""
        self.add('<%s points="%s" fill="%s" stroke="%s" stroke-width="%s"%s%s>%s</%s>'
                 % (tag, pts, fill, stroke, _f(width), d, o, _title(title), tag))

    def circle(self, x: float, y: float, r: float, fill: str, title: str = "") -> None:
        self.add('<circle cx="%s" cy="%s" r="%s" fill="%s">%s</circle>' % (_f(x), _f(y), _f(r), fill, _title(title)))

    def y_axis(self, top: float, label: str = "", ticks: int = 4, bottom: float = 0.0) -> None:
        if bottom == 0 and top == int(top) and top < ticks * 4:     # small counts: whole-number ticks
            ticks = max(1, min(ticks, int(top)))
            while int(top) % ticks:
                ticks -= 1
        for n in range(ticks + 1):
            v = bottom + (top - bottom) * n / ticks
            y = self.top + self.ph - self.ph * n / ticks
            self.line(self.left, y, self.left + self.pw, y, "#e0e0e0")
            self.text(self.left - 6, y + 4, _num(v), 10, "end", "#555")
        if label:
            self.text(14, self.top + self.ph / 2, label, 10, "middle", "#555", rotate=-90)

    def frame(self) -> None:
        self.line(self.left, self.top + self.ph, self.left + self.pw, self.top + self.ph, "#666")
        self.line(self.left, self.top, self.left, self.top + self.ph, "#666")

    def legend(self, items: Sequence[Tuple[str, str]], y: Optional[float] = None) -> None:
        x = float(self.left)
        y = self.h - 10 if y is None else y
        for name, color in items:
            self.rect(x, y - 9, 10, 10, color)
            self.text(x + 14, y, name, 10)
            x += 22 + 6.5 * len(name)

    def svg(self) -> str:
        return ('<svg xmlns="http://www.w3.org/2000/svg" class="plot" role="img" aria-label="%s" width="%d" '
                'height="%d" viewBox="0 0 %d %d" style="%s">%s<rect width="100%%" height="100%%" fill="#fff"/>%s</svg>'
                % (escape(self.label), self.w, self.h, self.w, self.h, FONT, _title(self.label), "".join(self.parts)))


def _time_label(ts: float, span: float) -> str:
    return time.strftime("%m-%d %H:%M" if span <= 8 * 86400 else "%m-%d", time.gmtime(ts))


def stacked_area(label: str, edges: Sequence[float], layers: Sequence[Tuple[str, str, Sequence[int]]],
                 width: int = 760, height: int = 260) -> str:
    """Layers (name, color, value per edge) stacked bottom up over time."""
    c = Canvas(width, height, label, bottom=48)
    n = len(edges)
    totals = [sum(layer[2][i] for layer in layers) for i in range(n)]
    top = _nice(max(totals, default=1) or 1)
    c.y_axis(top, "nodes")
    span = (edges[-1] - edges[0]) if n > 1 else 1.0

    def x(i: int) -> float:
        return c.left + (c.pw * i / (n - 1) if n > 1 else c.pw / 2)

    def y(v: float) -> float:
        return c.top + c.ph - c.ph * v / top

    base = [0.0] * n
    for name, color, values in layers:
        if not any(values):
            continue
        upper = [base[i] + values[i] for i in range(n)]
        pts = [(x(i), y(upper[i])) for i in range(n)] + [(x(i), y(base[i])) for i in reversed(range(n))]
        c.poly(pts, fill=color, stroke="none", closed=True,
               title="%s: %s nodes at the end" % (name, values[-1] if values else 0))
        base = upper
    for i in range(0, n, max(1, n // 6)):
        c.line(x(i), c.top + c.ph, x(i), c.top + c.ph + 4, "#666")
        c.text(x(i), c.top + c.ph + 16, _time_label(edges[i], span) if n else "", 10, "middle", "#555")
    c.frame()
    c.legend([(name, color) for name, color, values in layers if any(values)])
    c.text(c.left, 16, label, 12, bold=True)
    return c.svg()


def bars(label: str, names: Sequence[str], values: Sequence[float], colors: Optional[Sequence[str]] = None,
         width: int = 250, height: int = 170, x_label: str = "") -> str:
    """A plain bar chart (a histogram's bins)."""
    c = Canvas(width, height, label, left=40, bottom=40)
    top = _nice(max(values, default=1) or 1)
    c.y_axis(top, ticks=3)
    n = max(1, len(values))
    bw = c.pw / n
    for i, (name, v) in enumerate(zip(names, values)):
        h = c.ph * v / top
        color = colors[i] if colors else SERIES[0]
        c.rect(c.left + i * bw + 1, c.top + c.ph - h, bw - 2, h, color, "%s: %s" % (name, _num(v)))
        if n <= 12 or i % max(1, n // 6) == 0:
            c.text(c.left + i * bw + bw / 2, c.top + c.ph + 13, name, 9, "middle", "#555")
    c.frame()
    if x_label:
        c.text(c.left + c.pw / 2, height - 6, x_label, 10, "middle", "#555")
    c.text(c.left - 34, 16, label, 12, bold=True)
    return c.svg()


def strip(label: str, values: Dict[str, float], median: float, marked: Dict[str, str], unit: str = "",
          expected: Optional[float] = None, width: int = 760, height: int = 150, bins: int = 40) -> str:
    """A benchmark figure across nodes: a histogram of every node, the median (line), the profile's expected
    figure (dashed), and each marked node (a straggler) as a red tick named below the axis."""
    c = Canvas(width, height, label, bottom=52)
    xs = list(values.values())
    lo = min(xs + [median] + ([expected] if expected else []))
    hi = max(xs + [median] + ([expected] if expected else []))
    pad = (hi - lo) * 0.05 or abs(hi) * 0.05 or 1.0
    lo, hi = lo - pad, hi + pad
    counts = [0] * bins
    for v in xs:
        counts[min(bins - 1, int((v - lo) / (hi - lo) * bins))] += 1
    top = _nice(max(counts) or 1)
    c.y_axis(top, "nodes", ticks=2)

    def x(v: float) -> float:
        return c.left + c.pw * (v - lo) / (hi - lo)
    bw = c.pw / bins
    for i, n in enumerate(counts):
        if n:
            a = lo + (hi - lo) * i / bins
            h = c.ph * n / top
            c.rect(c.left + i * bw + 0.5, c.top + c.ph - h, bw - 1, h, "#90caf9",
                   "%d nodes at %s-%s %s" % (n, _num(a), _num(a + (hi - lo) / bins), unit))
    c.line(x(median), c.top, x(median), c.top + c.ph, "#1565c0", 2, title="median %s %s" % (_num(median), unit))
    right = x(median) > c.left + c.pw * 0.8
    c.text(x(median) + (-4 if right else 4), c.top + 10, "median %s" % _num(median), 10,
           "end" if right else "start", "#1565c0")
    if expected:
        c.line(x(expected), c.top, x(expected), c.top + c.ph, "#555", 1.5, "4 3",
               title="profile expects %s %s" % (_num(expected), unit))
    for k, (node, why) in enumerate(sorted(marked.items(), key=lambda kv: values.get(kv[0], 0))):
        if node not in values:
            continue
        v = values[node]
        c.line(x(v), c.top, x(v), c.top + c.ph, BAD, 2, title="%s: %s %s (%s)" % (node, _num(v), unit, why))
        c.circle(x(v), c.top + c.ph, 4, BAD, "%s: %s %s (%s)" % (node, _num(v), unit, why))
        if k < 6:
            c.text(x(v), c.top + c.ph + 26 + 11 * (k % 2), node, 10, "middle", BAD, bold=True)
    for i in range(5):
        v = lo + (hi - lo) * i / 4
        c.text(x(v), c.top + c.ph + 13, _num(v), 9, "middle", "#555")
    c.frame()
    c.text(c.left, 16, label, 12, bold=True)
    return c.svg()


def lines(label: str, series: Sequence[Tuple[str, str, Dict[float, float], str]], x_label: str, y_label: str,
          log2_x: bool = False, width: int = 760, height: int = 280, x_format: Any = None) -> str:
    """Lines (name, color, {x: y}, dash) on shared axes; x on a log2 scale when asked."""
    c = Canvas(width, height, label, bottom=58)
    xs = sorted({k for _, _, pts, _ in series for k in pts})
    ys = [v for _, _, pts, _ in series for v in pts.values()]
    if not xs:
        return ""
    fx = (lambda v: math.log2(v)) if log2_x else (lambda v: v)
    lo, hi = fx(xs[0]), fx(xs[-1])
    if hi == lo:
        hi = lo + 1
    top = _nice(max(ys, default=1) or 1)
    c.y_axis(top, y_label)

    def x(v: float) -> float:
        return c.left + c.pw * (fx(v) - lo) / (hi - lo)

    def y(v: float) -> float:
        return c.top + c.ph - c.ph * v / top
    step = max(1, len(xs) // 8)
    for v in xs[::step]:
        c.line(x(v), c.top + c.ph, x(v), c.top + c.ph + 4, "#666")
        c.text(x(v), c.top + c.ph + 15, x_format(v) if x_format else _num(v), 9, "middle", "#555")
    for name, color, pts, dash in series:
        ordered = sorted(pts.items())
        if len(ordered) > 1:
            c.poly([(x(a), y(b)) for a, b in ordered], stroke=color, width=2, dash=dash, title=name)
        for a, b in ordered:
            c.circle(x(a), y(b), 2.5, color, "%s: %s at %s" % (name, _num(b), x_format(a) if x_format else _num(a)))
    c.frame()
    c.text(c.left + c.pw / 2, c.top + c.ph + 32, x_label, 10, "middle", "#555")
    c.legend([(name, color) for name, color, _, _ in series[:8]])
    c.text(c.left, 16, label, 12, bold=True)
    return c.svg()


def band(label: str, points: Sequence[Dict[str, Any]], width: int = 370, height: int = 170) -> str:
    """A fleet trend: the median over time with the 25th..75th percentile band."""
    pts = [p for p in points if p.get("median") is not None]
    c = Canvas(width, height, label, left=50, bottom=30)
    if not pts:
        return ""
    lo = min(p["p25"] for p in pts)
    hi = max(p["p75"] for p in pts)
    pad = (hi - lo) * 0.2 or abs(hi) * 0.05 or 1.0
    lo, hi = lo - pad, hi + pad
    t0, t1 = points[0]["t"], points[-1]["t"]
    t1 = t1 if t1 > t0 else t0 + 1

    def x(t: float) -> float:
        return c.left + c.pw * (t - t0) / (t1 - t0)

    def y(v: float) -> float:
        return c.top + c.ph - c.ph * (v - lo) / (hi - lo)
    c.y_axis(hi, ticks=2, bottom=lo)
    if len(pts) > 1:
        c.poly([(x(p["t"]), y(p["p75"])) for p in pts] + [(x(p["t"]), y(p["p25"])) for p in reversed(pts)],
               fill="#90caf9", closed=True, opacity=0.6, title="25th-75th percentile")
        c.poly([(x(p["t"]), y(p["median"])) for p in pts], stroke="#1565c0", width=2, title="median")
    for p in pts:
        c.circle(x(p["t"]), y(p["median"]), 2.5, "#1565c0", "%s: median %s (%s-%s), %d nodes" % (
            _time_label(p["t"], t1 - t0), _num(p["median"]), _num(p["p25"]), _num(p["p75"]), p["nodes"]))
    c.text(c.left, c.top + c.ph + 16, _time_label(t0, t1 - t0), 9, "start", "#555")
    c.text(c.left + c.pw, c.top + c.ph + 16, _time_label(t1, t1 - t0), 9, "end", "#555")
    c.frame()
    c.text(8, 16, label, 11, bold=True)
    return c.svg()


def heatmap(label: str, rows: Sequence[str], cols: Sequence[str], cell: Any, cell_size: int = 16,
            legend: Sequence[Tuple[str, str]] = ()) -> str:
    """A matrix: ``cell(row, col)`` -> (color or None, text for the title)."""
    left = 12 + 7 * max((len(r) for r in rows), default=4)
    top = 24 + 6.5 * max((len(cc) for cc in cols), default=4)
    width = int(max(left + cell_size * len(cols) + 20, 16 + 7 * len(label)))
    height = int(top + cell_size * len(rows) + (36 if legend else 14))
    c = Canvas(max(width, 320), height, label, left=int(left), top=int(top), bottom=36 if legend else 14)
    for j, col in enumerate(cols):
        cx = left + j * cell_size + cell_size / 2
        c.text(cx + 3, top - 6, col, 10, "start", "#333", rotate=-60)
    for i, row in enumerate(rows):
        cy = top + i * cell_size
        c.text(left - 6, cy + cell_size * 0.72, row, 10, "end", "#333")
        for j, col in enumerate(cols):
            color, title = cell(row, col)
            c.rect(left + j * cell_size, cy, cell_size - 1, cell_size - 1, color or "#f5f5f5", title)
    if legend:
        c.legend(legend)
    c.text(8, 16, label, 12, bold=True)
    return c.svg()
