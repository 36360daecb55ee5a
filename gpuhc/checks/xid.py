"""xid: NVRM Xid and NVSwitch SXid events in the kernel log, classified after NVIDIA's catalog."""
from __future__ import annotations

from typing import Any, Dict, List

from .. import xid as X
from ..model import Finding, Severity
from .base import Context

NAME = "xid"
NEEDS_GPU = False


def gather(ctx: Context) -> Dict[str, Any]:
    events = X.fold(X.parse(ctx.host.kernel_log_lines()))
    inv = ctx.inventory
    gpus = {ref.pci_bus_id: ref for ref in (inv.gpus if inv else [])}
    names = dict(inv.names) if inv else {}
    return {"events": events, "gpus": gpus, "gpu_name": next(iter(names.values()), ""),
            "strict": bool(ctx.config.get("xid", {}).get("strict", False)) if isinstance(ctx.config.get("xid"), dict) else False}


def evaluate(data: Dict[str, Any], profile, config) -> List[Finding]:
    out: List[Finding] = []
    cond = X.Conditions(gpu_name=data.get("gpu_name", ""), strict=data.get("strict", False))
    for ev in data["events"]:
        severity, resolution, desc = X.classify(ev, cond)
        ref = data["gpus"].get(ev.pci_bus_id)
        label = "Xid" if ev.kind == "xid" else "SXid"
        where = ("GPU%d " % ref.index if ref is not None else "") + ev.pci_bus_id
        text = "%s %d on %s: %s" % (label, ev.xid, where, ev.message or desc)
        if ev.count > 1:
            text += " (x%d)" % ev.count
        out.append(Finding(NAME, Severity.parse(severity), text, gpu=ref,
                           device=None if ref is not None else ev.pci_bus_id,
                           remediation="%s (%s)" % (desc, resolution), metrics={"xid": ev.xid, "count": ev.count}))
    if not out:
        out.append(Finding(NAME, Severity.PASS, "no Xid or SXid in the kernel log"))
    return out
