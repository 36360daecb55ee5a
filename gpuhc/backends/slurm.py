"""The Slurm interface both backends implement (slurm_cli: the command-line tools, the default;
slurm_pyslurm: pyslurm, opt-in): ``SlurmBackend``, every call a caller may make; the data it
speaks (NodeView, JobView, JobSpec, JobInfo, ReservationView); and the ``Slurm`` base class with
what the backends share: the error, the time left to a call, and the calls built on others
(node, drain, resume, set_comment, job_comment, features, reservations)."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Mapping, Optional, Protocol, Sequence, Set, Union, runtime_checkable


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


# job states after which a job never runs again (squeue's long names)
FINISHED = frozenset({"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "PREEMPTED", "OUT_OF_MEMORY",
                      "BOOT_FAIL", "DEADLINE", "SPECIAL_EXIT", "REVOKED"})


@dataclass
class JobSpec:
    """A batch job for ``submit`` (sbatch). Give ``script`` (a path, with ``args`` after it) or
    ``wrap`` (a command line, run by sbatch's --wrap through /bin/sh); every other field left at
    its default adds no option. ``nodelist`` is a list of names or a Slurm hostlist (-w);
    ``time_limit`` minutes or a Slurm time ("1:00:00", "UNLIMITED"); ``deadline`` the job's own
    --deadline, epoch seconds or a Slurm time ("now+1hour", "2026-01-01T10:00"), past which Slurm
    removes it unstarted (state DEADLINE); ``env`` variables given to the job on top of
    ``export_all`` (sbatch's environment) or alone."""
    script: Optional[str] = None
    args: Sequence[str] = ()
    wrap: Optional[str] = None
    name: str = ""
    nodelist: Union[str, Sequence[str]] = ()
    nodes: Optional[int] = None
    ntasks_per_node: Optional[int] = None
    exclusive: bool = False
    reservation: str = ""
    time_limit: Union[int, str, None] = None
    deadline: Union[float, str, None] = None
    partition: str = ""
    qos: str = ""
    nice: Optional[int] = None
    comment: str = ""
    account: str = ""
    dependency: str = ""                   # Slurm's syntax: "afterok:123", "afterany:1:2", "singleton"
    output: str = ""                       # stdout (and stderr) path; Slurm's %j etc. work
    env: Mapping[str, str] = field(default_factory=dict)
    export_all: bool = True
    chdir: str = ""


@dataclass
class JobInfo:
    """A job as slurmctld holds it (squeue): pending, running, and finished ones for MinJobAge
    (default 300 s) after they end. ``state`` is Slurm's long name (PENDING, RUNNING, COMPLETED,
    FAILED, CANCELLED, TIMEOUT, DEADLINE, ...); ``nodes`` the allocated nodes, expanded ([] while
    pending); ``start_time``/``end_time`` epoch seconds, Slurm's expectation while the job has not
    started/ended, None when unknown; ``time_limit`` minutes, None when unlimited (22.05 shows an
    unlimited job that has started as 525600, a year); ``exit_code``
    "exit:signal" like scontrol's ExitCode ("3:0" exited 3, "0:15" killed by SIGTERM); ``deadline``
    epoch seconds or None; ``dependency`` as Slurm shows it ("afterok:12(unfulfilled)")."""
    job_id: str
    name: str = ""
    state: str = ""
    nodes: List[str] = field(default_factory=list)
    reason: str = ""
    start_time: Optional[int] = None
    end_time: Optional[int] = None
    time_limit: Optional[int] = None
    reservation: str = ""
    partition: str = ""
    comment: str = ""
    exit_code: str = ""
    user: str = ""
    deadline: Optional[int] = None
    dependency: str = ""

    @property
    def finished(self) -> bool:
        return self.state in FINISHED


@dataclass
class ReservationView:
    """A reservation (scontrol show reservation): ``nodes`` expanded, ``start``/``end`` epoch
    seconds (None when Slurm shows none), ``flags`` upper case without values (MAINT, IGNORE_JOBS,
    SPEC_NODES, PURGE_COMP), ``state`` ACTIVE or INACTIVE (not started yet)."""
    name: str
    nodes: List[str] = field(default_factory=list)
    start: Optional[int] = None
    end: Optional[int] = None
    flags: Set[str] = field(default_factory=set)
    users: List[str] = field(default_factory=list)
    state: str = ""

    @property
    def active(self) -> bool:
        return self.state == "ACTIVE"


def maint_stale(view: NodeView, reservations: Union[Iterable[ReservationView], Mapping[str, str]]) -> bool:
    """The node shows MAINTENANCE (or MAINT) but no active reservation holds it: the flag is stale
    and must not freeze gpuhc's handling of the node. Slurm 22.05 leaves IDLE+MAINTENANCE for
    minutes after a reservation ends by PURGE_COMP (checked here; tests/data/slurm), while jobs do
    run there; an explicit delete clears it at once. ``reservations``: ReservationViews
    (reservation_list()) or node -> active reservation name (reservations())."""
    if not view.states & {"MAINT", "MAINTENANCE"}:
        return False
    if isinstance(reservations, Mapping):
        return not reservations.get(view.name)
    return not any(r.active and view.name in r.nodes for r in reservations)


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


@runtime_checkable
class SlurmBackend(Protocol):
    """Every Slurm call gpuhc's callers may make; SlurmCli and SlurmPyslurm implement it. Each call
    is bounded by the backend's ``timeout`` and ``deadline`` (time.monotonic()) and raises
    SlurmError, a one-line message, on failure or timeout."""

    kind: str
    timeout: float
    deadline: Optional[float]

    def available(self) -> bool: ...
    # nodes
    def nodes(self, names: Optional[Iterable[str]] = None) -> Dict[str, NodeView]: ...
    def node(self, name: str) -> Optional[NodeView]: ...
    def update_node(self, name: str, **fields: str) -> None: ...
    def drain(self, name: str, reason: str) -> None: ...
    def resume(self, name: str) -> None: ...
    def set_comment(self, name: str, comment: str) -> None: ...
    def features(self, name: str) -> List[str]: ...
    def reboot(self, nodes: Union[str, Sequence[str]], asap: bool = True, nextstate: str = "RESUME",
               reason: str = "") -> None: ...
    # jobs
    def job(self, job_id: str) -> JobView: ...
    def job_comment(self, job_id: str) -> str: ...
    def submit(self, spec: JobSpec) -> str: ...
    def jobs(self, ids: Optional[Iterable[str]] = None, name: Optional[str] = None, user: Optional[str] = None,
             states: Optional[Iterable[str]] = None) -> List[JobInfo]: ...
    def cancel(self, job_id: str, signal: Optional[str] = None) -> None: ...
    # reservations
    def reservations(self) -> Dict[str, str]: ...
    def reservation_list(self) -> List[ReservationView]: ...
    def create_reservation(self, name: str, nodes: Union[str, Sequence[str]], duration: Union[int, str] = 60,
                           start: str = "now", flags: Sequence[str] = ("maint", "ignore_jobs"),
                           users: Sequence[str] = ("root",)) -> str: ...
    def update_reservation(self, name: str, **fields: Any) -> None: ...
    def delete_reservation(self, name: str, missing_ok: bool = False) -> None: ...


class Slurm:
    """The shared part of the backends (SlurmBackend): a backend provides the calls that raise
    NotImplementedError here; the rest is built on those."""

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

    # -- what each backend provides (SlurmBackend says what each does) ------------------------

    def available(self) -> bool:
        raise NotImplementedError

    def nodes(self, names: Optional[Iterable[str]] = None) -> Dict[str, NodeView]:
        raise NotImplementedError

    def update_node(self, name: str, **fields: str) -> None:
        raise NotImplementedError

    def job(self, job_id: str) -> JobView:
        raise NotImplementedError

    def reboot(self, nodes: Union[str, Sequence[str]], asap: bool = True, nextstate: str = "RESUME",
               reason: str = "") -> None:
        raise NotImplementedError

    def submit(self, spec: JobSpec) -> str:
        raise NotImplementedError

    def jobs(self, ids: Optional[Iterable[str]] = None, name: Optional[str] = None, user: Optional[str] = None,
             states: Optional[Iterable[str]] = None) -> List[JobInfo]:
        raise NotImplementedError

    def cancel(self, job_id: str, signal: Optional[str] = None) -> None:
        raise NotImplementedError

    def reservation_list(self) -> List[ReservationView]:
        raise NotImplementedError

    def create_reservation(self, name: str, nodes: Union[str, Sequence[str]], duration: Union[int, str] = 60,
                           start: str = "now", flags: Sequence[str] = ("maint", "ignore_jobs"),
                           users: Sequence[str] = ("root",)) -> str:
        raise NotImplementedError

    def update_reservation(self, name: str, **fields: Any) -> None:
        raise NotImplementedError

    def delete_reservation(self, name: str, missing_ok: bool = False) -> None:
        raise NotImplementedError

    # -- built on those -------------------------------------------------------------------------

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

    def reservations(self) -> Dict[str, str]:
        """node -> the name of the active reservation it is in (one per node: the first listed)."""
        out: Dict[str, str] = {}
        for res in self.reservation_list():
            if res.active:
                for node in res.nodes:
                    out.setdefault(node, res.name)
        return out
