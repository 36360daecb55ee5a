"""processes: compute processes on the GPUs when no job should own them (prolog, epilog).

On a node shared by several jobs, only the GPUs of the job the prolog or epilog runs for
(SLURM_JOB_GPUS) can hold leftovers: processes on the other GPUs belong to other jobs."""
from __future__ import annotations

from typing import Any, Dict, List

from ..model import Finding, GpuRef, Severity
from .base import Context, gpu_findings, per_gpu
from .meta import LIGHTWEIGHT_SUITES, CheckMeta

NAME = "processes"
META = CheckMeta(
    description="compute processes on GPUs no job should be using",
    suites=LIGHTWEIGHT_SUITES + ("epilog",),
)
# Contexts in which no job owns the GPUs: a process found then is a leftover.
UNOWNED = ("prolog", "epilog", "sweep", "quarantine")


def gather(ctx: Context) -> Dict[str, Any]:
    others = [ref.index for ref in ctx.healthy_gpus() if not ctx.job_owns(ref.index)]
    return {"gpus": per_gpu(ctx, ctx.gpu.processes), "context": ctx.context, "other_jobs": others}


def evaluate(data: Dict[str, Any], profile, config) -> List[Finding]:
    unowned = data.get("context") in UNOWNED
    others = set(data.get("other_jobs") or ())

    def one(gpu: GpuRef, procs: List[Dict[str, Any]]) -> List[Finding]:
        if not procs:
            return []
        desc = ", ".join("%s[%s]" % (p.get("name") or "?", p.get("pid")) for p in procs[:4])
        if unowned and gpu.index in others:
            return [Finding(NAME, Severity.PASS, "%d compute process(es) of another job: %s" % (len(procs), desc),
                            gpu=gpu, metrics={"processes": len(procs)})]
        if unowned:
            return [Finding(NAME, Severity.MONITOR, "%d leftover compute process(es): %s" % (len(procs), desc), gpu=gpu,
                            metrics={"processes": len(procs)}, remediation="kill the leftover processes")]
        return [Finding(NAME, Severity.PASS, "%d compute process(es): %s" % (len(procs), desc), gpu=gpu,
                        metrics={"processes": len(procs)})]

    out = gpu_findings(NAME, data["gpus"], one)
    if not out:
        out.append(Finding(NAME, Severity.PASS, "no compute processes"))
    return out
