"""pcie: link width below the maximum (degraded link); generation only where it cannot be idle power saving."""
from __future__ import annotations

from typing import Any, Dict, List

from ..model import Finding, GpuRef, Severity
from .base import Context, by_uuid, delta, gpu_findings, kept_for, per_gpu, threshold
from .meta import LIGHTWEIGHT_SUITES, CheckMeta, Threshold

NAME = "pcie"
META = CheckMeta(
    description="PCIe link width and generation against the maximum; replay counter growth",
    suites=LIGHTWEIGHT_SUITES,
    thresholds={
        "pcie_replay_growth": Threshold(100, "gpuhc: PCIe replays between two runs worth a MONITOR finding"),
        "pcie_loaded_utilization": Threshold(50, "gpuhc: GPU busy share above which a lower link generation is not idle power saving"),
    },
)


def gather(ctx: Context) -> Dict[str, Any]:
    def both(i: int) -> Dict[str, Any]:
        link = ctx.gpu.pcie(i)
        link["utilization"] = (ctx.gpu.utilization(i) or {}).get("gpu")
        return link
    entries = per_gpu(ctx, both)
    return {"gpus": entries, "previous": ctx.previous_state(NAME), "booted": ctx.booted_since(NAME),
            "_state": by_uuid(entries, lambda link: link.get("replay_counter"))}


def _one(gpu: GpuRef, link: Dict[str, Any], profile, config, previous: Dict[str, Any], booted: bool) -> List[Finding]:
    out = []
    width, width_max = link.get("width_current"), link.get("width_max")
    gen, gen_max = link.get("gen_current"), link.get("gen_max")
    metrics = {k: link[k] for k in ("width_current", "gen_current", "replay_counter") if link.get(k) is not None}
    expected_width = max(w for w in (width_max, profile.pcie_width if profile else None, 0) if w is not None)
    if width is not None and expected_width and width < expected_width:
        out.append(Finding(NAME, Severity.RESET, "PCIe link x%d, expected x%d" % (width, expected_width), gpu=gpu,
                           metrics=metrics, remediation="drain and reset the GPU; if the link stays degraded, reseat the GPU or riser"))
    busy = (link.get("utilization") or 0) > threshold(config, "pcie_loaded_utilization")
    if gen is not None and gen_max and gen < gen_max and busy:
        out.append(Finding(NAME, Severity.RESET, "PCIe gen%d under load, link supports gen%d" % (gen, gen_max), gpu=gpu,
                           metrics=metrics, remediation="drain and reset the GPU; check the slot and BIOS link settings"))
    if profile is not None and profile.pcie_gen and gen_max and gen_max < profile.pcie_gen:
        out.append(Finding(NAME, Severity.MONITOR, "PCIe link can reach only gen%d, profile expects gen%d"
                           % (gen_max, profile.pcie_gen), gpu=gpu, metrics=metrics,
                           remediation="check the BIOS PCIe speed setting and the riser"))
    grown = delta(link.get("replay_counter"), kept_for(previous, gpu), booted)
    if grown is not None:
        metrics["replay_delta"] = grown
        if grown >= threshold(config, "pcie_replay_growth"):
            out.append(Finding(NAME, Severity.MONITOR, "%d PCIe replays since the last run" % grown, gpu=gpu, metrics=metrics,
                               remediation="a marginal link: watch it; reseat the GPU or riser if it keeps growing"))
    if not out:
        out.append(Finding(NAME, Severity.PASS, "x%s gen%s (max gen%s)" % (width, gen, gen_max), gpu=gpu, metrics=metrics))
    return out


def evaluate(data: Dict[str, Any], profile, config) -> List[Finding]:
    previous, booted = data.get("previous") or {}, bool(data.get("booted"))
    return gpu_findings(NAME, data["gpus"], lambda gpu, v: _one(gpu, v, profile, config, previous, booted))
