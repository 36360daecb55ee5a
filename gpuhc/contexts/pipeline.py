"""The one pipeline every node-side context runs: the suite under one budget (checks, Slurm and
the store together), then decide and act through Slurm, then record, then the lines Slurm's logs
get. What differs between contexts is a NodeContext (one per module in this package)."""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Set

from .. import config, policy, session, syslogging
from ..acting import decide_and_act, log, slurm_backend, time_left
from ..backends.slurm import Slurm
from ..model import Finding, Report, Severity
from ..text import clean


@dataclass
class Request:
    """What the caller asked of this run (the command line, or Slurm's environment)."""
    env: Dict[str, str]
    node: Optional[str] = None
    simulate: Optional[str] = None
    suite: Optional[str] = None
    checks: List[str] = field(default_factory=list)
    record: bool = True


@dataclass
class Outcome:
    report: Report
    action: policy.Action
    exit_code: int
    detection: Any = None
    run_ctx: Any = None                                  # the checks' Context (GPU backend, inventory)
    lines: List[str] = field(default_factory=list)       # one per finding, then the outcome (Slurm's logs)
    notes: List[str] = field(default_factory=list)       # warnings for stderr


class NodeContext:
    """What one context does differently; the defaults are the Slurm contexts'."""
    name = ""
    acts = True            # drains, comments or resumes through Slurm
    to_syslog = True       # slurmd discards a prolog's output: its lines go to syslog too

    def suite(self, cfg: Dict[str, Any], req: Request, slurm: Optional[Slurm]) -> str:
        return req.suite or cfg["context_suites"].get(self.name, self.name)

    def after_checks(self, cfg: Dict[str, Any], req: Request, run_ctx: Any, deadline: float) -> List[Finding]:
        """Findings of a step that follows the checks (the epilog's clean-up)."""
        return []

    def owns(self, run_ctx: Any) -> Optional[Callable[[Any], bool]]:
        """Which findings are this run's job's doing (the drain reason names only those)."""
        return None

    def decide(self, cfg: Dict[str, Any], report: Report, slurm: Optional[Slurm], deadline: float,
               owns: Optional[Callable[[Any], bool]]) -> policy.Action:
        return decide_and_act(cfg, report, slurm, deadline, owns)

    def record(self, cfg: Dict[str, Any], report: Report, req: Request, deadline: float) -> List[str]:
        """Record in the store within what is left of the budget (else the local spool takes it); a
        failure is a warning, never a change of outcome."""
        try:
            from ..store import Store

            Store.from_config(cfg).record(report, timeout=time_left(deadline))
        except Exception as exc:     # the store bounds its own time; this guards against the rest
            log("warning: result not recorded: %s" % exc)
        return []

    def exit_code(self, report: Report, action: policy.Action) -> int:
        return 0

    def after_record(self, cfg: Dict[str, Any], req: Request, report: Report) -> List[str]:
        """A last step once the result is recorded (the epilog of a quarantine job); notes for stderr."""
        return []


def run(cfg: Dict[str, Any], context: NodeContext, node: Optional[str] = None, simulate: Optional[str] = None,
        env: Optional[Dict[str, str]] = None, suite: Optional[str] = None, checks=(), record: bool = True,
        progress: Optional[Callable[[str], None]] = None,
        started: Optional[float] = None) -> Outcome:
    """One context on this node: checks, then drain/comment/resume, record, and the lines."""
    req = Request(env=dict(os.environ if env is None else env), node=node, simulate=simulate, suite=suite,
                  checks=list(checks), record=record)
    # checks, Slurm and the store together, counted from the process's exec (interpreter start,
    # imports and config load are inside the budget, as slurmd counts them)
    # (``started``: time.monotonic() when the process began, passed by the command line; a caller
    # that runs the pipeline inside a longer-lived process counts from now)
    deadline = (time.monotonic() if started is None else started) + config.budget(cfg, context.name) - EXIT_MARGIN
    if context.to_syslog:
        syslogging.until(deadline)
    try:
        return _run(cfg, context, req, deadline, progress)
    finally:
        syslogging.until(None)      # a caller that goes on (a job driver, a test) is not bound by this run's


def _run(cfg: Dict[str, Any], context: NodeContext, req: Request, deadline: float,
         progress: Optional[Callable[[str], None]]) -> Outcome:
    # Slurm's calls end in time for the store write: the act share is theirs and the store's
    slurm = slurm_backend(cfg, deadline - store_share(cfg)) if context.acts else None
    chosen = None if req.checks else context.suite(cfg, req, slurm)
    report, detection, run_ctx = session.run(
        cfg, context.name, suite=chosen, checks=req.checks, node=req.node, simulate=req.simulate,
        job_id=req.env.get("SLURM_JOB_ID"), job_gpus=job_gpus(req.env), deadline=deadline, progress=progress)
    report.findings.extend(context.after_checks(cfg, req, run_ctx, config.checks_deadline(cfg, context.name, deadline)))
    action = context.decide(cfg, report, slurm, deadline, context.owns(run_ctx))
    if action.kind != policy.NONE:
        report.action = action.kind
    notes = context.record(cfg, report, req, deadline) if req.record else []
    notes += context.after_record(cfg, req, report)
    lines = [clean(line) for line in finding_lines(report, action)]
    if context.to_syslog:
        syslogging.send(lines, "LOG_WARNING" if report.overall.unhealthy else "LOG_INFO")
    return Outcome(report, action, context.exit_code(report, action), detection, run_ctx, lines, notes)


EXIT_MARGIN = 0.2      # seconds of the budget kept for printing the result and leaving the process


def store_share(cfg: Dict[str, Any]) -> float:
    """Of the act share (timeouts.act), what is kept for the store write after Slurm's calls:
    timeouts.store, at most half of it."""
    act = config.budget(cfg, "prolog") - config.checks_budget(cfg, "prolog")
    return min(float(cfg["timeouts"]["store"]), act / 2.0)


def process_started() -> float:
    """time.monotonic() when this process was started (/proc/self/stat starttime against
    CLOCK_BOOTTIME, 10 ms resolution), so the command line's budget covers the whole process from
    exec to exit; now where that cannot be read."""
    now = time.monotonic()
    try:
        with open("/proc/self/stat", "rb") as fh:
            fields = fh.read(4096).rsplit(b")", 1)[1].split()
        started = int(fields[19]) / os.sysconf("SC_CLK_TCK")        # field 22: starttime, in ticks
        age = time.clock_gettime(time.CLOCK_BOOTTIME) - started
    except (OSError, ValueError, IndexError, AttributeError):
        return now
    return now - age if age >= 0.0 else now


def job_gpus(env: Dict[str, str]) -> Optional[set]:
    """The job's GPU ids on this node from SLURM_JOB_GPUS ("0,1,4" or "0-3,6"); None when unset or
    unreadable (then every GPU counts as the job's)."""
    raw = (env.get("SLURM_JOB_GPUS") or "").strip()
    if not raw:
        return None
    out: Set[int] = set()
    try:
        for part in raw.split(","):
            low, _, high = part.strip().partition("-")
            out.update(range(int(low), int(high or low) + 1))
    except ValueError:
        return None
    return out


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
