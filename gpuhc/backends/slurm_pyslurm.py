"""Slurm through pyslurm, with the same interface and semantics as SlurmCli.

Optional: this module is imported only when ``slurm.backend`` is ``pyslurm`` or ``auto``, and
``pyslurm`` itself only by ``available()`` and the calls, never at import. It is used only when
pyslurm has the object API (pyslurm 23.02 and later) and was built for the installed Slurm:
pyslurm's version is SLURM_MAJOR.MINOR.PATCH ("25.11.0" is for Slurm 25.11, "24.5.1" for 24.05),
compared with ``scontrol --version`` ("slurm 25.11.1"; Debian prints "slurm-wlm 22.05.8").

The pyslurm API used (PySlurm/pyslurm: pyslurm/core/node.pyx, job/job.pyx, reservation.pyx):
``pyslurm.Nodes.load()`` (a map of name -> Node with ``values()``; a plain list in some 23.x),
``pyslurm.Node.load(name)`` (RPCError "Node 'x' does not exist"), ``Node.state`` as Slurm's
complete state string ("IDLE+DRAIN", "DOWN+NOT_RESPONDING": the base state, then "+FLAG" for
each flag, the words sinfo --json uses), ``reason``/``comment`` (str or None), ``reason_time`` and
``boot_time`` (epoch or None), ``partitions``, ``active_features``/``available_features`` (lists),
``Node(name).modify(pyslurm.Node(state="DRAIN", reason=...))`` (slurm_update_node),
``pyslurm.Job.load(job_id).comment`` and ``pyslurm.Reservations.load()`` (``name``, ``nodes``,
``is_active``; pyslurm 25.x; without it, reservations come from scontrol).

Jobs (submit, jobs, cancel), reservations (list, create, update, delete) and reboots go through
SlurmCli, on purpose: pyslurm's job-submission and reservation APIs differ between its releases
(``pyslurm.Reservations`` exists only from 25.x) and could not be tested here against the Slurm
they would talk to, while the command-line tools are the tested path (real-cluster tests), and a
subprocess that hangs is killed at its timeout, which a pyslurm call holding the GIL is not (see
below). These calls are rare (controller side: sweep, quarantine), so the cost of a process each
does not matter.

pyslurm sends an empty string as "no change" (its string setters store NULL), so clearing a
node comment goes through ``scontrol update NodeName=... Comment=`` instead.

Every pyslurm call runs in a daemon thread and is waited for at most min(timeout, deadline - now);
past that it raises SlurmError and leaves the thread behind. Caveat: this bounds a call only while
the thread lets go of the GIL; a C call that keeps the GIL (pyslurm's Cython calls into libslurm
have no ``with nogil``) stops every thread until libslurm's own MessageTimeout ends it.
"""
from __future__ import annotations

import importlib
import re
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

from ..bounded import Overtime, call_within
from .slurm import (
    JobInfo,
    JobSpec,
    JobView,
    NodeView,
    ReservationView,
    Slurm,
    SlurmError,
    exit_status,
    reserved_nodes,
    state_words,
)
from .slurm_cli import SlurmCli


def bounded(fn: Callable[[], Any], timeout: float, what: str) -> Any:
    """fn() within ``timeout`` seconds; SlurmError when it has not returned by then or raised."""
    try:
        return call_within(fn, timeout, "gpuhc-pyslurm")
    except Overtime:
        raise SlurmError("pyslurm %s: no answer within %.3g s" % (what, timeout)) from None
    except SlurmError:
        raise
    except Exception as exc:
        raise SlurmError("pyslurm %s failed: %s" % (what, str(exc) or type(exc).__name__)) from None


def major_minor(text: Any) -> Optional[Tuple[int, int]]:
    """(25, 11) from "25.11.0", "slurm 25.11.1" or "slurm-wlm 22.05.8"; "24.5.1" and "24.05" agree."""
    m = re.search(r"(\d+)\.(\d+)", str(text or ""))
    return (int(m.group(1)), int(m.group(2))) if m else None


def pyslurm_version(lib: Any) -> Optional[Tuple[int, int]]:
    """The Slurm major.minor this pyslurm was built for: the first two numbers of its version."""
    version = getattr(lib, "__version__", None)
    if version is None and callable(getattr(lib, "version", None)):
        version = lib.version()
    return major_minor(version)


def _values(collection: Any) -> Iterable[Any]:
    return collection.values() if hasattr(collection, "values") else collection


def _epoch(value: Any) -> Optional[int]:
    try:
        return int(value) if value else None
    except (TypeError, ValueError):
        return None


def node_view(node: Any) -> NodeView:
    """A NodeView from a pyslurm.Node: the state string split into the same upper-case words as
    SlurmCli's (base state and flags: IDLE, DRAIN, MAINTENANCE, NOT_RESPONDING, ...)."""
    features = list(getattr(node, "active_features", None) or getattr(node, "available_features", None) or [])
    return NodeView(name=node.name, states=state_words(node.state), reason=node.reason or "",
                    reason_time=_epoch(node.reason_time), partitions=list(node.partitions or []),
                    comment=node.comment or "", features=features, boot_time=_epoch(node.boot_time))


def _missing(exc: Exception) -> bool:
    text = str(exc).lower()
    return "does not exist" in text or "invalid node name" in text


# scontrol's update keys (SlurmCli.update_node; any case) -> pyslurm.Node attributes that can be set
_FIELDS = {"state": "state", "reason": "reason", "comment": "comment", "weight": "weight", "extra": "extra",
           "features": "available_features", "availablefeatures": "available_features",
           "activefeatures": "active_features"}


class SlurmPyslurm(Slurm):
    """Slurm through pyslurm; chosen by ``slurm.backend: pyslurm`` or ``auto`` (actions.slurm_backend)."""

    kind = "pyslurm"
    version_timeout = 2.0      # `scontrol --version` (it retries a missing slurm.conf for a minute)

    def __init__(self, timeout: float = 5.0, deadline: Optional[float] = None) -> None:
        super().__init__(timeout, deadline)
        self.why_not = ""                    # why available() said no, for the caller's warning
        self._lib: Any = None
        # the configured test, `scontrol --version`, and what pyslurm cannot do (clear a comment)
        self._cli = SlurmCli(timeout=timeout, deadline=deadline)

    # -- plumbing -------------------------------------------------------------------------------

    def _tools(self) -> SlurmCli:
        """The command-line backend, under this backend's current timeout and deadline."""
        self._cli.timeout, self._cli.deadline = self.timeout, self.deadline
        return self._cli

    def _call(self, what: str, fn: Callable[[], Any]) -> Any:
        return bounded(fn, self.time_left("pyslurm " + what), what)

    def _pyslurm(self) -> Any:
        if self._lib is None:
            self._lib = self._call("import", lambda: importlib.import_module("pyslurm"))
        return self._lib

    def _why_not(self) -> str:
        if not self._cli.available():
            return "Slurm is not configured on this host"
        try:
            lib = self._pyslurm()
        except SlurmError as exc:
            return str(exc)
        ours = pyslurm_version(lib)
        node = getattr(lib, "Node", None)
        if node is None or not hasattr(node, "load") or not hasattr(lib, "Nodes"):
            return "pyslurm %s has no pyslurm.Node.load (the object API of pyslurm 23.02 and later)" % (
                getattr(lib, "__version__", "?"))
        if ours is None:
            return "pyslurm does not say which Slurm it was built for"
        try:
            theirs = major_minor(self._cli._run(["scontrol", "--version"],
                                                timeout=min(self.version_timeout, self.timeout)))
        except SlurmError as exc:
            return "installed Slurm version unknown: %s" % exc
        if theirs != ours:
            return "pyslurm is built for Slurm %d.%02d, the installed Slurm is %s" % (
                ours[0], ours[1], "%d.%02d" % theirs if theirs else "unknown")
        return ""

    # -- the Slurm interface (backends/slurm.py) ------------------------------------------------

    def available(self) -> bool:
        """Slurm is configured here (SlurmCli's test), pyslurm imports within the timeout, has the
        object API, and its version's major.minor is the installed Slurm's."""
        self.why_not = self._why_not()
        return not self.why_not

    def nodes(self, names: Optional[Iterable[str]] = None) -> Dict[str, NodeView]:
        names = list(names or [])
        if len(names) == 1:
            view = self.node(names[0])
            return {view.name: view} if view is not None else {}
        lib = self._pyslurm()
        views = self._call("Nodes.load()", lambda: [node_view(n) for n in _values(lib.Nodes.load())])
        wanted = set(names)
        return {v.name: v for v in views if not wanted or v.name in wanted}

    def node(self, name: str) -> Optional[NodeView]:
        lib = self._pyslurm()

        def load() -> Optional[NodeView]:
            try:
                return node_view(lib.Node.load(name))
            except Exception as exc:
                if _missing(exc):
                    return None
                raise

        return self._call("Node.load(%s)" % name, load)

    def update_node(self, name: str, **fields: str) -> None:
        """Like SlurmCli.update_node (scontrol's keys: State=, Reason=, Comment=, ...)."""
        changes = {}
        for key, value in fields.items():
            attr = _FIELDS.get(key.lower())
            if attr is None:
                raise SlurmError("pyslurm cannot set %s on a node" % key)
            changes[attr] = value
        if changes.get("comment", None) == "":      # pyslurm sends "" as "no change"
            del changes["comment"]
            self._tools().update_node(name, Comment="")
            if not changes:
                return
        lib = self._pyslurm()
        self._call("Node(%s).modify(%s)" % (name, ",".join(sorted(changes))),
                   lambda: lib.Node(name).modify(lib.Node(**changes)))

    def job(self, job_id: str) -> JobView:
        try:
            number = int(str(job_id).strip())
        except ValueError:
            raise SlurmError("not a job id: %r" % (job_id,)) from None
        lib = self._pyslurm()
        job = self._call("Job.load(%d)" % number, lambda: lib.Job.load(number))
        comment = (getattr(job, "comment", None) or "").strip()

        def status(prefix: str) -> str:
            return exit_status(getattr(job, prefix, None), getattr(job, prefix + "_signal", None))

        return JobView(str(number), "" if comment == "(null)" else comment,
                       status("exit_code"), status("derived_exit_code"))

    def reservations(self) -> Dict[str, str]:
        """node -> the name of the active reservation it is in (one per node: the first listed)."""
        lib = self._pyslurm()
        if not hasattr(lib, "Reservations"):          # before pyslurm 25.x: scontrol
            return self._tools().reservations()

        def load() -> List[Tuple[str, str]]:
            return [(r.name, r.nodes or "") for r in _values(lib.Reservations.load()) if r.is_active]

        return reserved_nodes(self._call("Reservations.load()", load))

    # -- through the command-line tools (see the module's docstring for why) ------------------

    def reboot(self, nodes: Union[str, Sequence[str]], asap: bool = True, nextstate: str = "RESUME",
               reason: str = "") -> None:
        self._tools().reboot(nodes, asap, nextstate, reason)

    def submit(self, spec: JobSpec) -> str:
        return self._tools().submit(spec)

    def jobs(self, ids: Optional[Iterable[str]] = None, name: Optional[str] = None, user: Optional[str] = None,
             states: Optional[Iterable[str]] = None) -> List[JobInfo]:
        return self._tools().jobs(ids, name, user, states)

    def cancel(self, job_id: str, signal: Optional[str] = None) -> None:
        self._tools().cancel(job_id, signal)

    def reservation_list(self) -> List[ReservationView]:
        return self._tools().reservation_list()

    def create_reservation(self, name: str, nodes: Union[str, Sequence[str]], duration: Union[int, str] = 60,
                           start: str = "now", flags: Sequence[str] = ("maint", "ignore_jobs"),
                           users: Sequence[str] = ("root",)) -> str:
        return self._tools().create_reservation(name, nodes, duration, start, flags, users)

    def update_reservation(self, name: str, **fields: Any) -> None:
        self._tools().update_reservation(name, **fields)

    def delete_reservation(self, name: str, missing_ok: bool = False) -> None:
        self._tools().delete_reservation(name, missing_ok)
