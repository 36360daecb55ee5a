"""A node's metric series (store/series.py) reduced to a NodeDigest, and the pass over the fleet that
builds them: one node at a time (memory grows with the fleet, not with its history), in this process or
split between detached readers (store/detach.py) for a large fleet. What fleet/report.py assembles the
report from."""
from __future__ import annotations

import logging
import math
import os
import time
from bisect import bisect_left
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from . import anomalies as A
from . import reliability as R
from . import scoring as S
from .benchmarks import METRICS as BENCH_METRICS

log = logging.getLogger("gpuhc.report")

HEALTH_POINTS = 48             # points of the health-over-time plot
MAX_TREND_BUCKETS = 14         # time buckets of the trends (one a day up to 14 days)
BENCH_KEYS = {"%s.%s" % (check, metric): metric for metric, (check, _) in BENCH_METRICS.items()}
COUNTERS = frozenset({   # lifetime counters whose growth over the window the rules weigh
    "ecc.aggregate_corrected", "ecc.volatile_corrected", "ecc.aggregate_uncorrected", "ecc.volatile_uncorrected",
    "nvlink.replay_errors", "nvlink.recovery_errors", "nvlink.crc_flit_errors", "nvlink.crc_data_errors",
    "pcie.replay_counter", "network.link_downed",
})
CURRENT = (    # values whose newest reading the rules weigh
    "memory_remap.remap_banks_none", "memory_remap.remapped_rows_uncorrectable",
    "memory_remap.remapped_rows_correctable", "memory_remap.retired_pages_dbe", "memory_remap.retired_pages_sbe",
    "thermal_power.temperature_margin_c", "thermal_power.power_limit_w", "nvlink.active_links",
    "pcie.width_current", "network.ib_ports_active", "gpu_stress.stress_mismatches",
)


@dataclass
class NodeDigest:
    """What the report keeps of one node once its series has been read."""
    node: str
    profile: str = ""
    timeline: R.Timeline = field(default_factory=R.Timeline)
    gpus: List[int] = field(default_factory=list)
    checks_ran: List[str] = field(default_factory=list)
    current: Dict[str, Dict[int, float]] = field(default_factory=dict)     # CURRENT key -> per GPU
    growth: Dict[str, Dict[int, float]] = field(default_factory=dict)      # COUNTERS key -> per GPU growth
    ecc_rate: Dict[int, float] = field(default_factory=dict)
    temperature_max: Dict[int, float] = field(default_factory=dict)
    newest: Dict[str, float] = field(default_factory=dict)                 # TREND key -> newest node value
    drift: List[Dict[str, Any]] = field(default_factory=list)
    figures: Dict[str, float] = field(default_factory=dict)                # bench metric -> newest (slowest GPU)
    figure_history: List[Dict[str, float]] = field(default_factory=list)   # newest first
    gpu_figures: Dict[str, Dict[int, float]] = field(default_factory=dict)
    busbw_sizes: Dict[int, float] = field(default_factory=dict)
    dims: Dict[str, bool] = field(default_factory=dict)                    # dimension -> has data


class Window:
    def __init__(self, now: float, seconds: float) -> None:
        self.end = now
        self.seconds = seconds
        self.start = now - seconds
        self.edges = [self.start + seconds * (n + 1) / HEALTH_POINTS for n in range(HEALTH_POINTS)]
        self.buckets = max(2, min(MAX_TREND_BUCKETS, int(math.ceil(seconds / 86400.0))))
        self.bucket_edges = [self.start + seconds * (n + 1) / self.buckets for n in range(self.buckets)]

    def bucket(self, t: float) -> int:
        n = int((t - self.start) * self.buckets / self.seconds) if self.seconds > 0 else 0
        return max(0, min(self.buckets - 1, n))


class Fleet:
    """The accumulators of the pass over the nodes."""

    def __init__(self, window: Window) -> None:
        self.window = window
        self.digests: Dict[str, NodeDigest] = {}
        self.health = [[0] * HEALTH_POINTS for _ in R.HEALTH]
        self.trend: Dict[Tuple[str, str], List[List[float]]] = {}
        self.without_series: List[str] = []

    def merge(self, digests: Dict[str, NodeDigest], health: List[List[int]],
              trend: Dict[Tuple[str, str], List[List[float]]], without_series: List[str]) -> None:
        """Another pass's accumulators (a share of the nodes) added to these."""
        self.digests.update(digests)
        for mine, theirs in zip(self.health, health):
            for n, count in enumerate(theirs):
                mine[n] += count
        for key, buckets in trend.items():
            acc = self.trend.setdefault(key, [[] for _ in buckets])
            for a, b in zip(acc, buckets):
                a.extend(b)
        self.without_series.extend(without_series)

    def add(self, node: str, read: Optional[Tuple[List[Any], Optional[Any]]], stale_after: float,
            profile_hint: str = "") -> None:
        w = self.window
        if read is None:
            self.without_series.append(node)
            read = ([], None)
        records, prior = read
        own: Dict[str, List[Optional[float]]] = {}
        try:
            tl = R.walk(records, prior, w.start, w.end, w.edges, stale_after)
            d = NodeDigest(node, timeline=tl)
            newest_env = records[-1].env if records else (prior.env if prior is not None else {})
            profile = newest_env.get("p") or profile_hint or "?"
            d.profile = profile if isinstance(profile, str) else "?"
            if records:
                own = self._metrics(d, records)
        except (TypeError, ValueError, KeyError, AttributeError, IndexError, ArithmeticError) as exc:
            # valid JSON of another shape (a field of the wrong type): this node is left out, not the report
            log.warning("%s: metric series skipped: a record of an unexpected shape (%s: %s)", node,
                        type(exc).__name__, exc)
            tl = R.walk([], None, w.start, w.end, w.edges, stale_after)
            d = NodeDigest(node, timeline=tl, profile=profile_hint or "?")
            own = {}
        for n, state in enumerate(tl.health):
            self.health[state][n] += 1
        for key, series in own.items():
            acc = self.trend.setdefault((d.profile, key), [[] for _ in range(w.buckets)])
            for b, value in enumerate(series):
                if value is not None:
                    acc[b].append(value)
        self.digests[node] = d

    def _metrics(self, d: NodeDigest, records: List[Any]) -> Dict[str, List[Optional[float]]]:
        """Parse the details of a few records: the newest, the oldest light one, and in each time bucket the
        newest deep record and the newest light record of a full suite (an epilog runs a subset of the
        prolog's checks: its record is taken only where the bucket has no other)."""
        w = self.window
        ts = [r.env["t"] for r in records]
        bounds = [0] + [bisect_left(ts, edge) for edge in w.bucket_edges[:-1]] + [len(records)]
        bucket_of: Dict[int, int] = {}               # id(record) -> its bucket
        picked: Dict[int, Any] = {}
        deep: Dict[int, Any] = {}
        for b in range(w.buckets):
            lo, hi = bounds[b], bounds[b + 1]
            if lo >= hi:
                continue
            light = fallback = None
            for i in range(hi - 1, lo - 1, -1):
                env = records[i].env
                if "b" in env:
                    if b not in deep:
                        deep[b] = records[i]
                elif light is None and env["c"] != "epilog":
                    light = records[i]
                elif fallback is None:
                    fallback = records[i]
                if light is not None and b in deep:
                    break
            for r in (light or fallback, deep.get(b)):
                if r is not None:
                    picked[id(r)] = r
                    bucket_of[id(r)] = b
        newest = records[-1]
        if id(newest) not in picked:
            picked[id(newest)] = newest
            bucket_of[id(newest)] = w.bucket(newest.env["t"])
        oldest_light = next((r for r in records if "b" not in r.env), None)
        if oldest_light is not None and id(oldest_light) not in picked:
            picked[id(oldest_light)] = oldest_light
            bucket_of[id(oldest_light)] = w.bucket(oldest_light.env["t"])
        chosen = sorted(picked.values(), key=lambda r: r.env["t"])
        details = [r.detail() for r in chosen]
        ran: Dict[str, int] = {}
        for det in details:
            ran.update(det["k"])
        # the GPUs: as many as the node counts (gpu_count, nvml), else as long as its longest per-GPU list
        width = 0
        for det in details:
            m = det["m"]
            count = m.get("gpu_count.gpus", m.get("nvml.gpus"))
            if type(count) is int and 0 < count <= 1024:
                width = max(width, count)
        if not width:
            width = max((len(v) for det in details for v in det["m"].values() if type(v) is list), default=0)
        d.gpus = list(range(width))
        d.checks_ran = sorted(details[-1]["k"])
        for dim, checks in S.CHECKS.items():
            if checks:
                d.dims[dim] = any(ran.get(c, -2) >= 0 for c in checks)
        # newest readings, and one value per time bucket of each trend metric (the bucket's newest),
        # newest record first
        own: Dict[str, List[Optional[float]]] = {}
        for r, det in zip(reversed(chosen), reversed(details)):
            m = det["m"]
            b = bucket_of[id(r)]
            for key in _CURRENT.intersection(m):
                if key not in d.current:
                    d.current[key] = A.per_gpu(m[key], d.gpus)
            for key in _TREND.intersection(m):
                series = own.get(key)
                if series is None:
                    series = own[key] = [None] * w.buckets
                elif series[b] is not None:
                    continue
                raw = m[key]
                value = raw if type(raw) is float or type(raw) is int else A.reduce(raw, A.TREND[key][3])
                if value is not None:
                    series[b] = value
                    if key not in d.newest:
                        d.newest[key] = value
        # counters: growth between the first and the last reading in the window; the hottest reading
        first: Dict[str, Tuple[float, Any]] = {}
        last: Dict[str, Tuple[float, Any]] = {}
        for r, det in zip(chosen, details):
            m = det["m"]
            for key in COUNTERS.intersection(m):
                if key not in first:
                    first[key] = (r.env["t"], m[key])
                last[key] = (r.env["t"], m[key])
            temps = m.get("thermal_power.temperature_c")
            if temps is not None:
                hottest = d.temperature_max
                for g, v in A.per_gpu(temps, d.gpus).items():
                    if v > hottest.get(g, float("-inf")):
                        hottest[g] = v
        for key, (t1, raw1) in last.items():
            t0, raw0 = first[key]
            if raw0 == raw1:
                continue                      # no growth (nearly every counter of nearly every node)
            v0, v1 = A.per_gpu(raw0, d.gpus), A.per_gpu(raw1, d.gpus)
            d.growth[key] = {g: (v - v0.get(g, v)) if v >= v0.get(g, v) else v for g, v in v1.items()}
            if key == "ecc.aggregate_corrected" or (key == "ecc.volatile_corrected" and "ecc.aggregate_corrected" not in last):
                d.ecc_rate = A.ecc_growth(v0, v1, max(t1 - t0, 3600.0)) if t1 > t0 else {}
        d.drift = A.own_drift(d.node, own)
        # benchmark figures: the deep records, newest first
        newest_deep = None
        for r in sorted(deep.values(), key=lambda r: -r.env["t"]):
            m = r.metrics
            figs = {}
            for key in _BENCH.intersection(m):
                value = A.reduce(m[key], "min")
                if value is not None:
                    figs[BENCH_KEYS[key]] = value
            if figs:
                d.figure_history.append(figs)
            if newest_deep is None:
                newest_deep = r
        if d.figure_history:
            d.figures = d.figure_history[0]
        if newest_deep is not None:
            m = newest_deep.metrics
            for key in _BENCH.intersection(m):
                if isinstance(m[key], list):
                    d.gpu_figures[BENCH_KEYS[key]] = A.per_gpu(m[key], d.gpus)
            prefix = "allreduce_node.busbw_gbps@"
            for key, value in m.items():
                if key.startswith(prefix) and isinstance(value, (int, float)):
                    try:
                        d.busbw_sizes[int(key[len(prefix):])] = float(value)
                    except ValueError:
                        pass
        return own


_CURRENT = frozenset(CURRENT)
_TREND = frozenset(A.TREND)
_BENCH = frozenset(BENCH_KEYS)


def _add_nodes(fleet: Fleet, store: Any, names: Sequence[str], stale_after: float, hints: Dict[str, str],
               timeout: float, tick: Callable[[int], None]) -> Fleet:
    """Read and digest the series of ``names`` (each node's, one after another) into ``fleet``."""
    from ..store import series as series_store

    def each(node: str, read: Any) -> None:
        fleet.add(node, read, stale_after, hints.get(node, ""))
        tick(len(fleet.digests))

    series_store.read_fleet(store, list(names), fleet.window.start, each, timeout=timeout)
    return fleet


def read_series(store: Any, names: Sequence[str], window: Window, stale_after: float, hints: Dict[str, str],
                timeout: float, progress: Optional[Callable[[str], None]] = None) -> Fleet:
    """Every node's series digested into one Fleet, within ``timeout`` seconds (StoreError past it). A
    large fleet is split between detached children, one per CPU (store/detach.py: a hung mount holds
    none of this process), each digesting its share and sending it back; a small one is read here."""
    from ..store import StoreError
    from ..store.detach import Detached, NotStarted

    total = len(names)
    started = time.monotonic()
    every = 1000 if total > 2000 else 250
    said = [0]

    def report_progress(done: int) -> None:
        if progress is not None and done // every > said[0]:
            said[0] = done // every
            progress("report: read %d of %d nodes (%.1f s)" % (done, total, time.monotonic() - started))

    workers = min(os.cpu_count() or 1, MAX_WORKERS, total // NODES_PER_WORKER)
    fleet = Fleet(window)
    if workers < 2:
        return _add_nodes(fleet, store, names, stale_after, hints, timeout, report_progress)
    size = -(-total // workers)
    chunks = [list(names[i:i + size]) for i in range(0, total, size)]

    def work(chunk: List[str]) -> Callable[[Any], Any]:
        def run(channel: Any) -> Tuple[Any, ...]:
            def tick(done: int) -> None:
                if done % 100 == 0:
                    channel.send("progress", done)
            part = _add_nodes(Fleet(window), store, chunk, stale_after, hints, timeout, tick)
            return part.digests, part.health, part.trend, part.without_series
        return run

    children = []
    try:
        for chunk in chunks:
            try:
                children.append(Detached(work(chunk), lifetime=int(timeout) + 5))
            except NotStarted:
                for child in children:
                    child.close()
                return _add_nodes(fleet, store, names, stale_after, hints, timeout, report_progress)
        deadline = time.monotonic() + timeout
        done = [0] * len(children)
        results: List[Any] = [None] * len(children)
        while any(r is None for r in results):
            if time.monotonic() > deadline:
                raise StoreError("store %s: no answer within %g s (hung or slow mount? report.timeout)"
                                 % (store.root, timeout))
            for n, child in enumerate(children):
                if results[n] is not None:
                    continue
                message = child.wait({"progress", "value", "error"}, 0.05)
                if message is None:
                    continue
                if message[0] == "progress":
                    done[n] = message[1]
                    report_progress(sum(done))
                elif message[0] == "value":
                    results[n] = message[1]
                    done[n] = len(chunks[n])
                    report_progress(sum(done))
                elif message[0] == "error":
                    raise message[1]
                else:
                    raise StoreError("store %s: a reader of the metric series ended without an answer" % store.root)
    finally:
        for child in children:
            child.close()
    for digests, health, trend, without in results:
        fleet.merge(digests, health, trend, without)
    return fleet


MAX_WORKERS = 8
NODES_PER_WORKER = 1000        # below this many nodes a worker costs more than it saves
