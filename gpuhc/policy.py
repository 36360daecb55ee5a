"""From a report to what gpuhc does about it in Slurm: drain, comment, resume, or nothing.

Pure decisions on plain inputs (the report, Slurm's view of the node, the config, recent
history); the callers (acting.py, resume.py) talk to Slurm and the store. Rules (DESIGN.md section 6):

* gpuhc changes only nodes whose reason starts with ``gpuhc:``; a node drained or down for
  any other reason is left alone, and so is a node in boot, reboot, maint, future or
  down/not-responding state. When Slurm's view cannot be read, nothing is done.
* RESET and worse drain with ``gpuhc: <SEVERITY> <check>: <detail>``; MONITOR sets the node
  comment; ERROR alone changes nothing.
* The breaker: past a fraction of a partition (or a count) drained by gpuhc within a window,
  gpuhc stops draining and records "would-drain" until an operator acts. ``dry_run`` does
  the same for everything.
* Resume needs evidence as strong as the drain's: consecutive passes of a suite at least as
  deep, a new boot id after a REBOOT drain, and never after ISOLATE.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence

from .backends.slurm import NodeView
from .model import Finding, Report, Severity
from .text import clean

PREFIX = "gpuhc:"
REASON_MAX = 200
# States in which acting on a node is wrong (Slurm's words, upper case: base states and the flags
# of sinfo --json; a MAINT reservation shows as the flag MAINTENANCE, `scontrol update state=fail`
# as the flag FAIL without DRAIN, both seen on 22.05).
HANDS_OFF = {"BOOT", "REBOOT", "REBOOT_REQUESTED", "REBOOT_ISSUED", "MAINT", "MAINTENANCE", "FUTURE",
             "DOWN", "FAIL", "FAILING", "UNKNOWN", "NOT_RESPONDING", "NO_RESPOND", "POWERED_DOWN",
             "POWERING_DOWN", "POWERING_UP", "POWER_DOWN", "RESERVED_MAINT", "INVALID_REG"}
# (PLANNED is not here: it is an idle node the backfill scheduler holds for a pending job, which
# is exactly the node a bad GPU must be drained from before that job lands.)

NONE, DRAIN, WOULD_DRAIN, COMMENT, RESUME, SKIP = "none", "drain", "would-drain", "comment", "resume", "skip"
# Slurm sets a drain's reason time a little after the report that caused it ended (the act
# phase; and slurmctld's clock is not the node's): a newest drain record older than this before
# the reason time belongs to an earlier drain.
DRAIN_RECORD_SLACK = 120.0
HELD = "held"       # already drained by gpuhc for at least this severity: the reason is kept


@dataclass
class Action:
    kind: str                   # none | drain | held | would-drain | comment | resume | skip
    reason: str = ""            # drain reason or comment text
    why: str = ""               # one line for logs and the store

    def to_dict(self) -> Dict[str, str]:
        return {"kind": self.kind, "reason": self.reason, "why": self.why}


# Among findings of the same severity, the one that names a cause comes first in a reason: an
# Xid explains a lost GPU that NVML only reports.
CAUSE_FIRST = {"xid": 0, "nvml": 2}


def top_finding(report: Report) -> Optional[Finding]:
    ordered = report.top_findings()
    if not ordered:
        return None
    top = ordered[0].severity
    same = [f for f in ordered if f.severity is top]
    return min(same, key=lambda f: CAUSE_FIRST.get(f.check, 1))


def _describe(f: Finding) -> str:
    """'check: message', with the GPU or device named when the message does not name it."""
    where = f.where()
    message = f.message if not where or where in f.message else "%s %s" % (where, f.message)
    return "%s: %s" % (f.check, message)


def drain_reason(report: Report, owns: Optional[Callable[[Finding], bool]] = None) -> str:
    """``gpuhc: REBOOT xid: Xid 79 on GPU3 0000:5d:00.0: ... (+2 more) job 123``, short. An
    epilog's reason names its job only when the top finding is the job's (``owns``: not another
    job's GPU on a shared node, not an event from before the job)."""
    top = top_finding(report)
    if top is None:
        return PREFIX
    more = sum(1 for f in report.findings if f.severity.unhealthy) - 1
    text = "%s %s %s" % (PREFIX, top.severity.value, _describe(top))
    tail = ""
    if more > 0:
        tail += " (+%d more)" % more
    if report.job_id and report.context == "epilog" and (owns is None or owns(top)):
        tail += " job %s" % report.job_id
    if len(text) + len(tail) > REASON_MAX:
        text = text[:REASON_MAX - len(tail) - 3] + "..."
    return clean(text + tail)


def reason_severity(reason: str) -> Optional[Severity]:
    """The severity written in a gpuhc drain reason, or None for another reason."""
    if not reason.startswith(PREFIX):
        return None
    word = reason[len(PREFIX):].split(None, 1)[0] if reason[len(PREFIX):].strip() else ""
    try:
        return Severity.parse(word)
    except ValueError:
        return None


def hands_off(view: Optional[NodeView]) -> Optional[str]:
    """Why gpuhc must not touch this node now, or None."""
    if view is None:
        return "node state could not be read from Slurm"
    bad = sorted(view.states & HANDS_OFF)
    if bad:
        return "node is %s" % ",".join(bad).lower()
    if view.drained and not view.owned_by_gpuhc:
        return "drained by someone else (%s)" % (view.reason or "no reason")
    return None


def breaker_open(view: NodeView, nodes: Dict[str, NodeView], cfg: Dict[str, Any],
                 now: Optional[float] = None, first: bool = False) -> Optional[str]:
    """Why one more drain (this node's) would exceed the breaker, or None. With ``first``, the
    check after this node drained: only the drains that came before its own count, in the order
    every node sees alike (reason time, then name), so of the prologs that drained at the same
    moment those past the limit find out and undo theirs."""
    b = cfg["breaker"]
    if not b["enabled"]:
        return None
    now = time.time() if now is None else now
    mine = (view.reason_time or now, view.name)

    def recent_gpuhc_drain(n: NodeView) -> bool:
        return n.drained and n.owned_by_gpuhc and n.name != view.name and (
            n.reason_time is None or now - n.reason_time <= b["window"]) and (
            not first or (n.reason_time or 0, n.name) < mine)

    scopes = [("cluster", list(nodes.values()))]
    for part in view.partitions:
        scopes.append(("partition %s" % part, [n for n in nodes.values() if part in n.partitions]))
    for label, members in scopes:
        if not members:
            continue
        drained = sum(1 for n in members if recent_gpuhc_drain(n)) + 1
        if b["max_nodes"] is not None and drained > b["max_nodes"]:
            return "breaker: %d gpuhc drains in %s would exceed max_nodes %d" % (drained, label, b["max_nodes"])
        allowed = max(1, int(b["max_fraction"] * len(members)))    # one drain is always allowed
        if drained > allowed:
            return "breaker: %d of %d nodes in %s drained by gpuhc would exceed %.0f%% (%d)" % (
                drained, len(members), label, 100 * b["max_fraction"], allowed)
    return None


def decide(report: Report, view: Optional[NodeView], cfg: Dict[str, Any],
           nodes: Optional[Dict[str, NodeView]] = None, owns: Optional[Callable[[Finding], bool]] = None) -> Action:
    """What to do about a fresh report on this node (prolog, epilog, healthcheck, sweep)."""
    overall = report.overall
    if overall is Severity.ERROR:
        return Action(NONE, why="checker error only: recorded, nothing changed")
    if not overall.unhealthy and overall is not Severity.MONITOR:
        return Action(NONE, why="healthy")
    blocked = hands_off(view)
    if blocked:
        return Action(SKIP, why=blocked)
    assert view is not None
    if overall is Severity.MONITOR:
        text = "%s MONITOR %s" % (PREFIX, _short(top_finding(report)))
        if view.comment == text:
            return Action(NONE, why="comment already set")
        if not comment_is_ours(view):
            return Action(NONE, why="monitor finding; the node comment is someone else's: kept")
        return Action(COMMENT, reason=text, why="monitor finding")
    reason = drain_reason(report, owns)
    if view.drained:              # already drained by gpuhc: only escalate the reason
        old = reason_severity(view.reason)
        if old is not None and old.rank >= overall.rank:
            return Action(HELD, reason=view.reason, why="already drained by gpuhc (%s)" % old.value)
        if cfg["slurm"]["dry_run"]:
            return Action(HELD, reason=view.reason, why="dry_run: would escalate from %s" % (old.value if old else "?"))
        return Action(DRAIN, reason=reason, why="escalated from %s" % (old.value if old else "?"))
    if cfg["slurm"]["dry_run"]:
        return Action(WOULD_DRAIN, reason=reason, why="dry_run")
    why = breaker_open(view, nodes, cfg) if nodes else None
    if why:
        return Action(WOULD_DRAIN, reason=reason, why=why)
    return Action(DRAIN, reason=reason, why="unhealthy")


def comment_is_ours(view: NodeView) -> bool:
    """gpuhc sets or clears only an empty node comment or one it wrote."""
    return not view.comment or view.comment.startswith(PREFIX)


def _short(f: Optional[Finding]) -> str:
    return clean(_describe(f), REASON_MAX) if f is not None else ""


def suite_depth(cfg: Dict[str, Any], suite: Optional[str]) -> int:
    return int(cfg["resume"]["suite_depth"].get(suite or "", 1))


def may_resume(view: Optional[NodeView], history: Sequence[Report], cfg: Dict[str, Any],
               drained_by: Optional[Report] = None, manual: bool = False) -> Action:
    """Resume of a node gpuhc drained, on the evidence of its recent history (newest first):
    automatic (healthcheck, sweep), or ``manual`` (`gpuhc resume` without --force, which asks for
    the same evidence whether or not automatic resume is on).

    Needs ``resume.passes`` consecutive healthy reports (PASS or MONITOR) of a suite at least
    as deep as the one that drained, that ran the checks which found the drain's problem,
    started after the drain (after its record, and after the reason time Slurm shows); after a
    REBOOT drain they must come from a known new boot id; an ISOLATE drain is never resumed on
    evidence. Without the drain's own record (compacted away, drained elsewhere, or still in a
    node's spool) the evidence cannot be weighed: no resume.
    A node in a state gpuhc keeps its hands off (reboot requested, maintenance, down, ...) is
    not resumed either.
    """
    if view is None or not view.drained or not view.owned_by_gpuhc:
        return Action(NONE, why="not drained by gpuhc")
    if not manual and not cfg["resume"]["auto"]:
        return Action(NONE, why="automatic resume disabled")
    bad = sorted(view.states & HANDS_OFF)
    if bad:
        return Action(NONE, why="node is %s" % ",".join(bad).lower())
    severity = reason_severity(view.reason)
    if severity is Severity.ISOLATE:
        return Action(NONE, why="ISOLATE drains are resumed only by an operator (--force)")
    if drained_by is None:
        return Action(NONE, why="no record of the drain in the store: resume by hand (--force)")
    set_at = view.reason_time
    if set_at is not None and drained_by.ended < set_at - DRAIN_RECORD_SLACK:
        return Action(NONE, why="the store has no record of this drain yet (the newest is %s older): no resume"
                      % _age(set_at - drained_by.ended))
    need = int(cfg["resume"]["passes"])
    depth = suite_depth(cfg, drained_by.suite)
    # the checks that found the drain's problem must have run (and passed) in every pass
    culprits = {f.check for f in drained_by.findings if f.severity.unhealthy}
    passes: List[Report] = []
    for rep in history:
        if rep.started <= drained_by.started or (set_at is not None and rep.started < set_at):
            break
        if rep.overall.unhealthy:
            break
        if rep.overall is Severity.ERROR:
            continue
        if suite_depth(cfg, rep.suite) < depth:
            continue
        if not culprits <= {f.check for f in rep.findings if f.severity in (Severity.PASS, Severity.MONITOR)}:
            continue
        if severity is Severity.REBOOT and (rep.boot_id is None or drained_by.boot_id is None
                                            or rep.boot_id == drained_by.boot_id):
            continue
        passes.append(rep)
        if len(passes) >= need:
            return Action(RESUME, why="%d consecutive passes since the %s drain" % (need, severity.value if severity else "gpuhc"))
    extra = " on a new boot" if severity is Severity.REBOOT else ""
    ran = " that ran %s" % ", ".join(sorted(culprits)) if culprits else ""
    return Action(NONE, why="%d of %d passes%s%s since the drain" % (len(passes), need, ran, extra))


def _age(seconds: float) -> str:
    return "%.0f s" % seconds if seconds < 7200 else "%.1f h" % (seconds / 3600)
