"""thermal_power: temperature against the GPU's own slowdown/shutdown thresholds; power limit below default."""
from __future__ import annotations

from typing import Any, Dict, List

from ..model import Finding, GpuRef, Severity
from .base import Context, gpu_findings, per_gpu, threshold
from .meta import LIGHTWEIGHT_SUITES, CheckMeta, Threshold

NAME = "thermal_power"
META = CheckMeta(
    description="temperature against the GPU's slowdown/shutdown thresholds; power limit below default",
    suites=LIGHTWEIGHT_SUITES,
    thresholds={
        "temperature_margin_c": Threshold(5, "gpuhc: MONITOR within this many degrees C of the GPU's own slowdown threshold (NVML)"),
        "temperature_shutdown_margin_c": Threshold(3, "gpuhc: ISOLATE within this many degrees C of the GPU's shutdown threshold, past slowdown"),
        "power_limit_ratio": Threshold(0.95, "gpuhc: MONITOR when the enforced power limit is below this share of the default limit"),
    },
)


def gather(ctx: Context) -> Dict[str, Any]:
    def both(i: int) -> Dict[str, Any]:
        return {"temperature": ctx.gpu.temperature(i), "power": ctx.gpu.power(i)}
    return {"gpus": per_gpu(ctx, both)}


def _one(gpu: GpuRef, v: Dict[str, Any], config) -> List[Finding]:
    out = []
    margin = threshold(config, "temperature_margin_c")
    t = v.get("temperature") or {}
    p = v.get("power") or {}
    temp, slow, shut = t.get("gpu"), t.get("slowdown"), t.get("shutdown")
    metrics = {k: val for k, val in {"temperature_c": temp, "power_w": p.get("usage_w"),
                                     "power_limit_w": p.get("enforced_limit_w") or p.get("limit_w")}.items()
               if val is not None}
    # near shutdown: past slowdown and within `temperature_shutdown_margin_c` of shutdown (a cooling
    # fault that returns under load: no automatic resume when it cools down idle)
    if temp is not None and shut and temp >= shut - threshold(config, "temperature_shutdown_margin_c") \
            and (not slow or temp > slow):
        out.append(Finding(NAME, Severity.ISOLATE, "%d C, near the shutdown threshold %d C" % (temp, shut), gpu=gpu,
                           metrics=metrics, remediation="take the node out of service and check fans and airflow"))
    elif temp is not None and slow and temp >= slow:
        out.append(Finding(NAME, Severity.RESET, "%d C, at or above the slowdown threshold %d C" % (temp, slow), gpu=gpu,
                           metrics=metrics, remediation="check cooling; the GPU throttles at this temperature"))
    elif temp is not None and slow and temp >= slow - margin:
        out.append(Finding(NAME, Severity.MONITOR, "%d C, within %g C of slowdown (%d C)" % (temp, margin, slow),
                           gpu=gpu, metrics=metrics))
    limit = p.get("enforced_limit_w") or p.get("limit_w")
    default = p.get("default_limit_w")
    if limit and default and limit < default * threshold(config, "power_limit_ratio"):
        out.append(Finding(NAME, Severity.MONITOR, "power limit %.0f W below the default %.0f W" % (limit, default),
                           gpu=gpu, metrics=metrics, remediation="restore it: nvidia-smi -i %d -pl %.0f" % (gpu.index, default)))
    if not out:
        out.append(Finding(NAME, Severity.PASS, "%s C, power limit %s W" % (temp, limit), gpu=gpu, metrics=metrics))
    return out


def evaluate(data: Dict[str, Any], profile, config) -> List[Finding]:
    return gpu_findings(NAME, data["gpus"], lambda gpu, v: _one(gpu, v, config))
