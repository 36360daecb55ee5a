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

    # each member's place in the order, set below from _RANK (an attribute: a dict lookup hashes the
    # enum); annotated without a value, so it is no member
    _rank: int

    @property
    def rank(self) -> int:
        """Order of the tiers; SKIP and ERROR rank below PASS."""
        return self._rank

    @property
    def is_tier(self) -> bool:
        return self._rank >= 0

    @property
    def unhealthy(self) -> bool:
        return self._rank >= 2   # RESET and worse

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
    _severity._rank = _rank


# Times a record may carry (epoch seconds): 1970 to 2242, which time.localtime/gmtime and strftime
# take on every platform. A record outside (1e20, NaN, a string) is corrupt: readers skip it.
MIN_TS = 0.0
MAX_TS = float(2 ** 33)


def valid_ts(value: Any) -> bool:
    """A number (not a bool) within [MIN_TS, MAX_TS): NaN and infinities fail the comparison."""
    return type(value) in (int, float) and MIN_TS <= value < MAX_TS


def _field(d: Any, key: str, types: Any, where: str, default: Any = None, required: bool = False) -> Any:
    """d[key] checked against ``types`` (a type or a tuple of types; a bool is never an int); the
    default when an optional field is absent or null. ValueError naming the field when it is of
    another type, KeyError when a required one is missing."""
    if not isinstance(d, dict):
        raise ValueError("%s: expected a JSON object, got %s" % (where or "record", json_repr(d)))
    value = d.get(key)
    if value is None:
        if required:
            raise KeyError("%s.%s" % (where, key) if where else key)
        return default
    allowed = types if isinstance(types, tuple) else (types,)
    if not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed):
        raise ValueError("field %s%s: expected %s, got %s" % (where + "." if where else "", key,
                                                              _type_names(allowed), json_repr(value)))
    return value


def _type_names(types: Any) -> str:
    names = {str: "a string", int: "an integer", float: "a number", dict: "an object", list: "a list"}
    if float in types:
        types = tuple(t for t in types if t is not int)    # "a number" says both
    return " or ".join(names.get(t, t.__name__) for t in types)


def json_repr(value: Any, most: int = 40) -> str:
    """A short text of a bad value for a warning."""
    text = repr(value)
    return text if len(text) <= most else text[:most - 3] + "..."


def _time_field(d: Dict[str, Any], key: str, where: str = "") -> float:
    value = _field(d, key, (int, float), where, required=True)
    if not valid_ts(value):
        raise ValueError("field %s%s: %s is not a time between %d and %d" % (where + "." if where else "", key,
                                                                           json_repr(value), MIN_TS, MAX_TS))
    return float(value)


@dataclass(frozen=True)
class GpuRef:
    index: int
    uuid: Optional[str] = None
    pci_bus_id: Optional[str] = None

    def to_dict(self) -> Dict[str, Any]:
        return {"index": self.index, "uuid": self.uuid, "pci_bus_id": self.pci_bus_id}

    @classmethod
    def from_dict(cls, d: Optional[Dict[str, Any]], where: str = "gpu") -> Optional["GpuRef"]:
        if d is None:
            return None
        return cls(_field(d, "index", int, where, required=True), _field(d, "uuid", str, where),
                   _field(d, "pci_bus_id", str, where))


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
    def from_dict(cls, d: Dict[str, Any], where: str = "finding") -> "Finding":
        """ValueError (or KeyError) naming the field when a field is missing or of the wrong type."""
        if type(d) is dict:        # the fast path: a finding as to_dict() wrote it (a fleet has millions)
            check, text, message, gpu = d.get("check"), d.get("severity"), d.get("message", ""), d.get("gpu")
            device, remediation, metrics = d.get("device"), d.get("remediation", ""), d.get("metrics")
            ref: Optional[GpuRef] = None
            if type(gpu) is dict:
                index, uuid, bus = gpu.get("index"), gpu.get("uuid"), gpu.get("pci_bus_id")
                if type(index) is int and (uuid is None or type(uuid) is str) and (bus is None or type(bus) is str):
                    ref = GpuRef(index, uuid, bus)
            if type(check) is str and type(text) is str and type(message) is str and type(remediation) is str \
                    and (device is None or type(device) is str) and (metrics is None or type(metrics) is dict) \
                    and (gpu is None or ref is not None):
                return cls(check, _BY_VALUE.get(text) or Severity.parse(text), message, ref, device, remediation,
                           dict(metrics) if metrics else {})
        text = _field(d, "severity", str, where, required=True)
        severity = _BY_VALUE.get(text) or Severity.parse(text)
        gpu = _field(d, "gpu", dict, where)
        return cls(_field(d, "check", str, where, required=True), severity, _field(d, "message", str, where, "") or "",
                   GpuRef.from_dict(gpu, where + ".gpu") if gpu is not None else None, _field(d, "device", str, where),
                   _field(d, "remediation", str, where, "") or "", dict(_field(d, "metrics", dict, where) or {}))

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
    # a quarantine's decision (contexts/quarantine.py VERDICTS): RETURN_TO_SERVICE, RESET, REBOOT,
    # REPLACE or INCONCLUSIVE; None for every other run
    verdict: Optional[str] = None

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
            "verdict": self.verdict,
            "gpus": list(self.gpus),
            "findings": [f.to_dict() for f in self.findings],
        }

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "Report":
        """The report of a record; ValueError (or KeyError) naming the field when a field is missing, of
        the wrong type, or a time out of range (a reader then skips the record)."""
        version = d.get("schema_version", 0) if isinstance(d, dict) else None
        if type(version) is not int or version < 1 or version > SCHEMA_VERSION:
            raise ValueError("unsupported schema_version %s" % json_repr(version))
        started = _time_field(d, "started_ts")
        duration = _field(d, "duration_s", (int, float), "", 0.0) or 0.0
        if not (-MAX_TS < duration < MAX_TS):
            raise ValueError("field duration_s: %s is not a duration" % json_repr(duration))
        job_id = _field(d, "job_id", (str, int), "")
        findings = _field(d, "findings", list, "", []) or []
        return cls(
            node=_field(d, "node", str, "", required=True),
            context=_field(d, "context", str, "", required=True),
            profile=_field(d, "profile", str, "", "") or "",
            started=started,
            ended=started + float(duration),
            findings=[Finding.from_dict(f, "findings[%d]" % n) for n, f in enumerate(findings)],
            job_id=str(job_id) if job_id is not None else None,
            boot_id=_field(d, "boot_id", str, ""),
            suite=_field(d, "suite", str, ""),
            gpus=list(_field(d, "gpus", list, "", []) or []),
            gpuhc_version=_field(d, "gpuhc_version", str, "", "") or "",
            schema_version=version,
            action=_field(d, "action", str, ""),
            verdict=_field(d, "verdict", str, ""),
        )
