"""Acting on a decision through Slurm: which Slurm backend, the node as Slurm sees it, and carrying
out a drain, comment or resume (with the breaker's recount after a drain).

Order matters: drain first, then record, then exit non-zero from the prolog so Slurm requeues the
job and keeps gpuhc's reason. Slurm is asked about the node only when there is something to act
on, so a healthy prolog makes no Slurm call at all.
"""
from __future__ import annotations

import sys
import time
from dataclasses import replace
from typing import Any, Callable, Dict, Optional, Tuple

from . import policy, syslogging
from .backends.slurm import NodeView, Slurm, SlurmError, maint_stale
from .backends.slurm_cli import SlurmCli
from .model import Report, Severity


def log(line: str) -> None:
    """A warning of the Slurm side (a drain that failed, Slurm not answering): stderr and syslog."""
    print("gpuhc: %s" % line, file=sys.stderr)
    syslogging.send(["gpuhc: %s" % line], "LOG_WARNING")


def slurm_backend(cfg: Dict[str, Any], deadline: Optional[float] = None) -> Optional[Slurm]:
    """The Slurm backend, or None where it is turned off or Slurm is not configured on this host.
    With ``deadline`` (time.monotonic()), no Slurm command runs past it. ``slurm.backend``: cli,
    pyslurm (the CLI with a warning where pyslurm is missing or built for another Slurm), auto
    (pyslurm where usable, quietly), none. pyslurm is imported only for pyslurm and auto."""
    choice = cfg["slurm"]["backend"]
    if choice == "none":
        return None
    slurm = SlurmCli(timeout=float(cfg["slurm"]["timeout"]), deadline=deadline)
    if not slurm.available():
        return None
    if choice in ("pyslurm", "auto"):
        from .backends.slurm_pyslurm import SlurmPyslurm

        fast = SlurmPyslurm(timeout=slurm.timeout, deadline=deadline)
        if fast.available():
            return fast
        if choice == "pyslurm":
            log("warning: slurm.backend pyslurm not usable (%s): using the command-line tools" % fast.why_not)
    return slurm


def time_left(deadline: Optional[float]) -> Optional[float]:
    return None if deadline is None else max(0.0, deadline - time.monotonic())


def node_view(slurm: Optional[Slurm], node: str) -> Optional[NodeView]:
    """The node as Slurm sees it; None without Slurm or when Slurm does not answer (then gpuhc
    changes nothing: ownership cannot be known)."""
    if slurm is None:
        return None
    try:
        return slurm.node(node)
    except SlurmError as exc:
        log("warning: %s" % exc)
        return None


MAINT_FLAGS = {"MAINT", "MAINTENANCE"}


def in_maintenance(slurm: Slurm, view: NodeView) -> Tuple[NodeView, Optional[str]]:
    """The node as policy should judge it, and why it is hands-off when an active MAINT reservation
    covers it (a quarantine job runs exactly there; the MAINTENANCE flag shows 1-5 s after such a
    reservation starts, so the reservations are asked, on the drain path only). A MAINTENANCE flag
    no active reservation explains is stale (Slurm 22.05 keeps it for minutes after PURGE_COMP) and
    is dropped, so it does not freeze gpuhc. Where the reservations cannot be read, the flags decide
    as before."""
    try:
        reservations = slurm.reservation_list()
    except SlurmError as exc:
        log("warning: reservations unreadable, judging by the node's flags: %s" % exc)
        return view, None
    holding = [r for r in reservations if r.active and view.name in r.nodes and "MAINT" in r.flags]
    if holding:
        return view, "in maintenance reservation %s" % holding[0].name
    if maint_stale(view, reservations):
        view = replace(view, states=set(view.states) - MAINT_FLAGS)
    return view, None


def carry_out(slurm: Slurm, node: str, action: policy.Action, view: Optional[NodeView] = None) -> policy.Action:
    """Carry out a drain, comment or resume; a resume clears the node comment when gpuhc wrote it
    (``view``: the node as seen before). Slurm refusing is a SKIP saying why."""
    try:
        if action.kind == policy.DRAIN:
            slurm.drain(node, action.reason)
        elif action.kind == policy.COMMENT:
            slurm.set_comment(node, action.reason)
        elif action.kind == policy.RESUME:
            slurm.resume(node)
            if view is not None and view.comment and policy.comment_is_ours(view):
                slurm.set_comment(node, "")
    except SlurmError as exc:
        log("warning: could not %s %s: %s" % (action.kind, node, exc))
        return policy.Action(policy.SKIP, action.reason, "Slurm refused: %s" % exc)
    return action


def decide_and_act(cfg: Dict[str, Any], report: Report, slurm: Optional[Slurm],
                   deadline: Optional[float] = None, owns: Optional[Callable[[Any], bool]] = None) -> policy.Action:
    """Drain or comment on an unhealthy or MONITOR report, under the ownership rules and the breaker."""
    overall = report.overall
    if overall is Severity.PASS or overall is Severity.ERROR:
        return policy.decide(report, None, cfg)       # no Slurm call on the pass path
    if overall is Severity.MONITOR and not cfg["slurm"]["comment_monitor"]:
        return policy.Action(policy.NONE, why="monitor: comments disabled")
    view = node_view(slurm, report.node)
    if slurm is not None and view is not None:
        view, reserved = in_maintenance(slurm, view)
        if reserved:
            return policy.Action(policy.SKIP, policy.drain_reason(report, owns), reserved)
    nodes = None
    if overall.unhealthy and view is not None and not view.drained and cfg["breaker"]["enabled"]:
        try:
            nodes = slurm.nodes() if slurm else None
        except SlurmError as exc:
            log("warning: breaker cannot count drains: %s" % exc)
            return policy.Action(policy.SKIP, policy.drain_reason(report, owns), "breaker state unknown: %s" % exc)
    action = policy.decide(report, view, cfg, nodes, owns)
    if slurm is None and action.kind == policy.SKIP:
        action = policy.Action(policy.SKIP, action.reason,
                               "no Slurm to act through (slurm.backend: none, or Slurm not configured on this host)")
    if slurm is not None and action.kind in (policy.DRAIN, policy.COMMENT):
        action = carry_out(slurm, report.node, action)
        if action.kind == policy.DRAIN and nodes is not None:
            action = breaker_after_drain(cfg, slurm, report.node, action, deadline)
    return action


def breaker_after_drain(cfg: Dict[str, Any], slurm: Slurm, node: str, action: policy.Action,
                        deadline: Optional[float]) -> policy.Action:
    """The breaker counted the drains before this one, but the prologs of one job start together
    and each counted before any drained. So once drained, wait ``breaker.settle`` seconds for the
    others' drains to show, count again, and undo this drain when the drains that came first
    already fill the limit (only while the reason is still the one written here)."""
    left = time_left(deadline)
    time.sleep(max(0.0, min(float(cfg["breaker"]["settle"]), left / 2 if left is not None else 1e9)))
    try:
        nodes = slurm.nodes()
    except SlurmError as exc:
        log("warning: breaker cannot recount after draining %s, drain kept: %s" % (node, exc))
        return action
    view = nodes.get(node)
    if view is None or view.reason != action.reason:
        return action
    why = policy.breaker_open(view, nodes, cfg, first=True)
    if not why:
        return action
    undone = carry_out(slurm, node, policy.Action(policy.RESUME, why=why))
    if undone.kind != policy.RESUME:
        return action
    return policy.Action(policy.WOULD_DRAIN, action.reason, why + " (drained at the same moment as others: undone)")
