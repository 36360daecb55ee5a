"""The Slurm contexts (prolog, epilog, healthcheck) and resume: run the checks, decide with
policy, act through Slurm, record in the store, print one line per finding.

Order matters: drain first, then record, then exit non-zero from the prolog so Slurm
requeues the job and keeps gpuhc's reason. Slurm is asked about the node only when there
is something to act on, so a healthy prolog makes no Slurm call at all.
"""
from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from . import config as C
from . import policy, session, syslogging
from .backends.slurm import JobView, NodeView, Slurm, SlurmError
from .backends.slurm_cli import SlurmCli
from .bounded import Overtime, call_within
from .model import Report, Severity

PROLOG, EPILOG, HEALTHCHECK = "prolog", "epilog", "healthcheck"


def log(line: str) -> None:
    """A warning of the Slurm side (a drain that failed, Slurm not answering): stderr and syslog."""
    print("gpuhc: %s" % line, file=sys.stderr)
    syslogging.send(["gpuhc: %s" % line], "LOG_WARNING")


def slurm_backend(cfg: Dict[str, Any], deadline: Optional[float] = None) -> Optional[Slurm]:
    """The Slurm backend, or None where it is turned off or Slurm is not configured on this host.
    With ``deadline`` (time.monotonic()), no Slurm command runs past it. ``slurm.backend``: cli,
    pyslurm (the CLI with a warning where pyslurm is missing or built for another Slurm), auto
    (pyslurm where usable, quietly), none. pyslurm is imported only for pyslurm and auto."""
    choice = cfg["slurm"]["backend"]
    if choice == "none":
        return None
    slurm = SlurmCli(timeout=float(cfg["slurm"]["timeout"]), deadline=deadline)
    if not slurm.available():
        return None
    if choice in ("pyslurm", "auto"):
        from .backends.slurm_pyslurm import SlurmPyslurm

        fast = SlurmPyslurm(timeout=slurm.timeout, deadline=deadline)
        if fast.available():
            return fast
        if choice == "pyslurm":
            log("warning: slurm.backend pyslurm not usable (%s): using the command-line tools" % fast.why_not)
    return slurm


def _left(deadline: Optional[float]) -> Optional[float]:
    return None if deadline is None else max(0.0, deadline - time.monotonic())


def open_store(cfg: Dict[str, Any], deadline: Optional[float] = None):
    """The store; with ``deadline``, its reads give up when the run's budget is used up."""
    from .store import Store

    store = Store.from_config(cfg)
    if deadline is not None:
        store.read_timeout = min(store.read_timeout, max(0.1, deadline - time.monotonic()))
    return store


def record(cfg: Dict[str, Any], report: Report, deadline: Optional[float] = None) -> None:
    """Record in the store within what is left of the budget (else the local spool takes it); a
    failure is a warning, never a change of outcome."""
    try:
        open_store(cfg).record(report, timeout=_left(deadline))
    except Exception as exc:     # the store bounds its own time; this guards against the rest
        log("warning: result not recorded: %s" % exc)


def _nonzero(status: Optional[str]) -> bool:
    """A non-zero part in an exit status: "3", "0:15" (exit:signal)."""
    return any(part.strip() not in ("", "0") for part in (status or "").split(":"))


def job_failed(env: Dict[str, str], job: Optional[JobView] = None) -> bool:
    """From the epilog's environment: a non-zero exit code or a signal, of the job's script or of
    any of its steps (SLURM_JOB_DERIVED_EC, the highest of the steps': an `srun` that crashed
    under a script that went on and exited 0); or the same in Slurm's view of the job (``job``),
    which knows what the environment does not for a job the controller ended: a cancelled,
    timed-out or preempted job's epilog sees exit 0:0."""
    if _nonzero(env.get("SLURM_JOB_DERIVED_EC")):
        return True
    if job is not None and (_nonzero(job.exit_code) or _nonzero(job.derived_exit_code)):
        return True
    code2 = env.get("SLURM_JOB_EXIT_CODE2")          # "exit:signal"
    if code2:
        return _nonzero(code2)
    return _nonzero(env.get("SLURM_JOB_EXIT_CODE"))


def _job(slurm: Optional[Slurm], env: Dict[str, str]) -> Optional[JobView]:
    if slurm is None or not env.get("SLURM_JOB_ID"):
        return None
    try:
        return slurm.job(env["SLURM_JOB_ID"])
    except SlurmError as exc:
        log("warning: job unreadable: %s" % exc)
        return None


def suite_for(cfg: Dict[str, Any], context: str, env: Dict[str, str],
              slurm: Optional[Slurm] = None) -> str:
    """The context's suite; for a failed job the epilog's failure suite, unless the operator
    allows opting out and the job's comment holds the token. Slurm is asked about the job only
    where config says so: for a job that looks clean (``epilog.ask_slurm_exit_code``) or to
    read the opt-out comment of a failed one."""
    base = cfg["context_suites"].get(context, context)
    if context != EPILOG:
        return base
    job = None
    failed = job_failed(env)
    if not failed and cfg["epilog"]["ask_slurm_exit_code"]:
        job = _job(slurm, env)
        failed = job_failed(env, job)
    if not failed:
        return base
    optout = cfg["job_optout"]
    if optout["allowed"]:
        job = job or _job(slurm, env)
        if job is not None and optout["token"] in job.comment:
            return base
    return cfg["epilog"]["failure_suite"]


def job_gpus(env: Dict[str, str]) -> Optional[set]:
    """The job's GPU ids on this node from SLURM_JOB_GPUS ("0,1,4" or "0-3,6"); None when unset or
    unreadable (then every GPU counts as the job's)."""
    raw = (env.get("SLURM_JOB_GPUS") or "").strip()
    if not raw:
        return None
    out = set()
    try:
        for part in raw.split(","):
            low, _, high = part.strip().partition("-")
            out.update(range(int(low), int(high or low) + 1))
    except ValueError:
        return None
    return out


@dataclass
class Outcome:
    report: Report
    action: policy.Action
    exit_code: int


def _view(slurm: Optional[Slurm], node: str) -> Optional[NodeView]:
    if slurm is None:
        return None
    try:
        return slurm.node(node)
    except SlurmError as exc:
        log("warning: %s" % exc)
        return None


def _act(slurm: Slurm, node: str, action: policy.Action, view: Optional[NodeView] = None) -> policy.Action:
    """Carry out a drain, comment or resume; a resume clears the node comment when gpuhc wrote it
    (``view``: the node as seen before)."""
    try:
        if action.kind == policy.DRAIN:
            slurm.drain(node, action.reason)
        elif action.kind == policy.COMMENT:
            slurm.set_comment(node, action.reason)
        elif action.kind == policy.RESUME:
            slurm.resume(node)
            if view is not None and view.comment and policy.comment_is_ours(view):
                slurm.set_comment(node, "")
    except SlurmError as exc:
        log("warning: could not %s %s: %s" % (action.kind, node, exc))
        return policy.Action(policy.SKIP, action.reason, "Slurm refused: %s" % exc)
    return action


def kill_leftovers(ctx: Any, job_uid: Optional[int] = None, deadline: Optional[float] = None) -> List[Any]:
    """The epilog's optional clean-up: SIGKILL the compute processes still on the job's GPUs after
    the job. Where the job's GPUs are not known (no SLURM_JOB_GPUS: a CPU-only job on a shared node,
    or GPUs not set up as a GRES), only processes of the job's user (SLURM_JOB_UID, never root) are
    leftovers: another job's training must not die with it. A finding says what was killed; a
    simulated node's processes are only reported. Each GPU is asked as a check asks it: within the
    processes check's timeout and before ``deadline``; a call that does not return is the check's
    REBOOT finding (a process stuck on a hung GPU is what is left after such a job)."""
    import signal

    from .backends.gpu import GpuError
    from .model import Finding
    from .runner import hang_finding

    if ctx.gpu_unavailable() or ctx.gpu.kind == "sim":
        return []
    out = []
    for ref in ctx.healthy_gpus():
        if not ctx.job_owns(ref.index):       # another job's GPU on a shared node
            continue
        wait = C.check_timeout(ctx.config, "processes")
        if deadline is not None:
            wait = min(wait, deadline - time.monotonic())
            if wait <= 0:
                log("warning: leftover processes not looked for: the epilog's time for checks is used up")
                break
        try:
            procs = call_within(lambda index=ref.index: ctx.gpu.processes(index), wait, "gpuhc-check")
        except Overtime:
            out.append(hang_finding(ctx, "processes", wait))
            break
        except GpuError:
            continue
        killed = []
        for proc in procs:
            pid = int(proc.get("pid") or 0)
            if pid <= 1 or pid == os.getpid():
                continue
            if ctx.job_gpus is None and (not job_uid or _owner(pid) != job_uid):
                continue
            try:
                os.kill(pid, signal.SIGKILL)
                killed.append(str(pid))
            except OSError:
                pass
        if killed:
            out.append(Finding("processes", Severity.MONITOR, "killed %d leftover process(es): pid %s"
                               % (len(killed), ",".join(killed)), gpu=ref))
    return out


def job_owns(ctx: Any, finding: Any) -> bool:
    """Whether a finding of this run is its job's doing: not on another job's GPU (shared node),
    not an event the xid check saw before the job began (``before_job``)."""
    if finding is None or finding.metrics.get("before_job"):
        return False
    return finding.gpu is None or ctx.job_owns(finding.gpu.index)


def _owner(pid: int) -> Optional[int]:
    try:
        return os.stat("/proc/%d" % pid).st_uid
    except OSError:
        return None


def decide_and_act(cfg: Dict[str, Any], report: Report, slurm: Optional[Slurm],
                   deadline: Optional[float] = None, owns: Optional[Callable[[Any], bool]] = None) -> policy.Action:
    overall = report.overall
    if overall is Severity.PASS or overall is Severity.ERROR:
        if report.context == HEALTHCHECK and overall is Severity.PASS:
            return healthy_again(cfg, report, slurm, deadline)
        return policy.decide(report, None, cfg)       # no Slurm call on the pass path
    if overall is Severity.MONITOR and not cfg["slurm"]["comment_monitor"]:
        return policy.Action(policy.NONE, why="monitor: comments disabled")
    view = _view(slurm, report.node)
    nodes = None
    if overall.unhealthy and view is not None and not view.drained and cfg["breaker"]["enabled"]:
        try:
            nodes = slurm.nodes() if slurm else None
        except SlurmError as exc:
            log("warning: breaker cannot count drains: %s" % exc)
            return policy.Action(policy.SKIP, policy.drain_reason(report, owns), "breaker state unknown: %s" % exc)
    action = policy.decide(report, view, cfg, nodes, owns)
    if slurm is None and action.kind == policy.SKIP:
        action = policy.Action(policy.SKIP, action.reason,
                               "no Slurm to act through (slurm.backend: none, or Slurm not configured on this host)")
    if slurm is not None and action.kind in (policy.DRAIN, policy.COMMENT):
        action = _act(slurm, report.node, action)
        if action.kind == policy.DRAIN and nodes is not None:
            action = _breaker_after_drain(cfg, slurm, report.node, action, deadline)
    return action


def _breaker_after_drain(cfg: Dict[str, Any], slurm: Slurm, node: str, action: policy.Action,
                         deadline: Optional[float]) -> policy.Action:
    """The breaker counted the drains before this one, but the prologs of one job start together
    and each counted before any drained. So once drained, wait ``breaker.settle`` seconds for the
    others' drains to show, count again, and undo this drain when the drains that came first
    already fill the limit (only while the reason is still the one written here)."""
    left = _left(deadline)
    time.sleep(max(0.0, min(float(cfg["breaker"]["settle"]), left / 2 if left is not None else 1e9)))
    try:
        nodes = slurm.nodes()
    except SlurmError as exc:
        log("warning: breaker cannot recount after draining %s, drain kept: %s" % (node, exc))
        return action
    view = nodes.get(node)
    if view is None or view.reason != action.reason:
        return action
    why = policy.breaker_open(view, nodes, cfg, first=True)
    if not why:
        return action
    undone = _act(slurm, node, policy.Action(policy.RESUME, why=why))
    if undone.kind != policy.RESUME:
        return action
    return policy.Action(policy.WOULD_DRAIN, action.reason, why + " (drained at the same moment as others: undone)")


def healthy_again(cfg: Dict[str, Any], report: Report, slurm: Optional[Slurm],
                  deadline: Optional[float] = None) -> policy.Action:
    """A pass outside the prolog (healthcheck, sweep): the node comment gpuhc set for a MONITOR
    finding goes, and a gpuhc drain may be resumed on enough evidence."""
    view = _view(slurm, report.node)
    if slurm is not None and view is not None and view.comment.startswith(policy.PREFIX + " MONITOR"):
        _act(slurm, report.node, policy.Action(policy.COMMENT, "", "monitor finding gone"))
    return consider_resume(cfg, report.node, slurm, latest=report, deadline=deadline, view=view)


def consider_resume(cfg: Dict[str, Any], node: str, slurm: Optional[Slurm],
                    latest: Optional[Report] = None, deadline: Optional[float] = None,
                    view: Optional[NodeView] = None) -> policy.Action:
    """Automatic resume of a gpuhc drain on enough evidence (healthcheck context, sweep)."""
    view = view if view is not None else _view(slurm, node)
    if view is None or not view.drained or not view.owned_by_gpuhc:
        return policy.Action(policy.NONE, why="healthy")
    try:
        history = open_store(cfg, deadline).history(node)
    except Exception as exc:
        log("warning: history unreadable, no resume: %s" % exc)
        return policy.Action(policy.NONE, why="history unreadable")
    if latest is not None:
        history = [latest] + [r for r in history if r.started < latest.started]
    drained_by = next((r for r in history if r.action == policy.DRAIN), None)
    action = policy.may_resume(view, history, cfg, drained_by)
    if action.kind == policy.RESUME and slurm is not None:
        action = _act(slurm, node, action, view)
    return action


def run_context(cfg: Dict[str, Any], context: str, node: Optional[str] = None, simulate: Optional[str] = None,
                env: Optional[Dict[str, str]] = None, echo: bool = True) -> Outcome:
    """One Slurm context on this node: checks, then drain/comment/resume, record, and one line per
    finding on stdout (``echo``) and in syslog."""
    env = dict(os.environ if env is None else env)
    deadline = time.monotonic() + C.budget(cfg, context)     # checks, Slurm and the store together
    syslogging.until(deadline)
    slurm = slurm_backend(cfg, deadline)
    suite = suite_for(cfg, context, env, slurm)
    report, _, ctx = session.run(cfg, context, suite=suite, node=node, simulate=simulate,
                                 job_id=env.get("SLURM_JOB_ID"), job_gpus=job_gpus(env), deadline=deadline)
    if context == EPILOG and cfg["epilog"]["kill_leftover_processes"]:
        uid = env.get("SLURM_JOB_UID", "")
        report.findings.extend(kill_leftovers(ctx, int(uid) if uid.isdigit() else None,
                                              C.checks_deadline(cfg, context, deadline)))
    action = decide_and_act(cfg, report, slurm, deadline, owns=lambda f: job_owns(ctx, f))
    if action.kind != policy.NONE:
        report.action = action.kind
    record(cfg, report, deadline)
    lines = finding_lines(report, action)
    for line in lines if echo else ():
        print(line)
    to_syslog(lines, report.overall)
    code = 0
    if context == PROLOG and report.overall.unhealthy:
        # requeue the job only where gpuhc owns the node's state: drained now, or already by gpuhc
        code = 1 if action.kind in (policy.DRAIN, policy.HELD) else 0
    return Outcome(report, action, code)


def to_syslog(lines: List[str], overall: Severity) -> None:
    """Slurm discards a prolog's output: the lines also go to syslog (bounded: see syslogging)."""
    syslogging.send(lines, "LOG_WARNING" if overall.unhealthy else "LOG_INFO")


def finding_lines(report: Report, action: policy.Action) -> List[str]:
    """What Slurm's logs get: one line per finding that is not a pass, then the outcome."""
    out = []
    for f in report.top_findings():
        if f.severity in (Severity.PASS, Severity.SKIP):
            continue
        where = " " + f.where() if f.where() else ""
        out.append("gpuhc %s %s %s%s: %s" % (report.context, f.severity.value, f.check, where, f.message))
    tail = "gpuhc %s %s on %s" % (report.context, report.overall.value, report.node)
    if report.job_id:
        tail += " job %s" % report.job_id
    if action.kind != policy.NONE or action.why not in ("healthy", ""):
        tail += ": %s%s" % (action.kind, " (%s)" % action.why if action.why else "")
    out.append(tail)
    return out


def slurm_view(cfg: Dict[str, Any], names: Optional[Sequence[str]] = None) -> Optional[Dict[str, Dict[str, Any]]]:
    """Slurm's view of every node (or of ``names``) for `gpuhc status`, `show` and `export`; None
    without Slurm (they then read the store alone)."""
    slurm = slurm_backend(cfg)
    if slurm is None:
        return None
    try:
        nodes = slurm.nodes(names)
    except SlurmError as exc:
        log("warning: showing the store alone: %s" % exc)
        return None
    reservations: Dict[str, str] = {}
    if any(v.states & {"MAINTENANCE", "MAINT", "RESERVED"} for v in nodes.values()):
        try:
            reservations = slurm.reservations()      # quarantine runs in a reservation
        except SlurmError as exc:
            log("warning: reservations unreadable: %s" % exc)
    return {name: {"state": sorted(v.states), "reason": v.reason, "partitions": v.partitions,
                   "reservation": reservations.get(name, "")}
            for name, v in nodes.items()}


def resume_nodes(cfg: Dict[str, Any], nodes: Sequence[str], force: bool) -> List[Tuple[str, str, str]]:
    """`gpuhc resume`: (node, result, why) per node. Never touches a reason that is not gpuhc's."""
    slurm = slurm_backend(cfg)
    if slurm is None:
        return [(n, "error", "no Slurm here (slurm.backend: none, or no slurm.conf)") for n in nodes]
    try:
        views = slurm.nodes(nodes)
    except SlurmError as exc:
        return [(n, "error", str(exc)) for n in nodes]
    out = []
    store = open_store(cfg)
    for node in nodes:
        view = views.get(node)
        if view is None:
            out.append((node, "error", "not a Slurm node"))
        elif not view.drained:
            out.append((node, "skipped", "not drained"))
        elif not view.owned_by_gpuhc:
            out.append((node, "refused", "drained by someone else: %s" % (view.reason or "no reason")))
        elif force:
            store.acknowledge(node)
            action = _act(slurm, node, policy.Action(policy.RESUME, why="forced by operator"), view)
            out.append((node, "resumed" if action.kind == policy.RESUME else "error", action.why))
        else:
            history = store.history(node)
            drained_by = next((r for r in history if r.action == policy.DRAIN), None)
            action = policy.may_resume(view, history, cfg, drained_by, manual=True)
            if action.kind == policy.RESUME:
                action = _act(slurm, node, action, view)
            out.append((node, "resumed" if action.kind == policy.RESUME else "kept", action.why))
    return out
