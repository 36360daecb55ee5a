"""nvlink: active links per GPU against the profile; link error counters as metrics.

Without an expectation (no ``nvlinks`` in the profile) a GPU is held to its peers: fewer active
links than another GPU of the node is MONITOR. NVML lists the links a chip has, not the ones its
board wires: an A100 PCIe without a bridge lists 12 links, all down; bridged H100 PCIe/NVL pairs
18, 12 up; a GH200 18 ports for multi-node systems, none up. A GPU in MIG mode has its NVLinks
disabled by the driver (Fabric Manager user guide, MIG interoperability): no count applies to it."""
from __future__ import annotations

from typing import Any, Dict, List

from ..model import Finding, GpuRef, Severity
from .base import Context, by_uuid, delta, gpu_findings, kept_for, per_gpu, threshold
from .meta import LIGHTWEIGHT_SUITES, CheckMeta, Threshold

NAME = "nvlink"
META = CheckMeta(
    description="active NVLinks per GPU against the profile; link error counter growth",
    suites=LIGHTWEIGHT_SUITES,
    thresholds={
        "nvlink_replay_growth": Threshold(1000, "gpuhc: NVLink replay growth between two runs worth a MONITOR finding"),
        "nvlink_recovery_growth": Threshold(1, "gpuhc: any NVLink recovery between two runs is worth a MONITOR finding"),
        "nvlink_crc_flit_growth": Threshold(1000, "gpuhc: NVLink flit CRC growth between two runs worth a MONITOR finding"),
        "nvlink_crc_data_growth": Threshold(100, "gpuhc: NVLink data CRC growth between two runs worth a MONITOR finding"),
    },
)
COUNTERS = ("replay", "recovery", "crc_flit", "crc_data")


def _counters(links: List[Dict[str, Any]]) -> Dict[str, Dict[str, Any]]:
    return {str(l["link"]): {c: l.get(c) for c in COUNTERS} for l in links}


def gather(ctx: Context) -> Dict[str, Any]:
    entries = per_gpu(ctx, ctx.gpu.nvlink)
    # MIG mode is asked only of a GPU with a link down (none on a healthy NVLink node)
    down = [e.gpu.index for e in entries if e.error is None and _active(e.value) < len(e.value)]
    mig = [e.gpu.index for e in per_gpu(ctx, ctx.gpu.modes)
           if e.gpu.index in down and e.error is None and (e.value or {}).get("mig_current")] if down else []
    return {"gpus": entries, "mig": mig, "previous": ctx.previous_state(NAME), "booted": ctx.booted_since(NAME),
            "_state": by_uuid(entries, _counters)}


def _growth(gpu: GpuRef, links: List[Dict[str, Any]], previous: Dict[str, Any], config, booted: bool) -> List[Finding]:
    before = kept_for(previous, gpu) or {}
    out = []
    for link in links:
        old = before.get(str(link["link"])) or {}
        grown = {c: delta(link.get(c), old.get(c), booted) for c in COUNTERS}
        over = ["%s +%d" % (c, d) for c, d in grown.items()
                if d is not None and d >= threshold(config, "nvlink_%s_growth" % c)]
        if over:
            out.append(Finding(NAME, Severity.MONITOR, "NVLink %d errors since the last run: %s" % (link["link"], ", ".join(over)),
                               gpu=gpu, metrics={"link": link["link"], **{c + "_delta": d for c, d in grown.items() if d}},
                               remediation="watch this link; if it keeps growing, reset the GPU and check the NVSwitch/baseboard"))
    return out


def _one(gpu: GpuRef, links: List[Dict[str, Any]], profile, config, previous: Dict[str, Any],
         booted: bool, peers: int, mig: bool) -> List[Finding]:
    found, grown = _state_of_links(gpu, links, profile, peers, mig), _growth(gpu, links, previous, config, booted)
    if grown and all(f.severity is Severity.PASS for f in found):
        return grown
    return found + grown


def _active(links: List[Dict[str, Any]]) -> int:
    return sum(1 for l in links if l.get("active"))


def _state_of_links(gpu: GpuRef, links: List[Dict[str, Any]], profile, peers: int, mig: bool) -> List[Finding]:
    """``peers``: the most links active on another GPU of the node (not in MIG mode); ``mig``: this
    GPU is in MIG mode."""
    expected = profile.nvlinks if profile is not None else None
    active = [l["link"] for l in links if l.get("active")]
    inactive = [l["link"] for l in links if not l.get("active")]
    metrics: Dict[str, float] = {"active_links": len(active)}
    for name in COUNTERS:
        values = [v for v in (link.get(name) for link in links) if v is not None]
        if values:
            metrics[name + "_errors"] = sum(values)
    if expected == 0:
        return [Finding(NAME, Severity.PASS, "no NVLink by design (%d links present)" % len(links), gpu=gpu, metrics=metrics)]
    if mig:
        return [Finding(NAME, Severity.PASS, "MIG mode: NVLinks disabled by the driver (%d of %d active)"
                        % (len(active), len(links)), gpu=gpu, metrics=metrics)]
    if expected is not None and len(active) < expected:
        down = inactive or ["?"]
        return [Finding(NAME, Severity.RESET, "%d of %d NVLinks active (down: %s)" % (len(active), expected, ",".join(map(str, down))),
                        gpu=gpu, metrics=metrics,
                        remediation="drain and reset the GPUs (or reboot); if the link stays down, check the baseboard/NVSwitch")]
    if expected is None and len(active) < peers:
        return [Finding(NAME, Severity.MONITOR, "%d of %d NVLinks active, another GPU of this node has %d (down: %s; "
                        "no expectation in profile %s)" % (len(active), len(links), peers, ",".join(map(str, inactive)),
                                                           profile.name if profile else "?"), gpu=gpu, metrics=metrics)]
    if not active:
        return [Finding(NAME, Severity.PASS, "no NVLink in use (%d links present)" % len(links), gpu=gpu, metrics=metrics)]
    return [Finding(NAME, Severity.PASS, "%d NVLinks active" % len(active), gpu=gpu, metrics=metrics)]


def evaluate(data: Dict[str, Any], profile, config) -> List[Finding]:
    previous, booted = data.get("previous") or {}, bool(data.get("booted"))
    mig = set(data.get("mig") or ())
    peers = max((_active(e.value) for e in data["gpus"] if e.error is None and e.gpu.index not in mig), default=0)
    return gpu_findings(NAME, data["gpus"],
                        lambda gpu, v: _one(gpu, v, profile, config, previous, booted, peers, gpu.index in mig))
