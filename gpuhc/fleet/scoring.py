"""Health scores, 0 (replace it) to 100 (nothing to say), of a node and of each of its GPUs over the
report's window, on five dimensions; pure functions of ``NodeFacts`` (gathered by fleet/report.py from
the store's metric series). Every rule is a row of RULES: the report prints them under "How the
scores are made", and each score carries the rules that took points off it.

A dimension starts at 100; each rule that applies takes its points off (per GPU for the per-GPU rules:
the node takes its worst GPU's, plus its node-wide rules); then the worst severity gpuhc's own checks of
that dimension found in the window caps it (ISOLATE 10, REBOOT 30, RESET 50, MONITOR 80); the result is
clamped to 0..100. A dimension without data in the window is none (left out of the overall).

Overall: 0.6 x the lowest dimension + 0.4 x the mean of the dimensions (one bad dimension is enough to
make a node bad; several make it worse).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

DIMENSIONS = ("memory", "thermal", "interconnect", "compute", "reliability")
CAPS = {4: 10, 3: 30, 2: 50, 1: 80}         # worst severity rank found by the dimension's checks -> cap
CHECKS = {                                   # the checks whose worst finding caps each dimension
    "memory": ("ecc", "memory_remap"),
    "thermal": ("thermal_power", "clocks"),
    "interconnect": ("nvlink", "pcie", "network", "fabric", "allreduce_node"),
    "compute": ("gpu_bench", "gpu_stress", "dcgm"),
    "reliability": (),                         # scored from Xids and drains themselves (below)
}

# (dimension, rule id, what it says) -- the thresholds below are the numbers these sentences name
RULES: List[Tuple[str, str, str]] = [
    ("memory", "ecc_uncorrected", "uncorrectable ECC errors grew in the window on a GPU: -60"),
    ("memory", "ecc_rate", "corrected ECC growth per GPU per day: >= 1000: -60; >= 100: -30; >= 10: -10"),
    ("memory", "remap_failed", "a GPU with a bank out of spare rows (remap failure): -80"),
    ("memory", "remapped_uncorrectable", "rows remapped for uncorrectable errors: -10 per row, at most -40"),
    ("memory", "remapped_correctable", "rows remapped for correctable errors: -5 per row, at most -20"),
    ("memory", "retired_pages", "retired pages (older GPUs): double-bit -30; single-bit >= 10: -10"),
    ("thermal", "temperature", "hottest reading of a GPU: >= 87 C: -40; >= 80 C: -20 (or margin to slowdown "
                               "< 5 C: -40; < 10 C: -20, where the GPU reports it)"),
    ("thermal", "throttling", "share of the node's records with thermal or clock findings (throttling): "
                              ">= 50%: -40; >= 10%: -20; any: -10"),
    ("thermal", "power_limit", "a GPU's power limit below 90% of its profile's usual limit: -20"),
    ("interconnect", "nvlink_errors", "NVLink replay/recovery/CRC errors grew on a GPU: >= 100: -30; any: -10"),
    ("interconnect", "nvlink_links", "a GPU with fewer active NVLink links than its profile's usual: -40"),
    ("interconnect", "pcie_width", "a GPU's PCIe link narrower than its profile's usual: -40"),
    ("interconnect", "pcie_replays", "PCIe replays grew on a GPU: >= 100: -20; any: -5"),
    ("interconnect", "network", "a network port went down in the window: -20; fewer active IB ports than the "
                                "profile's usual: -30"),
    ("interconnect", "busbw", "node all-reduce bus bandwidth below 90% of its profile's median: -30"),
    ("interconnect", "pairs", "multi-node all-reduce runs that failed with the node, counted when they failed "
                              "with 2 or more partners that passed without it (blame's rule): half or more of its "
                              "runs: -40; any: -10"),
    ("compute", "straggler", "a benchmark figure below 90% of the profile's median or with robust z < -3: -40 "
                             "for the first such figure, -10 for each further one"),
    ("compute", "profile", "a benchmark figure below 80% of what the profile expects: -30"),
    ("compute", "drift", "a benchmark figure below 90% of the node's own best in the window: -20"),
    ("compute", "miscompute", "a GPU computed wrong results under stress: -100"),
    ("compute", "gpu_slow", "a GPU below 90% of the node's median GPU on a benchmark: -30"),
    ("reliability", "xids", "new Xid events in the window, each: ISOLATE -50, REBOOT -30, RESET -20, MONITOR -5"),
    ("reliability", "drains", "each time gpuhc drained the node in the window: -15"),
    ("reliability", "mtbi", "mean time between incidents under 1 day: -20; under 7 days: -10"),
    ("reliability", "errors", "a check that could not run in more than half the node's records: -10"),
]
RULE_TEXT = {(d, r): t for d, r, t in RULES}
HOW_OVERALL = ("overall = 0.6 x the lowest dimension + 0.4 x the mean of the dimensions with data; each dimension "
               "starts at 100, loses the points of the rules below (per-GPU rules: the worst GPU's), is capped by "
               "the worst severity its checks found in the window (ISOLATE 10, REBOOT 30, RESET 50, MONITOR 80) "
               "and clamped to 0..100")

XID_POINTS = {"ISOLATE": 50, "REBOOT": 30, "RESET": 20, "MONITOR": 5}
DAY = 86400.0

PerGpu = Dict[int, float]


@dataclass
class NodeFacts:
    """What the rules look at, for one node over the window (gpu index -> value where per GPU)."""
    node: str
    gpus: List[int] = field(default_factory=list)
    has_memory: bool = False
    has_thermal: bool = False
    has_interconnect: bool = False
    has_compute: bool = False
    # memory
    ecc_corrected_per_day: PerGpu = field(default_factory=dict)
    ecc_uncorrected_growth: PerGpu = field(default_factory=dict)
    remap_failed: PerGpu = field(default_factory=dict)
    remapped_uncorrectable: PerGpu = field(default_factory=dict)
    remapped_correctable: PerGpu = field(default_factory=dict)
    retired_dbe: PerGpu = field(default_factory=dict)
    retired_sbe: PerGpu = field(default_factory=dict)
    # thermal
    temperature_max: PerGpu = field(default_factory=dict)
    temperature_margin_min: PerGpu = field(default_factory=dict)
    throttled_share: float = 0.0
    power_limit_ratio: PerGpu = field(default_factory=dict)
    # interconnect
    nvlink_error_growth: PerGpu = field(default_factory=dict)
    nvlink_links_missing: PerGpu = field(default_factory=dict)
    pcie_width_missing: PerGpu = field(default_factory=dict)
    pcie_replay_growth: PerGpu = field(default_factory=dict)
    link_downed_growth: float = 0.0
    ib_ports_missing: float = 0.0
    busbw_ratio: Optional[float] = None
    pair_runs: int = 0
    pair_failures: int = 0
    # compute
    stragglers: List[str] = field(default_factory=list)        # metrics flagged against the profile's peers
    below_profile: List[str] = field(default_factory=list)     # metrics below 80% of the profile's expectation
    drift: List[str] = field(default_factory=list)             # metrics below 90% of the node's own best
    miscompute: PerGpu = field(default_factory=dict)
    gpu_slow: PerGpu = field(default_factory=dict)              # gpu -> its ratio to the node's median GPU (< 0.9)
    # reliability
    xid_tiers: Dict[str, int] = field(default_factory=dict)    # tier -> new events
    xid_gpu_tiers: Dict[int, Dict[str, int]] = field(default_factory=dict)
    drains: int = 0
    mtbi_s: Optional[float] = None
    error_share: Dict[str, float] = field(default_factory=dict)   # check -> share of records it could not run
    records: int = 0
    # the worst severity rank each check found in the window (caps)
    worst: Dict[str, int] = field(default_factory=dict)


@dataclass
class Score:
    value: Optional[int]                                   # None: no data for this dimension
    reasons: List[str] = field(default_factory=list)       # "rule: detail (-N)"
    gpus: Dict[int, int] = field(default_factory=dict)

    def to_dict(self) -> Dict[str, Any]:
        return {"score": self.value, "reasons": list(self.reasons),
                "gpus": {str(g): v for g, v in sorted(self.gpus.items())}}


class _Tally:
    """The points a dimension loses: per GPU (only GPUs that lose some are kept) and node-wide."""

    def __init__(self) -> None:
        self.gpu: Dict[int, int] = {}
        self.gpu_reasons: Dict[int, List[str]] = {}
        self.node = 0
        self.reasons: List[str] = []

    def on_gpu(self, gpu: int, points: int, rule: str, detail: str) -> None:
        self.gpu[gpu] = self.gpu.get(gpu, 0) + points
        self.gpu_reasons.setdefault(gpu, []).append("%s: GPU%d %s (-%d)" % (rule, gpu, detail, points))

    def on_node(self, points: int, rule: str, detail: str) -> None:
        self.node += points
        self.reasons.append("%s: %s (-%d)" % (rule, detail, points))

    def score(self, cap_checks: Tuple[str, ...], worst: Dict[str, int], has_data: bool) -> Score:
        if not has_data:
            return Score(None)
        worst_gpu = max(self.gpu, key=lambda g: (self.gpu[g], -g)) if self.gpu else None
        points = self.node + (self.gpu[worst_gpu] if worst_gpu is not None else 0)
        reasons = (self.gpu_reasons[worst_gpu] if worst_gpu is not None else []) + self.reasons
        value = 100 - points
        for check in cap_checks:
            rank = worst.get(check, 0)
            cap = CAPS.get(rank)
            if cap is not None and value > cap:
                value = cap
                reasons.append("cap: worst %s finding %s (at most %d)" % (check, _TIER_NAMES[rank], cap))
        gpus = {g: max(0, 100 - p) for g, p in self.gpu.items()}
        return Score(max(0, min(100, value)), reasons, gpus)


_TIER_NAMES = {1: "MONITOR", 2: "RESET", 3: "REBOOT", 4: "ISOLATE"}


def _steps(value: float, steps: List[Tuple[float, int]]) -> int:
    for limit, points in steps:
        if value >= limit:
            return points
    return 0


def memory(f: NodeFacts) -> Score:
    t = _Tally()
    for g, v in f.ecc_uncorrected_growth.items():
        if v > 0:
            t.on_gpu(g, 60, "ecc_uncorrected", "%g uncorrectable ECC errors" % v)
    for g, rate in f.ecc_corrected_per_day.items():
        points = _steps(rate, [(1000, 60), (100, 30), (10, 10)])
        if points:
            t.on_gpu(g, points, "ecc_rate", "corrected ECC +%.0f/day" % rate)
    for g, v in f.remap_failed.items():
        if v > 0:
            t.on_gpu(g, 80, "remap_failed", "a bank has no spare rows")
    for g, v in f.remapped_uncorrectable.items():
        if v > 0:
            t.on_gpu(g, int(min(40, 10 * v)), "remapped_uncorrectable", "%g rows remapped (uncorrectable)" % v)
    for g, v in f.remapped_correctable.items():
        if v > 0:
            t.on_gpu(g, int(min(20, 5 * v)), "remapped_correctable", "%g rows remapped (correctable)" % v)
    for g, v in f.retired_dbe.items():
        if v > 0:
            t.on_gpu(g, 30, "retired_pages", "%g pages retired (double-bit)" % v)
    for g, v in f.retired_sbe.items():
        if v >= 10:
            t.on_gpu(g, 10, "retired_pages", "%g pages retired (single-bit)" % v)
    return t.score(CHECKS["memory"], f.worst, f.has_memory)


def thermal(f: NodeFacts) -> Score:
    t = _Tally()
    for g in sorted(set(f.temperature_max) | set(f.temperature_margin_min)):
        margin = f.temperature_margin_min.get(g)
        if margin is not None:
            points = 40 if margin < 5 else 20 if margin < 10 else 0
            if points:
                t.on_gpu(g, points, "temperature", "%g C from slowdown" % margin)
            continue
        temp = f.temperature_max.get(g)
        points = _steps(temp or 0, [(87, 40), (80, 20)])
        if points:
            t.on_gpu(g, points, "temperature", "%g C" % (temp or 0))
    share = f.throttled_share
    points = 40 if share >= 0.5 else 20 if share >= 0.1 else 10 if share > 0 else 0
    if points:
        t.on_node(points, "throttling", "%.0f%% of its records" % (100 * share))
    for g, r in f.power_limit_ratio.items():
        if r < 0.9:
            t.on_gpu(g, 20, "power_limit", "power limit %.0f%% of the profile's usual" % (100 * r))
    return t.score(CHECKS["thermal"], f.worst, f.has_thermal)


def interconnect(f: NodeFacts) -> Score:
    t = _Tally()
    for g, v in f.nvlink_error_growth.items():
        if v > 0:
            t.on_gpu(g, 30 if v >= 100 else 10, "nvlink_errors", "NVLink errors +%g" % v)
    for g, v in f.nvlink_links_missing.items():
        if v > 0:
            t.on_gpu(g, 40, "nvlink_links", "%g NVLink links down" % v)
    for g, v in f.pcie_width_missing.items():
        if v > 0:
            t.on_gpu(g, 40, "pcie_width", "PCIe link %g lanes narrower" % v)
    for g, v in f.pcie_replay_growth.items():
        if v > 0:
            t.on_gpu(g, 20 if v >= 100 else 5, "pcie_replays", "PCIe replays +%g" % v)
    if f.link_downed_growth > 0:
        t.on_node(20, "network", "a port went down %g times" % f.link_downed_growth)
    if f.ib_ports_missing > 0:
        t.on_node(30, "network", "%g IB ports fewer than usual" % f.ib_ports_missing)
    if f.busbw_ratio is not None and f.busbw_ratio < 0.9:
        t.on_node(30, "busbw", "all-reduce %.0f%% of the profile's median" % (100 * f.busbw_ratio))
    if f.pair_failures:
        half = f.pair_runs >= 2 and f.pair_failures * 2 >= f.pair_runs
        t.on_node(40 if half else 10, "pairs", "%d of %d multi-node runs failed" % (f.pair_failures, f.pair_runs))
    return t.score(CHECKS["interconnect"], f.worst, f.has_interconnect or f.pair_runs > 0)


def compute(f: NodeFacts) -> Score:
    t = _Tally()
    for n, metric in enumerate(f.stragglers):
        t.on_node(40 if n == 0 else 10, "straggler", "%s slower than its peers" % metric)
    for metric in f.below_profile:
        t.on_node(30, "profile", "%s below 80%% of the profile's figure" % metric)
    for metric in f.drift:
        t.on_node(20, "drift", "%s below 90%% of its own best" % metric)
    for g, v in f.miscompute.items():
        if v > 0:
            t.on_gpu(g, 100, "miscompute", "%g mismatches under stress" % v)
    for g, r in f.gpu_slow.items():
        t.on_gpu(g, 30, "gpu_slow", "%.0f%% of the node's median GPU" % (100 * r))
    return t.score(CHECKS["compute"], f.worst, f.has_compute)


def reliability(f: NodeFacts) -> Score:
    t = _Tally()
    for g, tiers in f.xid_gpu_tiers.items():
        for tier, count in sorted(tiers.items()):
            points = XID_POINTS.get(tier, 5) * count
            if g >= 0:
                t.on_gpu(g, points, "xids", "%d %s Xid events" % (count, tier))
            else:
                t.on_node(points, "xids", "%d %s SXid/Xid events (no GPU)" % (count, tier))
    if not f.xid_gpu_tiers:
        for tier, count in sorted(f.xid_tiers.items()):
            t.on_node(XID_POINTS.get(tier, 5) * count, "xids", "%d %s Xid events" % (count, tier))
    if f.drains:
        t.on_node(15 * f.drains, "drains", "drained %d times" % f.drains)
    if f.mtbi_s is not None:
        if f.mtbi_s < DAY:
            t.on_node(20, "mtbi", "an incident every %.1f h" % (f.mtbi_s / 3600))
        elif f.mtbi_s < 7 * DAY:
            t.on_node(10, "mtbi", "an incident every %.1f days" % (f.mtbi_s / DAY))
    for check, share in sorted(f.error_share.items()):
        if share > 0.5:
            t.on_node(10, "errors", "%s could not run in %.0f%% of its records" % (check, 100 * share))
    return t.score(CHECKS["reliability"], f.worst, f.records > 0)


def overall(scores: Dict[str, Score]) -> Optional[int]:
    values = [s.value for s in scores.values() if s.value is not None]
    if not values:
        return None
    return int(round(0.6 * min(values) + 0.4 * sum(values) / len(values)))


def score_node(f: NodeFacts) -> Dict[str, Any]:
    """{"overall": N, "memory": Score, ..., "gpus": {gpu: overall of its per-GPU dimension scores}}; a
    GPU that no per-GPU rule took points from scores 100 (it is not listed)."""
    scores = {"memory": memory(f), "thermal": thermal(f), "interconnect": interconnect(f),
              "compute": compute(f), "reliability": reliability(f)}
    gpus: Dict[int, int] = {}
    with_data = [s.gpus for s in scores.values() if s.value is not None]
    for g in sorted({g for per in with_data for g in per}):     # the GPUs that lost points somewhere
        values = [per.get(g, 100) for per in with_data]
        gpus[g] = int(round(0.6 * min(values) + 0.4 * sum(values) / len(values)))
    out: Dict[str, Any] = dict(scores)
    out["overall"] = overall(scores)
    out["gpus"] = gpus
    return out
