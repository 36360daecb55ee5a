"""gpu_count: GPUs NVML lists against the profile and against the NVIDIA GPUs on PCI (sysfs); and
which board sits at each PCI address (UUID and serial, kept between runs), so a swapped GPU shows
up once in the node's history."""
from __future__ import annotations

from typing import Any, Dict, List

from ..model import Finding, Severity
from ..profiles import model_matches
from .base import Context
from .meta import LIGHTWEIGHT_SUITES, CheckMeta

NAME = "gpu_count"
META = CheckMeta(
    description="GPUs NVML lists against the profile and the NVIDIA GPUs on PCI; which board sits where",
    suites=LIGHTWEIGHT_SUITES + ("epilog",),
)


def gather(ctx: Context) -> Dict[str, Any]:
    inv = ctx.inventory
    if inv is None:
        raise RuntimeError("no GPU inventory: the nvml check did not answer")
    boards = {ref.pci_bus_id: {"uuid": ref.uuid, "serial": inv.serials.get(ref.index), "index": ref.index}
              for ref in inv.gpus if ref.pci_bus_id and ref.uuid}
    kept = ctx.previous_state(NAME)
    # boards seen by a simulated run are not this node's (and the other way round)
    previous = (kept.get("boards") or {}) if kept.get("host") == ctx.host.kind else {}
    return {
        "nvml": [(ref.index, ref.pci_bus_id) for ref in inv.gpus],
        "names": [inv.names.get(ref.index, "") for ref in inv.gpus],
        "pci": ctx.host.pci_nvidia_gpus(),
        "boards": boards,
        "previous": previous,
        "_state": {"host": ctx.host.kind, "boards": dict(previous, **boards)},   # a GPU missing this run keeps its last board
    }


def evaluate(data: Dict[str, Any], profile, config) -> List[Finding]:
    out: List[Finding] = []
    nvml_bus = {bus for _, bus in data["nvml"] if bus}
    pci = data["pci"]
    count = len(data["nvml"])
    missing = [bus for bus in pci if bus not in nvml_bus]
    for bus in missing:
        out.append(Finding(NAME, Severity.REBOOT, "GPU %s is on PCI but NVML does not list it" % bus,
                           device=bus, remediation="drain and reboot; if it stays missing, reseat or replace the GPU"))
    expected = profile.gpus if profile is not None else None
    seen = max(count, len(pci))
    if expected is not None and seen < expected:
        out.append(Finding(NAME, Severity.REBOOT, "%d GPUs on PCI and %d in NVML, profile %s expects %d"
                           % (len(pci), count, profile.name, expected),
                           remediation="drain and reboot; a GPU still missing after reboot needs the hardware checked"))
    elif expected is not None and count > expected:
        out.append(Finding(NAME, Severity.MONITOR, "NVML lists %d GPUs, profile %s expects %d: is the profile right?"
                           % (count, profile.name, expected)))
    if profile is not None and profile.model:
        wrong = sorted({n for n in data["names"] if n and not model_matches(profile.model, n)})
        if wrong:
            out.append(Finding(NAME, Severity.MONITOR, "GPU model %s is not the profile's %s" % (", ".join(wrong), profile.model),
                               remediation="check the instance profile for this node"))
    out.extend(_swapped(data.get("boards") or {}, data.get("previous") or {}))
    if not out:
        out.append(Finding(NAME, Severity.PASS, "%d GPUs in NVML, %d on PCI" % (count, len(pci)),
                           metrics={"gpus": count, "pci_gpus": len(pci)}))
    return out


def _swapped(boards: Dict[str, Dict[str, Any]], previous: Dict[str, Dict[str, Any]]) -> List[Finding]:
    """A MONITOR finding for each PCI address whose board (UUID) differs from the last run's."""
    out = []
    for bus, now in sorted(boards.items()):
        before = previous.get(bus)
        if not isinstance(before, dict) or not before.get("uuid") or before["uuid"] == now["uuid"]:
            continue
        out.append(Finding(NAME, Severity.MONITOR, "GPU%d %s is another board since the last run: serial %s (%s) -> "
                           "serial %s (%s)" % (now["index"], bus, before.get("serial") or "?", before["uuid"],
                                               now.get("serial") or "?", now["uuid"]),
                           device=bus, metrics={"gpu": now["index"]},
                           remediation="a replaced GPU: confirm the swap was planned; its error counters start over"))
    return out
