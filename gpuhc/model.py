"""Core data types: severities, findings, reports, exit codes.

The JSON form of a Report carries ``schema_version``; readers accept any record
whose major version they know.
"""
from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from . import __version__

SCHEMA_VERSION = 1

# Exit codes of every command that checks.
EXIT_HEALTHY = 0        # PASS or MONITOR
EXIT_UNHEALTHY = 1      # RESET and above
EXIT_USAGE = 2          # usage or configuration error
EXIT_UNKNOWN = 3        # could not determine (ERROR only)


class Severity(enum.Enum):
    """Severity tiers (ordered) plus two outcomes outside the order.

    PASS < MONITOR < RESET < REBOOT < ISOLATE. ERROR means the checker itself
    failed (never drains by itself); SKIP means not applicable here.
    """

    SKIP = "SKIP"
    PASS = "PASS"
    MONITOR = "MONITOR"
    RESET = "RESET"
    REBOOT = "REBOOT"
    ISOLATE = "ISOLATE"
    ERROR = "ERROR"

    @property
    def rank(self) -> int:
        """Order of the tiers; SKIP and ERROR rank below PASS."""
        return self._rank      # type: ignore[attr-defined]  (set below: a dict lookup hashes the enum)

    @property
    def is_tier(self) -> bool:
        return self._rank >= 0  # type: ignore[attr-defined]

    @property
    def unhealthy(self) -> bool:
        return self._rank >= 2  # type: ignore[attr-defined]  (RESET and worse)

    @classmethod
    def parse(cls, text: str) -> "Severity":
        try:
            return cls[str(text).strip().upper()]
        except KeyError:
            raise ValueError(
                "unknown severity %r (expected one of %s)" % (text, ", ".join(s.name for s in cls))
            ) from None

    def __str__(self) -> str:
        return self.value


_RANK = {
    Severity.SKIP: -2,
    Severity.ERROR: -1,
    Severity.PASS: 0,
    Severity.MONITOR: 1,
    Severity.RESET: 2,
    Severity.REBOOT: 3,
    Severity.ISOLATE: 4,
}
_BY_VALUE = {s.value: s for s in Severity}
for _severity, _rank in _RANK.items():
    _severity._rank = _rank   # type: ignore[attr-defined]


@dataclass(frozen=True)
class GpuRef:
    index: int
    uuid: Optional[str] = None
    pci_bus_id: Optional[str] = None

    def to_dict(self) -> Dict[str, Any]:
        return {"index": self.index, "uuid": self.uuid, "pci_bus_id": self.pci_bus_id}

    @classmethod
    def from_dict(cls, d: Optional[Dict[str, Any]]) -> Optional["GpuRef"]:
        if d is None:
            return None
        return cls(int(d["index"]), d.get("uuid"), d.get("pci_bus_id"))


@dataclass
class Finding:
    check: str
    severity: Severity
    message: str
    gpu: Optional[GpuRef] = None
    device: Optional[str] = None      # a non-GPU device (NIC, NVSwitch, link) when it concerns one
    remediation: str = ""
    metrics: Dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> Dict[str, Any]:
        return {
            "check": self.check,
            "severity": self.severity.value,
            "gpu": self.gpu.to_dict() if self.gpu else None,
            "device": self.device,
            "message": self.message,
            "remediation": self.remediation,
            "metrics": dict(self.metrics),
        }

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "Finding":
        severity = _BY_VALUE.get(d["severity"]) or Severity.parse(d["severity"])
        gpu = d.get("gpu")
        return cls(d["check"], severity, d.get("message", ""), GpuRef.from_dict(gpu) if gpu is not None else None,
                   d.get("device"), d.get("remediation", ""), dict(d.get("metrics") or {}))

    def where(self) -> str:
        """Short location: 'GPU3', a device name, or ''."""
        if self.gpu is not None:
            return "GPU%d" % self.gpu.index
        return self.device or ""


def overall_severity(findings: List[Finding]) -> Severity:
    """The overall result of a run.

    The highest tier wins when it is RESET or worse. Below that, any ERROR makes
    the result ERROR (could not determine); otherwise the highest tier (PASS
    when every finding is PASS or SKIP, or there are none).
    """
    tiers = [f.severity for f in findings if f.severity.is_tier]
    top = max(tiers, key=lambda s: s.rank, default=Severity.PASS)
    if top.unhealthy:
        return top
    if any(f.severity is Severity.ERROR for f in findings):
        return Severity.ERROR
    return top


def exit_code(overall: Severity) -> int:
    if overall is Severity.ERROR:
        return EXIT_UNKNOWN
    if overall.unhealthy:
        return EXIT_UNHEALTHY
    return EXIT_HEALTHY


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + (".%03dZ" % int((ts % 1) * 1000))


@dataclass
class Report:
    node: str
    context: str
    profile: str
    started: float
    ended: float
    findings: List[Finding]
    job_id: Optional[str] = None
    boot_id: Optional[str] = None
    suite: Optional[str] = None
    gpus: List[Dict[str, Any]] = field(default_factory=list)   # inventory: index, uuid, pci_bus_id, name, serial
    gpuhc_version: str = __version__
    schema_version: int = SCHEMA_VERSION
    # What gpuhc did with the result, when policy decided something: "drain", "would-drain" (the
    # breaker held a drain back), "quarantine", "resume"; None when nothing was decided (gpuhc check).
    action: Optional[str] = None

    @property
    def overall(self) -> Severity:
        return overall_severity(self.findings)

    @property
    def exit_code(self) -> int:
        return exit_code(self.overall)

    def top_findings(self) -> List[Finding]:
        """Findings ordered most severe first (ERROR after the tiers, SKIP and PASS last)."""
        def key(f: Finding):
            s = f.severity
            if s is Severity.ERROR:
                return (1, 0)
            return (0 if s.rank > 0 else 2, -s.rank)
        return sorted(self.findings, key=key)

    def to_dict(self) -> Dict[str, Any]:
        return {
            "schema_version": self.schema_version,
            "node": self.node,
            "context": self.context,
            "suite": self.suite,
            "job_id": self.job_id,
            "boot_id": self.boot_id,
            "profile": self.profile,
            "started": _iso(self.started),
            "ended": _iso(self.ended),
            "started_ts": round(self.started, 3),
            "duration_s": round(self.ended - self.started, 3),
            "gpuhc_version": self.gpuhc_version,
            "overall": self.overall.value,
            "action": self.action,
            "gpus": list(self.gpus),
            "findings": [f.to_dict() for f in self.findings],
        }

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "Report":
        version = int(d.get("schema_version", 0))
        if version < 1 or version > SCHEMA_VERSION:
            raise ValueError("unsupported schema_version %r" % d.get("schema_version"))
        started = float(d["started_ts"])
        return cls(
            node=d["node"],
            context=d["context"],
            profile=d.get("profile", ""),
            started=started,
            ended=started + float(d.get("duration_s", 0.0)),
            findings=[Finding.from_dict(f) for f in d.get("findings", [])],
            job_id=d.get("job_id"),
            boot_id=d.get("boot_id"),
            suite=d.get("suite"),
            gpus=list(d.get("gpus") or []),
            gpuhc_version=d.get("gpuhc_version", ""),
            schema_version=version,
            action=d.get("action"),
        )
