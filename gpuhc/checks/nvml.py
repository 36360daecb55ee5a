"""nvml: can the GPU library be used at all; the inventory (index, UUID, PCI bus id, serial) every
other GPU check starts from. Runs first whenever a suite has a GPU check."""
from __future__ import annotations

from typing import List

from ..backends.gpu import GpuError
from ..model import Finding, GpuRef, Severity
from .base import Context, Inventory, gpu_error_finding
from .meta import CheckMeta

NAME = "nvml"
META = CheckMeta(
    description="the GPU library answers; the inventory every GPU check starts from",
    suites=(),
    needs_gpu=False,
)


def gather(ctx: Context) -> Inventory:
    inv = Inventory()
    ctx.inventory = inv
    try:
        inv.driver_version = ctx.gpu.driver_version()
        count = ctx.gpu.device_count()
    except GpuError as err:
        inv.error = err
        return inv
    on_pci: List[str] = []
    for i in range(count):
        try:
            ident = ctx.gpu.identity(i)
        except GpuError as err:
            if err.node_wide:
                inv.error = err
                return inv
            # NVML enumerates GPUs in PCI bus order: with every GPU on PCI also in NVML, the
            # index names the bus id of a GPU that no longer answers.
            on_pci = on_pci or ctx.host.pci_nvidia_gpus()
            inv.gpus.append(GpuRef(i, None, on_pci[i] if len(on_pci) == count else None))
            inv.errors[i] = err
            continue
        inv.gpus.append(GpuRef(i, ident.get("uuid"), ident.get("pci_bus_id")))
        inv.names[i] = ident.get("name") or ""
        inv.serials[i] = ident.get("serial")
        inv.minors[i] = ident.get("minor_number")
    return inv


def evaluate(inv: Inventory, profile, config) -> List[Finding]:
    if inv.error is not None:
        return [gpu_error_finding(NAME, inv.error, profile=profile)]
    out = [gpu_error_finding(NAME, err, gpu=inv.gpus[i]) for i, err in sorted(inv.errors.items())]
    if not out:
        out.append(Finding(NAME, Severity.PASS, "driver %s, %d GPUs answer" % (inv.driver_version, len(inv.gpus)),
                           metrics={"gpus": len(inv.gpus)}))
    return out
