"""ecc: ECC mode as the profile expects; uncorrectable errors since the last reset and over the GPU's life
(SRAM and DRAM, each with its limit); corrected errors since the last run as a trend metric
(``corrected_growth``, on every GPU once a previous run is known), MONITOR beyond ``ecc_corrected_growth``."""
from __future__ import annotations

from typing import Any, Dict, List

from ..model import Finding, GpuRef, Severity
from .base import Context, by_uuid, delta, gpu_findings, kept_for, per_gpu, threshold
from .meta import LIGHTWEIGHT_SUITES, CheckMeta, Threshold

NAME = "ecc"
META = CheckMeta(
    description="ECC mode, uncorrectable errors (volatile, SRAM, DRAM) and corrected-error growth",
    suites=LIGHTWEIGHT_SUITES + ("epilog",),
    thresholds={
        "ecc_sram_uncorrected": Threshold(4, "NVIDIA GPU memory error management: aggregate SRAM uncorrectable errors above 4 call for an RMA (ISOLATE)"),
        "ecc_dram_uncorrected": Threshold(64, "NVIDIA GPU memory error management: DRAM uncorrectable errors past what row remapping absorbs (ISOLATE; any is MONITOR)"),
        "ecc_volatile_uncorrected": Threshold(0, "NVIDIA: an uncorrectable error since the last reset needs a GPU reset to clear (RESET above 0)"),
        "ecc_corrected_growth": Threshold(1000, "gpuhc: corrected errors between two runs worth a MONITOR finding (a trend, not a fault)"),
    },
)


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
    grown = delta(_corrected(ecc), kept_for(previous, gpu))
    if grown is not None:
        metrics["corrected_growth"] = grown        # the trend: corrected errors since the last run
    if ecc.get("enabled") is None:
        return [Finding(NAME, Severity.SKIP, "ECC not supported", gpu=gpu)]
    if not ecc["enabled"] and profile is not None and profile.ecc:
        out.append(Finding(NAME, Severity.RESET, "ECC is disabled", gpu=gpu, metrics=metrics,
                           remediation="enable ECC (nvidia-smi -i %d -e 1) and reset the GPU" % gpu.index))
    if ecc.get("pending") is not None and ecc["pending"] != ecc["enabled"]:
        out.append(Finding(NAME, Severity.MONITOR, "ECC mode change pending until the next reset", gpu=gpu,
                           metrics=metrics))
    sram, sram_limit = agg.get("uncorrected_sram") or 0, threshold(config, "ecc_sram_uncorrected")
    if sram > sram_limit:
        out.append(Finding(NAME, Severity.ISOLATE, "%d uncorrectable SRAM ECC errors over the GPU's life (limit %g)"
                           % (sram, sram_limit), gpu=gpu, metrics=metrics,
                           remediation="take the GPU out of service and open an RMA"))
    # Aggregate DRAM uncorrectable errors. NVIDIA's memory error management guidance: on Ampere and
    # later a DRAM UCE is contained (only the job that touched it fails) and its row is remapped at
    # the next GPU reset; the RMA criterion is the row-remap failure flag, not a count. Before
    # Ampere the page is retired instead. Both are read by memory_remap (pending -> RESET; failure,
    # a bank without spare rows or a nearly full retirement table -> ISOLATE), the primary signal.
    # This count is the backstop: any DRAM UCE over the GPU's life is MONITOR (recorded, shown, no
    # drain: the remapper or retirement handles it), and beyond `ecc_dram_uncorrected` (default 64:
    # the whole pre-Ampere retirement table, an eighth of the 512 rows Ampere+ can remap) ISOLATE,
    # for a GPU that keeps failing jobs however well it remaps, or whose remap state cannot be read
    # (MIG with active instances). Never RESET: a reset does not lower a lifetime count, so a RESET
    # would drain again after every reset.
    # Where NVML has no per-location counts (they need InfoROM ECC 2.0; pre-Ampere GPUs have other
    # locations) but gives the total, the total gets the same backstop.
    located = agg.get("uncorrected_sram") is not None or agg.get("uncorrected_dram") is not None
    dram, what = (agg.get("uncorrected_dram") or 0, "DRAM ") if located else (agg.get("uncorrected") or 0, "")
    dram_limit = threshold(config, "ecc_dram_uncorrected")
    if dram > dram_limit:
        out.append(Finding(NAME, Severity.ISOLATE, "%d uncorrectable %sECC errors over the GPU's life (limit %g)"
                           % (dram, what, dram_limit), gpu=gpu, metrics=metrics,
                           remediation="take the GPU out of service; run the field diagnostic and open an RMA"))
    elif dram > 0:
        out.append(Finding(NAME, Severity.MONITOR, "%d uncorrectable %sECC error(s) over the GPU's life (limit %g)"
                           % (dram, what, dram_limit), gpu=gpu, metrics=metrics,
                           remediation="memory_remap shows whether they were remapped; replace the GPU if the "
                                       "count keeps rising"))
    if (vol.get("uncorrected") or 0) > threshold(config, "ecc_volatile_uncorrected"):
        out.append(Finding(NAME, Severity.RESET, "%d uncorrectable ECC errors since the last reset" % vol["uncorrected"],
                           gpu=gpu, metrics=metrics,
                           remediation="drain and reset the GPU so the bad memory is remapped; check memory_remap after"))
    if grown is not None and grown > threshold(config, "ecc_corrected_growth"):
        out.append(Finding(NAME, Severity.MONITOR, "%d corrected ECC errors since the last run" % grown, gpu=gpu,
                           metrics=metrics, remediation="watch the rate; a fast-rising count often precedes a remap"))
    if not out:
        uncorrected = agg.get("uncorrected") or 0
        text = ("ECC off; profile does not require it" if not ecc["enabled"] else
                "ECC on, %d uncorrectable errors over the GPU's life, within limits" % uncorrected if uncorrected
                else "ECC on, no uncorrectable errors")
        out.append(Finding(NAME, Severity.PASS, text, gpu=gpu, metrics=metrics))
    return out


def evaluate(data: Dict[str, Any], profile, config) -> List[Finding]:
    previous = data.get("previous") or {}
    return gpu_findings(NAME, data["gpus"], lambda gpu, v: _one(gpu, v, profile, config, previous))
