"""ecc: ECC mode as the profile expects; uncorrectable errors since the last reset and over the GPU's life."""
from __future__ import annotations

from typing import Any, Dict, List

from ..model import Finding, GpuRef, Severity
from .base import Context, by_uuid, delta, gpu_findings, per_gpu, threshold

NAME = "ecc"
NEEDS_GPU = True


def _corrected(ecc: Dict[str, Any]) -> Any:
    return (ecc.get("aggregate") or {}).get("corrected")


def gather(ctx: Context) -> Dict[str, Any]:
    entries = per_gpu(ctx, ctx.gpu.ecc)
    return {"gpus": entries, "previous": ctx.previous_state(NAME), "_state": by_uuid(entries, _corrected)}


def _one(gpu: GpuRef, ecc: Dict[str, Any], profile, config, previous: Dict[str, Any]) -> List[Finding]:
    out = []
    vol = ecc.get("volatile") or {}
    agg = ecc.get("aggregate") or {}
    metrics = {k: v for k, v in {
        "volatile_corrected": vol.get("corrected"), "volatile_uncorrected": vol.get("uncorrected"),
        "aggregate_corrected": agg.get("corrected"), "aggregate_uncorrected": agg.get("uncorrected"),
        "aggregate_uncorrected_sram": agg.get("uncorrected_sram"),
        "aggregate_uncorrected_dram": agg.get("uncorrected_dram")}.items() if v is not None}
    grown = delta(_corrected(ecc), previous.get(gpu.uuid))
    if grown is not None:
        metrics["corrected_growth"] = grown        # the trend: corrected errors since the last run
    if ecc.get("enabled") is None:
        return [Finding(NAME, Severity.SKIP, "ECC not supported", gpu=gpu)]
    if not ecc["enabled"] and profile is not None and profile.ecc:
        out.append(Finding(NAME, Severity.RESET, "ECC is disabled", gpu=gpu,
                           remediation="enable ECC (nvidia-smi -i %d -e 1) and reset the GPU" % gpu.index))
    if ecc.get("pending") is not None and ecc["pending"] != ecc["enabled"]:
        out.append(Finding(NAME, Severity.MONITOR, "ECC mode change pending until the next reset", gpu=gpu))
    sram, sram_limit = agg.get("uncorrected_sram") or 0, threshold(config, "ecc_sram_uncorrected")
    if sram > sram_limit:
        out.append(Finding(NAME, Severity.ISOLATE, "%d uncorrectable SRAM ECC errors over the GPU's life (limit %g)"
                           % (sram, sram_limit), gpu=gpu, metrics=metrics,
                           remediation="take the GPU out of service and open an RMA"))
    if (vol.get("uncorrected") or 0) > threshold(config, "ecc_volatile_uncorrected"):
        out.append(Finding(NAME, Severity.RESET, "%d uncorrectable ECC errors since the last reset" % vol["uncorrected"],
                           gpu=gpu, metrics=metrics,
                           remediation="drain and reset the GPU so the bad memory is remapped; check memory_remap after"))
    if grown is not None and grown > threshold(config, "ecc_corrected_growth"):
        out.append(Finding(NAME, Severity.MONITOR, "%d corrected ECC errors since the last run" % grown, gpu=gpu,
                           metrics=metrics, remediation="watch the rate; a fast-rising count often precedes a remap"))
    if not out:
        out.append(Finding(NAME, Severity.PASS, "ECC on, no uncorrectable errors", gpu=gpu, metrics=metrics))
    return out


def evaluate(data: Dict[str, Any], profile, config) -> List[Finding]:
    previous = data.get("previous") or {}
    return gpu_findings(NAME, data["gpus"], lambda gpu, v: _one(gpu, v, profile, config, previous))
