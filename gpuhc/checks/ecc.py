"""ecc: ECC mode as the profile expects; uncorrectable errors since the last reset and over the GPU's life."""
from __future__ import annotations

from typing import Any, Dict, List

from ..model import Finding, GpuRef, Severity
from .base import Context, gpu_findings, per_gpu

NAME = "ecc"
NEEDS_GPU = True
SRAM_UNCORRECTED_LIMIT = 4   # aggregate SRAM uncorrectable errors above which NVIDIA asks for an RMA


def gather(ctx: Context) -> Dict[str, Any]:
    return {"gpus": per_gpu(ctx, ctx.gpu.ecc)}


def _one(gpu: GpuRef, ecc: Dict[str, Any], profile) -> List[Finding]:
    out = []
    vol = ecc.get("volatile") or {}
    agg = ecc.get("aggregate") or {}
    metrics = {k: v for k, v in {
        "volatile_corrected": vol.get("corrected"), "volatile_uncorrected": vol.get("uncorrected"),
        "aggregate_corrected": agg.get("corrected"), "aggregate_uncorrected": agg.get("uncorrected"),
        "aggregate_uncorrected_sram": agg.get("uncorrected_sram"),
        "aggregate_uncorrected_dram": agg.get("uncorrected_dram")}.items() if v is not None}
    if ecc.get("enabled") is None:
        return [Finding(NAME, Severity.SKIP, "ECC not supported", gpu=gpu)]
    if not ecc["enabled"] and profile is not None and profile.ecc:
        out.append(Finding(NAME, Severity.RESET, "ECC is disabled", gpu=gpu,
                           remediation="enable ECC (nvidia-smi -i %d -e 1) and reset the GPU" % gpu.index))
    if ecc.get("pending") is not None and ecc["pending"] != ecc["enabled"]:
        out.append(Finding(NAME, Severity.MONITOR, "ECC mode change pending until the next reset", gpu=gpu))
    sram = agg.get("uncorrected_sram") or 0
    if sram > SRAM_UNCORRECTED_LIMIT:
        out.append(Finding(NAME, Severity.ISOLATE, "%d uncorrectable SRAM ECC errors over the GPU's life (limit %d)"
                           % (sram, SRAM_UNCORRECTED_LIMIT), gpu=gpu, metrics=metrics,
                           remediation="take the GPU out of service and open an RMA"))
    if (vol.get("uncorrected") or 0) > 0:
        out.append(Finding(NAME, Severity.RESET, "%d uncorrectable ECC errors since the last reset" % vol["uncorrected"],
                           gpu=gpu, metrics=metrics,
                           remediation="drain and reset the GPU so the bad memory is remapped; check memory_remap after"))
    if not out:
        out.append(Finding(NAME, Severity.PASS, "ECC on, no uncorrectable errors", gpu=gpu, metrics=metrics))
    return out


def evaluate(data: Dict[str, Any], profile, config) -> List[Finding]:
    return gpu_findings(NAME, data["gpus"], lambda gpu, v: _one(gpu, v, profile))
