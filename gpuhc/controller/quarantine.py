"""`gpuhc quarantine`: exclusive deep diagnostics on a suspect node, through a maintenance reservation.

Slurm runs no job on a drained node, even inside a reservation; so a node is quarantined by (1)
draining it (if it is not drained yet: running jobs finish, no new one starts), (2) creating a
``flags=maint,ignore_jobs`` reservation on that node alone, named ``gpuhc-quarantine-NODE``, (3)
resuming the node inside it (only the reservation's jobs can start there now), and (4) submitting
the quarantine job into it (``--reservation -w NODE --exclusive``, a time limit and a deadline).

The job (contexts/quarantine.py) drains the node again as its first act, so whatever ends it the
node stays out of service unless a verdict returns it; it records the verdict and acts on it. The
reservation cannot be deleted while its job runs: the job's epilog spawns ``gpuhc quarantine
--finish`` which waits for the job to leave Slurm and deletes it; ``--reconcile`` (run by `gpuhc
sweep`) repairs whatever is left (a reservation with no live job, a node that left quarantine
without a verdict). Reservations are deleted explicitly, never left to PURGE_COMP (Slurm 22.05
keeps a stale MAINTENANCE flag for minutes after a purge).

Planning (``plan``) is a pure function over node views, reservations and jobs; the rest talks to
Slurm through the backend and reads the store. Never touches a GPU.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence

from ..backends.slurm import JobInfo, JobSpec, NodeView, ReservationView, SlurmError
from ..model import Finding, Report, Severity
from ..policy import PREFIX, reason_severity
from ..text import clean

NAME_PREFIX = "gpuhc-quarantine-"
REQUESTED = PREFIX + " quarantine: requested"
LIVE = {"PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "SUSPENDED", "REQUEUED", "RESIZING", "STAGE_OUT",
        "SIGNALING"}
NEVER_RAN = {"DEADLINE", "CANCELLED", "BOOT_FAIL"}       # a job Slurm ended before it started
GONE = {"DOWN", "NOT_RESPONDING", "NO_RESPOND", "POWERED_DOWN", "POWERING_DOWN", "FUTURE"}
REASON_MAX = 200


def reservation_name(node: str) -> str:
    return NAME_PREFIX + node


def node_of(reservation: str) -> Optional[str]:
    return reservation[len(NAME_PREFIX):] if reservation.startswith(NAME_PREFIX) else None


def was_reason(reason: str) -> str:
    """The reason a node had before gpuhc's quarantine reasons wrapped it ("(was: ...)")."""
    text = reason
    while "(was: " in text:
        text = text.split("(was: ", 1)[1]
        text = text[:-1] if text.endswith(")") else text
    return text


def running_reason(job_id: str, was: str) -> str:
    return clean("%s quarantine job %s running (was: %s)" % (PREFIX, job_id, was), REASON_MAX)


@dataclass
class Step:
    """The plan for one node: ``result`` go | refused | skipped, why, and what will be done."""
    node: str
    result: str
    why: str = ""
    drain_first: bool = False
    was: str = ""                       # the reason the node had (kept in the new reason and the store)
    partition: str = ""
    takeover: bool = False

    def to_dict(self) -> Dict[str, Any]:
        return {"node": self.node, "result": self.result, "why": self.why, "drain_first": self.drain_first,
                "was": self.was, "partition": self.partition, "takeover": self.takeover}


def plan(nodes: Sequence[str], views: Dict[str, NodeView], reservations: Sequence[ReservationView],
         cfg: Dict[str, Any], force: bool = False) -> List[Step]:
    """Which nodes may enter quarantine now, and how. Refused: an unknown or down node, an operator's
    drain (unless ``force``: then taken over, the operator's reason kept), a node already in a
    reservation, and nodes past the caps (quarantine.max_concurrent in total, max_per_partition)."""
    conf = cfg["quarantine"]
    held = {node for node in (node_of(r.name) for r in reservations) if node}
    by_partition: Dict[str, int] = {}
    for node in held:
        holder = views.get(node)
        for part in (holder.partitions if holder else []):
            by_partition[part] = by_partition.get(part, 0) + 1
    total = len(held)
    busy = {n for r in reservations if r.active for n in r.nodes}
    out = []
    for node in nodes:
        view = views.get(node)
        if view is None:
            out.append(Step(node, "refused", "not a Slurm node"))
            continue
        if node in held:
            out.append(Step(node, "skipped", "already in quarantine (%s)" % reservation_name(node)))
            continue
        down = sorted(view.states & GONE)
        if down:
            out.append(Step(node, "refused", "node is %s: a quarantine job cannot run there" % ",".join(down).lower()))
            continue
        if node in busy:
            out.append(Step(node, "refused", "in another reservation: end it first"))
            continue
        step = Step(node, "go", partition=(conf["partition"] or (view.partitions[0] if view.partitions else "")))
        if view.drained or view.down:
            step.was = view.reason
            if not view.owned_by_gpuhc:
                if not force:
                    out.append(Step(node, "refused", "drained by someone else (%s): --force takes it over"
                                    % (view.reason or "no reason")))
                    continue
                step.takeover = True
        else:
            step.drain_first, step.was = True, REQUESTED
        parts = view.partitions or [""]
        if total >= conf["max_concurrent"]:
            out.append(Step(node, "refused", "cap: %d nodes in quarantine (quarantine.max_concurrent %d)"
                            % (total, conf["max_concurrent"])))
            continue
        full = [p for p in parts if p and by_partition.get(p, 0) >= conf["max_per_partition"]]
        if full:
            out.append(Step(node, "refused", "cap: %d nodes of partition %s in quarantine "
                            "(quarantine.max_per_partition %d)" % (by_partition[full[0]], full[0],
                                                                    conf["max_per_partition"])))
            continue
        total += 1
        for p in parts:
            by_partition[p] = by_partition.get(p, 0) + 1
        step.why = "taken over from an operator's drain" if step.takeover else (
            "drain first" if step.drain_first else "drained by gpuhc")
        out.append(step)
    return out


def default_script(name: str) -> Optional[str]:
    """sbatch/NAME beside the package (a checkout or an editable install), else /usr/share/gpuhc."""
    here = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    for path in (os.path.join(here, "sbatch", name), os.path.join("/usr/share/gpuhc/sbatch", name)):
        if os.path.isfile(path):
            return path
    return None


def _spec(cfg: Dict[str, Any], step: Step) -> JobSpec:
    conf = cfg["quarantine"]
    script = conf["script"] or default_script("quarantine.sbatch")
    if not script:
        from ..errors import ConfigError

        raise ConfigError("quarantine.script: no sbatch/quarantine.sbatch found; set the path of the job template")
    env = {"GPUHC_QUARANTINE_WAS": step.was}
    if cfg.get("_path"):
        env["GPUHC_CONFIG"] = cfg["_path"]
    return JobSpec(script=script, name=reservation_name(step.node), nodelist=[step.node], exclusive=True,
                   reservation=reservation_name(step.node), time_limit=max(1, int(conf["time_limit"] // 60)),
                   # quarantine.deadline is how long the job may wait to start: Slurm's --deadline is
                   # when it must have ended (a deadline closer than the time limit cancels it at once)
                   deadline=time.time() + float(conf["deadline"]) + float(conf["time_limit"]),
                   partition=step.partition,
                   qos=conf["qos"] or "", comment="gpuhc quarantine of %s" % step.node,
                   output=conf["output"], env=env)


def start(cfg: Dict[str, Any], slurm: Any, nodes: Sequence[str], force: bool = False,
          dry_run: bool = False) -> List[Dict[str, Any]]:
    """Quarantine ``nodes``: one dict per node (node, result, why, reservation, job_id). Nothing is
    left half-done: a step that fails undoes the ones before it (the node stays drained)."""
    views = slurm.nodes(nodes)
    steps = plan(nodes, views, slurm.reservation_list(), cfg, force)
    out = []
    for step in steps:
        row = dict(step.to_dict(), reservation="", job_id="")
        if step.result != "go":
            out.append(row)
            continue
        row["reservation"] = reservation_name(step.node)
        if dry_run:
            row.update(result="planned", why=step.why + "; would create %s and submit the quarantine job"
                       % row["reservation"])
            out.append(row)
            continue
        try:
            row["job_id"] = _enter(cfg, slurm, step)
            row["result"] = "started"
        except (SlurmError, OSError) as exc:
            row.update(result="error", why=str(exc))
        out.append(row)
    return out


def _enter(cfg: Dict[str, Any], slurm: Any, step: Step) -> str:
    node, name, conf = step.node, reservation_name(step.node), cfg["quarantine"]
    if step.drain_first:
        slurm.drain(node, REQUESTED)
    elif step.takeover:
        slurm.drain(node, clean("%s quarantine (was: %s)" % (PREFIX, step.was), REASON_MAX))
    minutes = int((conf["time_limit"] + conf["deadline"] + conf["grace"]) // 60) + 1
    slurm.create_reservation(name, [node], duration=minutes, users=(conf["reservation_user"],))
    try:
        slurm.resume(node)                      # only the reservation's jobs can start there now
        job_id = slurm.submit(_spec(cfg, step))
    except Exception:       # whatever failed, nothing is left half-done
        _undo(slurm, node, name, step.was if step.was != REQUESTED else REQUESTED)
        raise
    refused = _refused_at_once(slurm, job_id)
    if refused:         # Slurm dropped the job as it came (its deadline, a limit): no quarantine runs
        _undo(slurm, node, name, step.was if step.was != REQUESTED else REQUESTED)
        raise SlurmError("Slurm ended quarantine job %s at once (%s): node drained as it came" % (job_id, refused))
    return job_id


def _refused_at_once(slurm: Any, job_id: str, settle: float = 2.0) -> str:
    """Why Slurm ended a just-submitted job without running it ('' when it is pending or running):
    a deadline closer than its time limit, a QOS or partition limit. Looked at for ``settle`` s."""
    until = time.monotonic() + settle
    while True:
        found = [j for j in slurm.jobs(ids=[job_id]) if j.job_id == str(job_id)]
        if found and found[0].state in NEVER_RAN:
            return "%s%s" % (found[0].state, ", " + found[0].reason if found[0].reason else "")
        if (found and found[0].state not in ("PENDING", "CONFIGURING")) or time.monotonic() > until:
            return ""           # it runs (or ran: its epilog's finisher takes it from here)
        time.sleep(0.5)


def _undo(slurm: Any, node: str, name: str, reason: str) -> None:
    try:
        slurm.drain(node, reason if reason.startswith(PREFIX) else clean("%s quarantine failed (was: %s)"
                                                                          % (PREFIX, reason), REASON_MAX))
    finally:
        slurm.delete_reservation(name, missing_ok=True)


@dataclass
class Entry:
    """One node in quarantine, for --list."""
    node: str
    reservation: str
    job_id: str = ""
    job_state: str = ""
    started: Optional[int] = None
    reason: str = ""
    ends: Optional[int] = None

    def to_dict(self) -> Dict[str, Any]:
        return dict(self.__dict__)


def quarantine_jobs(slurm: Any) -> Dict[str, JobInfo]:
    """node -> its newest quarantine job Slurm still knows."""
    out: Dict[str, JobInfo] = {}
    for job in slurm.jobs():
        node = node_of(job.name or "")
        if node and (node not in out or int(job.job_id) > int(out[node].job_id)):
            out[node] = job
    return out


def listing(cfg: Dict[str, Any], slurm: Any) -> List[Entry]:
    """Every node in quarantine: its reservation, job and state, when, and the reason it came for."""
    reservations = [r for r in slurm.reservation_list() if node_of(r.name)]
    jobs = quarantine_jobs(slurm)
    views = slurm.nodes([node_of(r.name) for r in reservations]) if reservations else {}
    out = []
    for r in reservations:
        node = node_of(r.name) or ""
        job, view = jobs.get(node), views.get(node)
        out.append(Entry(node, r.name, job.job_id if job else "", job.state if job else "",
                         r.start, was_reason(view.reason) if view else "", r.end))
    return out


def cancel(cfg: Dict[str, Any], slurm: Any, nodes: Sequence[str]) -> List[Dict[str, Any]]:
    """End quarantines cleanly: job cancelled, the node drained again with the reason it came with
    (a gpuhc drain, or the operator's one kept), reservation deleted."""
    jobs = quarantine_jobs(slurm)
    views = slurm.nodes(nodes)
    held = {node_of(r.name) for r in slurm.reservation_list()}
    out = []
    for node in nodes:
        job = jobs.get(node)
        if node not in held and not (job and job.state in LIVE):
            out.append({"node": node, "result": "skipped", "why": "not in quarantine"})
            continue
        try:
            if job and job.state in LIVE:
                slurm.cancel(job.job_id)
            view = views.get(node)
            was = was_reason(view.reason) if view else ""
            if was == REQUESTED or not was:
                was = REQUESTED.replace("requested", "cancelled")
            slurm.drain(node, clean(was, REASON_MAX))
            _wait_gone(slurm, job, 30.0)
            slurm.delete_reservation(reservation_name(node), missing_ok=True)
            out.append({"node": node, "result": "cancelled", "why": "drained: %s" % was})
        except SlurmError as exc:
            out.append({"node": node, "result": "error", "why": str(exc)})
    return out


def _wait_gone(slurm: Any, job: Optional[JobInfo], limit: float) -> Optional[JobInfo]:
    """Wait (at most ``limit`` s) until ``job`` is no longer live in Slurm; its last view."""
    if job is None:
        return None
    deadline = time.monotonic() + limit
    last = job
    while True:
        found = [j for j in slurm.jobs(ids=[job.job_id]) if j.job_id == job.job_id]
        last = found[0] if found else last
        if not found or found[0].state not in LIVE or time.monotonic() > deadline:
            return last
        time.sleep(1.0)


def verdict_of(store: Any, node: str, job_id: Optional[str]) -> Optional[Report]:
    """The quarantine report (with its verdict) of job ``job_id`` on ``node``, from the store."""
    try:
        history = store.history(node)
    except Exception:
        return None
    for report in history:
        if report.context == "quarantine" and report.verdict and (job_id is None or report.job_id == str(job_id)):
            return report
    return None


def finish(cfg: Dict[str, Any], slurm: Any, node: str, job_id: Optional[str] = None,
           wait: float = 0.0) -> Dict[str, Any]:
    """After a quarantine job: once it has left Slurm (waiting up to ``wait`` s), make sure the node
    carries its verdict (a job that ended without one leaves the node drained, saying so, and a
    record of it in the store), then delete the reservation. Safe to run twice."""
    from ..store import Store

    jobs = quarantine_jobs(slurm)
    job = jobs.get(node)
    if job_id is not None and (job is None or job.job_id != str(job_id)):
        found = [j for j in slurm.jobs(ids=[str(job_id)]) if j.job_id == str(job_id)]
        job = found[0] if found else job
    if job is not None and job.state in LIVE:
        job = _wait_gone(slurm, job, wait)
        if job is not None and job.state in LIVE:
            return {"node": node, "result": "waiting", "why": "job %s still %s" % (job.job_id, job.state)}
    store = Store.from_config(cfg)
    the_job = str(job_id or (job.job_id if job else "")) or None
    report = verdict_of(store, node, the_job)
    view = slurm.node(node)
    why = ""
    if report is None and view is not None:
        state = job.state if job else "gone"
        was = was_reason(view.reason)
        severity = reason_severity(was) or Severity.RESET
        text = "%s %s quarantine ended without a verdict (job %s %s) (was: %s)" % (
            PREFIX, severity.value, the_job or "?", state, was or "no reason")
        if not (view.drained and view.reason.startswith(PREFIX + " " + severity.value + " quarantine ended")):
            slurm.drain(node, clean(text, REASON_MAX))
        _record_no_verdict(store, cfg, node, the_job, state, was)
        why = "no verdict: drained"
    elif report is not None:
        why = "verdict %s" % report.verdict
    slurm.delete_reservation(reservation_name(node), missing_ok=True)
    return {"node": node, "result": "finished", "why": why or "nothing to do", "job_id": the_job or ""}


def _record_no_verdict(store: Any, cfg: Dict[str, Any], node: str, job_id: Optional[str], state: str,
                       was: str) -> None:
    now = time.time()
    report = Report(node, "quarantine", "", now, now,
                    [Finding("quarantine", Severity.ERROR, "quarantine job %s ended without a verdict (%s); was: %s"
                             % (job_id or "?", state, was or "no reason"),
                             remediation="gpuhc quarantine %s runs it again" % node)],
                    job_id=job_id, suite="quarantine", verdict="INCONCLUSIVE")
    report.action = "drain"
    try:
        store.record(report)
    except Exception:
        pass


def reconcile(cfg: Dict[str, Any], slurm: Any) -> List[Dict[str, Any]]:
    """Repair what a quarantine left behind: every gpuhc reservation whose job is gone is finished
    (verdict applied or the node drained for the lack of one, reservation deleted), and a node still
    showing a running quarantine's reason with no live job gets the same."""
    out = []
    jobs = quarantine_jobs(slurm)
    reserved = {node_of(r.name): r for r in slurm.reservation_list() if node_of(r.name)}
    for node in sorted(n for n in reserved if n):
        job = jobs.get(node)
        if job is not None and job.state in LIVE:
            continue
        out.append(finish(cfg, slurm, node, job.job_id if job else None))
    running = PREFIX + " quarantine job "
    for name, view in sorted(slurm.nodes().items()):
        if name in reserved or not view.reason.startswith(running):
            continue
        job = jobs.get(name)
        if job is None or job.state not in LIVE:
            job_id = view.reason[len(running):].split(None, 1)[0]
            out.append(finish(cfg, slurm, name, job_id if job_id.isdigit() else None))
    return out
