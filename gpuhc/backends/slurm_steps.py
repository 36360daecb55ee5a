"""Job steps inside the job's own allocation (``srun -w SUBSET -N len``), run side by side, their output
relayed line by line; and the address a node's name stands for (the rendezvous of a multi-node run).

Used by the multi-node all-reduce's driver (contexts/nccl_job.py), which runs inside a batch job:
every call here is bounded (a step past its limit is cancelled with its srun, SIGINT twice then
SIGKILL, as srun asks)."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Sequence

from .slurm_jobs import hostlist


def srun_argv(nodes: Sequence[str], ntasks_per_node: int, command: Sequence[str], name: str = "gpuhc-nccl",
              extra: Sequence[str] = ()) -> List[str]:
    """srun over exactly ``nodes`` (of the job's allocation), ``ntasks_per_node`` tasks on each; a task that
    fails does not end the others (their results say what happened)."""
    if not nodes:
        raise ValueError("srun_argv: no nodes")
    if ntasks_per_node < 1:
        raise ValueError("srun_argv: ntasks_per_node %r" % (ntasks_per_node,))
    return ["srun", "--nodes=%d" % len(nodes), "--nodelist=%s" % hostlist(list(nodes), "srun nodes"),
            "--ntasks=%d" % (len(nodes) * ntasks_per_node), "--ntasks-per-node=%d" % ntasks_per_node,
            "--kill-on-bad-exit=0", "--job-name=%s" % name] + list(extra) + list(command)


@dataclass
class StepResult:
    argv: List[str]
    returncode: Optional[int]            # None: cancelled past its limit
    stdout: List[str] = field(default_factory=list)
    elapsed_s: float = 0.0
    cancelled: bool = False


def run_steps(argvs: Sequence[Sequence[str]], on_line: Callable[[int, str, bool], None],
              limit_s: Optional[float] = None, env: Optional[dict] = None) -> List[StepResult]:
    """Start every argv at once (steps over disjoint nodes), relay each output line as it comes
    (``on_line(step index, line, is_stderr)``), and wait for all; a step still running after
    ``limit_s`` is cancelled. Results in the order given."""
    procs: List[Optional["subprocess.Popen[str]"]] = []
    results: List[StepResult] = []
    threads: List[threading.Thread] = []
    lock = threading.Lock()
    start = time.monotonic()
    for i, argv in enumerate(argvs):
        res = StepResult(list(argv), None)
        results.append(res)
        try:
            proc = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True, errors="replace", env=env,
                                    start_new_session=True)
        except OSError as exc:
            res.returncode = 127
            res.stdout.append("")
            on_line(i, "cannot start %s: %s" % (argv[0], exc), True)
            procs.append(None)
            continue
        procs.append(proc)
        for stream, is_err in ((proc.stdout, False), (proc.stderr, True)):
            t = threading.Thread(target=_pump, args=(stream, i, is_err, res, on_line, lock), daemon=True)
            t.start()
            threads.append(t)
    for i, started in enumerate(procs):
        if started is None:
            continue
        proc = started
        left = None if limit_s is None else max(0.0, limit_s - (time.monotonic() - start))
        try:
            results[i].returncode = proc.wait(left)
        except subprocess.TimeoutExpired:
            results[i].cancelled = True
            _cancel(proc)
            results[i].returncode = None
        results[i].elapsed_s = time.monotonic() - start
    for t in threads:
        t.join(5.0)
    return results


def _pump(stream, index: int, is_err: bool, res: StepResult, on_line, lock: threading.Lock) -> None:
    for line in stream:
        line = line.rstrip("\n")
        with lock:
            if not is_err:
                res.stdout.append(line)
            on_line(index, line, is_err)
    stream.close()


def _cancel(proc: "subprocess.Popen[str]") -> None:
    """srun cancels its step on two SIGINTs within a second; SIGKILL if it does not go."""
    for _ in range(2):
        try:
            os.killpg(proc.pid, signal.SIGINT)
        except OSError:
            pass
        time.sleep(0.3)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except OSError:
            pass
        proc.wait()


def node_address(name: str, timeout: float = 5.0) -> str:
    """The address of a node: its name where the resolver knows it, else Slurm's NodeAddr
    (``scontrol show node``: clusters whose node names are not host names), else the name."""
    try:
        socket.getaddrinfo(name, None)
        return name
    except (socket.gaierror, UnicodeError):
        pass
    try:
        out = subprocess.run(["scontrol", "show", "node", "-o", name], stdin=subprocess.DEVNULL,
                             capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.SubprocessError):
        return name
    for word in out.stdout.split():
        if word.startswith("NodeAddr="):
            return word.split("=", 1)[1] or name
    return name
