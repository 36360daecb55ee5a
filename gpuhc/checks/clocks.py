"""clocks: hardware slowdown reasons (HW slowdown, HW thermal, power brake). SW power cap and idle are normal."""
from __future__ import annotations

from typing import Any, Dict, List

from ..backends.gpu import clock_reason_names
from ..model import Finding, GpuRef, Severity
from .base import Context, gpu_findings, per_gpu

NAME = "clocks"
NEEDS_GPU = True
HARDWARE = ("hw_slowdown", "hw_thermal_slowdown", "hw_power_brake_slowdown")
SOFTWARE_THERMAL = ("sw_thermal_slowdown",)


def gather(ctx: Context) -> Dict[str, Any]:
    return {"gpus": per_gpu(ctx, ctx.gpu.clock_event_reasons)}


def _one(gpu: GpuRef, mask: int) -> List[Finding]:
    reasons = clock_reason_names(int(mask or 0))
    hw = [r for r in reasons if r in HARDWARE]
    sw = [r for r in reasons if r in SOFTWARE_THERMAL]
    if hw:
        return [Finding(NAME, Severity.MONITOR, "clocks held down by %s" % ", ".join(hw), gpu=gpu,
                        metrics={"reasons_mask": int(mask)},
                        remediation="check cooling and power; reset the GPU if it persists with the GPU idle")]
    if sw:
        return [Finding(NAME, Severity.MONITOR, "software thermal slowdown active", gpu=gpu, metrics={"reasons_mask": int(mask)})]
    return [Finding(NAME, Severity.PASS, "no hardware slowdown (%s)" % (", ".join(reasons) or "none"), gpu=gpu)]


def evaluate(data: Dict[str, Any], profile, config) -> List[Finding]:
    return gpu_findings(NAME, data["gpus"], _one)
