"""Store I/O out of the process Slurm waits for.

A thread stuck in a filesystem call that cannot be interrupted (a hung NFS hard mount, a FUSE
daemon that stopped answering) keeps its whole process from exiting, even through ``os._exit``:
slurmd then waits for the prolog until PrologEpilogTimeout, kills it and drains the node for a
prolog error. So the store's writes, and the reads of one node that the Slurm contexts make, run
in a detached grandchild: forked twice (the middle process exits at once, so no zombie is left and
the grandchild belongs to init), in a session of its own (slurmd's kill of the prolog's process
group does not reach it), with stdin, stdout and stderr on /dev/null (slurmd does not wait for the
end of the prolog's output) and no other descriptor of the parent but the pipe that brings its
messages back. The parent waits for those at most its share of the budget, then goes on without
it; the grandchild finishes on its own when the filesystem answers again, or is ended by SIGALRM
after ``LIFETIME`` seconds.

Messages are pickled tuples: ("log", logger, level, text) for each log record of the child (the
parent logs it as its own; once the parent has gone, to syslog), and whatever the work sends
(the writer: "written" once the record is safe), then ("value", result) or ("error", exception).
"""
from __future__ import annotations

import fcntl
import gc
import logging
import os
import pickle
import select
import signal
import struct
import time
import warnings
from typing import Any, Callable, Optional, Set, Tuple

LIFETIME = 600          # seconds a detached child may live (then SIGALRM ends it; the spool has its record)
_HEADER = struct.Struct(">I")


class NotStarted(Exception):
    """No child could be started (fork or pipe failed: no processes or descriptors left)."""


class Channel:
    """The child's end: ``send`` never fails (once the parent has gone, log records go to syslog)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.parent_gone = False

    def send(self, *message: Any) -> None:
        if self.parent_gone:
            return self._late(message)
        try:
            data = pickle.dumps(message)
        except Exception:
            data = pickle.dumps(tuple(repr(part) for part in message))
        try:
            os.write(self.fd, _HEADER.pack(len(data)) + data)
        except OSError:
            self.parent_gone = True
            self._late(message)

    def _late(self, message: Tuple[Any, ...]) -> None:
        if message and message[0] == "log" and message[2] >= logging.WARNING:
            from .. import syslogging

            syslogging.until(None)
            syslogging.send(["gpuhc store (after its caller went on): %s" % message[3]], "LOG_WARNING")


class _ChannelHandler(logging.Handler):
    def __init__(self, channel: Channel) -> None:
        super().__init__()
        self.channel = channel

    def emit(self, record: logging.LogRecord) -> None:
        self.channel.send("log", record.name, record.levelno, record.getMessage())


def _route_logging(channel: Channel) -> None:
    """Every log record of the child goes to the parent through the channel (levels are unchanged)."""
    for logger in list(logging.Logger.manager.loggerDict.values()):
        if isinstance(logger, logging.Logger):
            logger.handlers = []
    logging.getLogger().handlers = [_ChannelHandler(channel)]


def _grandchild(work: Callable[[Channel], Any], r: int, w: int, lifetime: int) -> None:
    channel = None
    try:
        gc.disable()                 # no finalizer of the parent's objects closes a descriptor of ours
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGALRM):
            signal.signal(sig, signal.SIG_DFL)
        signal.alarm(lifetime)
        os.close(r)
        w = fcntl.fcntl(w, fcntl.F_DUPFD, 3)
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
        if w != 3:
            os.dup2(w, 3)
            w = 3
        os.closerange(4, max(4, os.sysconf("SC_OPEN_MAX")))    # a flock the parent holds stays the parent's
        os.chdir("/")
        channel = Channel(w)
        _route_logging(channel)
        value = work(channel)
        channel.send("value", value)
    except BaseException as exc:
        if channel is not None:
            try:
                pickle.dumps(exc)
            except Exception:
                exc = RuntimeError("%s: %s" % (type(exc).__name__, exc))
            channel.send("error", exc)
    finally:
        os._exit(0)


class Detached:
    """``work(channel)`` in a detached grandchild; ``wait`` for its messages. NotStarted when it cannot be started."""

    def __init__(self, work: Callable[[Channel], Any], lifetime: int = LIFETIME) -> None:
        try:
            r, w = os.pipe()
        except OSError as exc:
            raise NotStarted("cannot start the store's child: %s" % (exc.strerror or exc)) from None
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)    # 3.12: fork() with threads running
                pid = os.fork()
        except OSError as exc:
            os.close(r)
            os.close(w)
            raise NotStarted("cannot start the store's child: %s" % (exc.strerror or exc)) from None
        if pid == 0:
            try:
                os.setsid()
                if os.fork() == 0:
                    _grandchild(work, r, w, lifetime)
            finally:
                os._exit(0)
        os.close(w)
        self.fd = r
        self.middle = pid        # reaped in close(): it is gone as soon as it has forked, and its exit
        self.buffer = b""        # (tearing down a copy of this process) overlaps the child's work
        self.ended = False

    def _message(self) -> Optional[Tuple[Any, ...]]:
        if len(self.buffer) < _HEADER.size:
            return None
        (size,) = _HEADER.unpack_from(self.buffer)
        if len(self.buffer) < _HEADER.size + size:
            return None
        data = self.buffer[_HEADER.size:_HEADER.size + size]
        self.buffer = self.buffer[_HEADER.size + size:]
        return pickle.loads(data)

    def wait(self, tags: Set[str], timeout: float) -> Optional[Tuple[Any, ...]]:
        """The first message whose tag is in ``tags`` (log records on the way are logged here);
        ("ended",) when the child ended without one; None when ``timeout`` seconds passed first."""
        deadline = time.monotonic() + max(0.0, timeout)
        while True:
            message = self._message()
            if message is not None:
                if message[0] == "log":
                    logging.getLogger(message[1]).log(message[2], "%s", message[3])
                    continue
                if message[0] in tags:
                    return message
                continue
            if self.ended:
                return ("ended",)
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            ready, _, _ = select.select([self.fd], [], [], left)
            if ready:
                chunk = os.read(self.fd, 1 << 20)
                if chunk:
                    self.buffer += chunk
                else:
                    self.ended = True

    def close(self) -> None:
        """Stop listening: the child's later messages go to syslog, and it goes on alone."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        if self.middle:
            try:
                os.waitpid(self.middle, 0)
            except ChildProcessError:
                pass
            self.middle = 0


def call(work: Callable[[], Any], timeout: float) -> Any:
    """work()'s value, computed in a detached child (it must be picklable); its exception re-raised
    here; TimeoutError when it has not answered within ``timeout`` seconds."""
    child = Detached(lambda channel: work())
    try:
        message = child.wait({"value", "error"}, timeout)
    finally:
        child.close()
    if message is None:
        raise TimeoutError()
    if message[0] == "error":
        raise message[1]
    if message[0] != "value":
        raise RuntimeError("the store's reader ended without an answer")
    return message[1]
