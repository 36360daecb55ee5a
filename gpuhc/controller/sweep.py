"""`gpuhc sweep` (cron on the controller): send short exclusive diagnostic jobs to the idle nodes
that have waited longest for a deep check, a few at a time, never in a user's way.

Planning is ``plan``, a pure function over Slurm's node views, the active reservations, the sweep
jobs slurmctld holds, and each node's newest ``sweep``/``quarantine``/``bench`` record (the store
summaries' ``last``, see ``last_checked``):

- only IDLE nodes (no ALLOCATED/MIXED/COMPLETING, DRAIN, DOWN, RESERVED, POWER*, MAINT, PLANNED,
  REBOOT*, ... flag: anything but IDLE, CLOUD, DYNAMIC_NORM, and a MAINTENANCE flag that no active
  reservation holds, which is stale: backends.slurm.maint_stale); never a node in an active
  reservation, nor one that already has a pending or running sweep job;
- not a node deep-checked within ``interval``;
- stalest first. **The rotation rule**: the key of a node is the later of its newest deep record
  and its last sweep submission from this controller (``attempted``, local state), never-checked
  and never-tried nodes first, ties by node name. Each run's picks get a submission time, so the
  next run takes the next nodes in line even before (or without: a job dropped at its deadline,
  one that failed before recording) their reports reach the store: over successive runs every
  idle node is tried before any is tried twice, and a node whose jobs never record cannot hold a
  slot run after run. Name order is predictable (an operator can say who is next) and needs no
  randomness; the state lost only means starting over from the store's order;
- at most ``max_nodes`` submissions a run, and per partition at most ``max_idle_fraction`` of its
  idle nodes (those plus the ones its sweep jobs hold; at least one) under sweep at once,
  counting the sweep jobs already pending or running there.

``sweep`` is the command around it: lock, ask Slurm, plan, submit, then the quarantine step.
"""
from __future__ import annotations

import fcntl
import math
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from ..backends.slurm import JobInfo, JobSpec, NodeView, ReservationView, SlurmError, maint_stale
from ..errors import GpuhcError

DEEP_CONTEXTS = ("sweep", "quarantine", "bench")      # the records that count as a deep check
JOB_PREFIX = "gpuhc-sweep-"                           # job name: gpuhc-sweep-NODE
IDLE_FLAGS = frozenset({"IDLE", "CLOUD", "DYNAMIC_NORM"})   # an idle node with only these is free
MAINT = frozenset({"MAINT", "MAINTENANCE"})
ATTEMPTS = "sweep-attempts"                           # local state: node -> time of its last submission
LOCK = "sweep.lock"                                   # under state_dir: one sweep at a time


def job_name(node: str) -> str:
    return JOB_PREFIX + node


def job_node(name: str) -> Optional[str]:
    """The node a sweep job is for, from its name; None for any other job."""
    if not name.startswith(JOB_PREFIX):
        return None
    return name[len(JOB_PREFIX):] or None


def active_reservations(reservations: Iterable[ReservationView]) -> Dict[str, str]:
    """node -> the name of the first active reservation that holds it."""
    out: Dict[str, str] = {}
    for res in reservations:
        if res.active:
            for node in res.nodes:
                out.setdefault(node, res.name)
    return out


def not_free(view: NodeView, reserved: Mapping[str, str]) -> Optional[str]:
    """Why the node is not free for a sweep ("allocated", "drain", "in reservation X"), or None."""
    if view.name in reserved:
        return "in reservation %s" % reserved[view.name]
    states = set(view.states)
    if states & MAINT and maint_stale(view, reserved):
        states -= MAINT                       # stale after a purged reservation (Slurm 22.05)
    if "IDLE" not in states:
        return "+".join(sorted(states)).lower() or "state unknown"
    other = sorted(states - IDLE_FLAGS)
    return "idle+" + "+".join(other).lower() if other else None


def last_checked(summaries: Mapping[str, Mapping[str, Any]],
                 contexts: Sequence[str] = DEEP_CONTEXTS) -> Dict[str, Tuple[float, str]]:
    """node -> (start time, context) of its newest deep record, from the store's summaries (their
    ``last``, else the newest report's own context); nodes without one are left out."""
    out: Dict[str, Tuple[float, str]] = {}
    for node, summary in summaries.items():
        seen = dict(summary.get("last") or {})
        context, ts = summary.get("context"), summary.get("started_ts")
        if isinstance(ts, (int, float)) and ts > seen.get(context, float("-inf")):
            seen[context] = ts
        best: Optional[Tuple[float, str]] = None
        for name in contexts:
            ts = seen.get(name)
            if isinstance(ts, (int, float)) and not isinstance(ts, bool) and (best is None or ts > best[0]):
                best = (float(ts), name)
        if best is not None:
            out[node] = best
    return out


@dataclass
class Pick:
    node: str
    partitions: List[str]              # the partitions the job may run in (those of -p, else all the node's)
    last_checked: Optional[float]      # start of its newest deep record; None: never
    last_context: str = ""
    job_id: str = ""                   # once submitted
    result: str = "planned"            # planned, submitted, error

    def to_dict(self) -> Dict[str, Any]:
        return {"node": self.node, "partition": ",".join(self.partitions), "last_checked": self.last_checked,
                "last_context": self.last_context or None, "job_id": self.job_id or None, "result": self.result}


@dataclass
class Plan:
    chosen: List[Pick] = field(default_factory=list)
    skipped: Dict[str, int] = field(default_factory=dict)     # why -> how many nodes
    idle: Dict[str, int] = field(default_factory=dict)        # partition -> nodes free for a sweep
    room: Dict[str, int] = field(default_factory=dict)        # partition -> sweeps it may still take
    in_flight: Dict[str, str] = field(default_factory=dict)   # node -> its pending/running sweep job

    def to_dict(self) -> Dict[str, Any]:
        return {"chosen": [p.to_dict() for p in self.chosen], "skipped": dict(self.skipped), "idle": dict(self.idle),
                "room": dict(self.room), "in_flight": dict(self.in_flight)}


def plan(nodes: Mapping[str, NodeView], reservations: Iterable[ReservationView], jobs: Iterable[JobInfo],
         checked: Mapping[str, Tuple[float, str]], now: float, interval: float, max_nodes: int,
         max_idle_fraction: float, partitions: Optional[Sequence[str]] = None,
         attempted: Optional[Mapping[str, float]] = None) -> Plan:
    """Which nodes to sweep now (the module's docstring has the rules). ``checked``: node ->
    (time, context) of its newest deep record (``last_checked``); ``attempted``: node -> time of
    its last sweep submission; ``partitions``: only nodes in these (-p). Pure and O(n log n)."""
    attempted = attempted or {}
    reserved = active_reservations(reservations)
    out = Plan()
    for job in jobs:
        node = job_node(job.name)
        if node is not None and not job.finished:
            out.in_flight.setdefault(node, job.job_id)
    skipped: Counter = Counter()
    busy: Counter = Counter()       # partition -> its nodes under sweep now
    idle: Counter = Counter()
    candidates: List[Tuple[float, str]] = []
    wanted = set(partitions) if partitions else None
    since = now - interval
    for name, view in nodes.items():
        if name in out.in_flight:
            busy.update(set(view.partitions))
            if wanted is None or wanted & set(view.partitions):
                skipped["sweep job pending or running"] += 1
            continue
        why = not_free(view, reserved)
        if why is None:
            idle.update(set(view.partitions))
        if wanted is not None and not wanted & set(view.partitions):
            continue                          # another partition's: counted for its caps only
        if why is not None:
            skipped[why] += 1
            continue
        last = checked.get(name)
        if last is not None and last[0] >= since:
            skipped["checked within the interval"] += 1
            continue
        key = max(last[0] if last is not None else float("-inf"), attempted.get(name, float("-inf")))
        candidates.append((key, name))
    out.idle = dict(idle)
    room = {p: max(1, int(max_idle_fraction * (idle[p] + busy[p]))) - busy[p] for p in set(idle) | set(busy)}
    candidates.sort()
    for n, (_, name) in enumerate(candidates):
        if len(out.chosen) >= max_nodes:
            skipped["over --max-nodes (next run)"] += len(candidates) - n
            break
        view = nodes[name]
        if any(room.get(p, 0) <= 0 for p in view.partitions) or not view.partitions:
            skipped["over the partition's idle fraction"] += 1
            continue
        for p in view.partitions:
            room[p] -= 1
        last = checked.get(name)
        parts = [p for p in view.partitions if wanted is None or p in wanted]
        out.chosen.append(Pick(name, parts, last[0] if last else None, last[1] if last else ""))
    out.room = room
    out.skipped = dict(skipped)
    return out


def quarantine_candidates(nodes: Mapping[str, NodeView], reservations: Iterable[ReservationView]) -> List[str]:
    """Nodes gpuhc drained at RESET, or at REBOOT and rebooted since (Slurm's boot time after the
    reason's), not in a reservation (quarantine holds its nodes in one), not in a state gpuhc
    keeps its hands off, and not left by a quarantine that could not decide (it would loop)."""
    from ..model import Severity
    from ..policy import HANDS_OFF, reason_severity

    reserved = active_reservations(reservations)
    out = []
    for name, view in sorted(nodes.items()):
        if not view.drained or not view.owned_by_gpuhc or name in reserved or view.states & HANDS_OFF:
            continue
        if "inconclusive" in view.reason:
            continue
        severity = reason_severity(view.reason)
        rebooted = view.boot_time is not None and view.reason_time is not None and view.boot_time > view.reason_time
        if severity is Severity.RESET or (severity is Severity.REBOOT and rebooted):
            out.append(name)
    return out


# -- the command ---------------------------------------------------------------------------------

@dataclass
class Result:
    """What one `gpuhc sweep` did: the plan (its picks with their job ids), the quarantine step,
    notes for stderr, and the exit code (0 done, 2 cannot run here, 3 Slurm or the store did not
    answer: ``error`` says so in one line)."""
    ran: bool = True
    why: str = ""
    dry_run: bool = False
    plan: Plan = field(default_factory=Plan)
    quarantine: Dict[str, List[Dict[str, Any]]] = field(default_factory=dict)
    notes: List[str] = field(default_factory=list)
    error: str = ""
    exit_code: int = 0

    def to_dict(self) -> Dict[str, Any]:
        out = {"ran": self.ran, "dry_run": self.dry_run, "why": self.why or None, "error": self.error or None,
               "exit_code": self.exit_code, "notes": self.notes, "quarantine": self.quarantine}
        out.update(self.plan.to_dict())
        return out


def template(cfg: Dict[str, Any]) -> str:
    """The job template: sweep.script, else sbatch/sweep.sbatch beside the package."""
    path = cfg["sweep"]["script"] or os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__)))), "sbatch", "sweep.sbatch")
    if not os.path.isfile(path):
        raise GpuhcError("sweep job template %s not found (set sweep.script to your copy of sbatch/sweep.sbatch)"
                         % path)
    return path


class Locked(Exception):
    pass


class SweepLock:
    """An exclusive flock on <state_dir>/sweep.lock (local disk, never the shared store), held
    for the whole run; a second sweep gets Locked at once."""

    def __init__(self, state_dir: str) -> None:
        self.path = os.path.join(state_dir, LOCK)
        self.fd = -1

    def __enter__(self) -> "SweepLock":
        from ..localstate import LOCK_MODE, open_mode

        os.makedirs(os.path.dirname(self.path), mode=0o755, exist_ok=True)
        self.fd = open_mode(self.path, os.O_RDWR | os.O_CREAT, LOCK_MODE)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self.fd)
            self.fd = -1
            raise Locked(self.path) from None
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.fd >= 0:
            os.close(self.fd)          # closing releases the lock
            self.fd = -1


def job_spec(cfg: Dict[str, Any], pick: Pick, script: str, suite: Optional[str], now: float) -> JobSpec:
    conf = cfg["sweep"]
    return JobSpec(script=script, args=["--suite", suite] if suite else [], name=job_name(pick.node),
                   nodelist=[pick.node], exclusive=True, time_limit=max(1, int(math.ceil(conf["time_limit"] / 60.0))),
                   deadline=now + float(conf["deadline"]), partition=conf["partition"] or ",".join(pick.partitions),
                   qos=conf["qos"], nice=conf["nice"], output=conf["output"])


def sweep(cfg: Dict[str, Any], partitions: Optional[Sequence[str]] = None, max_nodes: Optional[int] = None,
          interval: Optional[float] = None, suite: Optional[str] = None, dry_run: bool = False,
          slurm: Any = None) -> Result:
    """One `gpuhc sweep`. GpuhcError (exit 2) when it cannot run here; every Slurm or store
    failure is the Result's one-line ``error`` with exit code 3, and then nothing more is
    submitted (every read comes before the first submission)."""
    from ..acting import slurm_backend

    if suite is not None and suite not in cfg["suites"]:
        raise GpuhcError("--suite %s: no such suite (defined: %s)" % (suite, ", ".join(sorted(cfg["suites"]))))
    for name, value in (("--max-nodes", max_nodes), ("--interval", interval)):
        if value is not None and value < 0:
            raise GpuhcError("%s %s: expected a number not below 0" % (name, value))
    script = template(cfg)
    if slurm is None:
        slurm = slurm_backend(cfg, time.monotonic() + float(cfg["sweep"]["timeout"]))
    if slurm is None:
        raise GpuhcError("no Slurm to submit through (slurm.backend: none, or Slurm is not configured on this host: "
                         "run gpuhc sweep where sbatch works)")
    if dry_run:
        return _run(cfg, slurm, partitions, max_nodes, interval, suite, script, dry_run=True)
    try:
        with SweepLock(cfg["state_dir"]):
            return _run(cfg, slurm, partitions, max_nodes, interval, suite, script, dry_run=False)
    except Locked as held:
        return Result(ran=False, why="another gpuhc sweep is running (lock %s held): nothing done" % held)


def _run(cfg: Dict[str, Any], slurm: Any, partitions: Optional[Sequence[str]], max_nodes: Optional[int],
         interval: Optional[float], suite: Optional[str], script: str, dry_run: bool) -> Result:
    from .. import localstate
    from ..store import Store, StoreError

    conf = cfg["sweep"]
    out = Result(dry_run=dry_run)
    try:
        views = slurm.nodes()
        reservations = slurm.reservation_list()
        jobs = slurm.jobs()
    except SlurmError as exc:
        return _failed(out, "Slurm did not answer, nothing submitted: %s" % exc)
    try:
        summaries = Store.from_config(cfg).summaries()
    except (StoreError, OSError) as exc:
        return _failed(out, "the store could not be read, nothing submitted: %s" % exc)
    if partitions:
        known = {p for v in views.values() for p in v.partitions}
        unknown = [p for p in partitions if p not in known]
        if unknown:
            raise GpuhcError("-p %s: no such partition (Slurm has: %s)" % (",".join(unknown), ",".join(sorted(known))))
    attempted = _attempts(localstate.read(cfg["state_dir"], ATTEMPTS))
    checked = last_checked(summaries)
    now = time.time()
    out.plan = plan(views, reservations, jobs, checked, now,
                    float(conf["interval"] if interval is None else interval),
                    int(conf["max_nodes"] if max_nodes is None else max_nodes), float(conf["max_idle_fraction"]),
                    partitions, attempted)
    if dry_run:
        out.quarantine = _quarantine(cfg, slurm, out, dry_run=True)
        return out
    for pick in out.plan.chosen:
        try:
            pick.job_id = slurm.submit(job_spec(cfg, pick, script, suite, now))
            pick.result = "submitted"
            attempted[pick.node] = now
        except SlurmError as exc:
            pick.result = "error"
            _failed(out, "sbatch for %s failed, no more submitted: %s" % (pick.node, exc))
            break
    # keep only what still orders a node: a submission newer than its newest record, of a node Slurm has
    keep = {n: t for n, t in attempted.items() if n in views and t > checked.get(n, (float("-inf"), ""))[0]}
    if out.plan.chosen and not localstate.write(cfg["state_dir"], ATTEMPTS, keep):
        out.notes.append("warning: could not save the submissions in %s (the next run orders by the store alone)"
                         % cfg["state_dir"])
    if out.exit_code == 0:
        out.quarantine = _quarantine(cfg, slurm, out, dry_run=False)
    return out


def _attempts(value: Any) -> Dict[str, float]:
    if not isinstance(value, dict):
        return {}
    return {n: float(t) for n, t in value.items()
            if isinstance(n, str) and isinstance(t, (int, float)) and not isinstance(t, bool)}


def _failed(out: Result, line: str) -> Result:
    out.error = line
    out.exit_code = 3
    return out


def _quarantine(cfg: Dict[str, Any], slurm: Any, out: Result, dry_run: bool) -> Dict[str, List[Dict[str, Any]]]:
    """After the submissions: reconcile quarantine leftovers (not in a dry run: it repairs), then
    with sweep.auto_quarantine start quarantine for the nodes quarantine_candidates names (its own
    cap and ownership rules apply; in a dry run, its plan only)."""
    result: Dict[str, List[Dict[str, Any]]] = {}
    if dry_run and not cfg["sweep"]["auto_quarantine"]:
        return result
    try:
        from . import quarantine
    except ImportError as exc:
        out.notes.append("quarantine step skipped: gpuhc.controller.quarantine is not available (%s)" % exc)
        return result
    try:
        if not dry_run:
            result["reconciled"] = list(quarantine.reconcile(cfg, slurm))
        if cfg["sweep"]["auto_quarantine"]:
            nodes = quarantine_candidates(slurm.nodes(), slurm.reservation_list())
            result["started"] = list(quarantine.start(cfg, slurm, nodes, dry_run=dry_run)) if nodes else []
    except SlurmError as exc:
        _failed(out, "quarantine step stopped, Slurm did not answer: %s" % exc)
    except Exception as exc:        # the jobs are submitted: their table is still printed
        _failed(out, "quarantine step failed: %s: %s" % (type(exc).__name__, exc))
    return result


def last_text(pick: Pick, now: Optional[float] = None) -> str:
    """"never", or when and by what a node was last deep-checked ("2026-12-01 10:00 sweep, 5.2 d ago")."""
    if pick.last_checked is None:
        return "never"
    age = (time.time() if now is None else now) - pick.last_checked
    ago = "%.0f min" % (age / 60) if age < 7200 else "%.1f h" % (age / 3600) if age < 172800 else "%.1f d" % (age / 86400)
    return "%s %s, %s ago" % (time.strftime("%Y-%m-%d %H:%M", time.localtime(pick.last_checked)), pick.last_context, ago)


def text(result: Result) -> str:
    """The table a person reads (cron mails it or logger keeps it)."""
    from ..output import table

    if not result.ran:
        return "gpuhc sweep: %s" % result.why
    lines = []
    chosen = result.plan.chosen
    if chosen:
        lines.append(table([[p.node, ",".join(p.partitions), last_text(p), p.job_id or ("-" if result.dry_run else
                                                                                      p.result)]
                            for p in chosen], ["NODE", "PARTITION", "LAST CHECKED", "JOB"]))
    else:
        lines.append("nothing to sweep")
    skipped = ", ".join("%d %s" % (n, why) for why, n in sorted(result.plan.skipped.items(), key=lambda kv: -kv[1]))
    if skipped:
        lines.append("not chosen: " + skipped)
    for step, rows in result.quarantine.items():
        lines.append("quarantine %s: %s" % (step, "none" if not rows else "; ".join(
            "%s %s%s" % (r.get("node"), r.get("result"), " (%s)" % r["why"] if r.get("why") else "") for r in rows)))
    if result.dry_run:
        lines.append("dry run: nothing submitted, nothing changed")
    return "\n".join(lines)
