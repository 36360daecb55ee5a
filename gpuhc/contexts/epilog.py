"""Slurm Epilog: what happened during the job (new Xids since the prolog, ECC deltas, leftover
processes), attributed to the job; a failed job gets the deeper failure suite. Optionally kills
the compute processes the job left on its GPUs."""
from __future__ import annotations

import functools
import os
import time
from typing import Any, Callable, Dict, List, Optional

from .. import config
from ..acting import log
from ..backends.slurm import JobView, Slurm, SlurmError
from ..bounded import Overtime, call_within
from ..model import Finding, Severity
from .pipeline import NodeContext, Request


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


def suite_for(cfg: Dict[str, Any], env: Dict[str, str], slurm: Optional[Slurm] = None) -> str:
    """The epilog's suite; for a failed job the failure suite, unless the operator allows opting
    out and the job's comment holds the token. Slurm is asked about the job only where config says
    so: for a job that looks clean (``epilog.ask_slurm_exit_code``) or to read the opt-out comment
    of a failed one."""
    base = cfg["context_suites"].get("epilog", "epilog")
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


def kill_leftovers(ctx: Any, job_uid: Optional[int] = None, deadline: Optional[float] = None) -> List[Finding]:
    """The epilog's optional clean-up: SIGKILL the compute processes still on the job's GPUs after
    the job. Where the job's GPUs are not known (no SLURM_JOB_GPUS: a CPU-only job on a shared node,
    or GPUs not set up as a GRES), only processes of the job's user (SLURM_JOB_UID, never root) are
    leftovers: another job's training must not die with it. A finding says what was killed; a
    simulated node's processes are only reported. Each GPU is asked as a check asks it: within the
    processes check's timeout and before ``deadline``; a call that does not return is the check's
    REBOOT finding (a process stuck on a hung GPU is what is left after such a job)."""
    import signal

    from ..backends.gpu import GpuError
    from ..runner import hang_finding

    if ctx.gpu_unavailable() or ctx.gpu.kind == "sim":
        return []
    out = []
    for ref in ctx.healthy_gpus():
        if not ctx.job_owns(ref.index):       # another job's GPU on a shared node
            continue
        wait = config.check_timeout(ctx.config, "processes")
        if deadline is not None:
            wait = min(wait, deadline - time.monotonic())
            if wait <= 0:
                log("warning: leftover processes not looked for: the epilog's time for checks is used up")
                break
        try:
            procs = call_within(functools.partial(ctx.gpu.processes, ref.index), wait, "gpuhc-check")
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


def _owner(pid: int) -> Optional[int]:
    try:
        return os.stat("/proc/%d" % pid).st_uid
    except OSError:
        return None


def job_owns(ctx: Any, finding: Any) -> bool:
    """Whether a finding of this run is its job's doing: not on another job's GPU (shared node),
    not an event the xid check saw before the job began (``before_job``)."""
    if finding is None or finding.metrics.get("before_job"):
        return False
    return finding.gpu is None or ctx.job_owns(finding.gpu.index)


class Epilog(NodeContext):
    name = "epilog"

    def suite(self, cfg: Dict[str, Any], req: Request, slurm: Optional[Slurm]) -> str:
        return req.suite or suite_for(cfg, req.env, slurm)

    def after_checks(self, cfg: Dict[str, Any], req: Request, run_ctx: Any, deadline: float) -> List[Finding]:
        if not cfg["epilog"]["kill_leftover_processes"]:
            return []
        uid = req.env.get("SLURM_JOB_UID", "")
        return kill_leftovers(run_ctx, int(uid) if uid.isdigit() else None, deadline)

    def owns(self, run_ctx: Any) -> Optional[Callable[[Any], bool]]:
        return lambda finding: job_owns(run_ctx, finding)

    def after_record(self, cfg: Dict[str, Any], req: Request, report: Any) -> List[str]:
        from .quarantine import after_epilog

        return after_epilog(cfg, report.node, req.env)


CONTEXT = Epilog()
