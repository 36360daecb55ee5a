"""Kernel-log Xid / SXid parsing and classification after NVIDIA's Xid catalog.

Understands every prefix seen in the field: bare lines, ``[sec.usec]``, ``dmesg -T``
dates, syslog/journalctl host prefixes, ``kernel:`` prefixes, ISO timestamps (also after an
RFC 5424 ``<N>1 ``), ``<N>`` priorities and /dev/kmsg records (``pri,seq,usec,flags;message``).
The event pattern is searched anywhere in the line, so an unknown prefix
does not hide an Xid.
"""
from __future__ import annotations

import calendar
import re
import time as _time
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Optional, Tuple

from .backends.gpu import normalize_bus_id
from .text import LINE_MAX, cut

# On a MIG GPU the driver names the GPU instance (and compute instance) inside the parenthesis:
# "NVRM: Xid (PCI:0000:47:00 GPU-I:01 GPU-CI:00): 95, ..." (kernel_rc.c, krcReportXid).
_EVENT = re.compile(
    r"(?P<kind>NVRM: Xid|SXid) \((?:PCI:)?(?P<bus>[0-9A-Fa-f]{1,8}:[0-9A-Fa-f]{2}:[0-9A-Fa-f]{2}(?:\.[0-7])?)"
    r"(?: (?P<instance>GPU-I:\d+(?: GPU-CI:\d+)?))?\):"
    r"\s*(?P<xid>\d+)\s*(?:,\s*(?P<rest>.*))?$"
)
# Linear in the line: no two quantifiers here can match the same characters (a lazy ``[^,]*?``
# between ``\s*`` on both sides made "name=" and thousands of spaces take minutes); the name's
# spaces are stripped in Python.
_PID = re.compile(r"pid\s*=\s*'?(?P<pid>\d+|<unknown>)'?\s*,\s*(?:name\s*=(?P<name>[^,]*),\s*)?")
_SXID_SEV = re.compile(r"^(?P<sev>Fatal|Non-fatal)\s*,\s*", re.IGNORECASE)

# Timestamp prefixes, tried in order; the first that matches the line's start names its time.
# An ISO date may follow an RFC 5424 priority and version ("<4>1 2024-01-15T10:22:33.123456+00:00 host kernel - - - ").
_TIME = [
    ("kmsg", re.compile(r"^\d+,(?P<seq>\d+),(?P<usec>\d+),[^;]*;")),
    ("mono", re.compile(r"^(?:<\d+>)?\[\s*(?P<sec>\d+\.\d+)\]")),
    ("ctime", re.compile(r"^(?:<\d+>)?\[(?P<date>[A-Z][a-z]{2} [A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d \d{4})\]")),
    ("iso", re.compile(r"^(?:<\d+>1 |<\d+>)?(?P<date>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:[.,]\d+)?(?:Z|[+-]\d\d:?\d\d)?)")),
    ("syslog", re.compile(r"^(?:<\d+>)?(?P<date>[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d)")),
]
_MONO_AFTER = re.compile(r"\[\s*(?P<sec>\d+\.\d+)\]")


@dataclass
class XidEvent:
    kind: str                       # "xid" | "sxid"
    xid: int
    pci_bus_id: str
    message: str
    line: int                       # 1-based line number in the input
    time: Optional[str] = None      # the timestamp as the log wrote it
    monotonic: Optional[float] = None   # seconds since boot, when the log gives it
    seq: Optional[int] = None       # /dev/kmsg sequence number
    pid: Optional[int] = None
    process: Optional[str] = None
    fatal: Optional[bool] = None    # SXid: the Fatal / Non-fatal word of the line
    instance: Optional[str] = None  # MIG: "GPU-I:01 GPU-CI:00" when the driver names the instance
    count: int = 1                  # repeats folded into this event
    details: List[str] = field(default_factory=list)    # SXid continuation lines folded in

    def key(self) -> Tuple[str, int, str, str]:
        return (self.kind, self.xid, self.pci_bus_id, self.message)


def _timestamp(line: str) -> Tuple[Optional[str], Optional[float], Optional[int]]:
    for kind, rx in _TIME:
        m = rx.match(line)
        if not m:
            continue
        if kind == "kmsg":
            usec = int(m.group("usec"))
            return "%.6f" % (usec / 1e6), usec / 1e6, int(m.group("seq"))
        if kind == "mono":
            return m.group("sec"), float(m.group("sec")), None
        mono = _MONO_AFTER.search(line, m.end())
        return m.group("date"), float(mono.group("sec")) if mono else None, None
    return None, None, None


def parse_line(line: str, lineno: int = 0) -> Optional[XidEvent]:
    """The Xid/SXid event of one kernel-log line (its first text.LINE_MAX characters), or None."""
    line = cut(line)
    if "Xid" not in line:
        return None
    m = _EVENT.search(line.rstrip("\r\n"))
    if not m:
        return None
    rest = (m.group("rest") or "").strip()
    pid = name = None
    pm = _PID.match(rest)
    if pm:
        pid = int(pm.group("pid")) if pm.group("pid").isdigit() else None
        raw = (pm.group("name") or "").strip().strip("'")
        name = raw if raw not in ("", "<unknown>") else None
        rest = rest[pm.end():]
    fatal = None
    kind = "xid" if m.group("kind") == "NVRM: Xid" else "sxid"
    if kind == "sxid":
        sm = _SXID_SEV.match(rest)
        if sm:
            fatal = sm.group("sev").lower() == "fatal"
            rest = rest[sm.end():]
    when, mono, seq = _timestamp(line)
    return XidEvent(kind=kind, xid=int(m.group("xid")), pci_bus_id=normalize_bus_id(m.group("bus")) or "",
                    message=rest.strip(), line=lineno, time=when, monotonic=mono, seq=seq,
                    pid=pid, process=name or None, fatal=fatal, instance=m.group("instance"))


_FOLLOWUP = ("Severity ", "Data {")


def is_followup(ev: XidEvent) -> bool:
    """An SXid continuation line ('Severity 1 Engine instance ...', 'Data {0x...}'): the NVSwitch
    driver prints it after the first line of the same SXid; it is not an error of its own."""
    return ev.kind == "sxid" and ev.message.startswith(_FOLLOWUP)


def _add(out: List[XidEvent], ev: XidEvent, last_sxid: Dict[str, XidEvent]) -> None:
    """Append an event, or fold an SXid continuation line into the last SXid of its NVSwitch."""
    if ev.kind == "sxid":
        head = last_sxid.get(ev.pci_bus_id)
        if head is not None and head.xid == ev.xid and is_followup(ev):
            head.details.append(ev.message)
            return
        last_sxid[ev.pci_bus_id] = ev
    out.append(ev)


def parse(lines: Iterable[str], start_line: int = 1) -> List[XidEvent]:
    out: List[XidEvent] = []
    last_sxid: Dict[str, XidEvent] = {}
    for n, line in enumerate(lines, start_line):
        if "Xid" in line:
            ev = parse_line(line, n)
            if ev is not None:
                _add(out, ev, last_sxid)
    return out


def scan(text: str, first_line: int = 1) -> List[XidEvent]:
    """Events of a whole log text. Finds 'Xid' with str.find (C speed) and parses only
    the lines that hold it (their first text.LINE_MAX characters), counting newlines in between
    for line numbers. Linear in the text, whatever its lines hold."""
    out: List[XidEvent] = []
    last_sxid: Dict[str, XidEvent] = {}
    pos, line_no, counted_to = 0, first_line, 0
    find, count = text.find, text.count
    while True:
        hit = find("Xid", pos)
        if hit < 0:
            return out
        start = text.rfind("\n", 0, hit) + 1
        end = find("\n", hit)
        if end < 0:
            end = len(text)
        line_no += count("\n", counted_to, start)
        counted_to = start
        ev = parse_line(text[start:min(end, start + LINE_MAX)], line_no)
        if ev is not None:
            _add(out, ev, last_sxid)
        pos = end + 1


# numbers that tell repeats of one fault apart: decimal and hex ids (channel "Ch 0000000a") and
# addresses as the driver prints them ("faulted @ 0x7f12_3456a000")
_HEX = re.compile(r"0x[0-9a-fA-F_]+|\b(?=[0-9a-fA-F]*\d)[0-9a-fA-F]+\b")


def _strip_ids(message: str) -> str:
    return _HEX.sub("#", message)


# -- classification ---------------------------------------------------------------------------

@dataclass
class Conditions:
    """What the conditional rules of the catalog look at."""
    gpu_name: str = ""
    mig_enabled: Optional[bool] = None
    mig_by_bus: Dict[str, bool] = field(default_factory=dict)     # per GPU, where known
    uvm_in_use: Optional[bool] = None
    strict: bool = False
    overrides: Dict[int, str] = field(default_factory=dict)       # xid -> severity name
    sxid_overrides: Dict[int, str] = field(default_factory=dict)

    @classmethod
    def from_config(cls, xcfg: Dict[str, Any], **known: Any) -> "Conditions":
        """From config's ``xid:`` section (strict, overrides, sxid_overrides) and what is known of
        the node (gpu_name, mig_by_bus, uvm_in_use); ``strict=True`` in ``known`` forces strict."""
        strict = bool(known.pop("strict", False)) or bool(xcfg.get("strict"))
        return cls(strict=strict, overrides={int(k): v for k, v in (xcfg.get("overrides") or {}).items()},
                   sxid_overrides={int(k): v for k, v in (xcfg.get("sxid_overrides") or {}).items()}, **known)


def classify(ev: XidEvent, cond: Optional[Conditions] = None) -> Tuple[str, str, str]:
    """(severity name, resolution, description) of an event."""
    from . import xid_catalog as cat

    cond = cond or Conditions()
    if ev.kind == "sxid":
        desc, fatal = cat.SXID.get(ev.xid, (None, None))
        if ev.fatal is not None:
            fatal = ev.fatal
        if ev.xid in cond.sxid_overrides:
            return cond.sxid_overrides[ev.xid], "OVERRIDE", desc or "SXid %d" % ev.xid
        if fatal:
            return cat.SXID_FATAL_SEVERITY, "RESET_FABRIC", desc or "fatal NVSwitch error"
        return cat.SXID_NONFATAL_SEVERITY, "IGNORE", desc or "non-fatal NVSwitch error"
    entry = cat.XID.get(ev.xid)
    if entry is None:
        severity = cond.overrides.get(ev.xid, "MONITOR")
        return severity, "UNKNOWN", "Xid %d (not in the catalog)" % ev.xid
    desc, resolution, severity, rule = entry
    if ev.xid in cond.overrides:
        return cond.overrides[ev.xid], resolution, desc
    a100 = "a100" in cond.gpu_name.lower()
    if rule == "a100_reboot" and a100:
        severity = "REBOOT"
    elif rule == "a100_migoff_reboot" and a100 and cond.mig_by_bus.get(ev.pci_bus_id, cond.mig_enabled) is False:
        severity = "REBOOT"
    elif rule == "uvm":
        severity = "RESET" if cond.uvm_in_use else "MONITOR"
    elif rule == "strict" and cond.strict:
        severity = "ISOLATE"
    elif rule == "recovery_action":
        severity = recovery_action_severity(ev.message) or severity
    return severity, resolution, desc


def recovery_action_severity(message: str) -> Optional[str]:
    """Xid 154: the severity of the action the GPU now asks for ('... to 0x2 (Node Reboot Required)'):
    by its text, else by its code."""
    from . import xid_catalog as cat

    low = message.lower()
    target = low.rsplit(" to ", 1)[-1] if " to " in low else low
    for text, severity in sorted(cat.RECOVERY_ACTIONS.items(), key=lambda kv: -len(kv[0])):
        if text in target:
            return severity
    code = _ACTION_CODE.match(target.strip())
    return cat.RECOVERY_ACTION_CODES.get(int(code.group(1), 16)) if code else None


_ACTION_CODE = re.compile(r"0x([0-9a-f]+)\b")


def describe(events: List[XidEvent], cond: Optional[Conditions] = None) -> List[dict]:
    """Events as plain dicts with their classification (the JSON form of `gpuhc xid`)."""
    out = []
    for ev in events:
        severity, resolution, desc = classify(ev, cond)
        out.append({"kind": ev.kind, "xid": ev.xid, "pci_bus_id": ev.pci_bus_id, "severity": severity,
                    "resolution": resolution, "description": desc, "message": ev.message, "line": ev.line,
                    "time": ev.time, "monotonic": ev.monotonic, "seq": ev.seq, "pid": ev.pid,
                    "process": ev.process, "fatal": ev.fatal, "instance": ev.instance, "details": ev.details})
    return out


# -- wall-clock time of an event (to tell the lines of an earlier boot in a log file) ----------

_ISO = re.compile(r"^(?P<base>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:[.,](?P<frac>\d+))?"
                  r"(?:(?P<utc>Z)|(?P<sign>[+-])(?P<oh>\d\d):?(?P<om>\d\d))?$")
_CTIME = re.compile(r"^[A-Z][a-z]{2} [A-Z][a-z]{2} ")
_SYSLOG = re.compile(r"^[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d$")


def wall_time(when: Optional[str], now: float) -> Optional[float]:
    """Epoch seconds of an event's timestamp as the log wrote it (ISO, `dmesg -T` and syslog
    dates; without a zone: local time; a syslog date has no year: the latest one not after
    ``now``); None for seconds since boot, no timestamp, or a date that does not parse."""
    if not when:
        return None
    try:
        m = _ISO.match(when)
        if m:
            return _iso_time(m)
        if _CTIME.match(when):
            return _time.mktime(_time.strptime(when, "%a %b %d %H:%M:%S %Y"))
        if _SYSLOG.match(when):
            year = _time.localtime(now).tm_year
            t = _syslog_time(when, year)
            return t if t <= now + 86400 else _syslog_time(when, year - 1)
    except (ValueError, OverflowError):
        return None
    return None


def _syslog_time(when: str, year: int) -> float:
    return _time.mktime(_time.strptime("%d %s" % (year, when), "%Y %b %d %H:%M:%S"))


def _iso_time(m: "re.Match[str]") -> float:
    fields = _time.strptime(m.group("base"), "%Y-%m-%dT%H:%M:%S")
    if m.group("utc") or m.group("sign"):
        t = float(calendar.timegm(fields))
        if m.group("sign"):
            offset = int(m.group("oh")) * 3600 + int(m.group("om")) * 60
            t += -offset if m.group("sign") == "+" else offset
    else:
        t = _time.mktime(fields)
    return t + float("0." + m.group("frac")) if m.group("frac") else t


def logged_before(ev: XidEvent, when: float, now: float) -> bool:
    """Whether the event's own timestamp says it was logged before ``when`` (False when it cannot tell)."""
    t = wall_time(ev.time, now)
    return t is not None and t < when


# -- per-boot event records (kept in the local state between runs) -----------------------------

def record(ev: XidEvent, seen: float = 0.0) -> dict:
    return {"seen": seen, "kind": ev.kind, "xid": ev.xid, "pci_bus_id": ev.pci_bus_id, "message": ev.message,
            "key": "%s|%d|%s|%s" % (ev.kind, ev.xid, ev.pci_bus_id, _strip_ids(ev.message)),
            "count": ev.count, "line": ev.line, "time": ev.time, "fatal": ev.fatal,
            "acked": False, "cleared": False}


def event_from_record(rec: dict) -> XidEvent:
    return XidEvent(kind=rec["kind"], xid=rec["xid"], pci_bus_id=rec["pci_bus_id"], message=rec["message"],
                    line=rec.get("line", 0), time=rec.get("time"), fatal=rec.get("fatal"), count=rec.get("count", 1))


def active(rec: dict) -> bool:
    return not rec.get("acked") and not rec.get("cleared")


def merge(records: List[dict], new: List[XidEvent], now: float = 0.0) -> List[dict]:
    """New events folded into the records by key (repeats counted, an acknowledged or cleared
    event that happens again is active again); an Xid 154 whose recovery action returns to
    None is a GPU reset done: the earlier events of its GPU are marked reset as `gpuhc reset`
    marks them (those a reset resolves stop counting; REBOOT and ISOLATE ones stay)."""
    out = [dict(r) for r in records]
    by_key = {r["key"]: r for r in out}
    for ev in new:
        if is_followup(ev) and any(r["kind"] == "sxid" and r["xid"] == ev.xid and r["pci_bus_id"] == ev.pci_bus_id
                                   for r in out):
            continue        # the rest of an SXid whose first line an earlier scan read
        if ev.kind == "xid" and ev.xid == 154 and recovery_action_severity(ev.message) == "MONITOR":
            mark_reset(out, ev.pci_bus_id, now)
        rec = record(ev, now)
        old = by_key.get(rec["key"])
        if old is None:
            out.append(rec)
            by_key[rec["key"]] = rec
        else:
            old["count"] += ev.count
            old["acked"] = old["cleared"] = False
            old.pop("reset", None)
            old["seen"] = now
            old["time"] = ev.time or old.get("time")
    return out


def acknowledge(records: List[dict], xid: Optional[int] = None, pci_bus_id: Optional[str] = None,
                before: Optional[float] = None) -> int:
    """Mark matching active records acknowledged (only those last seen before ``before``, when
    given); returns how many."""
    n = 0
    for r in records:
        if active(r) and (xid is None or r["xid"] == xid) and (pci_bus_id is None or r["pci_bus_id"] == pci_bus_id) \
                and (before is None or r.get("seen", 0.0) <= before):
            r["acked"] = True
            n += 1
    return n


def mark_reset(records: List[dict], pci_bus_id: str, when: float) -> int:
    """A successful reset of the GPU at ``pci_bus_id`` at ``when``: its active records seen before
    then are marked ``reset``; the check no longer reports those a reset resolves (RESET and
    below), and a recurrence makes a record plain again. Returns how many were marked."""
    n = 0
    for r in records:
        if active(r) and r["pci_bus_id"] == pci_bus_id and r.get("seen", 0.0) <= when:
            r["reset"] = when
            n += 1
    return n
