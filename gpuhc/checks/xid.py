"""xid: NVRM Xid and NVSwitch SXid events in the kernel log, classified after NVIDIA's catalog.

The log is read incrementally from a cursor kept per node and per boot in the local state
directory, so no event is missed between two runs however chatty the log is, and an
event keeps its finding until the node reboots (new boot id), the GPU reports a completed
reset (Xid 154 recovery action back to None, or `gpuhc reset` succeeded on that GPU: events a
reset resolves stop, REBOOT and ISOLATE ones stay), or an operator acknowledges it (`gpuhc ack`).

A log file source (``kernel_log: /var/log/kern.log``) outlives a reboot: its byte cursor is
kept across boots (only the events start over), and on the first scan of a boot the lines
whose own date is before the boot time (/proc/stat btime) are not new events. Lines that
carry only seconds since boot cannot be placed and are counted.
"""
from __future__ import annotations

import time
from typing import Any, Dict, List, Optional

from .. import localstate
from .. import xid as kernel_xid
from ..backends.gpu import GpuError, normalize_bus_id
from ..model import Finding, Severity
from .base import Context, state_file
from .meta import LIGHTWEIGHT_SUITES, CheckMeta

NAME = "xid"
META = CheckMeta(
    description="Xid and SXid events in the kernel log, after NVIDIA's Xid catalog",
    suites=LIGHTWEIGHT_SUITES + ("epilog",),
    needs_gpu=False,
)


def acknowledge(state_dir: str, node: str, xid: Optional[int] = None, pci_bus_id: Optional[str] = None) -> int:
    """An operator's acknowledgement: matching active events stop producing findings until they recur."""
    return _change_events(state_dir, node, lambda events: kernel_xid.acknowledge(
        events, xid, normalize_bus_id(pci_bus_id) if pci_bus_id else None))


def mark_reset(state_dir: str, node: str, pci_bus_id: str, when: float) -> int:
    """A successful reset of one GPU (`gpuhc reset`): its events seen before ``when`` are marked
    reset (xid.mark_reset). Returns how many; OSError when the state cannot be written."""
    return _change_events(state_dir, node, lambda events: kernel_xid.mark_reset(
        events, normalize_bus_id(pci_bus_id) or pci_bus_id, when))


def _change_events(state_dir: str, node: str, change: Any) -> int:
    """``change(events)`` on the node's Xid events, under the state file's lock; how many it changed."""
    done = {"n": 0}

    def update(states: Any) -> Any:
        states = states if isinstance(states, dict) else {}
        done["n"] = change((states.get(NAME) or {}).get("events", []))
        return states

    if not localstate.update(state_dir, state_file(node), update):
        raise OSError("cannot write the Xid state in %s" % state_dir)
    return done["n"]


def keep(new: Dict[str, Any], current: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    """The state this run computed, with the marks an operator put on an event (acknowledged,
    reset) while the run was going: kept on every event this run did not see again."""
    if not isinstance(current, dict) or current.get("boot_id") != new.get("boot_id"):
        return new
    new["jobs"] = _newest_jobs(dict(current.get("jobs") or {}, **(new.get("jobs") or {})))
    marked = {r["key"]: r for r in current.get("events", []) if r.get("acked") or r.get("reset")}
    for rec in new.get("events", []):
        theirs = marked.get(rec["key"])
        if theirs is not None and theirs.get("count") == rec.get("count") and theirs.get("seen") == rec.get("seen"):
            if theirs.get("acked"):
                rec["acked"] = True
            if theirs.get("reset"):
                rec["reset"] = theirs["reset"]
    return new


def gather(ctx: Context) -> Dict[str, Any]:
    boot = ctx.host.boot_id()
    state = dict(ctx.previous_state(NAME))
    new_boot = state.get("boot_id") != boot
    if new_boot:
        state = {"boot_id": boot, "cursor": _file_cursor(state.get("cursor")), "events": []}
    chunk = ctx.host.kernel_log_since(state.get("cursor"))
    before = (state.get("cursor") or {}).get("source") or ""
    if before.startswith("sim:") and chunk.cursor.get("source") != before:
        state["events"] = []            # another scenario on this node name: another node's log
    new = kernel_xid.scan(chunk.text, chunk.first_line)
    if new_boot and chunk.cursor.get("source") == "file":
        new = _this_boot(ctx, new)
    now = time.time()
    state["events"] = kernel_xid.merge(state.get("events", []), new, now)
    # where each job's prolog left the log: an epilog tells what happened during its job from
    # what was there before (an event not seen again since is not the job's doing)
    jobs = dict(state.get("jobs") or {})
    if ctx.job_id and ctx.context == "prolog":
        jobs[str(ctx.job_id)] = now
    job_since = jobs.get(str(ctx.job_id)) if ctx.job_id and ctx.context == "epilog" else None
    state["jobs"] = _newest_jobs(jobs)
    if any(kernel_xid.active(e) for e in state["events"]):
        acked = ctx.ack_time()            # an operator's `gpuhc resume --force`, from the store
        if acked is not None:
            kernel_xid.acknowledge(state["events"], before=acked)
    state["cursor"] = chunk.cursor
    state["lost"] = state.get("lost", 0) + chunk.lost
    inv = ctx.inventory
    xcfg = ctx.config.get("xid") or {}
    events = [e for e in state["events"] if kernel_xid.active(e)]
    gpus = {ref.pci_bus_id: ref for ref in (inv.gpus if inv else []) if ref.pci_bus_id is not None}
    return {
        "_state": state,
        "events": events,
        "job": (str(ctx.job_id), job_since) if job_since is not None else None,
        "lost": state["lost"],
        "gpus": gpus,
        "conditions": kernel_xid.Conditions.from_config(
            xcfg, gpu_name=(inv.model or "") if inv else "", mig_by_bus=_mig_modes(ctx, events, gpus),
            uvm_in_use=_uvm_in_use(ctx) if any(e["xid"] == 159 for e in events) else None),
    }


def _newest_jobs(jobs: Dict[str, Any], most: int = 64) -> Dict[str, Any]:
    """The prolog marks of the newest ``most`` jobs (a node runs a few jobs at once at most)."""
    good = [(k, v) for k, v in jobs.items() if isinstance(v, (int, float))]
    return dict(sorted(good, key=lambda kv: kv[1])[-most:])


def _file_cursor(cursor: Optional[Dict[str, Any]]) -> Optional[Dict[str, Any]]:
    """The part of a cursor that survives a reboot: a log file's position (the kernel's own
    sources, /dev/kmsg and the journal of this boot, start over)."""
    return cursor if cursor and cursor.get("source") == "file" else None


def _this_boot(ctx: Context, events: List[kernel_xid.XidEvent]) -> List[kernel_xid.XidEvent]:
    """Events of a log file without those its timestamps place before this boot."""
    booted = ctx.host.boot_time()
    if booted is None:
        return events
    now = time.time()
    return [ev for ev in events if not kernel_xid.logged_before(ev, booted, now)]


def _mig_modes(ctx: Context, events: List[dict], gpus: Dict[str, Any]) -> Dict[str, bool]:
    """MIG mode of the GPUs whose events have a MIG-dependent rule (Xid 95), asked only then."""
    out: Dict[str, bool] = {}
    for bus in {e["pci_bus_id"] for e in events if e["kind"] == "xid" and e["xid"] == 95}:
        ref = gpus.get(bus)
        if ref is None or ctx.gpu_unavailable():
            continue
        try:
            mig = ctx.gpu.modes(ref.index).get("mig_current")
        except GpuError:
            continue
        if mig is not None:
            out[bus] = bool(mig)
    return out


def _uvm_in_use(ctx: Context) -> Optional[bool]:
    """Whether the nvidia_uvm module has users (/proc/modules reference count), for Xid 159."""
    text = ctx.host.read_text("/proc/modules")
    if text is None:
        return None
    for line in text.splitlines():
        fields = line.split()
        if fields and fields[0] == "nvidia_uvm" and len(fields) > 2:
            return fields[2].isdigit() and int(fields[2]) > 0
    return False


def _nvswitch_cause(events: List[kernel_xid.XidEvent]) -> str:
    """An SXid beside an Xid 74 points at the NVSwitch rather than the GPU."""
    sxids = ["SXid %d on NVSwitch %s" % (e.xid, e.pci_bus_id) for e in events if e.kind == "sxid"]
    return "; %s at the same time points at the NVSwitch" % ", ".join(sorted(set(sxids))[:3]) if sxids else ""


def remediation(severity: str, resolution: str, desc: str = "", message: str = "") -> str:
    """'[what the Xid is: ]what gpuhc's tier asks; NVIDIA: the catalog's resolution in words
    (BUCKET)'; the description leads where the log's message does not already say it."""
    from .. import xid_catalog as cat

    bucket, _, extra = resolution.partition(", ")
    words = cat.RESOLUTION_WORDS.get(bucket)
    nvidia = "; NVIDIA: %s (%s)" % (words, bucket) if words else ""
    said = not message or desc.lower().rstrip(". ") in message.lower()
    return ("" if said else desc + ": ") + cat.TIER_ACTION.get(severity, severity) + nvidia + \
        ("; " + extra if extra else "")


def evaluate(data: Dict[str, Any], profile, config) -> List[Finding]:
    out: List[Finding] = []
    events = [kernel_xid.event_from_record(rec) for rec in data["events"]]
    switch_cause = _nvswitch_cause(events)
    job_id, job_since = data.get("job") or (None, None)     # epilog: (job id, when its prolog read the log)
    for rec, ev in zip(data["events"], events):
        severity, resolution, desc = kernel_xid.classify(ev, data["conditions"])
        if rec.get("reset") and Severity.parse(severity).rank <= Severity.RESET.rank:
            continue            # `gpuhc reset` of this GPU after the event resolved it
        before_job = job_since is not None and rec.get("seen", 0.0) <= job_since
        if before_job and Severity.parse(severity).rank <= Severity.MONITOR.rank:
            continue            # an earlier job's fault, reported then: not this job's
        ref = data["gpus"].get(ev.pci_bus_id)
        label = "Xid" if ev.kind == "xid" else "SXid"
        where = ("GPU%d " % ref.index if ref is not None else "") + ev.pci_bus_id
        text = "%s %d on %s: %s" % (label, ev.xid, where, ev.message or desc)
        if ev.count > 1:
            text += " (x%d)" % ev.count
        if rec.get("reset"):
            text += "; the GPU reset since does not clear a %s event" % severity
        if ev.kind == "xid" and ev.xid == 74 and switch_cause:
            text += switch_cause
            resolution += ", check the NVSwitch and fabric manager first"
        metrics: Dict[str, float] = {"xid": ev.xid, "count": ev.count}
        if before_job:
            text += " (logged before job %s began)" % job_id
            metrics["before_job"] = 1
        out.append(Finding(NAME, Severity.parse(severity), text, gpu=ref,
                           device=None if ref is not None else ev.pci_bus_id,
                           remediation=remediation(severity, resolution, desc, ev.message), metrics=metrics))
    if data.get("lost"):
        out.append(Finding(NAME, Severity.MONITOR, "%d kernel log records were overwritten before they could be read"
                           % data["lost"], remediation="enable persistent journald, or run gpuhc more often"))
    if not out:
        out.append(Finding(NAME, Severity.PASS, "no active Xid or SXid in the kernel log"))
    return out
