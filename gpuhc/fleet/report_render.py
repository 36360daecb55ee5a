"""`gpuhc report` as text, markdown or JSON; the tables here are the HTML report's too (report_html.py adds
the plots). Every cell goes through text.clean (one line, bounded), whatever the store held."""
from __future__ import annotations

import json
import time
from typing import Any, Dict, List, Optional, Tuple

from ..text import clean
from . import scoring as S

Table = Tuple[str, List[str], List[List[Any]]]            # (caption, headers, rows)
Section = Tuple[str, str, List[Table], List[str]]          # (id, title, tables, notes)

MAX_ROWS = 50              # rows of a long table in text and markdown (the JSON has every one)
DIM_SHORT = {"memory": "MEM", "thermal": "THERM", "interconnect": "LINK", "compute": "COMP", "reliability": "REL"}


def duration(seconds: Optional[float]) -> str:
    if seconds is None:
        return "-"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return "%.1f%s" % (seconds / size, unit)
    return "%ds" % max(0, int(seconds))


def stamp(ts: Optional[float]) -> str:
    return "-" if ts is None else time.strftime("%Y-%m-%d %H:%M", time.gmtime(ts))


def _score(v: Optional[int]) -> str:
    return "-" if v is None else str(v)


def _cap(rows: List[List[Any]], most: Optional[int]) -> Tuple[List[List[Any]], List[str]]:
    if most is None or len(rows) <= most:
        return rows, []
    return rows[:most], ["(%d more rows in --format json)" % (len(rows) - most)]


def sections(rep: Dict[str, Any], most: Optional[int] = MAX_ROWS) -> List[Section]:
    """The report's sections as tables, in reading order."""
    out: List[Section] = []
    s = rep["summary"]
    health_rows = [[h, n] for h, n in s["health"].items()]
    tier_rows = [[t or "(no tier in reason)", n] for t, n in s["drained_by_tier"].items()]
    window_rows = [["drains", s["drains"]], ["incidents (a node in service drained)", s["incidents"]],
                   ["resumes", s["resumes"]], ["drains held back by the breaker", s["would_drain"]]]
    window_rows += [["quarantine verdict %s" % v, n] for v, n in s["verdicts"].items()]
    notes = []
    if rep.get("without_series"):
        notes.append("%d node(s) have no metric series yet (written from this version on; the next compaction of "
                     "a node builds it from its history): %s" % (len(rep["without_series"]),
                                                                  ", ".join(rep["without_series"][:10])))
    out.append(("summary", "Summary", [("Nodes by health now", ["HEALTH", "NODES"], health_rows),
                                       ("Drained by gpuhc, by tier", ["TIER", "NODES"], tier_rows),
                                       ("In the window", ["WHAT", "COUNT"], window_rows)], notes))
    need_rows = [[what.upper(), x["node"], x["why"], x["evidence"]] for what in ("replace", "reboot", "reset")
                 for x in s["needs_person"][what]]
    need_rows, more = _cap(need_rows, most)
    out.append(("needs", "Needs a person", [("Replace, reboot, reset", ["ACTION", "NODE", "WHY", "EVIDENCE"],
                                             need_rows)], more or ([] if need_rows else ["nothing"])))
    scored = rep["scores"]["nodes"]
    low = [r for r in scored if r["overall"] is not None and r["overall"] < 100]
    score_rows = [[r["node"], r["profile"], _score(r["overall"])] + [_score(r[d]) for d in S.DIMENSIONS]
                  + ["; ".join(x for d in S.DIMENSIONS for x in r["reasons"].get(d, [])[:2])] for r in low]
    score_rows, more = _cap(score_rows, most)
    dist = rep["scores"]["distribution"]
    dist_rows = [["%d-%d" % (10 * b, 10 * b + 9 if b < 9 else 100)] + [dist[d][b] for d in dist] for b in range(10)]
    out.append(("scores", "Scores (lowest first)",
                [("Nodes below 100", ["NODE", "PROFILE", "OVERALL"] + [DIM_SHORT[d] for d in S.DIMENSIONS] + ["WHY"],
                  score_rows),
                 ("Score distribution (nodes per band)", ["SCORE"] + [d.upper() for d in dist], dist_rows)],
                more + ["%d nodes scored; every other node scores 100." % len(scored)]))
    an = rep["anomalies"]
    tables: List[Table] = []
    fleet_rows = [[a["node"], a["profile"], a["label"], a["value"], a["median"], a["z"],
                   "worse" if a["worse"] else "better"] for a in an["fleet"]]
    tables.append(("Against the same-profile fleet (robust z, |z| > 3)",
                   ["NODE", "PROFILE", "METRIC", "VALUE", "MEDIAN", "Z", ""], _cap(fleet_rows, most)[0]))
    strag_rows = [[x["node"], x["group"], x["metric"], x["value"], x["median"], "%.0f%%" % (100 * x["ratio"]),
                   "-" if x["z"] is None else x["z"], ", ".join(x["why"])] for x in an["stragglers"]]
    tables.append(("Benchmark stragglers", ["NODE", "PROFILE", "METRIC", "VALUE", "MEDIAN", "RATIO", "Z", "WHY"],
                   _cap(strag_rows, most)[0]))
    own_rows = [[x["node"], x["label"], x["value"], x["baseline"], "-" if x["ratio"] is None else x["ratio"],
                 "-" if x["z"] is None else x["z"]] for x in an["own_history"]]
    tables.append(("Against its own history", ["NODE", "METRIC", "NEWEST", "BEFORE", "RATIO", "Z"],
                   _cap(own_rows, most)[0]))
    drift_rows = [[x["profile"], x["label"], x["newest"], x["best"], x["ratio"]] for x in an["fleet_drift"]]
    tables.append(("Fleet drift (a profile's newest median against its best)",
                   ["PROFILE", "METRIC", "NEWEST", "BEST", "RATIO"], drift_rows))
    ecc_rows = [[x["node"], "GPU%d" % x["gpu"], x["per_day"], "-" if x["grown"] is None else x["grown"]]
                for x in an["ecc_growth"]]
    tables.append(("Corrected-ECC growth (per GPU per day)", ["NODE", "GPU", "PER DAY", "GROWN"],
                   _cap(ecc_rows, most)[0]))
    xid_rows = [[x["node"], x["xid"], x["tier"], x["records"], x["events"],
                 ",".join("GPU%d" % g if g >= 0 else "-" for g in x["gpus"])] for x in an["recurring_xids"]]
    tables.append(("Recurring Xids", ["NODE", "XID", "TIER", "RECORDS", "EVENTS", "GPUS"], _cap(xid_rows, most)[0]))
    out.append(("anomalies", "Trends and anomalies", tables, []))
    rel = rep["reliability"]
    f = rel["fleet"]
    fleet_rows = [["incidents", f["incidents"]], ["nodes with incidents", f["nodes_with_incidents"]],
                  ["mean time between incidents (fleet)", duration(f["mtbi_s"])],
                  ["time to return to service, mean", duration(f["ttr_mean_s"])],
                  ["time to return to service, median", duration(f["ttr_median_s"])],
                  ["incidents returned to service", f["returned"]],
                  ["node time drained", duration(f["drained_node_s"])],
                  ["share of node time drained", "-" if f["drained_share"] is None else "%.2f%%" % (100 * f["drained_share"])]]
    lemon_rows = [[x["node"], x["incidents"], ", ".join(duration(i) for i in x["intervals_s"]) or "-",
                   duration(x["mtbi_s"]), duration(x["drained_s"]), ",".join(x["tiers"]), x["last_evidence"]]
                  for x in rel["lemons"]]
    drained_rows = [[x["node"], x["incidents"], duration(x["mtbi_s"]), duration(x["ttr_mean_s"]),
                     duration(x["drained_s"]), "yes" if x["drained_now"] else ""] for x in rel["nodes"]]
    out.append(("reliability", "Lemons and reliability",
                [("Fleet", ["FIGURE", "VALUE"], fleet_rows),
                 ("Lemons (%d incidents or more)" % rel["lemon_incidents"],
                  ["NODE", "INCIDENTS", "INTERVALS", "MTBI", "DRAINED", "TIERS", "LAST EVIDENCE"], lemon_rows),
                 ("Most time drained", ["NODE", "INCIDENTS", "MTBI", "MEAN TTR", "DRAINED", "NOW"],
                  _cap(drained_rows, min(most or 20, 20))[0])], []))
    hot = rep["health_over_time"]
    step = max(1, len(hot["edges"]) // 12)
    idx = list(range(len(hot["edges"]) - 1, -1, -step))[::-1]
    hot_rows = [[stamp(hot["edges"][i])] + [hot["counts"][st][i] for st in hot["states"]] for i in idx]
    trend_tables: List[Table] = [("Health over time (nodes per state)", ["TIME"] + list(hot["states"]), hot_rows)]
    by_profile: Dict[str, List[Dict[str, Any]]] = {}
    for t in rep["trends"]:
        if any(p["median"] is not None for p in t["points"]):
            by_profile.setdefault(t["profile"], []).append(t)
    for profile, trends in by_profile.items():
        used = [n for n in range(len(trends[0]["points"])) if any(t["points"][n]["nodes"] for t in trends)]
        heads = ["METRIC"] + [stamp(trends[0]["points"][n]["t"])[5:] for n in used]
        rows = [[t["label"] + (" (fleet drift)" if t["drift"] else "")] + [_band(t["points"][n]) for n in used]
                for t in trends]
        trend_tables.append(("Profile %s: fleet median (25th-75th percentile) per bucket ending" % profile, heads, rows))
    out.append(("trends", "Fleet over time", trend_tables, []))
    bench_tables: List[Table] = []
    strag = {(x["node"], x["metric"]) for x in an["stragglers"]}
    for profile, metrics in rep["benchmarks"].items():
        rows = []
        for metric, m in metrics.items():
            slow = [n for n in m["values"] if (n, metric) in strag]
            rows.append([metric, len(m["values"]), m["median"], "-" if m["expected"] is None else m["expected"],
                         min(m["values"].values()), ", ".join(slow) or "-"])
        bench_tables.append(("Profile %s" % profile, ["METRIC", "NODES", "MEDIAN", "EXPECTED", "MIN", "STRAGGLERS"], rows))
    ar = rep["allreduce"]
    sizes = sorted({int(k) for p in ar["single_node"].values() for k in p["median"]}
                   | {int(k) for k in ar["multi_node"]["busbw_by_size"]})
    if sizes:
        heads = ["SIZE"] + ["%s (1 node)" % p for p in ar["single_node"]] + ["multi-node"]
        rows = [[size_text(s)] + [ar["single_node"][p]["median"].get(str(s), "-") for p in ar["single_node"]]
                + [ar["multi_node"]["busbw_by_size"].get(str(s), "-")] for s in sizes]
        bench_tables.append(("All-reduce bus bandwidth by size (GB/s, median)", heads, rows))
    out.append(("benchmarks", "Benchmarks and all-reduce", bench_tables, [] if bench_tables else ["no benchmark figures in the window"]))
    pm = rep["pairs"]["matrix"]
    pair_rows = [[a] + ["" if a == b or not c[0] else "%d/%d" % (c[1], c[0]) for b, c in zip(pm["nodes"], row)]
                 for a, row in zip(pm["nodes"], pm["cells"])]
    out.append(("pairs", "Multi-node all-reduce pairs (failed/runs)",
                [("Pair history", ["NODE"] + pm["nodes"], pair_rows)] if pair_rows else [],
                ["%d runs, %d failed, in the window" % (rep["pairs"]["runs"], rep["pairs"]["failed"])]))
    ch = rep["checks"]
    shown = ch["rows"][:most] if most else ch["rows"]
    cols = [c for c in ch["columns"] if any(c in r["cells"] for r in shown)]
    check_rows = [[r["node"], _score(r["score"])] + [r["cells"].get(c, "") for c in cols] for r in shown]
    out.append(("checks", "Node x check (worst finding in the window)",
                [("Nodes with findings", ["NODE", "SCORE"] + cols, check_rows)] if check_rows else [],
                _cap(ch["rows"], most)[1] or ([] if check_rows else ["every check passed on every node"])))
    how = [[d, r, t] for d, r, t in ((x["dimension"], x["rule"], x["text"]) for x in rep["scores"]["how"]["rules"])]
    out.append(("how", "How the scores are made", [("Rules", ["DIMENSION", "RULE", "POINTS"], how)],
                [rep["scores"]["how"]["overall"]] + list(rep["how"])))
    return out


def _band(p: Dict[str, Any]) -> str:
    if p["median"] is None:
        return "-"
    if p["p25"] == p["p75"]:
        return "%.4g" % p["median"]
    return "%.4g (%.4g-%.4g)" % (p["median"], p["p25"], p["p75"])


def size_text(n: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size and n % size == 0:
            return "%d %s" % (n // size, unit)
    return "%d B" % n


def header(rep: Dict[str, Any]) -> str:
    w = rep["window"]
    return "gpuhc report: %d nodes, %s to %s (UTC), store %s%s" % (
        rep["summary"]["nodes"], w["since"].replace("T", " ")[:16], w["until"].replace("T", " ")[:16], rep["store"],
        "" if rep["slurm"] else " (Slurm not asked: health from the store alone)")


def _md(cell: Any) -> str:
    return clean(cell).replace("|", "\\|") if isinstance(cell, str) else cell


def text(rep: Dict[str, Any], markdown: bool = False) -> str:
    from tabulate import tabulate

    lines = [("# " if markdown else "") + header(rep), ""]
    for _, title, tables, notes in sections(rep):
        lines += ["## " + title if markdown else "== %s ==" % title, ""]
        for caption, heads, rows in tables:
            if not rows:
                continue
            lines.append(("**%s**" % caption) if markdown else caption + ":")
            if markdown:
                lines.append("")
            cells = [[_md(c) for c in row] for row in rows] if markdown else \
                [[clean(c) if isinstance(c, str) else c for c in row] for row in rows]
            lines.append(tabulate(cells, headers=[clean(h) for h in heads], tablefmt="github" if markdown else "simple",
                                  disable_numparse=True))
            lines.append("")
        for note in notes:
            lines.append(clean(note))
        if notes:
            lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def as_json(rep: Dict[str, Any]) -> str:
    return json.dumps(rep, indent=1, sort_keys=False)
