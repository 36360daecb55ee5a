"""Resume: a gpuhc drain lifted on evidence at least as strong as what drained it (DESIGN.md
section 6), automatically after a pass (healthcheck, sweep) or by `gpuhc resume`."""
from __future__ import annotations

import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

from . import policy
from .acting import carry_out, in_maintenance, log, node_view, slurm_backend
from .backends.slurm import NodeView, Slurm, SlurmError
from .model import Report


def open_store(cfg: Dict[str, Any], deadline: Optional[float] = None):
    """The store; with ``deadline``, its reads give up when the run's budget is used up."""
    from .store import Store

    store = Store.from_config(cfg)
    if deadline is not None:
        store.read_timeout = min(store.read_timeout, max(0.1, deadline - time.monotonic()))
    return store


def healthy_again(cfg: Dict[str, Any], report: Report, slurm: Optional[Slurm],
                  deadline: Optional[float] = None) -> policy.Action:
    """A pass outside the prolog (healthcheck, sweep): the node comment gpuhc set for a MONITOR
    finding goes, and a gpuhc drain may be resumed on enough evidence."""
    view = node_view(slurm, report.node)
    if slurm is not None and view is not None and view.comment.startswith(policy.PREFIX + " MONITOR"):
        carry_out(slurm, report.node, policy.Action(policy.COMMENT, "", "monitor finding gone"))
    return consider_resume(cfg, report.node, slurm, latest=report, deadline=deadline, view=view)


def consider_resume(cfg: Dict[str, Any], node: str, slurm: Optional[Slurm],
                    latest: Optional[Report] = None, deadline: Optional[float] = None,
                    view: Optional[NodeView] = None) -> policy.Action:
    """Automatic resume of a gpuhc drain on enough evidence (healthcheck context, sweep)."""
    view = view if view is not None else node_view(slurm, node)
    if view is None or not view.drained or not view.owned_by_gpuhc:
        return policy.Action(policy.NONE, why="healthy")
    try:
        history = open_store(cfg, deadline).history(node)
    except Exception as exc:
        log("warning: history unreadable, no resume: %s" % exc)
        return policy.Action(policy.NONE, why="history unreadable")
    if latest is not None:
        history = [latest] + [r for r in history if r.started < latest.started]
    drained_by = next((r for r in history if r.action == policy.DRAIN), None)
    action = policy.may_resume(view, history, cfg, drained_by)
    if action.kind == policy.RESUME and slurm is not None:
        action = carry_out(slurm, node, action, view)
    return action


def resume_nodes(cfg: Dict[str, Any], nodes: Sequence[str], force: bool) -> List[Tuple[str, str, str]]:
    """`gpuhc resume`: (node, result, why) per node. Never touches a reason that is not gpuhc's."""
    slurm = slurm_backend(cfg)
    if slurm is None:
        return [(n, "error", "no Slurm here (slurm.backend: none, or no slurm.conf)") for n in nodes]
    try:
        views = slurm.nodes(nodes)
    except SlurmError as exc:
        return [(n, "error", str(exc)) for n in nodes]
    out = []
    store = open_store(cfg)
    for node in nodes:
        view = views.get(node)
        if view is None:
            out.append((node, "error", "not a Slurm node"))
        elif not view.drained:
            out.append((node, "skipped", "not drained"))
        elif not view.owned_by_gpuhc:
            out.append((node, "refused", "drained by someone else: %s" % (view.reason or "no reason")))
        else:
            out.append((node,) + _resume_one(cfg, slurm, store, view, force))
    return out


def _resume_one(cfg: Dict[str, Any], slurm: Slurm, store: Any, view: NodeView, force: bool) -> Tuple[str, str]:
    """(result, why) for one node gpuhc drained: never inside a maintenance reservation (a quarantine
    runs there); now with ``force``; else on the evidence of its history."""
    node = view.name
    reserved = in_maintenance(slurm, view)[1]
    if reserved:
        return "refused", "%s: a quarantine runs there (gpuhc quarantine --cancel %s ends it)" % (reserved, node)
    if force:
        store.acknowledge(node)
        action = carry_out(slurm, node, policy.Action(policy.RESUME, why="forced by operator"), view)
        return ("resumed" if action.kind == policy.RESUME else "error"), action.why
    history = store.history(node)
    drained_by = next((r for r in history if r.action == policy.DRAIN), None)
    action = policy.may_resume(view, history, cfg, drained_by, manual=True)
    if action.kind == policy.RESUME:
        action = carry_out(slurm, node, action, view)
    return ("resumed" if action.kind == policy.RESUME else "kept"), action.why
