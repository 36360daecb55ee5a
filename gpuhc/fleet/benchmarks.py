"""Benchmark figures across nodes: a node's figures from its deep-check report, one benchmark job's
nodes side by side (sbatch/benchmark.sbatch's closing table), and the fleet's stragglers (`gpuhc
stragglers`): each node against the median of the nodes of its profile, and against its own best.

A node's figure is its slowest GPU's (a synchronous job runs at the pace of its slowest GPU); the
node's all-reduce bus bandwidth is one figure. Pure functions over reports; the command-line entry
points read the store and print."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

from ..model import Report

# metric -> (check that measures it, higher is better, unit)
METRICS: Dict[str, Tuple[str, str]] = {
    "matmul_tflops": ("gpu_bench", "TFLOP/s"),
    "stress_tflops": ("gpu_stress", "TFLOP/s"),
    "hbm_gbps": ("gpu_bench", "GB/s"),
    "pcie_gbps": ("gpu_bench", "GB/s"),
    "p2p_gbps": ("gpu_bench", "GB/s"),
    "busbw_gbps": ("allreduce_node", "GB/s"),
}
RATIO = 0.90         # flag below 90% of the peers' median (huggingface gpu-fryer, nccl-tests' 90%)
Z = -3.0             # or a robust z-score below -3 (median and MAD, 1.4826 * MAD ~ sigma)


def node_figures(report: Report) -> Dict[str, float]:
    """{metric: value} of one report: the slowest GPU's figure per metric; the node's busbw."""
    out: Dict[str, float] = {}
    for f in report.findings:
        for metric, (check, _) in METRICS.items():
            if f.check == check and metric in f.metrics:
                value = float(f.metrics[metric])
                out[metric] = min(out.get(metric, value), value)
    return out


def median(values: Sequence[float]) -> float:
    xs = sorted(values)
    n = len(xs)
    if not n:
        return float("nan")
    return xs[n // 2] if n % 2 else (xs[n // 2 - 1] + xs[n // 2]) / 2.0


def robust_z(value: float, values: Sequence[float]) -> Optional[float]:
    """(value - median) / (1.4826 * MAD); None where the spread is zero or too few peers (< 5)."""
    if len(values) < 5:
        return None
    med = median(values)
    mad = median([abs(v - med) for v in values])
    if mad <= 0:
        return None
    return (value - med) / (1.4826 * mad)


@dataclass
class Straggler:
    node: str
    metric: str
    value: float
    median: float
    ratio: float
    z: Optional[float]
    group: str                          # the profile compared within, or the job
    peers: int
    why: List[str] = field(default_factory=list)

    def to_dict(self) -> Dict[str, Any]:
        return {"node": self.node, "metric": self.metric, "value": round(self.value, 3), "median": round(self.median, 3),
                "ratio": round(self.ratio, 4), "z": None if self.z is None else round(self.z, 2), "group": self.group,
                "peers": self.peers, "why": list(self.why)}


def compare(figures: Dict[str, Dict[str, float]], group: str, metrics: Iterable[str],
            ratio: float = RATIO, z: float = Z) -> List[Straggler]:
    """The nodes of one group below ``ratio`` of the group's median, or with a robust z-score below
    ``z``, per metric. Needs two nodes or more with the metric."""
    out = []
    for metric in metrics:
        values = {n: f[metric] for n, f in figures.items() if metric in f and not math.isnan(f[metric])}
        if len(values) < 2:
            continue
        med = median(list(values.values()))
        # robust_z's median and MAD, once per metric (per node, 10,000 nodes took minutes)
        mad = median([abs(v - med) for v in values.values()]) if len(values) >= 5 else 0.0
        for node, value in sorted(values.items()):
            r = value / med if med > 0 else 1.0
            score = (value - med) / (1.4826 * mad) if mad > 0 else None
            why = []
            if r < ratio:
                why.append("%.0f%% of the median" % (100 * r))
            if score is not None and score < z:
                why.append("z %.1f" % score)
            if why:
                out.append(Straggler(node, metric, value, med, r, score, group, len(values), why))
    return out


def drift(history: Sequence[Dict[str, float]], metrics: Iterable[str], ratio: float = RATIO) -> List[Tuple[str, float, float]]:
    """(metric, newest, own best) where a node's newest figure is below ``ratio`` of its own best
    earlier figure: a slow decline the whole fleet shares hides from the peer comparison. History
    newest first."""
    out: List[Tuple[str, float, float]] = []
    if len(history) < 2:
        return out
    newest = history[0]
    for metric in metrics:
        if metric not in newest:
            continue
        best = max((h[metric] for h in history[1:] if metric in h), default=None)
        if best and newest[metric] < best * ratio:
            out.append((metric, newest[metric], best))
    return out


def job_table(reports: Dict[str, Report], ratio: float = RATIO) -> Dict[str, Any]:
    """One benchmark job's nodes: each node's figures, the job's median per metric, and the nodes
    below it by more than the tolerance (sbatch/benchmark.sbatch's closing table and its record)."""
    figures = {node: node_figures(r) for node, r in reports.items()}
    metrics = [m for m in METRICS if any(m in f for f in figures.values())]
    medians = {m: median([f[m] for f in figures.values() if m in f]) for m in metrics}
    slow = compare(figures, "job", metrics, ratio=ratio, z=float("-inf"))
    return {"nodes": {n: {m: round(v, 3) for m, v in f.items()} for n, f in sorted(figures.items())},
            "overall": {n: reports[n].overall.value for n in sorted(reports)},
            "median": {m: round(v, 3) for m, v in medians.items()}, "metrics": metrics,
            "slow": [s.to_dict() for s in slow]}


def job_rows(table: Dict[str, Any]) -> Tuple[List[List[str]], List[str]]:
    """The closing table's rows (each node, then the median) and headers."""
    metrics = table["metrics"]
    flagged = {(s["node"], s["metric"]) for s in table["slow"]}
    rows = []
    for node, figs in table["nodes"].items():
        cells = []
        for m in metrics:
            v = figs.get(m)
            cells.append("-" if v is None else ("%.4g" % v) + (" *" if (node, m) in flagged else ""))
        rows.append([node] + cells + [table["overall"].get(node, "")])
    rows.append(["median"] + ["%.4g" % table["median"][m] for m in metrics] + [""])
    return rows, ["NODE"] + [m.upper() for m in metrics] + ["RESULT"]


# -- reading the store ------------------------------------------------------------------------------

def bench_history(store: Any, node: str, job: Optional[str] = None) -> List[Report]:
    """The node's reports that carry benchmark figures (newest first), of job ``job`` where given."""
    out = []
    for report in store.history(node):
        if job is not None and str(report.job_id or "") != str(job):
            continue
        if node_figures(report):
            out.append(report)
    return out


def stragglers(store: Any, nodes: Sequence[str], metric: Optional[str] = None,
               progress: Any = None) -> Dict[str, Any]:
    """Each node's newest figures against the median of the nodes of the same profile, and against
    the node's own best history. Nothing drains from here: a straggler is what `gpuhc quarantine`
    is for."""
    metrics = [metric] if metric else list(METRICS)
    by_profile: Dict[str, Dict[str, Dict[str, float]]] = {}
    drifting: List[Dict[str, Any]] = []
    for n, node in enumerate(nodes):
        if progress is not None and n % 100 == 0 and n:
            progress("read %d of %d nodes" % (n, len(nodes)))
        reports = bench_history(store, node)
        if not reports:
            continue
        figures = [node_figures(r) for r in reports]
        by_profile.setdefault(reports[0].profile or "?", {})[node] = figures[0]
        for m, newest, best in drift(figures, metrics):
            drifting.append({"node": node, "metric": m, "value": round(newest, 3), "best": round(best, 3),
                             "ratio": round(newest / best, 4)})
    found: List[Straggler] = []
    for profile, node_figs in sorted(by_profile.items()):
        found.extend(compare(node_figs, profile, metrics))
    return {"stragglers": [s.to_dict() for s in found], "drift": drifting,
            "groups": {p: len(f) for p, f in sorted(by_profile.items())}, "metrics": metrics}


def stragglers_rows(result: Dict[str, Any]) -> List[List[str]]:
    rows = [[s["node"], s["group"], s["metric"], "%.4g" % s["value"], "%.4g" % s["median"],
             "%.0f%%" % (100 * s["ratio"]), "-" if s["z"] is None else "%.1f" % s["z"], ", ".join(s["why"])]
            for s in result["stragglers"]]
    rows += [[d["node"], "own history", d["metric"], "%.4g" % d["value"], "best %.4g" % d["best"],
              "%.0f%%" % (100 * d["ratio"]), "-", "below its own best"] for d in result["drift"]]
    return rows


# -- the command line's entry points -----------------------------------------------------------------

def _progress(line: str) -> None:
    import sys

    print("gpuhc: %s" % line, file=sys.stderr, flush=True)


def collect_job(cfg: Dict[str, Any], nodes: Sequence[str], job: Optional[str], as_json: bool) -> Tuple[str, int]:
    """`gpuhc bench --collect`: (text, exit code 0, or 1 when a node is slow or unhealthy, 3 when a
    node has no figures)."""
    import json

    from ..output import table
    from ..store import Store

    store = Store.from_config(cfg)
    reports, missing = {}, []
    for node in nodes:
        found = bench_history(store, node, job)
        if found:
            reports[node] = found[0]
        else:
            missing.append(node)
    result = job_table(reports)
    result.update({"job": job, "missing": missing})
    bad = result["slow"] or any(v not in ("PASS", "MONITOR") for v in result["overall"].values())
    code = 3 if missing and not reports else (1 if bad else 0)
    if reports:
        result["recorded"] = _record_aggregate(cfg, result, job, passed=not bad and not missing)
    if as_json:
        return json.dumps(result, indent=2), code
    rows, headers = job_rows(result) if reports else ([], [])
    lines = [table(rows, headers)] if rows else []
    for s in result["slow"]:
        lines.append("slow: %s %s %.4g (%.0f%% of the job's median %.4g)" % (s["node"], s["metric"], s["value"],
                                                                            100 * s["ratio"], s["median"]))
    for node in missing:
        lines.append("no figures: %s (no bench result%s in the store)" % (node, " of job %s" % job if job else ""))
    return "\n".join(lines) or "no figures", code


def _record_aggregate(cfg: Dict[str, Any], result: Dict[str, Any], job: Optional[str], passed: bool) -> bool:
    """The job's aggregate into the store's benchmark history (store/pairs.py BenchmarkHistory);
    a store that refuses is a warning on stderr, not a failure of the job's verdict."""
    import time

    from ..store import BenchmarkHistory, StoreError

    record = {"nodes": sorted(result["nodes"]), "passed": passed, "time": time.time(), "job_id": job,
              "busbw_gbps": result["median"].get("busbw_gbps"), "median": result["median"],
              "figures": result["nodes"], "overall": result["overall"], "slow": result["slow"],
              "missing": result["missing"], "purpose": "benchmark"}
    try:
        BenchmarkHistory.from_config(cfg).append(record)
        return True
    except StoreError as exc:
        _progress("warning: benchmark aggregate not recorded: %s" % exc)
        return False


def stragglers_text(cfg: Dict[str, Any], partitions: Optional[str], nodelist: Optional[str], metric: Optional[str],
                    as_json: bool) -> Tuple[str, int]:
    """`gpuhc stragglers`: (text, exit code 0 none, 1 some)."""
    import json

    from ..hostlist import expand
    from ..output import table
    from ..store import Store
    from .slurm_view import slurm_view

    store = Store.from_config(cfg)
    nodes = expand(nodelist, "--nodes") if nodelist else store.nodes()
    if partitions:
        wanted = {p for p in partitions.split(",") if p}
        view = slurm_view(cfg, nodes) or {}
        nodes = [n for n in nodes if wanted & set((view.get(n) or {}).get("partitions") or [])]
    result = stragglers(store, nodes, metric, progress=_progress if len(nodes) > 200 else None)
    code = 1 if result["stragglers"] or result["drift"] else 0
    if as_json:
        return json.dumps(result, indent=2), code
    rows = stragglers_rows(result)
    if not rows:
        return "no stragglers among %d nodes with figures (%s)" % (
            sum(result["groups"].values()), ", ".join("%s: %d" % kv for kv in result["groups"].items()) or "none"), 0
    return table(rows, ["NODE", "COMPARED WITH", "METRIC", "VALUE", "MEDIAN", "RATIO", "Z", "WHY"]), code
