"""nvlink: active links per GPU against the profile; link error counters as metrics."""
from __future__ import annotations

from typing import Any, Dict, List

from ..model import Finding, GpuRef, Severity
from .base import Context, gpu_findings, per_gpu

NAME = "nvlink"
NEEDS_GPU = True
COUNTERS = ("replay", "recovery", "crc_flit", "crc_data")


def gather(ctx: Context) -> Dict[str, Any]:
    return {"gpus": per_gpu(ctx, ctx.gpu.nvlink)}


def _one(gpu: GpuRef, links: List[Dict[str, Any]], profile) -> List[Finding]:
    expected = profile.nvlinks if profile is not None else None
    active = [l["link"] for l in links if l.get("active")]
    inactive = [l["link"] for l in links if not l.get("active")]
    metrics: Dict[str, float] = {"active_links": len(active)}
    for name in COUNTERS:
        values = [l.get(name) for l in links if l.get(name) is not None]
        if values:
            metrics[name + "_errors"] = sum(values)
    if expected == 0:
        return [Finding(NAME, Severity.PASS, "no NVLink by design (%d links present)" % len(links), gpu=gpu, metrics=metrics)]
    if expected is not None and len(active) < expected:
        down = inactive or ["?"]
        return [Finding(NAME, Severity.RESET, "%d of %d NVLinks active (down: %s)" % (len(active), expected, ",".join(map(str, down))),
                        gpu=gpu, metrics=metrics,
                        remediation="drain and reset the GPUs (or reboot); if the link stays down, check the baseboard/NVSwitch")]
    if expected is None and inactive:
        return [Finding(NAME, Severity.MONITOR, "NVLinks %s inactive (no expectation in profile %s)"
                        % (",".join(map(str, inactive)), profile.name if profile else "?"), gpu=gpu, metrics=metrics)]
    return [Finding(NAME, Severity.PASS, "%d NVLinks active" % len(active), gpu=gpu, metrics=metrics)]


def evaluate(data: Dict[str, Any], profile, config) -> List[Finding]:
    return gpu_findings(NAME, data["gpus"], lambda gpu, v: _one(gpu, v, profile))
