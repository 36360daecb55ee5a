"""`gpuhc report`: the fleet's health over a window, from the store's summaries (health now), the compact
metric series of each node (store/series.py: trends, incidents, Xids, benchmark figures; never a full
report) and the pair history of multi-node all-reduce runs. One pass over the nodes (fleet/digest.py)
reduces each node's series to a few numbers (NodeDigest) before the next is read; then the fleet-wide
part here: peers, profiles, scores, summary.

``build()`` returns the report as one JSON-ready dict; fleet/report_render.py writes it as text,
markdown, JSON or HTML. The rules: fleet/scoring.py (scores), fleet/anomalies.py (trends, anomalies),
fleet/reliability.py (incidents, MTBI, lemons).
"""
from __future__ import annotations

import gc
import time
from collections import Counter
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from ..errors import GpuhcError
from ..hostlist import expand, fold, natural_key
from . import anomalies as A
from . import reliability as R
from . import scoring as S
from .benchmarks import METRICS as BENCH_METRICS
from .benchmarks import compare, median
from .digest import BENCH_KEYS, Fleet, NodeDigest, Window, read_series

SCHEMA_VERSION = 1
NEEDS = {"REPLACE": "replace", "ISOLATE": "replace", "REBOOT": "reboot", "RESET": "reset"}
OUT_OF_SERVICE = {"drained", "quarantine", "unhealthy", "would-drain"}


# ---- the fleet-wide part ------------------------------------------------------------------------------

def _usual(values: Sequence[float]) -> Optional[float]:
    """The most common value (ties: the larger): what a profile's node usually has."""
    if not values:
        return None
    counts = Counter(values)
    return max(counts, key=lambda v: (counts[v], v))


def _profile_usual(digests: Dict[str, NodeDigest], key: str) -> Dict[str, float]:
    by: Dict[str, List[float]] = {}
    for d in digests.values():
        values = d.current.get(key)
        if values:
            by.setdefault(d.profile, []).extend(values.values())
    return {p: u for p, vs in by.items() if (u := _usual(vs)) is not None}


def pair_summary(records: List[Dict[str, Any]], nodes: set, most: int = 24) -> Dict[str, Any]:
    """Runs and failures per node and per pair of nodes (multi-node all-reduce), and the matrix of the
    nodes with the most failures (with their partners)."""
    per_node: Dict[str, List[int]] = {}
    per_pair: Dict[Tuple[str, str], List[int]] = {}
    sizes: Dict[int, List[float]] = {}
    passed_with: Dict[str, set] = {}           # node -> the partners of its passing runs
    for r in records:
        if r["passed"]:
            for n in r["nodes"]:
                passed_with.setdefault(n, set()).update(m for m in r["nodes"] if m != n)
    blamed: Dict[str, set] = {}                # node -> partners of failed runs who passed without it
    for r in records:
        if not r["passed"]:
            for n in set(r["nodes"]):
                others = set(r["nodes"]) - {n}
                if others and all(passed_with.get(m, set()) - {n} for m in others):
                    blamed.setdefault(n, set()).update(others)
    for r in records:
        members = sorted(set(r["nodes"]))
        failed = 0 if r["passed"] else 1
        for n in members:
            c = per_node.setdefault(n, [0, 0])
            c[0] += 1
            c[1] += failed
        for i, a in enumerate(members):
            for b in members[i + 1:]:
                c = per_pair.setdefault((a, b), [0, 0])
                c[0] += 1
                c[1] += failed
        for s in r.get("sizes") or []:
            size = s.get("size_bytes", s.get("bytes")) if isinstance(s, dict) else None
            if isinstance(size, int) and isinstance(s.get("busbw_gbps"), (int, float)):
                sizes.setdefault(size, []).append(float(s["busbw_gbps"]))
    failing = sorted((n for n, c in per_node.items() if c[1] and n in nodes), key=lambda n: (-per_node[n][1], n))
    shown = failing[:most]
    for (a, b), _ in sorted(per_pair.items(), key=lambda kv: -kv[1][0]):
        if len(shown) >= most:
            break
        for n in (a, b):
            if (a in shown or b in shown) and n not in shown and len(shown) < most:
                shown.append(n)
    shown.sort(key=natural_key)
    cells = [[per_pair.get((a, b) if a < b else (b, a), [0, 0]) if a != b else [0, 0] for b in shown] for a in shown]
    return {"runs": len(records), "failed": sum(1 for r in records if not r["passed"]),
            "nodes": {n: {"runs": c[0], "failed": c[1], "blamed": len(blamed.get(n, ())) >= 2}
                      for n, c in sorted(per_node.items()) if n in nodes},
            "matrix": {"nodes": shown, "cells": cells},
            "busbw_by_size": {str(s): round(median(v), 3) for s, v in sorted(sizes.items())}}


def _facts(d: NodeDigest, usual: Dict[str, Dict[str, float]], stragglers: Dict[str, List[str]],
           below_profile: Dict[str, List[str]], busbw_median: Dict[str, float], pairs: Dict[str, Any],
           end: float) -> S.NodeFacts:
    tl = d.timeline
    f = S.NodeFacts(d.node, gpus=list(d.gpus), records=tl.records, worst=dict(tl.worst), drains=len(tl.incidents))
    f.has_memory, f.has_thermal = d.dims.get("memory", False), d.dims.get("thermal", False)
    f.has_interconnect, f.has_compute = d.dims.get("interconnect", False), d.dims.get("compute", False)
    f.ecc_corrected_per_day = dict(d.ecc_rate)
    unc: Dict[int, float] = {}
    for key in ("ecc.aggregate_uncorrected", "ecc.volatile_uncorrected"):
        for g, v in d.growth.get(key, {}).items():
            unc[g] = max(unc.get(g, 0.0), v)
    f.ecc_uncorrected_growth = unc
    cur = d.current
    f.remap_failed = cur.get("memory_remap.remap_banks_none", {})
    f.remapped_uncorrectable = cur.get("memory_remap.remapped_rows_uncorrectable", {})
    f.remapped_correctable = cur.get("memory_remap.remapped_rows_correctable", {})
    f.retired_dbe = cur.get("memory_remap.retired_pages_dbe", {})
    f.retired_sbe = cur.get("memory_remap.retired_pages_sbe", {})
    f.temperature_max = dict(d.temperature_max)
    f.temperature_margin_min = cur.get("thermal_power.temperature_margin_c", {})
    f.throttled_share = tl.throttled / tl.records if tl.records else 0.0
    limit = usual.get("thermal_power.power_limit_w", {}).get(d.profile)
    if limit:
        f.power_limit_ratio = {g: v / limit for g, v in cur.get("thermal_power.power_limit_w", {}).items()}
    nv: Dict[int, float] = {}
    for key in ("nvlink.replay_errors", "nvlink.recovery_errors", "nvlink.crc_flit_errors", "nvlink.crc_data_errors"):
        for g, v in d.growth.get(key, {}).items():
            nv[g] = nv.get(g, 0.0) + v
    f.nvlink_error_growth = nv
    links = usual.get("nvlink.active_links", {}).get(d.profile)
    if links:
        f.nvlink_links_missing = {g: links - v for g, v in cur.get("nvlink.active_links", {}).items() if v < links}
    width = usual.get("pcie.width_current", {}).get(d.profile)
    if width:
        f.pcie_width_missing = {g: width - v for g, v in cur.get("pcie.width_current", {}).items() if v < width}
    f.pcie_replay_growth = d.growth.get("pcie.replay_counter", {})
    f.link_downed_growth = max(d.growth.get("network.link_downed", {}).values(), default=0.0)
    ports = usual.get("network.ib_ports_active", {}).get(d.profile)
    mine = max(cur.get("network.ib_ports_active", {}).values(), default=None)
    if ports and mine is not None and mine < ports:
        f.ib_ports_missing = ports - mine
    med = busbw_median.get(d.profile)
    if med and "busbw_gbps" in d.figures:
        f.busbw_ratio = d.figures["busbw_gbps"] / med
    p = pairs["nodes"].get(d.node)
    if p:
        f.pair_runs, f.pair_failures = p["runs"], p["failed"] if p["blamed"] else 0
    f.stragglers = [m for m in stragglers.get(d.node, []) if m != "busbw_gbps"]
    f.below_profile = below_profile.get(d.node, [])
    f.drift = [x["metric"] for x in d.drift if x["metric"] in BENCH_KEYS]
    f.miscompute = {g: v for g, v in cur.get("gpu_stress.stress_mismatches", {}).items() if v > 0}
    slow: Dict[int, float] = {}
    for metric, per in d.gpu_figures.items():
        if len(per) >= 2:
            m = median(list(per.values()))
            for g, v in per.items():
                if m > 0 and v / m < 0.9:
                    slow[g] = min(slow.get(g, 1.0), v / m)
    f.gpu_slow = slow
    f.xid_tiers = R.xid_tiers(tl.xids)
    per_gpu: Dict[int, Dict[str, int]] = {}
    for x in tl.xids:
        tiers = per_gpu.setdefault(x.gpu, {})
        tiers[x.tier] = tiers.get(x.tier, 0) + x.count
    f.xid_gpu_tiers = per_gpu
    f.mtbi_s = tl.mtbi(end)
    f.error_share = {c: n / tl.records for c, n in tl.errors.items()} if tl.records else {}
    return f


def _iso(ts: Optional[float]) -> Optional[str]:
    return None if ts is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def assemble(fleet: Fleet, statuses: List[Any], pair_records: List[Dict[str, Any]], cfg: Dict[str, Any],
             known_profiles: Dict[str, Any], filters: Dict[str, Any], store_root: str, slurm: bool) -> Dict[str, Any]:
    """The report from the pass's accumulators (pure)."""
    w = fleet.window
    digests = fleet.digests
    nodes = set(digests)
    lemon_min = int(cfg.get("report", {}).get("lemon_drains", 3))
    # benchmark figures against the profile's peers and expectations
    by_profile: Dict[str, Dict[str, Dict[str, float]]] = {}
    for d in digests.values():
        if d.figures:
            by_profile.setdefault(d.profile, {})[d.node] = d.figures
    found = []
    for profile, figs in sorted(by_profile.items()):
        found.extend(compare(figs, profile, list(BENCH_METRICS)))
    stragglers: Dict[str, List[str]] = {}
    for s in found:
        stragglers.setdefault(s.node, []).append(s.metric)
    below: Dict[str, List[str]] = {}
    for d in digests.values():
        prof = known_profiles.get(d.profile)
        for metric, value in d.figures.items():
            expect = getattr(prof, metric, None) if prof is not None else None
            if isinstance(expect, (int, float)) and expect > 0 and value < 0.8 * expect:
                below.setdefault(d.node, []).append(metric)
    busbw_median = {p: median([f["busbw_gbps"] for f in figs.values() if "busbw_gbps" in f])
                    for p, figs in by_profile.items() if any("busbw_gbps" in f for f in figs.values())}
    usual = {key: _profile_usual(digests, key) for key in ("thermal_power.power_limit_w", "nvlink.active_links",
                                                          "pcie.width_current", "network.ib_ports_active")}
    pairs = pair_summary(pair_records, nodes)
    # scores
    scored = []
    for d in digests.values():
        if not d.timeline.records:
            continue
        result = S.score_node(_facts(d, usual, stragglers, below, busbw_median, pairs, w.end))
        row: Dict[str, Any] = {"node": d.node, "profile": d.profile, "overall": result["overall"]}
        reasons = {}
        for dim in S.DIMENSIONS:
            row[dim] = result[dim].value
            if result[dim].reasons:
                reasons[dim] = result[dim].reasons
        row["reasons"] = reasons
        row["gpus"] = {str(g): v for g, v in sorted(result["gpus"].items())}
        scored.append(row)
    scored.sort(key=lambda r: (r["overall"] if r["overall"] is not None else 101, natural_key(r["node"])))
    distribution = {dim: [0] * 10 for dim in ("overall",) + S.DIMENSIONS}
    for row in scored:
        for dim in distribution:
            v = row[dim]
            if v is not None:
                distribution[dim][min(9, int(v) // 10)] += 1
    # anomalies
    profiles = {n: d.profile for n, d in digests.items()}
    outliers = A.fleet_outliers({n: d.newest for n, d in digests.items()}, profiles)
    trends = A.fleet_trends(fleet.trend, w.bucket_edges)
    ecc: List[Dict[str, Any]] = []
    for d in digests.values():
        for g, rate in sorted(d.ecc_rate.items()):
            if rate >= A.ECC_RATE_LIST:
                ecc.append({"node": d.node, "gpu": g, "per_day": round(rate, 1),
                            "grown": d.growth.get("ecc.aggregate_corrected", d.growth.get("ecc.volatile_corrected", {})).get(g)})
    ecc.sort(key=lambda x: -x["per_day"])
    recurring: List[Dict[str, Any]] = []
    xid_nodes: Dict[int, set] = {}
    for d in digests.values():
        for x in d.timeline.xids:
            xid_nodes.setdefault(x.xid, set()).add(d.node)
        for number, times in R.recurring_xids(d.timeline.xids).items():
            events = sum(x.count for x in d.timeline.xids if x.xid == number)
            gpus = sorted({x.gpu for x in d.timeline.xids if x.xid == number})
            recurring.append({"node": d.node, "xid": number, "records": times, "events": events,
                              "gpus": gpus, "tier": max((x.tier for x in d.timeline.xids if x.xid == number),
                                                        key=lambda t: R._rank(t))})
    recurring.sort(key=lambda x: (-x["records"], x["node"]))
    drift = [x for d in digests.values() for x in d.drift]
    # reliability
    timelines = {n: d.timeline for n, d in digests.items()}
    per_node: List[Dict[str, Any]] = []
    for n, tl in timelines.items():
        if tl.incidents or tl.drained_s > 0:
            ttr = tl.ttr()
            per_node.append({"node": n, "incidents": len(tl.incidents), "mtbi_s": _r1(tl.mtbi(w.end)),
                             "ttr_mean_s": _r1(sum(ttr) / len(ttr)) if ttr else None,
                             "drained_s": round(tl.drained_s, 1),
                             "drained_now": bool(tl.incidents and tl.incidents[-1].end is None)
                             or bool(tl.drained_at_start and tl.drained_at_start.end is None and not tl.incidents)})
    per_node.sort(key=lambda x: (-x["drained_s"], x["node"]))
    # summary
    health = Counter(st.health for st in statuses)
    by_tier = Counter(st.severity for st in statuses if st.health == "drained")
    verdicts = Counter(v for tl in timelines.values() for _, v, _ in tl.verdicts)
    needs: Dict[str, List[Dict[str, Any]]] = {"replace": [], "reboot": [], "reset": []}
    for st in statuses:
        node_tl = timelines.get(st.node)
        verdict = (node_tl.verdicts[-1] if node_tl.verdicts else node_tl.verdict_before) if node_tl else None
        incident = (node_tl.incidents[-1] if node_tl.incidents else node_tl.drained_at_start) if node_tl else None
        # the tier: Slurm's reason (or the newest result), else the drain's own record
        tier = st.severity if st.severity in NEEDS else (incident.tier if incident is not None else "")
        what, evidence, source = None, "", ""
        out = st.health in OUT_OF_SERVICE
        if verdict is not None and verdict[1] in NEEDS and out:
            what, evidence, source = NEEDS[verdict[1]], verdict[2], "quarantine verdict %s" % verdict[1]
        elif out and tier in NEEDS:
            what, source = NEEDS[tier], "%s %s" % (st.health, tier)
            evidence = (incident.evidence if incident is not None else "") or st.reason or \
                (node_tl.newest_evidence if node_tl else "")
        if what:
            needs[what].append({"node": st.node, "evidence": evidence, "why": source, "health": st.health})
    for rows in needs.values():
        rows.sort(key=lambda x: natural_key(x["node"]))
    summary = {
        "nodes": len(statuses), "health": {h: health[h] for h in sorted(health, key=_health_order)},
        "drained_by_tier": {t: by_tier[t] for t in ("ISOLATE", "REBOOT", "RESET", "MONITOR", "") if by_tier.get(t)},
        "drains": sum(tl.drains for tl in timelines.values()),
        "incidents": sum(len(tl.incidents) for tl in timelines.values()),
        "resumes": sum(tl.resumes for tl in timelines.values()),
        "would_drain": sum(tl.would_drain for tl in timelines.values()),
        "verdicts": dict(sorted(verdicts.items())),
        "needs_person": needs,
        "problem_nodes": sorted({x["node"] for rows in needs.values() for x in rows}
                                | {r["node"] for r in scored if r["overall"] is not None and r["overall"] < 60},
                                key=natural_key),
    }
    # node x check matrix: the nodes with a finding, the lowest scores first
    score_of = {r["node"]: r["overall"] for r in scored}
    rows = []
    for n, tl in timelines.items():
        cells = {c: _RANK_NAME[r] for c, r in tl.worst.items() if r > 0}
        cells.update({c: "ERROR" for c in tl.errors if c not in cells})
        if cells:
            rows.append({"node": n, "score": score_of.get(n), "cells": cells})
    rows.sort(key=lambda r: (r["score"] if r["score"] is not None else 101, natural_key(r["node"])))
    columns = sorted({c for r in rows for c in r["cells"]} | {c for d in digests.values() for c in d.checks_ran})
    # benchmarks and all-reduce
    bench: Dict[str, Any] = {}
    for profile, figs in sorted(by_profile.items()):
        metrics = [m for m in BENCH_METRICS if any(m in f for f in figs.values())]
        bench[profile] = {m: {"median": round(median([f[m] for f in figs.values() if m in f]), 3),
                              "values": {n: round(f[m], 3) for n, f in sorted(figs.items()) if m in f},
                              "expected": getattr(known_profiles.get(profile), m, None)} for m in metrics}
    single: Dict[str, Any] = {}
    for profile in sorted({d.profile for d in digests.values() if d.busbw_sizes}):
        sizes: Dict[int, List[float]] = {}
        for d in digests.values():
            if d.profile == profile:
                for size, v in d.busbw_sizes.items():
                    sizes.setdefault(size, []).append(v)
        slow = sorted(n for n in stragglers if "busbw_gbps" in stragglers[n] and digests[n].profile == profile)
        single[profile] = {"median": {str(s): round(median(v), 3) for s, v in sorted(sizes.items())},
                           "nodes": {n: {str(s): v for s, v in sorted(digests[n].busbw_sizes.items())} for n in slow}}
    return {
        "schema_version": SCHEMA_VERSION, "generated": _iso(w.end),
        "window": {"since": _iso(w.start), "until": _iso(w.end), "seconds": w.seconds, "buckets": w.buckets},
        "store": store_root, "slurm": slurm, "filters": filters,
        "summary": summary,
        "scores": {"nodes": scored, "distribution": distribution,
                   "how": {"overall": S.HOW_OVERALL, "rules": [{"dimension": d, "rule": r, "text": t}
                                                               for d, r, t in S.RULES]}},
        "anomalies": {"fleet": outliers, "own_history": drift, "ecc_growth": ecc, "recurring_xids": recurring,
                      "xid_nodes": {str(x): len(ns) for x, ns in sorted(xid_nodes.items())},
                      "stragglers": [s.to_dict() for s in found],
                      "fleet_drift": [{"profile": t["profile"], "metric": t["metric"], "label": t["label"], **t["drift"]}
                                      for t in trends if t["drift"]]},
        "trends": trends,
        "reliability": {"fleet": R.fleet_figures(timelines, w.end), "nodes": per_node,
                        "lemons": R.lemons(timelines, w.end, lemon_min), "lemon_incidents": lemon_min},
        "health_over_time": {"edges": [round(e, 3) for e in w.edges], "states": list(R.HEALTH),
                             "counts": {h: fleet.health[n] for n, h in enumerate(R.HEALTH)}},
        "benchmarks": bench,
        "allreduce": {"single_node": single, "multi_node": {"busbw_by_size": pairs["busbw_by_size"],
                                                             "runs": pairs["runs"]}},
        "pairs": {"runs": pairs["runs"], "failed": pairs["failed"], "matrix": pairs["matrix"],
                  "nodes": {n: v for n, v in pairs["nodes"].items() if v["failed"]}},
        "checks": {"columns": columns, "rows": rows},
        "without_series": sorted(fleet.without_series, key=natural_key),
        "how": HOW,
    }


_RANK_NAME = {1: "MONITOR", 2: "RESET", 3: "REBOOT", 4: "ISOLATE"}
_HEALTH_ORDER = {h: n for n, h in enumerate(("healthy", "monitor", "stale", "never-checked", "error", "would-drain",
                                             "unhealthy", "drained", "quarantine", "drained-admin", "down"))}


def _health_order(h: str) -> int:
    return _HEALTH_ORDER.get(h, 99)


def _r1(x: Optional[float]) -> Optional[float]:
    return None if x is None else round(x, 1)


HOW = [
    "Health now: `gpuhc status`'s states (Slurm's view where Slurm answers, else the store's newest results).",
    "Incidents: a gpuhc drain of a node in service; back in service: a resume, or a prolog (a job started "
    "there). Time to return to service: incident to return. MTBI: time observed / incidents. Lemon: at least "
    "report.lemon_drains incidents in the window.",
    "Xid occurrences: an Xid that appears, or whose count grew, since the node's previous record (events stay "
    "active until a reboot, reset or ack); recurring: one Xid number in two records or more.",
    "Against the fleet: robust z = (value - profile median) / max(1.4826 MAD, 1% of the median, the metric's "
    "floor), flagged past |z| 3 with 5 nodes or more; stragglers: below 90% of the profile's median or z < -3 "
    "(gpuhc stragglers' rule).",
    "Against its own history: the newest time bucket against the node's earlier ones (|z| > 3 in the bad "
    "direction; benchmark figures below 90% of its own best); fleet drift: a profile's newest median 10% worse "
    "than its best earlier one.",
    "Corrected-ECC growth: lifetime corrected count, first to last reading in the window, per day (from 10 a day).",
    "Read from the store's compact metric series (one line per report): every record's envelope; the metrics of "
    "the newest and oldest records and of the newest record of each time bucket.",
]


# ---- reading ------------------------------------------------------------------------------------------------

def build(cfg: Dict[str, Any], partitions: Optional[str] = None, nodelist: Optional[str] = None,
          since: Optional[float] = None, now: Optional[float] = None, slurm: Optional[Dict[str, Any]] = None,
          progress: Optional[Callable[[str], None]] = None) -> Dict[str, Any]:
    """The report over the last ``since`` seconds (default report.since) of the nodes of ``nodelist`` /
    ``partitions`` (default: every node the store or Slurm knows)."""
    from .. import profiles as P
    from ..status import collect
    from ..store import PairHistory, Store, StoreError

    now = time.time() if now is None else now
    seconds = float(since if since is not None else cfg["report"]["since"])
    if seconds <= 0:
        raise GpuhcError("--since: the window must be longer than 0 s")
    window = Window(now, seconds)
    store = Store.from_config(cfg)
    stale_after = float(cfg["status"]["stale_after"])
    summaries = store.summaries()
    statuses = collect(summaries, slurm, now, stale_after)
    wanted = set(expand(nodelist, "-n")) if nodelist else None
    if wanted is not None:
        unknown = wanted - {st.node for st in statuses}
        if unknown:
            raise GpuhcError("-n: %s: not in the store%s" % (fold(sorted(unknown)), " nor in Slurm" if slurm else ""))
    parts = [p.strip() for p in partitions.split(",") if p.strip()] if partitions else None
    if parts is not None:
        if not slurm:
            raise GpuhcError("-p: partitions come from Slurm, which did not answer (use -n NODELIST)")
        known_parts = {p for st in statuses for p in st.partitions}
        missing = [p for p in parts if p not in known_parts]
        if missing:
            raise GpuhcError("-p: no partition %s (Slurm has %s)" % (", ".join(missing),
                                                                     ", ".join(sorted(known_parts - {"-"}))))
    statuses = [st for st in statuses if (wanted is None or st.node in wanted)
                and (parts is None or set(parts) & set(st.partitions))]
    names = [st.node for st in statuses]
    hints = {st.node: st.profile for st in statuses}
    total = len(names)
    if total < 500:
        progress = None                     # a small store is read in a blink: no progress lines
    timeout = float(cfg["report"]["timeout"])
    if progress is not None:
        progress("report: reading the metric series of %d nodes" % total)
    fleet = read_series(store, names, window, stale_after, hints, timeout, progress)
    for node in names:              # known to Slurm, never checked: no directory in the store
        if node not in fleet.digests:
            fleet.add(node, ([], None), stale_after, hints.get(node, ""))
    try:
        pair_records = PairHistory.from_config(cfg).read(since=window.start)
    except StoreError as exc:
        if progress is not None:
            progress("report: pair history not read: %s" % exc)
        pair_records = []
    try:
        known = P.load(cfg.get("profiles"))
    except GpuhcError:
        known = {}
    filters = {"partitions": parts, "nodes": fold(sorted(wanted)) if wanted else None}
    return assemble(fleet, statuses, pair_records, cfg, known, filters, store.root, bool(slurm))


def report_output(cfg: Dict[str, Any], partitions: Optional[str], nodelist: Optional[str], since: Optional[str],
                  fmt: str, output: Optional[str], progress: Optional[Callable[[str], None]] = None,
                  now: Optional[float] = None) -> str:
    """`gpuhc report`: the text to print, or "" once written (atomically) to ``output``."""
    from ..export import write_output
    from ..status import parse_duration
    from . import report_render
    from .slurm_view import slurm_view

    seconds = parse_duration(since) if since is not None else None
    collecting = gc.isenabled()
    gc.disable()            # millions of small objects, no cycles among them: the collector's passes cost seconds
    try:
        rep = build(cfg, partitions, nodelist, seconds, now=now, slurm=slurm_view(cfg), progress=progress)
    finally:
        if collecting:
            gc.enable()
    if fmt == "json":
        text = report_render.as_json(rep)
    elif fmt == "html":
        from .report_html import html

        text = html(rep)
    else:
        text = report_render.text(rep, markdown=fmt == "markdown")
    if not output:
        return text
    write_output(output, text)
    return ""
