"""network: EFA devices and InfiniBand ports against the profile, and what RDMA needs on the host.

Everything is read through the host (sysfs and /proc under its root, so scenarios supply them as
files): /sys/class/infiniband/<dev>/ports/<n>/{state,phys_state,rate,link_layer,counters/link_downed},
/sys/class/infiniband/<dev>/device/vendor, /dev/infiniband (uverbs nodes), /proc/modules and
/proc/self/limits (the locked-memory limit slurmd hands its jobs).

- EFA (Amazon vendor 0x1d0f, or named rdmap*/efa*): fewer working devices than profile.efa is
  REBOOT (a lost EFA device comes back with a reboot, or a stop/start onto other hardware).
- InfiniBand ports (link layer InfiniBand; Ethernet/RoCE ports are not counted): profile.ib is
  the number of compute ports that must be ACTIVE LinkUp at profile.ib_rate or faster. Short of
  that, each inactive port is RESET (and each slower active port, where the inactive ones do not
  explain the shortfall: a degraded link), and missing ports are RESET; with enough, further
  ports (storage/in-band ports on their own fabric) are extras: inactive MONITOR, slower fine.
  Without a profile rate, a port slower than its peers is MONITOR; without an expectation, an
  inactive port beside active ones is MONITOR.
- link_downed growth since the last run is flapping (MONITOR); the counter is kept as a metric.
- Missing kernel modules or uverbs device nodes are RESET; a locked-memory limit other than
  unlimited is MONITOR.
"""
from __future__ import annotations

import re
from typing import Any, Dict, List, Optional, Tuple

from ..model import Finding, Severity
from .base import Context, delta
from .meta import LIGHTWEIGHT_SUITES, CheckMeta

NAME = "network"
META = CheckMeta(
    description="EFA devices and InfiniBand ports against the profile; what RDMA needs on the host",
    suites=LIGHTWEIGHT_SUITES + ("epilog",),
    needs_gpu=False,
)
SYS_IB = "/sys/class/infiniband"
AMAZON_VENDOR = "0x1d0f"
EFA_PREFIXES = ("rdmap", "efa")
PORT_FILES = {"state": "state", "phys_state": "phys_state", "rate": "rate", "link_layer": "link_layer",
              "link_downed": "counters/link_downed"}
_MEMLOCK = re.compile(r"^Max locked memory\s+(\S+)\s+(\S+)", re.M)
_RATE = re.compile(r"(?<![\d.])([\d.]+)\s*Gb/sec")       # anchored: linear on a long run of digits


def _read(host, path: str) -> Optional[str]:
    text = host.read_text(path)
    return text.strip() if text is not None else None


def modules_loaded(text: Optional[str]) -> Optional[List[str]]:
    """Module names of /proc/modules; None when it cannot be read."""
    if text is None:
        return None
    return [line.split()[0] for line in text.splitlines() if line.strip()]


def memlock_limit(text: Optional[str]) -> Optional[str]:
    """The soft 'Max locked memory' limit of /proc/self/limits ('unlimited' or bytes), or None."""
    m = _MEMLOCK.search(text or "")
    return m.group(1) if m else None


def gather(ctx: Context) -> Dict[str, Any]:
    host = ctx.host
    devices: Dict[str, Any] = {}
    for dev in host.listdir(SYS_IB):
        base = "%s/%s" % (SYS_IB, dev)
        ports = {}
        for port in host.listdir(base + "/ports"):
            where = "%s/ports/%s/" % (base, port)
            ports[port] = {key: _read(host, where + rel) for key, rel in PORT_FILES.items()}
        devices[dev] = {"vendor": _read(host, base + "/device/vendor"), "ports": ports}
    counters = {"%s/%s" % (dev, port): _number(p["link_downed"])
                for dev, info in devices.items() for port, p in info["ports"].items() if _number(p["link_downed"]) is not None}
    return {
        "devices": devices,
        "uverbs": [n for n in host.listdir("/dev/infiniband") if n.startswith("uverbs")],
        "modules": modules_loaded(host.read_text("/proc/modules")),
        "memlock": memlock_limit(host.read_text("/proc/self/limits")),
        "previous": ctx.previous_state(NAME),
        "booted": ctx.booted_since(NAME),
        "_state": counters,
    }


def _number(text: Optional[str]) -> Optional[int]:
    try:
        return int(str(text).strip())
    except (TypeError, ValueError):
        return None


def _word(text: Optional[str]) -> Optional[str]:
    """'4: ACTIVE' -> 'ACTIVE'."""
    return text.split(":", 1)[-1].strip() if text else None


def _rate(text: Optional[str]) -> Optional[float]:
    m = _RATE.search(text or "")
    return float(m.group(1)) if m else None


def is_efa(name: str, info: Dict[str, Any]) -> bool:
    return (info.get("vendor") or "").lower() == AMAZON_VENDOR or name.startswith(EFA_PREFIXES)


def _ports(devices: Dict[str, Any]) -> Tuple[Dict[str, bool], List[Dict[str, Any]]]:
    """EFA devices (name -> working) and InfiniBand ports (one dict each)."""
    efa: Dict[str, bool] = {}
    ib: List[Dict[str, Any]] = []
    for dev in sorted(devices):
        info = devices[dev]
        if is_efa(dev, info):
            states = [_word(p.get("state")) for p in info["ports"].values() if p.get("state")]
            efa[dev] = all(s == "ACTIVE" for s in states)
            continue
        for port in sorted(info["ports"]):
            p = info["ports"][port]
            if (p.get("link_layer") or "InfiniBand").lower() != "infiniband":
                continue
            state, phys = _word(p.get("state")), _word(p.get("phys_state"))
            ib.append({"name": "%s/%s" % (dev, port), "state": state, "phys": phys, "rate": _rate(p.get("rate")),
                       "link_downed": _number(p.get("link_downed")),
                       "active": state == "ACTIVE" and phys in (None, "LinkUp")})
    return efa, ib


def _efa_findings(efa: Dict[str, bool], expected: Optional[int], profile) -> List[Finding]:
    working = sorted(d for d, ok in efa.items() if ok)
    broken = sorted(d for d, ok in efa.items() if not ok)
    metrics: Dict[str, float] = {"efa_devices": len(working)}
    if expected and len(working) < expected:
        detail = " (not active: %s)" % ", ".join(broken) if broken else ""
        return [Finding(NAME, Severity.REBOOT, "%d of %d EFA devices%s, profile %s" % (len(working), expected, detail, profile.name),
                        device="efa", metrics=metrics,
                        remediation="drain and reboot; if an EFA device is still missing, stop and start the instance "
                                    "(it moves to other hardware) or open a case with AWS")]
    return [Finding(NAME, Severity.MONITOR, "EFA device %s not active" % dev, device=dev, metrics=metrics,
                    remediation="check the EFA device (fi_info -p efa); reboot if it stays down") for dev in broken]


def _port_metrics(port: Dict[str, Any]) -> Dict[str, float]:
    return {k: port[k] for k in ("rate", "link_downed") if port.get(k) is not None}


def _ib_findings(ports: List[Dict[str, Any]], expected: Optional[int], rate: Optional[float], profile) -> List[Finding]:
    """The profile's ``ib`` ports are the compute rails at ``ib_rate``; a node may have more IB
    ports (a DGX's storage/in-band ConnectX ports on their own, often slower, fabric). So what
    must hold is ``ib`` ACTIVE ports at the rate: when it does, other ports are extras (down:
    MONITOR; slower: fine); when it does not, the down ports are RESET, and the slower ones too
    where the down ones do not explain the shortfall."""
    active = [p for p in ports if p["active"]]
    down = [p for p in ports if not p["active"]]
    out: List[Finding] = []
    if not expected:
        severity = Severity.MONITOR if active else None
        count = " (%d of %d ports active, no expectation in the profile)" % (len(active), len(ports))
        if severity is not None:
            out.extend(_port_down(p, severity, count) for p in down)
        return out + _slower_than_peers(active)
    fast = [p for p in active if not rate or p["rate"] is None or p["rate"] >= rate]
    slow = [p for p in active if p not in fast]
    short = expected - len(fast)
    if len(ports) < expected:
        out.append(Finding(NAME, Severity.RESET, "%d InfiniBand ports found, profile %s expects %d (%d active)"
                           % (len(ports), profile.name, expected, len(active)), device="ib",
                           metrics={"ib_ports_active": len(active)},
                           remediation="drain; check the HCAs (ibstat, lspci, dmesg for mlx5) and reboot"))
    at = " at %g Gb/s" % rate if rate else ""
    count = " (%d of %d expected ports active%s)" % (len(fast), expected, at)
    out.extend(_port_down(p, Severity.RESET if short > 0 else Severity.MONITOR, count) for p in down)
    if short > len(down) and rate:          # (without a rate no port is slow)
        out.extend(_slow(p, Severity.RESET, "profile expects %d ports at %g, %d are" % (expected, rate, len(fast)))
                   for p in slow)
    if not rate:
        out.extend(_slower_than_peers(active))
    return out


def _slower_than_peers(active: List[Dict[str, Any]]) -> List[Finding]:
    best = max((p["rate"] for p in active if p["rate"]), default=None)
    return [_slow(p, Severity.MONITOR, "other ports run at %g" % best)
            for p in active if best and p["rate"] is not None and p["rate"] < best]


def _port_down(p: Dict[str, Any], severity: Severity, count: str) -> Finding:
    return Finding(NAME, severity, "InfiniBand port %s is %s, physical state %s%s" % (p["name"], p["state"], p["phys"], count),
                   device=p["name"], metrics=_port_metrics(p),
                   remediation="drain; check the cable and the switch port (ibstat, ibportstate), "
                               "reset the HCA port or reboot; reseat or replace the cable if it stays down")


def _slow(p: Dict[str, Any], severity: Severity, what: str) -> Finding:
    return Finding(NAME, severity, "InfiniBand port %s at %g Gb/s, %s (degraded link)" % (p["name"], p["rate"], what),
                   device=p["name"], metrics=_port_metrics(p),
                   remediation="drain; the link trained below its speed: reseat or replace the cable "
                               "or transceiver, check the switch port")


def _flapping(ports: List[Dict[str, Any]], previous: Dict[str, Any], threshold: float, booted: bool) -> List[Finding]:
    out = []
    for p in ports:
        grown = delta(p["link_downed"], previous.get(p["name"]), booted)
        if grown is not None and grown >= threshold and grown > 0:
            out.append(Finding(NAME, Severity.MONITOR, "InfiniBand port %s went down %d times since the last run (flapping)"
                               % (p["name"], grown), device=p["name"], metrics=dict(_port_metrics(p), link_downed_delta=grown),
                               remediation="watch the link; check the cable, transceiver and switch port "
                                           "(ibqueryerrors) if it keeps flapping"))
    return out


def _host_findings(data: Dict[str, Any], rdma: int, wants_efa: bool, wants_ib: bool, conf: Dict[str, Any]) -> List[Finding]:
    out = []
    needed = (list(conf["efa_modules"]) if wants_efa else []) + (list(conf["ib_modules"]) if wants_ib else [])
    modules = data.get("modules")
    if modules is not None:
        missing = [m for m in dict.fromkeys(needed) if m not in modules]
        if missing:
            out.append(Finding(NAME, Severity.RESET, "kernel modules not loaded: %s" % ", ".join(missing), device="modules",
                               remediation="modprobe %s (or reboot); check the EFA/OFED installation" % " ".join(missing)))
    uverbs = len(data.get("uverbs") or [])
    if rdma and uverbs < rdma:
        out.append(Finding(NAME, Severity.RESET, "%d uverbs device nodes in /dev/infiniband for %d RDMA devices" % (uverbs, rdma),
                           device="uverbs", metrics={"uverbs": uverbs},
                           remediation="modprobe ib_uverbs; check the udev rules for /dev/infiniband"))
    limit = data.get("memlock")
    if conf["memlock"] and limit is not None and limit != "unlimited":
        shown = "%d KiB" % (int(limit) // 1024) if limit.isdigit() else limit
        out.append(Finding(NAME, Severity.MONITOR, "max locked memory is %s, RDMA jobs need unlimited" % shown, device="memlock",
                           remediation="set LimitMEMLOCK=infinity for slurmd (systemd drop-in) and let Slurm propagate it "
                                       "(PropagateResourceLimits), or raise memlock in /etc/security/limits.d"))
    return out


def evaluate(data: Dict[str, Any], profile, config) -> List[Finding]:
    conf = config["network"]
    want_efa = profile.efa if profile is not None else None
    want_ib = profile.ib if profile is not None else None
    devices = data.get("devices") or {}
    if not devices and not want_efa and not want_ib:
        return [Finding(NAME, Severity.SKIP, "no EFA or InfiniBand devices, and profile %s expects none"
                        % (profile.name if profile is not None else "?"))]
    efa, ports = _ports(devices)
    out = _efa_findings(efa, want_efa, profile)
    out += _ib_findings(ports, want_ib, profile.ib_rate if profile is not None and want_ib else None, profile)
    out += _flapping(ports, data.get("previous") or {}, float(conf["flap_threshold"]), bool(data.get("booted")))
    out += _host_findings(data, len(devices), bool(efa or want_efa), bool(ports or want_ib), conf)
    if not out:
        parts = []
        if efa:
            parts.append("%d EFA devices" % len(efa))
        active = [p for p in ports if p["active"]]
        if ports:
            rates = sorted({p["rate"] for p in active if p["rate"]})
            parts.append("%d InfiniBand ports active%s%s" % (
                len(active), " at %s Gb/s" % "/".join("%g" % r for r in rates) if rates else "",
                " (%d down, none in use)" % (len(ports) - len(active)) if len(active) < len(ports) else ""))
        metrics = {"efa_devices": len(efa), "ib_ports_active": len(active),
                   "link_downed": sum(p["link_downed"] or 0 for p in ports)}
        out.append(Finding(NAME, Severity.PASS, ", ".join(parts) or "RDMA devices present", metrics=metrics))
    return out
