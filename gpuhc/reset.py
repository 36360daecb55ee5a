"""`gpuhc reset`: reset GPUs with the driver's own tool on a node that runs no job, and tell the
xid check.

NVIDIA's Xid catalog asks for a GPU reset after the RESET-tier Xids (48, 119, 120, ...). The reset
is ``nvidia-smi --gpu-reset -i BUS_ID``; the driver refuses it while any process holds the GPU
(persistence daemon, DCGM, and on NVSwitch systems the fabric manager count, and some systems can
only reset all GPUs together). gpuhc refuses too unless Slurm positively shows the node drained
with no job (not ALLOCATED, MIXED or COMPLETING), asked again before each GPU; an unknown node name,
or Slurm that cannot be asked, is a refusal (``--force`` overrides; ``slurm.backend: none`` means
there is no Slurm to ask). By default it resets the GPUs with a RESET-tier Xid. After a reset that
succeeded, the Xid events of that GPU seen before it started are marked reset in the node's local
state: the xid check no longer
reports those a reset resolves (RESET and below) and keeps REBOOT and ISOLATE ones. A drained node
then returns to service the usual way: resume.passes healthy runs, or `gpuhc resume`.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence

from . import session
from .backends.gpu import normalize_bus_id, parse_bus_id
from .checks import xid as xid_check
from .errors import GpuhcError
from .model import Severity

BUSY = ("ALLOCATED", "MIXED", "COMPLETING")


@dataclass
class Row:
    gpu: str            # NVML index, or "-" when NVML cannot list it
    pci_bus_id: str
    result: str         # reset | failed | refused
    detail: str


def choose(wanted: Sequence[str], every: bool, listed: Dict[str, int], with_xids: Sequence[str],
           on_pci: Sequence[str] = ()) -> List[str]:
    """The bus ids to reset: --gpu values (NVML index, or the PCI bus id of a GPU NVML lists or
    that is on PCI), --all, or by default ``with_xids``: the GPUs whose active Xids a reset resolves."""
    if every:
        if not listed:
            raise GpuhcError("--all: NVML lists no GPU here; name them by PCI bus id with --gpu")
        return sorted(listed, key=lambda bus: listed[bus])
    if not wanted:
        if not with_xids:
            raise GpuhcError("no GPU has an active Xid that a reset resolves (RESET tier): name the GPUs "
                             "with --gpu, or use --all")
        return list(with_xids)
    by_index = {str(i): bus for bus, i in listed.items()}
    out: List[str] = []
    for value in wanted:
        text = value.strip()
        if text.isdigit():
            if text not in by_index:
                raise GpuhcError("--gpu %s: no GPU with that index (NVML lists %d)" % (text, len(listed)))
            bus = by_index[text]
        else:
            parsed = parse_bus_id(text)
            if parsed is None:
                raise GpuhcError("--gpu %r: expected an NVML index or a PCI bus id like 0000:5d:00.0" % value)
            bus = parsed
            known = sorted(set(listed) | set(on_pci))
            if known and bus not in known:
                raise GpuhcError("--gpu %s: no NVIDIA GPU at that PCI address (here: %s)" % (value, ", ".join(known)))
        if bus not in out:
            out.append(bus)
    return out


def busy(cfg: Dict[str, Any], node: str) -> Optional[str]:
    """Why a reset must not run now; None only when Slurm positively shows the node drained with
    no job on it, or when the config says there is no Slurm (slurm.backend: none)."""
    from .acting import slurm_backend
    from .backends.slurm import SlurmError

    if cfg["slurm"]["backend"] == "none":
        return None
    slurm = slurm_backend(cfg)
    if slurm is None:
        return ("Slurm is not configured on this host, so whether a job runs here cannot be known "
                "(slurm.backend: none on a node without Slurm)")
    try:
        view = slurm.node(node)
    except SlurmError as exc:
        return "Slurm cannot say whether %s runs a job (%s)" % (node, exc)
    if view is None:
        return "Slurm knows no node %s: give Slurm's name with --node" % node
    running = sorted(view.states & set(BUSY))
    if running:
        return "Slurm shows %s %s: wait for its jobs to end" % (node, "+".join(running))
    if not view.drained:
        return ("%s is not drained, so a job may start during the reset: drain it first "
                "(scontrol update nodename=%s state=drain reason=...)" % (node, node))
    return None


def reset(cfg: Dict[str, Any], node: Optional[str] = None, simulate: Optional[str] = None,
          wanted: Sequence[str] = (), every: bool = False, force: bool = False) -> List[Row]:
    node = session.node_name(node)
    # bring the Xid state up to date first (events logged up to now are the ones a reset resolves),
    # and learn the GPUs' indexes; session.run closes its NVML handle, which must not hold the GPU
    report, _, ctx = session.run(cfg, "check", checks=["xid"], node=node, simulate=simulate)
    listed: Dict[str, int] = {}
    for ref in (ctx.inventory.gpus if ctx.inventory else []):
        listed_bus = normalize_bus_id(ref.pci_bus_id)
        if listed_bus is not None:
            listed[listed_bus] = ref.index
    try:
        on_pci = [b for b in map(normalize_bus_id, ctx.host.pci_nvidia_gpus()) if b is not None]
    except OSError:
        on_pci = []
    xid_buses = (normalize_bus_id(f.gpu.pci_bus_id if f.gpu else f.device) for f in report.findings
                 if f.check == "xid" and f.severity is Severity.RESET)
    resettable = sorted({b for b in xid_buses if b is not None})
    targets = choose(wanted, every, listed, resettable, on_pci)
    index = {bus: str(listed[bus]) if bus in listed else "-" for bus in targets}
    rows = []
    for bus in targets:
        why = None if force else busy(cfg, node)      # asked again before each GPU: a reset takes time
        if why:
            rows.append(Row(index[bus], bus, "refused", why + " (--force resets anyway)"))
            continue
        when = time.time()          # events seen from now on are not the ones this reset resolves
        res = ctx.host.run(["nvidia-smi", "--gpu-reset", "-i", bus], timeout=float(cfg["timeouts"]["reset"]))
        said = (res.stdout.strip() or res.stderr.strip()).splitlines()
        detail = said[-1] if said else "exit %d" % res.rc
        if not res.ok:
            rows.append(Row(index[bus], bus, "failed", detail))
            continue
        try:
            n = xid_check.mark_reset(cfg["state_dir"], node, bus, when)
        except OSError as exc:
            rows.append(Row(index[bus], bus, "reset", "%s; but %s" % (detail, exc)))
            continue
        stays = _beyond_reset(report, bus)
        rows.append(Row(index[bus], bus, "reset", "%s; %d Xid event(s) marked reset%s" % (
            detail, n, "; still needs more than a reset: %s" % stays if stays else "")))
    return rows


def _beyond_reset(report: Any, bus: str) -> str:
    """The REBOOT/ISOLATE findings of the xid check on the GPU at ``bus`` (a reset does not resolve them)."""
    worse = ["%s %s (%s)" % ("SXid" if f.device else "Xid", f.metrics.get("xid", "?"), f.severity.value)
             for f in report.findings
             if f.check == "xid" and f.severity.rank > Severity.RESET.rank
             and normalize_bus_id(f.gpu.pci_bus_id if f.gpu else f.device) == bus]
    return ", ".join(worse)
