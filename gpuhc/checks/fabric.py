"""fabric: on NVSwitch systems the GPU fabric registration completed with success and
nvidia-fabricmanager is active."""
from __future__ import annotations

from typing import Any, Dict, List

from ..backends.gpu import FABRIC_COMPLETED, FABRIC_STATES
from ..model import Finding, GpuRef, Severity
from .base import Context, gpu_findings, per_gpu
from .meta import LIGHTWEIGHT_SUITES, CheckMeta

NAME = "fabric"
META = CheckMeta(
    description="NVSwitch systems: fabric registration succeeded and nvidia-fabricmanager is active",
    suites=LIGHTWEIGHT_SUITES,
)
SERVICE = "nvidia-fabricmanager"


def gather(ctx: Context) -> Dict[str, Any]:
    entries = per_gpu(ctx, ctx.gpu.fabric)
    wants = ctx.profile is not None and ctx.profile.nvswitch
    service = None
    if wants:
        res = ctx.host.run(["systemctl", "is-active", SERVICE], timeout=ctx.command_timeout())
        service = res.stdout.strip() or ("timed out" if res.timed_out else "unknown (rc %d)" % res.rc)
    return {"gpus": entries, "service": service}


def _one(gpu: GpuRef, fabric: Any) -> List[Finding]:
    if fabric is None:
        return []
    state, status = fabric.get("state"), fabric.get("status")
    if state != FABRIC_COMPLETED:
        return [Finding(NAME, Severity.RESET, "GPU fabric registration %s" % FABRIC_STATES.get(state, state), gpu=gpu,
                        remediation="check nvidia-fabricmanager; restart it and reset the GPUs")]
    if status not in (None, 0):
        return [Finding(NAME, Severity.RESET, "GPU fabric registration completed with error %s" % status, gpu=gpu,
                        remediation="restart nvidia-fabricmanager and reset the GPUs")]
    return []


def evaluate(data: Dict[str, Any], profile, config) -> List[Finding]:
    wants = profile is not None and profile.nvswitch
    if not wants and not any(e.value is not None or e.error is not None for e in data["gpus"]):
        return [Finding(NAME, Severity.SKIP, "no NVSwitch fabric on this node")]
    out = gpu_findings(NAME, data["gpus"], _one)
    if wants and data.get("service") != "active":
        out.append(Finding(NAME, Severity.RESET, "%s is %s" % (SERVICE, data.get("service")), device=SERVICE,
                           remediation="systemctl restart %s, then reset the GPUs" % SERVICE))
    if not out:
        out.append(Finding(NAME, Severity.PASS, "fabric registered on every GPU, %s active" % SERVICE if wants
                           else "fabric registered on every GPU"))
    return out
