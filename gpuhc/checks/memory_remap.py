"""memory_remap: row remapping (Ampere and later) and page retirement (earlier GPUs)."""
from __future__ import annotations

from typing import Any, Dict, List

from ..model import Finding, GpuRef, Severity
from .base import Context, gpu_findings, per_gpu, threshold
from .meta import LIGHTWEIGHT_SUITES, CheckMeta, Threshold

NAME = "memory_remap"
META = CheckMeta(
    description="row remapping (Ampere and later) and page retirement (earlier GPUs)",
    suites=LIGHTWEIGHT_SUITES + ("epilog",),
    thresholds={
        "retired_pages": Threshold(60, "NVIDIA dynamic page retirement: the table holds 64 pages; at 60 it is nearly full"),
    },
)


def gather(ctx: Context) -> Dict[str, Any]:
    def both(i: int) -> Dict[str, Any]:
        return {"rows": ctx.gpu.remapped_rows(i), "pages": ctx.gpu.retired_pages(i)}
    return {"gpus": per_gpu(ctx, both)}


def _one(gpu: GpuRef, v: Dict[str, Any], config) -> List[Finding]:
    out = []
    rows = v.get("rows") or {}
    pages = v.get("pages") or {}
    metrics = {k: v for k, v in {
        "remapped_rows_correctable": rows.get("correctable"), "remapped_rows_uncorrectable": rows.get("uncorrectable"),
        "remap_banks_low": rows.get("banks_low"), "remap_banks_none": rows.get("banks_none"),
        "retired_pages_sbe": pages.get("single_bit"), "retired_pages_dbe": pages.get("double_bit")}.items()
        if v is not None}
    if rows.get("failure"):
        out.append(Finding(NAME, Severity.ISOLATE, "row remapping failed: a memory bank has no spare rows left",
                           gpu=gpu, metrics=metrics, remediation="take the GPU out of service and open an RMA"))
    elif rows.get("banks_none"):
        out.append(Finding(NAME, Severity.ISOLATE, "%d memory bank(s) have no spare rows left: the next error there "
                           "cannot be remapped" % rows["banks_none"], gpu=gpu, metrics=metrics,
                           remediation="take the GPU out of service and open an RMA"))
    elif rows.get("pending"):
        out.append(Finding(NAME, Severity.RESET, "row remapping pending (%s uncorrectable rows)" % rows.get("uncorrectable"),
                           gpu=gpu, metrics=metrics, remediation="drain and reset the GPU to apply the remap"))
    if rows.get("pending") is None and rows.get("failure") is None:
        retired = (pages.get("single_bit") or 0) + (pages.get("double_bit") or 0)
        if retired >= threshold(config, "retired_pages"):
            out.append(Finding(NAME, Severity.ISOLATE, "%d retired pages: the retirement table is nearly full" % retired,
                               gpu=gpu, metrics=metrics, remediation="replace the GPU"))
        elif pages.get("pending"):
            out.append(Finding(NAME, Severity.RESET, "page retirement pending", gpu=gpu, metrics=metrics,
                               remediation="drain and reset the GPU to retire the pages"))
    if not out and rows.get("banks_low"):
        out.append(Finding(NAME, Severity.MONITOR, "%d memory bank(s) are low on spare rows" % rows["banks_low"],
                           gpu=gpu, metrics=metrics, remediation="plan a replacement if more rows get remapped"))
    if not out and all(v is None for v in (rows.get("pending"), rows.get("failure"), pages.get("pending"))):
        # nothing was readable: on Ampere and later with MIG instances active, NVML does not
        # answer remapped rows (and retired pages are not a thing there); it is not a pass
        out.append(Finding(NAME, Severity.SKIP, "remap state not readable: no row remapping or page retirement "
                           "on this GPU, or MIG instances are active", gpu=gpu, metrics=metrics))
    if not out:
        out.append(Finding(NAME, Severity.PASS, "no remap pending or failed", gpu=gpu, metrics=metrics))
    return out


def evaluate(data: Dict[str, Any], profile, config) -> List[Finding]:
    return gpu_findings(NAME, data["gpus"], lambda gpu, v: _one(gpu, v, config))
