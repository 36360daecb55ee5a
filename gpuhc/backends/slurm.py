"""The Slurm interface both backends implement (slurm_cli: the command-line tools, the default;
slurm_pyslurm: pyslurm, opt-in), with what they share: the node view, the error, the time left
to a call, and the node updates every caller uses (drain, resume, comment)."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Optional, Set


class SlurmError(Exception):
    """A Slurm call failed or timed out; the message says which and why."""


@dataclass
class NodeView:
    name: str
    states: Set[str]                     # base state and flags, upper case: IDLE, ALLOCATED, DRAIN, MAINT...
    reason: str = ""
    reason_time: Optional[int] = None    # epoch seconds the reason was set
    partitions: List[str] = field(default_factory=list)
    comment: str = ""
    features: List[str] = field(default_factory=list)
    boot_time: Optional[int] = None

    @property
    def drained(self) -> bool:
        return "DRAIN" in self.states or "DRAINED" in self.states or "DRAINING" in self.states

    @property
    def down(self) -> bool:
        return "DOWN" in self.states

    @property
    def owned_by_gpuhc(self) -> bool:
        return self.reason.startswith("gpuhc:")


@dataclass
class JobView:
    """What gpuhc asks Slurm about a job: its --comment, and its exit code and the highest of its
    steps' as "exit:signal" (scontrol's ExitCode / DerivedExitCode)."""
    job_id: str
    comment: str = ""
    exit_code: str = ""
    derived_exit_code: str = ""


def exit_status(exit_code: Any, signal: Any) -> str:
    """"exit:signal" from two numbers, either of which may be unknown (None)."""
    return "%s:%s" % (exit_code if exit_code is not None else 0, signal if signal is not None else 0)


def state_words(value: Any) -> Set[str]:
    """Slurm's state as a set of upper-case words: "IDLE+DRAIN", "IDLE DRAIN" or ["IDLE", "DRAIN"]."""
    if value is None:
        return set()
    if isinstance(value, str):
        return {w.upper() for w in value.replace("+", " ").split() if w}
    return {str(w).upper() for w in value}


def reserved_nodes(reservations: Iterable[Any]) -> Dict[str, str]:
    """node -> reservation name from (name, Slurm hostlist) pairs of active reservations; the first
    listed wins; a hostlist that cannot be read is skipped."""
    from ..hostlist import expand

    out: Dict[str, str] = {}
    for name, nodes in reservations:
        if not name or not nodes or nodes == "(null)":
            continue
        try:
            for node in expand(nodes, "Nodes"):
                out.setdefault(node, name)
        except Exception:
            continue
    return out


class Slurm:
    """What a backend provides: available(), nodes(names), update_node(name, **scontrol_fields),
    job(job_id), reservations(); the rest is built on those here."""

    kind = ""

    def __init__(self, timeout: float = 5.0, deadline: Optional[float] = None) -> None:
        self.timeout = timeout
        self.deadline = deadline             # time.monotonic() past which no call is started or waited for

    def time_left(self, call: str, timeout: Optional[float] = None) -> float:
        """How long ``call`` may take: its timeout, cut to what is left before the deadline;
        SlurmError when too little is left to start it."""
        limit = timeout or self.timeout
        if self.deadline is not None:
            limit = min(limit, self.deadline - time.monotonic())
            if limit < 0.05:
                raise SlurmError("%s not run: the run's time budget is used up" % call)
        return limit

    def node(self, name: str) -> Optional[NodeView]:
        return self.nodes([name]).get(name)

    def drain(self, name: str, reason: str) -> None:
        self.update_node(name, State="DRAIN", Reason=reason)

    def resume(self, name: str) -> None:
        self.update_node(name, State="RESUME")

    def set_comment(self, name: str, comment: str) -> None:
        self.update_node(name, Comment=comment)

    def job_comment(self, job_id: str) -> str:
        """The job's --comment ('' when none)."""
        return self.job(job_id).comment

    def features(self, name: str) -> List[str]:
        view = self.node(name)
        return view.features if view else []
