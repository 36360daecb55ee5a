"""A node's story over the report's window, from the envelopes of its metric series (store/series.py),
and the fleet's reliability figures. Pure functions: no store, no Slurm.

Rules (what `gpuhc report` counts; each is stated in the report's "how" section):

- **Incident**: gpuhc drained the node (a record with action ``drain``) while it was in service. A
  drain record while the node is already out of service (a quarantine's verdict, a deeper check)
  does not start another incident.
- **Back in service**: a record with action ``resume`` (gpuhc resumed it, or a quarantine returned
  it), or a prolog record (Slurm started a job there, so someone returned it). The time from the
  incident to then is its **time to return to service**; a node not back by the end of the window
  counts its time drained up to the end (and has no return time).
- **Time drained**: the sum, over the window, of the time between an incident (or the window's start,
  for a node drained before it) and the node's return.
- **MTBI** (mean time between incidents): the time the node was observed in the window (from its first
  record, or the window's start when it had one before, to the end) divided by its incidents; none
  without incidents. The fleet's: all nodes' observed time over all incidents.
- **Xid occurrence**: an Xid (or SXid) of a GPU that appears in a record, or whose count grew since
  the node's previous record (events stay active from run to run until a reboot, reset or ``gpuhc
  ack``: a repeated event is not a new one). **Recurring**: the same Xid number occurring on the
  node in two records or more within the window.
- **Lemon**: a node with ``report.lemon_drains`` incidents or more in the window (default 3).
- **Health at a time** (the health-over-time plot): a node drained by gpuhc counts at the tier that
  drained it until it is back in service; otherwise at its newest result (PASS, MONITOR, RESET,
  REBOOT, ISOLATE, ERROR); "none" before its first record, and once its newest record is older than
  ``status.stale_after``.
"""
from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ..model import Severity

TIER_OF = {s.value: s for s in Severity}
HEALTH = ("PASS", "MONITOR", "ERROR", "RESET", "REBOOT", "ISOLATE", "none")   # the plot's stack, bottom up
_HEALTH_INDEX = {h: n for n, h in enumerate(HEALTH)}
_UNHEALTHY = {"RESET", "REBOOT", "ISOLATE"}


@dataclass
class Incident:
    start: float
    tier: str                        # the overall result of the draining record
    evidence: str
    end: Optional[float] = None      # back in service; None while drained at the window's end
    how: str = ""                    # resume, prolog


@dataclass
class XidOccurrence:
    t: float
    gpu: int
    xid: int
    count: int                       # new events in this record
    tier: str


@dataclass
class Timeline:
    """What the envelopes of one node say over the window."""
    records: int = 0
    first: Optional[float] = None               # first record in the window
    last: Optional[float] = None
    observed_from: Optional[float] = None       # start of the time the node was observed
    incidents: List[Incident] = field(default_factory=list)
    drained_at_start: Optional[Incident] = None   # drained before the window began, still at its start
    verdict_before: Optional[Tuple[float, str, str]] = None   # the verdict of that drain, when it was one
    drains: int = 0                              # drain records (incidents and re-drains)
    resumes: int = 0
    would_drain: int = 0
    verdicts: List[Tuple[float, str, str]] = field(default_factory=list)    # (t, verdict, evidence)
    xids: List[XidOccurrence] = field(default_factory=list)
    worst: Dict[str, int] = field(default_factory=dict)       # check -> worst tier rank (ERROR -1 kept apart)
    errors: Dict[str, int] = field(default_factory=dict)      # check -> records where it could not run
    throttled: int = 0                                        # records with clocks or thermal_power MONITOR+
    health: List[int] = field(default_factory=list)           # HEALTH index at each edge
    drained_s: float = 0.0
    newest_overall: str = ""
    newest_evidence: str = ""

    def ttr(self) -> List[float]:
        """Times to return to service of the incidents that ended in the window, seconds."""
        return [i.end - i.start for i in self.incidents if i.end is not None]

    def mtbi(self, end: float) -> Optional[float]:
        if not self.incidents or self.observed_from is None:
            return None
        return max(0.0, end - self.observed_from) / len(self.incidents)


def walk(records: Sequence[Any], prior: Optional[Any], since: float, end: float, edges: Sequence[float],
         stale_after: float) -> Timeline:
    """One pass over a node's series records (oldest first, in the window) with ``prior`` the newest
    record before the window (or None): incidents, Xid occurrences, worst checks, and the node's
    health at each of ``edges`` (times, ascending)."""
    tl = Timeline()
    drained: Optional[Incident] = None
    prev_x: Dict[Tuple[int, int], int] = {}
    if prior is not None:
        env = prior.env
        for gpu, number, count, _ in env.get("x") or ():
            prev_x[(gpu, number)] = count
        if _drains(env) or env.get("a") == "held":
            # held: the record that drained the node (store/series.py finds it before the window) says why
            cause = getattr(prior, "cause", None)
            source = cause.env if cause is not None and not _drains(env) else env
            drained = Incident(since, _tier(source), source.get("e") or env.get("e") or "")
            tl.drained_at_start = drained
            if "v" in source:
                tl.verdict_before = (source["t"], source["v"], source.get("e") or "")
        tl.observed_from = since
    state_times: List[float] = []
    states: List[int] = []
    drained_since = since if drained is not None else None
    worst, errors = tl.worst, tl.errors
    health_index, error_index = _HEALTH_INDEX, _HEALTH_INDEX["ERROR"]
    pass_index = health_index["PASS"]
    for rec in records:
        env = rec.env
        t = env["t"]
        if drained is None and not prev_x and len(env) <= 4 and env["o"] == "PASS" and "p" in env:
            # the common record: t, c, p and a PASS, nothing else to count
            if tl.first is None:
                tl.first = t
                if tl.observed_from is None:
                    tl.observed_from = t
            state_times.append(t)
            states.append(pass_index)
            continue
        action = env.get("a")
        if tl.first is None:
            tl.first = t
            if tl.observed_from is None:
                tl.observed_from = t
        if action is not None or drained is not None:
            if drained is not None and (action == "resume" or (env["c"] == "prolog" and action != "drain")):
                drained.end = t
                drained.how = "resume" if action == "resume" else "prolog"
                tl.drained_s += t - (drained_since if drained_since is not None else t)
                drained, drained_since = None, None
            if action == "resume":
                tl.resumes += 1
            elif action == "would-drain":
                tl.would_drain += 1
            elif action == "drain":
                tl.drains += 1
                if drained is None:
                    drained = Incident(t, _tier(env), env.get("e") or "")
                    drained_since = t
                    tl.incidents.append(drained)
                elif _rank(_tier(env)) > _rank(drained.tier):
                    drained.tier = _tier(env)                 # a deeper check found it worse than it drained for
        if "v" in env:
            tl.verdicts.append((t, env["v"], env.get("e") or ""))
        xs = env.get("x")
        if xs or prev_x:
            seen: Dict[Tuple[int, int], int] = {}
            for gpu, number, count, rank in xs or ():
                key = (gpu, number)
                seen[key] = count
                grown = count - prev_x.get(key, 0)
                if grown > 0:
                    tl.xids.append(XidOccurrence(t, gpu, number, grown, _rank_name(rank)))
            prev_x = seen
        worse = env.get("w")
        if worse:
            for check, rank in worse.items():
                if rank == -1:
                    errors[check] = errors.get(check, 0) + 1
                elif rank > worst.get(check, 0):
                    worst[check] = rank
            if worse.get("clocks", 0) >= 1 or worse.get("thermal_power", 0) >= 1:
                tl.throttled += 1
        state = drained.tier if drained is not None else env["o"]
        state_times.append(t)
        states.append(health_index.get(state, health_index["PASS"] if state == "SKIP" else error_index))
    tl.records = len(records)
    if records:
        tl.last = records[-1].env["t"]
        tl.newest_overall = records[-1].env["o"]
        tl.newest_evidence = records[-1].env.get("e") or ""
    if drained is not None and drained_since is not None:
        tl.drained_s += max(0.0, end - drained_since)
    # health at each edge: the state of the newest record at or before it
    start_state = _HEALTH_INDEX[tl.drained_at_start.tier] if tl.drained_at_start is not None else \
        (_HEALTH_INDEX.get(prior.env["o"], _HEALTH_INDEX["ERROR"]) if prior is not None else None)
    prior_t = prior.env["t"] if prior is not None else None
    none = _HEALTH_INDEX["none"]
    for edge in edges:
        n = bisect_right(state_times, edge)
        if n:
            state, at = states[n - 1], state_times[n - 1]
        elif start_state is not None:
            state, at = start_state, prior_t if prior_t is not None else since
        else:
            tl.health.append(none)
            continue
        drained_now = HEALTH[state] in _UNHEALTHY
        tl.health.append(state if drained_now or edge - at <= stale_after else none)
    return tl


def _drains(env: Dict[str, Any]) -> bool:
    return env.get("a") == "drain"


def _tier(env: Dict[str, Any]) -> str:
    o = env.get("o") or "ERROR"
    if o in _UNHEALTHY:
        return o
    verdict = env.get("v")
    return {"REPLACE": "ISOLATE", "REBOOT": "REBOOT", "RESET": "RESET"}.get(verdict or "", "RESET")


def _rank(tier: str) -> int:
    s = TIER_OF.get(tier)
    return s.rank if s is not None else 0


_NAMES = {s.rank: s.value for s in Severity}


def _rank_name(rank: Any) -> str:
    return _NAMES.get(rank, "MONITOR") if isinstance(rank, int) else "MONITOR"


def recurring_xids(xids: Sequence[XidOccurrence]) -> Dict[int, int]:
    """Xid number -> records it occurred in, for the numbers that occurred in two or more."""
    seen: Dict[int, set] = {}
    for x in xids:
        seen.setdefault(x.xid, set()).add(x.t)
    return {number: len(ts) for number, ts in sorted(seen.items()) if len(ts) >= 2}


def xid_tiers(xids: Sequence[XidOccurrence]) -> Dict[str, int]:
    """Tier -> new Xid events in the window."""
    out: Dict[str, int] = {}
    for x in xids:
        out[x.tier] = out.get(x.tier, 0) + x.count
    return out


def fleet_figures(timelines: Dict[str, Timeline], end: float) -> Dict[str, Any]:
    """The fleet's incidents, MTBI, time to return to service and time drained (seconds)."""
    observed = sum(max(0.0, end - tl.observed_from) for tl in timelines.values() if tl.observed_from is not None)
    incidents = sum(len(tl.incidents) for tl in timelines.values())
    ttrs = sorted(x for tl in timelines.values() for x in tl.ttr())
    drained = sum(tl.drained_s for tl in timelines.values())
    return {"incidents": incidents, "nodes_with_incidents": sum(1 for tl in timelines.values() if tl.incidents),
            "observed_node_s": round(observed, 1), "mtbi_s": round(observed / incidents, 1) if incidents else None,
            "ttr_mean_s": round(sum(ttrs) / len(ttrs), 1) if ttrs else None,
            "ttr_median_s": round(_median(ttrs), 1) if ttrs else None, "returned": len(ttrs),
            "drained_node_s": round(drained, 1),
            "drained_share": round(drained / observed, 4) if observed else None}


def _median(xs: Sequence[float]) -> float:
    n = len(xs)
    return xs[n // 2] if n % 2 else (xs[n // 2 - 1] + xs[n // 2]) / 2.0


def lemons(timelines: Dict[str, Timeline], end: float, min_incidents: int) -> List[Dict[str, Any]]:
    """Nodes drained again and again: incidents, the intervals between them, MTBI, time drained."""
    out: List[Dict[str, Any]] = []
    for node, tl in timelines.items():
        if len(tl.incidents) < max(1, min_incidents):
            continue
        starts = [i.start for i in tl.incidents]
        out.append({"node": node, "incidents": len(starts),
                    "intervals_s": [round(b - a, 1) for a, b in zip(starts, starts[1:])],
                    "mtbi_s": _round(tl.mtbi(end)), "drained_s": round(tl.drained_s, 1),
                    "tiers": [i.tier for i in tl.incidents], "last_evidence": tl.incidents[-1].evidence})
    out.sort(key=lambda d: (-d["incidents"], -d["drained_s"], d["node"]))
    return out


def _round(x: Optional[float]) -> Optional[float]:
    return None if x is None else round(x, 1)
