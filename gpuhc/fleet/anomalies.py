"""Trends and anomalies over the fleet's metric series; pure functions (fleet/report.py gathers the values).

Rules (stated in the report):

- **Against the fleet**: each node's newest value of a trend metric (its worst GPU's: the hottest, the
  slowest) against the nodes of the same profile: robust z = (value - median) / scale, where scale =
  1.4826 x MAD, but at least FLOOR_REL of the median's size and at least the metric's absolute floor (so
  a fleet of identical readings does not turn a one-degree difference into an anomaly). Flagged when
  |z| > 3 with 5 nodes or more in the profile.
- **Against its own history**: the node's newest value against the median of its earlier time buckets
  in the window (two or more): the same z with the node's own spread; flagged when it moved by |z| > 3 in
  the metric's bad direction. Benchmark figures: below 90% of the node's own best (fleet/benchmarks.drift).
- **Fleet drift**: a profile's median in the newest time bucket worse than in its best earlier bucket by
  10% or more (a decline every node shares hides from the comparison with peers).
- **Corrected-ECC growth**: the growth of each GPU's lifetime corrected ECC count over the window, per
  day; listed from 10 a day.
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence, Tuple

from .benchmarks import median

Z_LIMIT = 3.0
MIN_PEERS = 5
FLOOR_REL = 0.01
DRIFT_RATIO = 0.90
ECC_RATE_LIST = 10.0        # corrected ECC per GPU per day from which a GPU is listed

# metric key (store/series.py) -> (label, direction: +1 higher is better, -1 lower is better, absolute floor
# of the robust scale, how the node's GPUs reduce to one value: "min" or "max")
TREND: Dict[str, Tuple[str, int, float, str]] = {
    "thermal_power.temperature_c": ("GPU temperature, C", -1, 2.0, "max"),
    "thermal_power.power_w": ("GPU power, W", -1, 25.0, "max"),
    "ecc.volatile_corrected": ("corrected ECC since boot", -1, 10.0, "max"),
    "ecc.aggregate_corrected": ("corrected ECC, lifetime", -1, 10.0, "max"),
    "memory_remap.remapped_rows_correctable": ("remapped rows", -1, 1.0, "max"),
    "pcie.replay_counter": ("PCIe replays", -1, 10.0, "max"),
    "nvlink.replay_errors": ("NVLink replay errors", -1, 10.0, "max"),
    "nvlink.crc_flit_errors": ("NVLink CRC errors", -1, 10.0, "max"),
    "nvlink.active_links": ("active NVLink links", +1, 1.0, "min"),
    "pcie.width_current": ("PCIe width", +1, 1.0, "min"),
    "network.link_downed": ("network link down events", -1, 1.0, "max"),
    "gpu_bench.matmul_tflops": ("matmul TFLOP/s (slowest GPU)", +1, 0.0, "min"),
    "gpu_stress.stress_tflops": ("stress TFLOP/s (slowest GPU)", +1, 0.0, "min"),
    "gpu_bench.hbm_gbps": ("HBM GB/s (slowest GPU)", +1, 0.0, "min"),
    "gpu_bench.pcie_gbps": ("PCIe GB/s (slowest GPU)", +1, 0.0, "min"),
    "gpu_bench.p2p_gbps": ("P2P GB/s (slowest GPU)", +1, 0.0, "min"),
    "allreduce_node.busbw_gbps": ("all-reduce busbw GB/s", +1, 0.0, "min"),
}


def reduce(value: Any, how: str) -> Optional[float]:
    """A series value (a number, or a per-GPU list with nulls) as one number: its min or max."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, list):
        xs = [float(v) for v in value if isinstance(v, (int, float)) and not isinstance(v, bool)]
        if xs:
            return min(xs) if how == "min" else max(xs)
    return None


def per_gpu(value: Any, gpus: Sequence[int]) -> Dict[int, float]:
    """A series value as {gpu: value}: a single number stands for every GPU of ``gpus``."""
    if isinstance(value, list):
        return {g: float(v) for g, v in enumerate(value) if isinstance(v, (int, float)) and not isinstance(v, bool)}
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return {g: float(value) for g in gpus}
    return {}


def scale(values: Sequence[float], floor: float, med: Optional[float] = None) -> Tuple[float, float]:
    """(median, robust scale) of ``values``: 1.4826 x MAD, at least FLOOR_REL x |median| and ``floor``."""
    med = median(values) if med is None else med
    mad = median([abs(v - med) for v in values])
    return med, max(1.4826 * mad, FLOOR_REL * abs(med), floor, 1e-9)


def robust_z(value: float, values: Sequence[float], floor: float) -> Optional[float]:
    if len(values) < MIN_PEERS:
        return None
    med, s = scale(values, floor)
    return (value - med) / s


def fleet_outliers(newest: Dict[str, Dict[str, float]], profiles: Dict[str, str]) -> List[Dict[str, Any]]:
    """Each node's newest trend values against its profile's nodes; the ones with |z| > 3.
    ``newest``: node -> {metric: value}; ``profiles``: node -> profile."""
    groups: Dict[Tuple[str, str], Dict[str, float]] = {}
    for node, values in newest.items():
        for metric, value in values.items():
            if metric in TREND:
                groups.setdefault((profiles.get(node) or "?", metric), {})[node] = value
    out: List[Dict[str, Any]] = []
    for (profile, metric), values in sorted(groups.items()):
        if len(values) < MIN_PEERS:
            continue
        label, direction, floor, _ = TREND[metric]
        med, s = scale(list(values.values()), floor)
        for node, value in sorted(values.items()):
            z = (value - med) / s
            if abs(z) > Z_LIMIT:
                out.append({"node": node, "profile": profile, "metric": metric, "label": label,
                            "value": _r(value), "median": _r(med), "z": round(z, 2),
                            "worse": z * direction < 0, "peers": len(values)})
    out.sort(key=lambda d: (not d["worse"], -abs(d["z"]), d["node"]))
    return out


def own_drift(node: str, buckets: Dict[str, List[Optional[float]]]) -> List[Dict[str, Any]]:
    """The node's newest bucket against its earlier buckets (two or more), per trend metric, in the
    metric's bad direction only. ``buckets``: metric -> value per time bucket (None: no data)."""
    out = []
    for metric, series in buckets.items():
        if metric not in TREND:
            continue
        points = [v for v in series if v is not None]
        if len(points) < 3 or min(points) == max(points):       # too few, or nothing moved
            continue
        newest, earlier = points[-1], points[:-1]
        label, direction, floor, _ = TREND[metric]
        if floor == 0.0:            # a benchmark figure: against the node's own best
            best = max(earlier) if direction > 0 else min(earlier)
            if direction > 0 and best > 0 and newest < DRIFT_RATIO * best:
                out.append({"node": node, "metric": metric, "label": label, "value": _r(newest), "baseline": _r(best),
                            "ratio": round(newest / best, 4), "z": None})
            continue
        med, s = scale(earlier, floor)
        z = (newest - med) / s
        if z * direction < -Z_LIMIT:
            out.append({"node": node, "metric": metric, "label": label, "value": _r(newest), "baseline": _r(med),
                        "ratio": round(newest / med, 4) if med else None, "z": round(z, 2)})
    return out


def fleet_trends(values: Dict[Tuple[str, str], List[List[float]]], edges: Sequence[float]) -> List[Dict[str, Any]]:
    """Per profile and metric, the fleet's median and spread (25th..75th percentile) in each time bucket.
    ``values``: (profile, metric) -> per bucket, the nodes' values."""
    out = []
    for (profile, metric), per_bucket in sorted(values.items()):
        points = []
        for edge, xs in zip(edges, per_bucket):
            if not xs:
                points.append({"t": edge, "median": None, "p25": None, "p75": None, "nodes": 0})
                continue
            ys = sorted(xs)
            points.append({"t": edge, "median": _r(median(ys)), "p25": _r(_quantile(ys, 0.25)),
                           "p75": _r(_quantile(ys, 0.75)), "nodes": len(ys)})
        label, direction, _, _ = TREND[metric]
        out.append({"profile": profile, "metric": metric, "label": label, "direction": direction,
                    "points": points, "drift": _fleet_drift(points, direction)})
    return out


def _fleet_drift(points: List[Dict[str, Any]], direction: int) -> Optional[Dict[str, Any]]:
    meds = [(p["t"], p["median"]) for p in points if p["median"] is not None]
    if len(meds) < 3:
        return None
    newest = meds[-1][1]
    earlier = [m for _, m in meds[:-1]]
    best = max(earlier) if direction > 0 else min(earlier)
    if direction > 0 and best > 0 and newest <= DRIFT_RATIO * best:
        return {"newest": newest, "best": best, "ratio": round(newest / best, 4)}
    if direction < 0 and best > 0 and newest * DRIFT_RATIO >= best:
        return {"newest": newest, "best": best, "ratio": round(newest / best, 4)}
    return None


def _quantile(sorted_xs: Sequence[float], q: float) -> float:
    if len(sorted_xs) == 1:
        return sorted_xs[0]
    pos = q * (len(sorted_xs) - 1)
    lo = int(math.floor(pos))
    hi = min(lo + 1, len(sorted_xs) - 1)
    return sorted_xs[lo] + (sorted_xs[hi] - sorted_xs[lo]) * (pos - lo)


def ecc_growth(first: Dict[int, float], last: Dict[int, float], seconds: float) -> Dict[int, float]:
    """GPU -> corrected ECC errors per day between two readings of a lifetime counter (a counter that went
    down, a GPU swapped or the count cleared, grows from 0)."""
    if seconds <= 0:
        return {}
    out = {}
    for g, v in last.items():
        before = first.get(g, v)
        grown = v - before if v >= before else v
        out[g] = grown * 86400.0 / seconds
    return out


def _r(x: Optional[float]) -> Optional[float]:
    if x is None:
        return None
    return float("%.6g" % x)
