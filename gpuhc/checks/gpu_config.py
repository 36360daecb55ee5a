"""gpu_config: persistence mode on, MIG mode as the profile expects, compute mode default."""
from __future__ import annotations

from typing import Any, Dict, List

from ..model import Finding, GpuRef, Severity
from .base import Context, gpu_findings, per_gpu
from .meta import LIGHTWEIGHT_SUITES, CheckMeta

NAME = "gpu_config"
META = CheckMeta(
    description="persistence mode, MIG mode as the profile expects, compute mode",
    suites=LIGHTWEIGHT_SUITES,
)


def gather(ctx: Context) -> Dict[str, Any]:
    return {"gpus": per_gpu(ctx, ctx.gpu.modes)}


def _one(gpu: GpuRef, m: Dict[str, Any], profile) -> List[Finding]:
    out = []
    want_mig = profile.mig if profile is not None else None
    mig = m.get("mig_current")
    if mig is not None and want_mig in ("yes", "no") and mig != (want_mig == "yes"):
        out.append(Finding(NAME, Severity.RESET, "MIG is %s, profile expects %s" % ("on" if mig else "off",
                                                                                  "on" if want_mig == "yes" else "off"),
                           gpu=gpu, remediation="nvidia-smi -i %d -mig %d, then reset the GPU" % (gpu.index, want_mig == "yes")))
    if m.get("mig_pending") is not None and mig is not None and m["mig_pending"] != mig:
        out.append(Finding(NAME, Severity.MONITOR, "MIG mode change pending until the next reset", gpu=gpu))
    if m.get("persistence") is False:
        out.append(Finding(NAME, Severity.MONITOR, "persistence mode is off", gpu=gpu,
                           remediation="run nvidia-persistenced (or nvidia-smi -pm 1)"))
    if m.get("compute_mode") not in (None, "default"):
        out.append(Finding(NAME, Severity.MONITOR, "compute mode is %s" % m["compute_mode"], gpu=gpu,
                           remediation="nvidia-smi -i %d -c DEFAULT unless this is intended" % gpu.index))
    if not out:
        out.append(Finding(NAME, Severity.PASS, "persistence on, MIG %s, compute mode default" % ("on" if mig else "off"), gpu=gpu))
    return out


def evaluate(data: Dict[str, Any], profile, config) -> List[Finding]:
    return gpu_findings(NAME, data["gpus"], lambda gpu, v: _one(gpu, v, profile))
