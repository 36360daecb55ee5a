"""What SlurmCli sends and reads for jobs, reservations and reboots, as pure functions: the
argument lists (never a shell) and the parsers of the tools' output, tested on real Slurm 22.05
output in tests/data/slurm.

Jobs come from ``squeue --json``: Slurm 22.05's squeue has it (OpenAPI v0.0.38), but its man page
says "all other formatting and filtering arguments will be ignored", and they are (checked on
22.05.8: --jobs, --name, --user and --states each still gave every job), so squeue dumps every job
slurmctld holds, pending, running, and finished ones for MinJobAge after they end, and the filter
is applied here. Later releases give states as lists, numbers as {"set", "infinite", "number"},
and exit codes as {"return_code", "signal"}; both shapes are read. Reservations come from
``scontrol show reservation --oneliner`` (scontrol has no --json in 22.05).
"""
from __future__ import annotations

import json
import re
import time
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

from .slurm import JobInfo, JobSpec, ReservationView, SlurmError, exit_status

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")          # an environment variable's name
_JOB_ID = re.compile(r"^\d+(?:[_+]\d+)?$")                # 123, 123_4 (array task), 123+1 (het component)
_NULL = ("", "(null)", "N/A", "None", "Unknown", "n/a")


def number(value: Any) -> Optional[int]:
    """An int from Slurm JSON: a plain number, or 23.x's {"set": true, "infinite": false, "number": N};
    None for unset, infinite or 0."""
    if isinstance(value, dict):
        value = value.get("number") if value.get("set", True) and not value.get("infinite") else None
    try:
        return int(value) if value not in (None, "", 0) else None
    except (TypeError, ValueError):
        return None


def slurm_time(value: Union[float, int, str]) -> str:
    """A time for sbatch --deadline / scontrol StartTime=: epoch seconds as local ISO time
    (Slurm reads times without zone as local), a string as given ("now", "now+1hour")."""
    if isinstance(value, (int, float)):
        return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(value))
    return str(value)


def epoch(text: str) -> Optional[int]:
    """Epoch seconds from Slurm's local "2026-12-06T02:58:21"; None for Unknown, N/A, (null)."""
    if text in _NULL:
        return None
    try:
        return int(time.mktime(time.strptime(text, "%Y-%m-%dT%H:%M:%S")))
    except ValueError:
        return None


def hostlist(nodes: Union[str, Sequence[str]], what: str) -> str:
    """One Slurm hostlist from names or a hostlist; never empty and never ALL (that means every node
    to scontrol)."""
    from ..hostlist import fold

    text = nodes if isinstance(nodes, str) else fold(nodes)
    if not text.strip() or text.strip().upper() == "ALL" or any(c.isspace() for c in text):
        raise SlurmError("%s: %r is not a node list gpuhc takes (names or a hostlist; never ALL)" % (what, nodes))
    return text


def _word(value: Any, what: str) -> str:
    """A value that goes into one `Key=value` argument of scontrol: not empty, no whitespace."""
    text = str(value)
    if not text or any(c.isspace() for c in text):
        raise SlurmError("%s: %r is empty or has spaces" % (what, value))
    return text


def parse_kv(line: str) -> Dict[str, str]:
    """Slurm's one-line `Key=Value Key=Value` output; a value may hold spaces (Comment=a b)."""
    out: Dict[str, str] = {}
    for part in re.split(r"\s+(?=[A-Za-z][A-Za-z0-9_:/]*=)", line.strip()):
        if "=" in part:
            key, value = part.split("=", 1)
            out[key] = value
    return out


# -- jobs -------------------------------------------------------------------------------------------

def sbatch_argv(spec: JobSpec) -> Tuple[List[str], Dict[str, str]]:
    """sbatch's argument list for ``spec`` and the variables to add to sbatch's environment.
    ``spec.env`` travels by name (--export=ALL,NAME,...) with its values in sbatch's environment,
    so a value may hold commas, which --export=NAME=value cannot."""
    if bool(spec.script) == bool(spec.wrap):
        raise SlurmError("sbatch: give a script or a wrap command, not %s" % ("both" if spec.script else "neither"))
    if spec.wrap and spec.args:
        raise SlurmError("sbatch: args go with a script, not with wrap")
    argv = ["sbatch", "--parsable"]

    def opt(flag: str, value: Any) -> None:
        if value is not None and value != "":
            argv.append("--%s=%s" % (flag, value))

    opt("job-name", spec.name)
    if spec.nodelist:
        argv.append("--nodelist=" + hostlist(spec.nodelist, "sbatch --nodelist"))
    opt("nodes", spec.nodes)
    opt("ntasks-per-node", spec.ntasks_per_node)
    if spec.exclusive:
        argv.append("--exclusive")
    opt("reservation", spec.reservation)
    opt("time", spec.time_limit)
    opt("deadline", None if spec.deadline is None else slurm_time(spec.deadline))
    opt("partition", spec.partition)
    opt("qos", spec.qos)
    opt("account", spec.account)
    opt("nice", spec.nice)
    opt("comment", spec.comment)
    opt("dependency", spec.dependency)
    opt("output", spec.output)
    opt("chdir", spec.chdir)
    bad = [k for k in spec.env if not _NAME.match(k)]
    if bad:
        raise SlurmError("sbatch: %r is not an environment variable name" % bad[0])
    names = sorted(spec.env)
    if spec.export_all or names:
        argv.append("--export=" + ",".join((["ALL"] if spec.export_all else []) + names))
    if spec.wrap:
        argv.append("--wrap=" + spec.wrap)
    else:
        script = str(spec.script)
        argv.append(script if not script.startswith("-") else "./" + script)
        argv.extend(str(a) for a in spec.args)
    return argv, {k: str(v) for k, v in spec.env.items()}


def parse_submit(text: str) -> str:
    """The job id from sbatch --parsable: "123", or "123;cluster" on a multi-cluster setup."""
    job_id = text.strip().split(";", 1)[0].strip()
    if not _JOB_ID.match(job_id):
        raise SlurmError("sbatch --parsable gave no job id: %r" % text.strip()[:200])
    return job_id


def _exit_code(value: Any) -> str:
    """"exit:signal" from 22.05's raw wait status (768 = exited 3, 15 = SIGTERM) or 23.x's
    {"return_code": N, "signal": {"id": N}}."""
    if isinstance(value, dict):
        sig = value.get("signal")
        if isinstance(sig, dict):
            sig = sig.get("id", sig.get("signal_id"))
        return exit_status(number(value.get("return_code")) or 0, number(sig) or 0)
    try:
        status = int(value)
    except (TypeError, ValueError):
        return ""
    return exit_status((status >> 8) & 0xFF, status & 0x7F)


def _job_info(rec: Dict[str, Any]) -> JobInfo:
    from ..hostlist import expand

    states = rec.get("job_state")
    state = states if isinstance(states, str) else (list(states or []) or [""])[0]
    nodes = rec.get("nodes") or ""
    reason = rec.get("state_reason") or ""
    return JobInfo(job_id=str(rec.get("job_id")), name=rec.get("name") or "", state=str(state).upper(),
                   nodes=expand(nodes, "job nodes") if nodes and nodes not in _NULL else [],
                   reason="" if reason in _NULL else reason,
                   start_time=number(rec.get("start_time")), end_time=number(rec.get("end_time")),
                   time_limit=number(rec.get("time_limit")), reservation=rec.get("resv_name") or "",
                   partition=rec.get("partition") or "", comment=rec.get("comment") or "",
                   exit_code=_exit_code(rec.get("exit_code")), user=rec.get("user_name") or "",
                   deadline=number(rec.get("deadline")), dependency=rec.get("dependency") or "")


def _ids(rec: Dict[str, Any]) -> List[str]:
    """The ids a job answers to: its own, and ARRAYJOB_TASK for an array task."""
    out = [str(rec.get("job_id"))]
    array, task = number(rec.get("array_job_id")), rec.get("array_task_id")
    if isinstance(task, dict):                # 23.x: {"set": true, "number": N}
        task = task.get("number") if task.get("set") else None
    if array and isinstance(task, int):
        out.append("%s_%s" % (array, task))
    return out


def parse_jobs(text: str, ids: Optional[Iterable[str]] = None, name: Optional[str] = None,
               user: Optional[str] = None, states: Optional[Iterable[str]] = None) -> List[JobInfo]:
    """JobInfos from ``squeue --json``, filtered here (22.05 ignores squeue's filters with --json):
    any of ``ids``, exactly ``name``, ``user`` (name or uid), any of ``states``."""
    try:
        data = json.loads(text)
        records = data.get("jobs")
        if records is None or not isinstance(records, list):
            raise ValueError("no 'jobs' list")
    except (ValueError, AttributeError) as exc:
        raise SlurmError("squeue --json gave unreadable output: %s" % exc) from None
    if data.get("errors") and not records:
        err = data["errors"][0]
        if isinstance(err, dict):
            err = err.get("description") or err.get("error") or err
        raise SlurmError("squeue --json: %s" % err)
    want_ids = {str(i).strip() for i in ids} if ids is not None else None
    want_states = {s.upper() for s in states} if states is not None else None
    out = []
    for rec in records:
        if want_ids is not None and not want_ids.intersection(_ids(rec)):
            continue
        if name is not None and rec.get("name") != name:
            continue
        if user is not None and str(user) not in (rec.get("user_name"), str(rec.get("user_id"))):
            continue
        try:
            info = _job_info(rec)
        except Exception as exc:             # one unreadable record must not hide the others
            raise SlurmError("squeue --json: job %s unreadable: %s" % (rec.get("job_id"), exc)) from None
        if want_states is not None and info.state not in want_states:
            continue
        out.append(info)
    return out


def cancel_argv(job_id: str, signal: Optional[str] = None) -> List[str]:
    """scancel JOB; with a signal, send it to the batch script and every step (--full) without
    ending the job unless the signal does."""
    job_id = str(job_id).strip()
    if not _JOB_ID.match(job_id):
        raise SlurmError("scancel: %r is not a job id" % job_id)
    if signal is None:
        return ["scancel", job_id]
    if not re.match(r"^[A-Za-z0-9]+$", str(signal)):
        raise SlurmError("scancel: %r is not a signal" % signal)
    return ["scancel", "--signal=%s" % signal, "--full", job_id]


# -- nodes ------------------------------------------------------------------------------------------

def reboot_argv(nodes: Union[str, Sequence[str]], asap: bool = True, nextstate: str = "RESUME",
                reason: str = "") -> List[str]:
    """scontrol reboot [ASAP] nextstate=RESUME|DOWN [reason=...] NODELIST. ASAP drains the nodes
    so that no new job starts, and reboots each once its jobs end (the RebootProgram of slurm.conf)."""
    nextstate = str(nextstate).upper()
    if nextstate not in ("RESUME", "DOWN"):
        raise SlurmError("scontrol reboot: nextstate %r is not RESUME or DOWN" % nextstate)
    argv = ["scontrol", "reboot"] + (["ASAP"] if asap else []) + ["nextstate=" + nextstate]
    if reason:
        argv.append("reason=" + reason)
    return argv + [hostlist(nodes, "scontrol reboot")]


# -- reservations -----------------------------------------------------------------------------------

def parse_reservations(text: str) -> List[ReservationView]:
    """ReservationViews from ``scontrol show reservation --oneliner`` ("No reservations in the
    system" gives none)."""
    from ..hostlist import expand

    out = []
    for line in text.splitlines():
        if not line.startswith("ReservationName="):
            continue
        fields = parse_kv(line)
        nodes = fields.get("Nodes", "")
        users = fields.get("Users", "")
        start, end = epoch(fields.get("StartTime", "")), epoch(fields.get("EndTime", ""))
        state = fields.get("State", "").upper()
        if not state:                   # a Slurm that does not say: from the times
            state = "ACTIVE" if (start or 0) <= time.time() < (end or float("inf")) else "INACTIVE"
        out.append(ReservationView(
            name=fields["ReservationName"],
            nodes=expand(nodes, "reservation nodes") if nodes not in _NULL else [],
            start=start, end=end,
            flags={f.split("=", 1)[0].strip().upper() for f in fields.get("Flags", "").split(",")
                   if f.strip() and f not in _NULL},
            users=[u for u in users.split(",") if u] if users not in _NULL else [],
            state=state))
    return out


def _field_value(key: str, value: Any) -> str:
    if key.lower() == "nodes":
        return hostlist(value, "reservation Nodes")
    if isinstance(value, (list, tuple, set, frozenset)):
        value = ",".join(str(v) for v in value)
    if key.lower() == "starttime" or key.lower() == "endtime":
        value = slurm_time(value)
    return _word(value, "reservation %s" % key)


def reservation_name(name: str) -> str:
    if not name or any(c.isspace() or c in "=,;" for c in name):
        raise SlurmError("reservation name %r: empty, or holds a space, '=', ',' or ';'" % name)
    return name


def create_reservation_argv(name: str, nodes: Union[str, Sequence[str]], duration: Union[int, str] = 60,
                            start: Union[str, float] = "now", flags: Sequence[str] = ("maint", "ignore_jobs"),
                            users: Sequence[str] = ("root",)) -> List[str]:
    argv = ["scontrol", "create", "reservation", "ReservationName=" + reservation_name(name),
            "Nodes=" + hostlist(nodes, "reservation Nodes"), "StartTime=" + _field_value("StartTime", start),
            "Duration=" + _word(duration, "reservation Duration")]
    if flags:
        argv.append("Flags=" + _word(",".join(str(f).upper() for f in flags), "reservation Flags"))
    if not users:
        raise SlurmError("reservation %s: a reservation needs users (or accounts)" % name)
    return argv + ["Users=" + _field_value("Users", users)]


def update_reservation_argv(name: str, **fields: Any) -> List[str]:
    """scontrol update ReservationName=NAME Key=value...: scontrol's keys (Duration, EndTime,
    Nodes, Users, Flags: "Flags=-MAINT" removes one); a list is joined with commas."""
    if not fields:
        raise SlurmError("reservation %s: nothing to update" % name)
    return ["scontrol", "update", "ReservationName=" + reservation_name(name)] + [
        "%s=%s" % (key, _field_value(key, value)) for key, value in fields.items()]


def created_name(text: str, asked: str) -> str:
    """The name in scontrol's "Reservation created: NAME"."""
    found = re.search(r"Reservation created:\s*(\S+)", text)
    return found.group(1) if found else asked
