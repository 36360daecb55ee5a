"""clocks: hardware slowdown reasons (HW slowdown, HW thermal, power brake). SW power cap and idle are normal."""
from __future__ import annotations

from typing import Any, Dict, List

from ..backends.gpu import clock_reason_names
from ..model import Finding, GpuRef, Severity
from .base import Context, by_uuid, gpu_findings, kept_for, per_gpu
from .meta import LIGHTWEIGHT_SUITES, CheckMeta

NAME = "clocks"
META = CheckMeta(
    description="hardware clock slowdown reasons (HW slowdown, HW thermal, power brake)",
    suites=LIGHTWEIGHT_SUITES,
)
HARDWARE = ("hw_slowdown", "hw_thermal_slowdown", "hw_power_brake_slowdown")
SOFTWARE_THERMAL = ("sw_thermal_slowdown",)


def _hardware(mask: Any) -> List[str]:
    return [r for r in clock_reason_names(int(mask or 0)) if r in HARDWARE]


def gather(ctx: Context) -> Dict[str, Any]:
    entries = per_gpu(ctx, ctx.gpu.clock_event_reasons)
    return {"gpus": entries, "previous": ctx.previous_state(NAME), "_state": by_uuid(entries, _hardware)}


def _one(gpu: GpuRef, mask: int, previous: Dict[str, Any]) -> List[Finding]:
    reasons = clock_reason_names(int(mask or 0))
    hw = _hardware(mask)
    sw = [r for r in reasons if r in SOFTWARE_THERMAL]
    if hw:
        persists = sorted(set(hw) & set(kept_for(previous, gpu) or []))
        if persists:
            return [Finding(NAME, Severity.RESET, "clocks held down by %s, as in the previous run" % ", ".join(persists),
                            gpu=gpu, metrics={"reasons_mask": int(mask)},
                            remediation="drain; check cooling and power delivery, then reset the GPU")]
        return [Finding(NAME, Severity.MONITOR, "clocks held down by %s" % ", ".join(hw), gpu=gpu,
                        metrics={"reasons_mask": int(mask)},
                        remediation="check cooling and power; RESET if it persists into the next run")]
    if sw:
        return [Finding(NAME, Severity.MONITOR, "software thermal slowdown active", gpu=gpu, metrics={"reasons_mask": int(mask)})]
    return [Finding(NAME, Severity.PASS, "no hardware slowdown (%s)" % (", ".join(reasons) or "none"), gpu=gpu)]


def evaluate(data: Dict[str, Any], profile, config) -> List[Finding]:
    previous = data.get("previous") or {}
    return gpu_findings(NAME, data["gpus"], lambda gpu, mask: _one(gpu, mask, previous))
