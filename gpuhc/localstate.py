"""Small per-node state on local disk (never shared storage): caches and cursors, as JSON files
written atomically. A failure to read or write is never fatal: the caller recomputes."""
from __future__ import annotations

import fcntl
import json
import os
import tempfile
import time
from typing import Any, Callable, Optional


def read(state_dir: str, name: str) -> Optional[Any]:
    try:
        with open(os.path.join(state_dir, name + ".json")) as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return None


def write(state_dir: str, name: str, value: Any) -> bool:
    try:
        os.makedirs(state_dir, mode=0o755, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix="." + name, dir=state_dir)
        with os.fdopen(fd, "w") as fh:
            json.dump(value, fh)
        os.replace(tmp, os.path.join(state_dir, name + ".json"))
        return True
    except OSError:
        return False


NOFOLLOW = getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
LOCK_MODE = 0o600   # whoever can open a lock can flock it, and hold every writer that waits for it


def open_mode(path: str, flags: int, mode: int) -> int:
    """os.open without following a symlink; a file this process creates or owns ends with exactly
    ``mode`` (one an earlier version left wider is tightened)."""
    fd = os.open(path, flags | NOFOLLOW, mode)
    if flags & os.O_CREAT:
        st = os.fstat(fd)
        if st.st_mode & 0o7777 != mode and st.st_uid == os.geteuid():
            os.fchmod(fd, mode)
    return fd


LOCK_WAIT = 2.0     # at most this long for another gpuhc's read-modify-write of the same file


def update(state_dir: str, name: str, change: Callable[[Any], Any]) -> bool:
    """Read, change and write one state file under an exclusive lock, so two gpuhc processes (a
    healthcheck and `gpuhc reset`, say) do not undo each other's changes. ``change`` gets the
    current value (None when there is none) and returns the new one. The lock is waited for at
    most LOCK_WAIT seconds (it is held for milliseconds); past that the change goes ahead unlocked
    rather than hold a prolog."""
    fd = -1
    try:
        os.makedirs(state_dir, mode=0o755, exist_ok=True)
        fd = open_mode(os.path.join(state_dir, "." + name + ".lock"), os.O_RDWR | os.O_CREAT, LOCK_MODE)
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
        return write(state_dir, name, change(read(state_dir, name)))
    finally:
        if fd >= 0:
            os.close(fd)    # closing releases the lock
