"""pcie: link width below the maximum (degraded link); generation only where it cannot be idle power saving."""
from __future__ import annotations

from typing import Any, Dict, List

from ..model import Finding, GpuRef, Severity
from .base import Context, gpu_findings, per_gpu

NAME = "pcie"
NEEDS_GPU = True
LOADED_UTILIZATION = 50      # % GPU utilisation above which a lower link generation is not power saving


def gather(ctx: Context) -> Dict[str, Any]:
    def both(i: int) -> Dict[str, Any]:
        link = ctx.gpu.pcie(i)
        link["utilization"] = (ctx.gpu.utilization(i) or {}).get("gpu")
        return link
    return {"gpus": per_gpu(ctx, both)}


def _one(gpu: GpuRef, link: Dict[str, Any], profile) -> List[Finding]:
    out = []
    width, width_max = link.get("width_current"), link.get("width_max")
    gen, gen_max = link.get("gen_current"), link.get("gen_max")
    metrics = {k: link[k] for k in ("width_current", "gen_current", "replay_counter") if link.get(k) is not None}
    expected_width = max(w for w in (width_max, profile.pcie_width if profile else None, 0) if w is not None)
    if width is not None and expected_width and width < expected_width:
        out.append(Finding(NAME, Severity.RESET, "PCIe link x%d, expected x%d" % (width, expected_width), gpu=gpu,
                           metrics=metrics, remediation="drain and reset the GPU; if the link stays degraded, reseat the GPU or riser"))
    busy = (link.get("utilization") or 0) >= LOADED_UTILIZATION
    if gen is not None and gen_max and gen < gen_max and busy:
        out.append(Finding(NAME, Severity.RESET, "PCIe gen%d under load, link supports gen%d" % (gen, gen_max), gpu=gpu,
                           metrics=metrics, remediation="drain and reset the GPU; check the slot and BIOS link settings"))
    if profile is not None and profile.pcie_gen and gen_max and gen_max < profile.pcie_gen:
        out.append(Finding(NAME, Severity.MONITOR, "PCIe link can reach only gen%d, profile expects gen%d"
                           % (gen_max, profile.pcie_gen), gpu=gpu, metrics=metrics,
                           remediation="check the BIOS PCIe speed setting and the riser"))
    if not out:
        out.append(Finding(NAME, Severity.PASS, "x%s gen%s (max gen%s)" % (width, gen, gen_max), gpu=gpu, metrics=metrics))
    return out


def evaluate(data: Dict[str, Any], profile, config) -> List[Finding]:
    return gpu_findings(NAME, data["gpus"], lambda gpu, v: _one(gpu, v, profile))
