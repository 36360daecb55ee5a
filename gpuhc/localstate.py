"""Small per-node state on local disk (never shared storage): caches and cursors, as JSON files
written atomically. A failure to read or write is never fatal: the caller recomputes.

Nothing another user can write is believed (gpuhc/trust.py): the state directory and the
directories above it must be owned by root (or the user gpuhc runs as) and not writable by group
or others, and a state file must be a regular file of root's (or the user's), at most
MAX_STATE_BYTES. Otherwise a read returns None and a write does nothing, with a warning naming the
path and the fix (once per process): a file another user planted (an Xid 79 "already seen")
must not turn a REBOOT into a PASS."""
from __future__ import annotations

import fcntl
import json
import logging
import os
import stat
import tempfile
import time
from typing import Any, Callable, Optional, Set

from . import trust

log = logging.getLogger("gpuhc.localstate")

NOFOLLOW = getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
LOCK_MODE = 0o600   # whoever can open a lock can flock it, and hold every writer that waits for it
MAX_STATE_BYTES = 16 << 20
_warned: Set[str] = set()


def _warn_once(problem: str) -> None:
    if problem not in _warned:
        _warned.add(problem)
        log.warning("local state not used: %s", problem)


def untrusted(state_dir: str) -> Optional[str]:
    """Why the state directory cannot be trusted (one line with the fix), or None."""
    return trust.directory_problem(state_dir)


def read(state_dir: str, name: str) -> Optional[Any]:
    path = os.path.join(state_dir, name + ".json")
    problem = untrusted(state_dir)
    if problem:
        _warn_once(problem)
        return None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | NOFOLLOW)
    except OSError:
        return None
    try:
        problem = trust.file_problem(path, os.fstat(fd))
        if problem:
            _warn_once(problem)
            return None
        data = os.read(fd, MAX_STATE_BYTES + 1)
        if len(data) > MAX_STATE_BYTES:
            _warn_once("%s: larger than %d bytes" % (path, MAX_STATE_BYTES))
            return None
        return json.loads(data)
    except (OSError, ValueError, RecursionError):
        return None
    finally:
        os.close(fd)


def _ready(state_dir: str) -> bool:
    """The state directory exists (made 0755 where missing) and is trusted."""
    try:
        os.makedirs(state_dir, mode=0o755, exist_ok=True)
    except OSError:
        return False
    problem = untrusted(state_dir)
    if problem:
        _warn_once(problem)
        return False
    return True


def write(state_dir: str, name: str, value: Any) -> bool:
    if not _ready(state_dir):
        return False
    return _write(state_dir, name, value)


def _write(state_dir: str, name: str, value: Any) -> bool:
    try:
        fd, tmp = tempfile.mkstemp(prefix="." + name, dir=state_dir)     # 0600, O_EXCL
        with os.fdopen(fd, "w") as fh:
            json.dump(value, fh)
        os.replace(tmp, os.path.join(state_dir, name + ".json"))
        return True
    except OSError:
        return False


def open_mode(path: str, flags: int, mode: int) -> int:
    """os.open without following a symlink; a file this process creates or owns ends with exactly
    ``mode`` (one an earlier version left wider is tightened)."""
    fd = os.open(path, flags | NOFOLLOW, mode)
    if flags & os.O_CREAT:
        st = os.fstat(fd)
        if st.st_mode & 0o7777 != mode and st.st_uid == os.geteuid():
            os.fchmod(fd, mode)
    return fd


def open_lock(path: str) -> int:
    """A lock file's descriptor (0600, made when missing; in a directory only root or this user
    writes). One left there by another user (before the directory was made safe) is replaced:
    whoever can open a lock can flock it, and hold every writer that waits for it."""
    fd = open_mode(path, os.O_RDWR | os.O_CREAT | os.O_NONBLOCK, LOCK_MODE)
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or not trust.trusted_owner(st.st_uid):
        os.close(fd)
        os.unlink(path)
        fd = open_mode(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NONBLOCK, LOCK_MODE)
    return fd


LOCK_WAIT = 2.0     # at most this long for another gpuhc's read-modify-write of the same file


def update(state_dir: str, name: str, change: Callable[[Any], Any]) -> bool:
    """Read, change and write one state file under an exclusive lock, so two gpuhc processes (a
    healthcheck and `gpuhc reset`, say) do not undo each other's changes. ``change`` gets the
    current value (None when there is none) and returns the new one. The lock is waited for at
    most LOCK_WAIT seconds (it is held for milliseconds); past that the change goes ahead unlocked
    rather than hold a prolog. The lock lives in the trusted state directory, 0600: no other user
    can open it, so none can hold it."""
    if not _ready(state_dir):
        change(None)        # the caller's change still runs (it may report), nothing is kept
        return False
    fd = -1
    try:
        fd = open_lock(os.path.join(state_dir, "." + name + ".lock"))
        deadline = time.monotonic() + LOCK_WAIT
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    break
                time.sleep(0.01)
    except OSError:
        pass                # no lock to be had: the write below still happens
    try:
        return _write(state_dir, name, change(read(state_dir, name)))
    finally:
        if fd >= 0:
            os.close(fd)    # closing releases the lock
