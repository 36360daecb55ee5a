"""Slurm through its command-line tools (sinfo --json, scontrol, sbatch, squeue --json, scancel),
each with a timeout cut to the caller's deadline.

Arguments are passed as lists, never through a shell; the lists and the parsers of jobs,
reservations and reboots are in slurm_jobs. Node state and state flags come from
``sinfo --json``: DRAIN is a flag beside the base state (Slurm 22.05 gives ``state`` as a
string and ``state_flags`` as a list; 23.02 and later give ``state`` as a list), so both
shapes are read into one set of upper-case words.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Union

from . import slurm_jobs
from .host import OUTPUT_MAX, run_command
from .slurm import JobInfo, JobSpec, JobView, NodeView, ReservationView, Slurm, SlurmError, state_words


def _number(value: Any) -> Optional[int]:
    if isinstance(value, dict):           # 23.x: {"set": true, "number": N}
        value = value.get("number") if value.get("set", True) else None
    try:
        return int(value) if value not in (None, "", 0) else None
    except (TypeError, ValueError):
        return None


def _features(value: Any) -> List[str]:
    if isinstance(value, dict):           # 23.11+ sinfo records: {"total": "a,b", "active": "a"}
        value = value.get("active") or value.get("total")
    if isinstance(value, str):
        return [f for f in value.split(",") if f]
    return [str(f) for f in value or []]


def _add(out: Dict[str, NodeView], view: NodeView) -> None:
    """One view per node: sinfo repeats a node once per partition."""
    seen = out.get(view.name)
    if seen is None:
        out[view.name] = view
    else:
        seen.partitions.extend(p for p in view.partitions if p not in seen.partitions)


def _record_views(rec: Dict[str, Any]) -> List[NodeView]:
    """Slurm 23.11 and later: ``{"sinfo": [record...]}``, a record per node and partition (with
    -N): ``nodes.nodes`` the names, ``node.state`` the state words, ``reason.description`` and
    ``reason.time``, ``partition.name``, ``features.active``, ``comment``."""
    names = (rec.get("nodes") or {}).get("nodes") or []
    if isinstance(names, str):
        from ..hostlist import expand
        names = expand(names, "nodes")
    reason = rec.get("reason") or {}
    if isinstance(reason, str):
        reason = {"description": reason}
    part = rec.get("partition") or {}
    part_name = part.get("name") if isinstance(part, dict) else part
    return [NodeView(name=name, states=state_words((rec.get("node") or {}).get("state")),
                     reason=reason.get("description") or "", reason_time=_number(reason.get("time")),
                     partitions=[part_name] if part_name else [], comment=rec.get("comment") or "",
                     features=_features(rec.get("features")))
            for name in names if name]


def parse_nodes(text: str) -> Dict[str, NodeView]:
    """NodeViews from ``sinfo --json``: ``{"nodes": [...]}`` of Slurm 22.05 to 23.02 (23.02 gives
    ``state`` as a list), or ``{"sinfo": [...]}`` records of 23.11 and later."""
    data = json.loads(text)
    out: Dict[str, NodeView] = {}
    for rec in data.get("sinfo") or []:
        for view in _record_views(rec):
            _add(out, view)
    for node in data.get("nodes") or []:
        name = node.get("name") or node.get("hostname")
        if not name:
            continue
        parts = node.get("partitions") or ([node["partition"]] if node.get("partition") else [])
        _add(out, NodeView(name=name, states=state_words(node.get("state")) | state_words(node.get("state_flags")),
                           reason=node.get("reason") or "",
                           reason_time=_number(node.get("reason_changed_at") or node.get("reason_set_at")),
                           partitions=list(parts), comment=node.get("comment") or "",
                           features=_features(node.get("active_features") or node.get("features")),
                           boot_time=_number(node.get("boot_time"))))
    return out


class SlurmCli(Slurm):
    """The default Slurm backend."""

    kind = "cli"

    def available(self) -> bool:
        """The tools are installed and Slurm is configured on this host."""
        configured = bool(os.environ.get("SLURM_CONF")) or any(
            os.path.exists(p) for p in ("/etc/slurm/slurm.conf", "/etc/slurm-llnl/slurm.conf"))
        return configured and shutil.which("scontrol") is not None and shutil.which("sinfo") is not None

    def _run(self, argv: Sequence[str], timeout: Optional[float] = None,
             env: Optional[Mapping[str, str]] = None) -> str:
        """The command's stdout; SlurmError (one line) when it cannot start, times out or fails.
        ``env``: variables added to this process's environment for the command."""
        if shutil.which(argv[0]) is None:
            raise SlurmError("%s not found" % argv[0])
        what = " ".join(argv[:3])
        timeout = self.time_left(what, timeout)
        # host.run_command: its own process group, killed whole at the timeout; output bounded
        res = run_command(argv, timeout, env=dict(os.environ, **env) if env else None, reap_wait=0.5)
        if res.timed_out:
            raise SlurmError("%s timed out after %.3gs" % (what, timeout))
        if res.rc in (126, 127) and not res.stdout:
            raise SlurmError("%s: %s" % (argv[0], one_line(res.stderr)))
        if res.rc != 0:
            raise SlurmError("%s failed (rc %d): %s" % (what, res.rc, one_line(res.stderr or res.stdout)))
        if res.truncated:
            raise SlurmError("%s: output past %d bytes" % (what, OUTPUT_MAX))
        return res.stdout

    def nodes(self, names: Optional[Iterable[str]] = None) -> Dict[str, NodeView]:
        argv = ["sinfo", "--json", "--Node"]      # 23.11+: a record per node, never a group
        names = list(names or [])
        if names:
            argv += ["--nodes", ",".join(names)]
        text = self._run(argv)
        try:
            return parse_nodes(text)
        except (ValueError, TypeError, AttributeError) as exc:
            raise SlurmError("sinfo --json gave unreadable output: %s" % exc) from None

    def update_node(self, name: str, **fields: str) -> None:
        argv = ["scontrol", "update", "NodeName=%s" % name]
        argv += ["%s=%s" % (k, v) for k, v in fields.items()]
        self._run(argv)

    def job(self, job_id: str) -> JobView:
        """The job as `scontrol show job --oneliner` shows it."""
        out = self._run(["scontrol", "show", "job", "--oneliner", str(job_id)])
        comment = out.split(" Comment=", 1)[1] if " Comment=" in out else ""
        # the comment runs to the next 'Key=' field
        for key in (" StdErr=", " StdIn=", " StdOut=", " Power=", " MailUser=", " TresPerNode="):
            comment = comment.split(key, 1)[0]

        def field(key: str) -> str:
            found = re.search(r"(?:^|\s)%s=(\d+:\d+)(?=\s|$)" % key, out)
            return found.group(1) if found else ""

        return JobView(str(job_id), comment.strip() if comment.strip() != "(null)" else "",
                       field("ExitCode"), field("DerivedExitCode"))

    def reboot(self, nodes: Union[str, Sequence[str]], asap: bool = True, nextstate: str = "RESUME",
               reason: str = "") -> None:
        """Reboot the nodes through slurm.conf's RebootProgram (slurm_jobs.reboot_argv)."""
        self._run(slurm_jobs.reboot_argv(nodes, asap, nextstate, reason))

    # -- jobs -----------------------------------------------------------------------------------

    def submit(self, spec: JobSpec) -> str:
        """Submit a batch job (sbatch --parsable); its job id."""
        argv, env = slurm_jobs.sbatch_argv(spec)
        return slurm_jobs.parse_submit(self._run(argv, env=env))

    def jobs(self, ids: Optional[Iterable[str]] = None, name: Optional[str] = None, user: Optional[str] = None,
             states: Optional[Iterable[str]] = None) -> List[JobInfo]:
        """The jobs slurmctld holds (pending, running, and finished for MinJobAge after they end),
        those matching every filter given. squeue --json on 22.05 ignores filters, so none is sent
        and all apply here; an id list that is given but empty matches nothing. Finished jobs that
        slurmctld has purged are gone (sacct would have them where accounting is configured)."""
        ids = None if ids is None else [str(i) for i in ids]
        if ids is not None and not ids:
            return []
        return slurm_jobs.parse_jobs(self._run(["squeue", "--json"]), ids=ids, name=name, user=user, states=states)

    def cancel(self, job_id: str, signal: Optional[str] = None) -> None:
        """Cancel the job, or send it ``signal`` (batch script and steps). A job that has ended
        or is unknown is no error (scancel 22.05 exits 0 for it)."""
        self._run(slurm_jobs.cancel_argv(job_id, signal))

    # -- reservations ---------------------------------------------------------------------------

    def reservation_list(self) -> List[ReservationView]:
        return slurm_jobs.parse_reservations(self._run(["scontrol", "show", "reservation", "--oneliner"]))

    def create_reservation(self, name: str, nodes: Union[str, Sequence[str]], duration: Union[int, str] = 60,
                           start: str = "now", flags: Sequence[str] = ("maint", "ignore_jobs"),
                           users: Sequence[str] = ("root",)) -> str:
        """Create a reservation (``duration`` minutes or a Slurm time, ``start`` "now", a Slurm time
        or epoch seconds); the name Slurm gave it. With the default flags, a MAINT reservation
        that takes the nodes even with jobs on them: only its users' jobs start there."""
        argv = slurm_jobs.create_reservation_argv(name, nodes, duration, start, flags, users)
        return slurm_jobs.created_name(self._run(argv), name)

    def update_reservation(self, name: str, **fields: Any) -> None:
        """scontrol update ReservationName=NAME Key=value (Duration=, EndTime=, Nodes=, Users=...)."""
        self._run(slurm_jobs.update_reservation_argv(name, **fields))

    def delete_reservation(self, name: str, missing_ok: bool = False) -> None:
        """Delete the reservation; with ``missing_ok``, one that is already gone is no error."""
        try:
            self._run(["scontrol", "delete", "ReservationName=" + slurm_jobs.reservation_name(name)])
        except SlurmError as exc:
            if not (missing_ok and "reservation is invalid" in str(exc).lower()):
                raise


def one_line(text: str, limit: int = 300) -> str:
    """A tool's error output as one line: its distinct lines joined ("scontrol: error: RebootProgram
    isn't defined; scontrol_reboot_nodes error: Unspecified error")."""
    lines: List[str] = []
    for line in (text or "").splitlines():
        line = line.strip()
        if line and line not in lines:
            lines.append(line)
    out = "; ".join(lines)
    return out if len(out) <= limit else out[:limit - 3] + "..."


def node_features(node: str, timeout: float = 3.0, deadline: Optional[float] = None) -> List[str]:
    """The node's features; [] when Slurm cannot be asked before ``deadline`` (profile detection)."""
    try:
        return SlurmCli(timeout, deadline=deadline).features(node)
    except SlurmError:
        return []
