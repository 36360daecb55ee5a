"""Bounded access to the world for the backends: commands that run in their own process group and
are killed whole at their timeout, with their output kept to OUTPUT_MAX per stream; reads of
regular files only, kept to a limit. The one place gpuhc runs a command (the host's, the Slurm
command-line tools')."""
from __future__ import annotations

import os
import signal
import stat
import subprocess
import time
from dataclasses import dataclass
from typing import IO, Dict, Optional, Sequence, Tuple

# each output stream of a command: the rest is read and dropped, so the command is not blocked;
# CommandResult.truncated says so (README "Limits")
OUTPUT_MAX = 256 << 20


@dataclass
class CommandResult:
    rc: int
    stdout: str = ""
    stderr: str = ""
    timed_out: bool = False
    truncated: bool = False      # an output stream went past OUTPUT_MAX: only its start is here

    @property
    def ok(self) -> bool:
        return self.rc == 0 and not self.timed_out


def run_command(argv: Sequence[str], timeout: float, env: Optional[Dict[str, str]] = None,
                reap_wait: float = 2.0) -> CommandResult:
    """The command's exit status and output (each stream's first OUTPUT_MAX bytes). It runs in a
    session and process group of its own: one given up at ``timeout`` is killed with every process
    it started (a journalctl's pager, a dcgmi's helpers, an scontrol's children), none is left
    behind. The one place gpuhc runs a command (the host's, and the Slurm command-line tools').
    ``env``: the whole environment of the command (default: this process's)."""
    try:
        proc = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, start_new_session=True, env=env)
    except FileNotFoundError:
        return CommandResult(127, "", "%s: command not found" % argv[0])
    except (OSError, ValueError) as exc:        # ValueError: a NUL byte in an argument
        return CommandResult(126, "", "%s: %s" % (argv[0], exc))
    try:
        out, err, finished = _collect(proc, time.monotonic() + max(0.0, timeout), OUTPUT_MAX)
    except BaseException:       # Ctrl-C, or an error of ours: the command does not outlive it
        _kill_group(proc)
        raise
    truncated = max(len(out), len(err)) > OUTPUT_MAX
    out, err = out[:OUTPUT_MAX], err[:OUTPUT_MAX]
    if not finished:
        _kill_group(proc)
        try:
            proc.wait(timeout=reap_wait)
        except subprocess.TimeoutExpired:
            pass            # left behind: it dies, or is reaped, when the kernel lets it
        return CommandResult(124, _text(out), "%s: timed out after %gs" % (argv[0], timeout), True, truncated)
    return CommandResult(proc.returncode, _text(out), _text(err), truncated=truncated)


def read_regular(path: str, limit: int) -> Optional[bytes]:
    """At most ``limit + 1`` bytes of a regular file (the caller tells a file past its limit by
    the extra byte); None when it cannot be opened or read or is not a regular file."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
    except (OSError, ValueError):
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        return _read_upto(fd, limit + 1)
    except OSError:
        return None
    finally:
        os.close(fd)


def _read_upto(fd: int, size: int) -> bytes:
    """Up to ``size`` bytes from ``fd``'s position (fewer at its end)."""
    parts, left = [], size
    while left > 0:
        part = os.read(fd, min(left, 1 << 20))
        if not part:
            break
        parts.append(part)
        left -= len(part)
    return b"".join(parts)


def _text(data: bytes) -> str:
    return data.decode("utf-8", "replace")


def _collect(proc: "subprocess.Popen[bytes]", deadline: float, limit: int) -> Tuple[bytes, bytes, bool]:
    """(stdout, stderr, whether the command ended) by ``deadline`` (time.monotonic()); each stream
    kept to its first ``limit + 1`` bytes (one more than the limit tells a stream that went past it). The command has ended when it exited and both streams are
    closed (a child that keeps them open keeps it running)."""
    import selectors

    stdout, stderr = proc.stdout, proc.stderr
    if stdout is None or stderr is None:
        raise ValueError("_collect needs a command started with stdout and stderr as pipes")
    kept = {stdout: bytearray(), stderr: bytearray()}
    with selectors.DefaultSelector() as sel:
        for pipe in kept:
            sel.register(pipe, selectors.EVENT_READ, pipe)
        while sel.get_map():
            left = deadline - time.monotonic()
            if left <= 0:
                return bytes(kept[stdout]), bytes(kept[stderr]), False
            for key, _ in sel.select(left):
                chunk = os.read(key.fd, 1 << 16)
                ready: IO[bytes] = key.data
                if not chunk:
                    sel.unregister(ready)
                    ready.close()
                    continue
                buf = kept[ready]
                if len(buf) <= limit:
                    buf += chunk[:limit + 1 - len(buf)]
    try:
        proc.wait(timeout=max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        return bytes(kept[stdout]), bytes(kept[stderr]), False
    return bytes(kept[stdout]), bytes(kept[stderr]), True


def _kill_group(proc: "subprocess.Popen[bytes]") -> None:
    """SIGKILL to the command's process group (its own: start_new_session), the command included."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except OSError:         # the group is gone; or not ours to signal: the command itself then
        try:
            proc.kill()
        except OSError:
            pass
    for pipe in (proc.stdout, proc.stderr):
        if pipe is not None and not pipe.closed:
            pipe.close()
