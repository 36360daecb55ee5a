"""The store's file operations: directories and modes, atomic replacement, bounded reads of regular
files only, history lines, the writers' lock. No timeouts here: callers run these in a detached
child (writes, one node's reads) or a bounded thread (the fleet's reads)."""
from __future__ import annotations

import errno
import fcntl
import itertools
import logging
import os
import stat
import threading
import time
from typing import Any, Dict, Iterator, List, Optional, Tuple

from .. import trust
from ..localstate import NOFOLLOW, open_lock, open_mode
from .records import StoreError, parse

log = logging.getLogger("gpuhc.store")

DIR_MODE = 0o755
FILE_MODE = 0o644
LATEST, SUMMARY, HISTORY, LOCK = "latest.json", "summary.json", "history.jsonl", ".lock"
ACK = "ack.json"     # an operator's acknowledgement: findings seen before its time no longer drain
MARKER = ".gpuhc-store"     # written by `gpuhc store init`: this directory is the store (the mount is there)

# The most gpuhc reads of one file: a report is tens of kilobytes, a history 1,000 of them.
MAX_RECORD_BYTES = 16 << 20        # latest.json, summary.json, ack.json, a spooled record
MAX_HISTORY_BYTES = 256 << 20      # history.jsonl: past this only its newest part is read
READ_FLAGS = os.O_RDONLY | os.O_NONBLOCK | NOFOLLOW    # O_NONBLOCK: opening a FIFO does not wait for a writer
counter = itertools.count()


def describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return "%s%s" % (exc.strerror, ": %s" % exc.filename if exc.filename else "")
    return str(exc) or type(exc).__name__


def mkdir(path: str) -> None:
    """Make a directory 0755 (whatever the umask); one that exists is left as it is (its owner and
    mode are for the trust check to judge, not to be changed through a name someone else made)."""
    try:
        os.mkdir(path, DIR_MODE)
    except FileExistsError:
        return
    os.chmod(path, DIR_MODE)


def makedirs(path: str) -> None:
    if not os.path.isdir(path):
        makedirs(os.path.dirname(path))
        mkdir(path)


def require_trusted(path: str, what: str) -> None:
    problem = trust.directory_problem(path)
    if problem:
        raise StoreError("%s refused: %s" % (what, problem))


def write_all(fd: int, data: bytes, path: str) -> None:
    """One write() of the whole buffer; a short write is an error (the caller rolls back and spools)."""
    n = os.write(fd, data)
    if n != len(data):
        raise OSError(errno.EIO, "short write (%d of %d bytes)" % (n, len(data)), path)


def atomic_write(path: str, data: bytes, sync: bool = True, mode: int = FILE_MODE) -> None:
    """Temporary file beside ``path`` (O_EXCL, not through a link), fsync, rename over it: readers
    see the old or the new file; a link at ``path`` is replaced, never followed."""
    directory, name = os.path.split(path)
    tmp = os.path.join(directory, ".%s.%d.%d.tmp" % (name, os.getpid(), next(counter)))
    fd = open_mode(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        try:
            write_all(fd, data, tmp)
            if sync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def open_regular(path: str, flags: int = READ_FLAGS, mode: int = 0) -> Tuple[int, os.stat_result]:
    """An open descriptor of a regular file (never through a symlink, never waiting on a FIFO) and
    its fstat; OSError for anything else (a FIFO, a device, a directory). With O_CREAT the file
    ends with exactly ``mode`` when this process owns it."""
    fd = open_mode(path, flags | os.O_NONBLOCK, mode) if flags & os.O_CREAT else \
        os.open(path, flags | NOFOLLOW | os.O_NONBLOCK)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EINVAL, "not a regular file", path)
    except BaseException:
        os.close(fd)
        raise
    return fd, st


def read(path: str, limit: int = MAX_RECORD_BYTES, tail: bool = False) -> Optional[bytes]:
    """The whole file, or None when it does not exist. Only a regular file, not through a symlink.
    Past ``limit`` bytes: OSError (EFBIG), or with ``tail`` its last ``limit`` bytes from a line's start."""
    try:
        fd, st = open_regular(path)
    except FileNotFoundError:
        return None
    try:
        start = 0
        if st.st_size > limit:
            if not tail:
                raise OSError(errno.EFBIG, "larger than %d bytes: not read" % limit, path)
            start = st.st_size - limit
            log.warning("%s: larger than %d bytes: only its newest part read (compaction shortens it)", path, limit)
        # one read for what fstat says is there; a short read is the end of a regular file
        want = min(limit + 1, max(st.st_size - start + 1, 1 << 16))
        data = os.pread(fd, want, start)
        if len(data) == want:
            chunks, total = [data], len(data)
            while total <= limit:
                chunk = os.pread(fd, min(1 << 20, limit + 1 - total), start + total)
                if not chunk:
                    break
                chunks.append(chunk)
                total += len(chunk)
            data = b"".join(chunks)
        if len(data) > limit:      # grew while read
            if not tail:
                raise OSError(errno.EFBIG, "larger than %d bytes: not read" % limit, path)
            data, start = data[-limit:], 1
        if start:                  # cut: the first line may be partial
            data = data[data.find(b"\n") + 1:]
        return data
    finally:
        os.close(fd)


def read_or_warn(path: str, limit: int = MAX_RECORD_BYTES, tail: bool = False) -> Optional[bytes]:
    """For readers: the file, or None with a warning when it cannot be read (a symlink, a FIFO, EIO...)."""
    try:
        return read(path, limit, tail)
    except OSError as exc:
        log.warning("%s: cannot read: %s", path, describe(exc))
        return None


def read_history(path: str) -> Optional[bytes]:
    return read(path, MAX_HISTORY_BYTES, tail=True)


def lines(path: str) -> Iterator[Tuple[int, Dict[str, Any]]]:
    """(line number, record) for every readable line of a history file."""
    data = read_or_warn(path, MAX_HISTORY_BYTES, tail=True)
    if not data:
        return
    split = data.split(b"\n")
    last = len(split) - 1
    for n, line in enumerate(split, 1):
        if not line.strip():
            continue
        if n - 1 == last:   # no newline at the end: torn by a crash, or being written now
            log.warning("%s:%d: skipped a truncated record (no end of line)", path, n)
            continue
        record = parse(line, "%s:%d" % (path, n))
        if record is not None:
            yield n, record


class Flock:
    """The exclusive flock of a node's writers on ``<node>/.lock`` (0600, in a directory only root
    writes: no other user can open it, so none can hold it)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __enter__(self) -> "Flock":
        self.fd = open_lock(self.path)      # never another user's (the directory is trusted, checked first)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX)
        except BaseException:
            os.close(self.fd)
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        os.close(self.fd)     # releases the lock


def contains(data: Optional[bytes], line: bytes) -> bool:
    if not data:
        return False
    return data.startswith(line) or (b"\n" + line) in data


def fsync_dir(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    except OSError:
        pass     # some filesystems refuse fsync on a directory
    finally:
        os.close(fd)


def remove_stale_temporaries(directory: str, now: float) -> None:
    """Temporary files a killed writer left behind (older than an hour)."""
    for name in os.listdir(directory):
        if name.startswith(".") and name.endswith(".tmp"):
            path = os.path.join(directory, name)
            try:
                if os.lstat(path).st_mtime < now - 3600:
                    os.unlink(path)
            except OSError:
                pass


def set_aside(path: str, why: str) -> None:
    """Rename a spooled entry that is not a record out of the way (``.corrupt``, then ``.corrupt.N``)
    with a warning naming it; a failure to is a warning too: the flush goes on either way."""
    for n in range(100):
        target = path + ".corrupt" + (".%d" % n if n else "")
        if os.path.lexists(target):
            continue
        try:
            os.rename(path, target)
        except FileNotFoundError:
            return                  # another process dealt with it
        except OSError as exc:
            log.warning("%s: %s, left in the spool: cannot set it aside: %s", path, why, describe(exc))
            return
        log.warning("%s: %s, set aside as %s", path, why, target)
        return
    log.warning("%s: %s, left in the spool: too many set aside already", path, why)


def read_many(paths: List[str], probe: int = 256, slow_s: float = 30e-6, threads: int = 16) -> List[Optional[bytes]]:
    """Every file (None where unreadable), in order. Read one after another while that is fast (the
    page cache); when the first ``probe`` files take longer than ``slow_s`` each (a cold cache, NFS),
    the rest is read by 16 threads, whose waits overlap (0.67 s -> 0.43 s for 10,000 cold files)."""
    start = time.monotonic()
    out = [read_or_warn(p) for p in paths[:probe]]
    rest = paths[probe:]
    if not rest or time.monotonic() - start < slow_s * probe:
        return out + [read_or_warn(p) for p in rest]
    size = -(-len(rest) // threads)
    chunks = [rest[i:i + size] for i in range(0, len(rest), size)]
    results: List[List[Optional[bytes]]] = [[] for _ in chunks]

    def work(n: int) -> None:
        results[n] = [read_or_warn(p) for p in chunks[n]]
    # daemon threads, not a ThreadPoolExecutor: the interpreter waits for an executor's threads at
    # exit, and one stuck on a hung mount would hold the process past its read timeout
    workers = [threading.Thread(target=work, args=(n,), daemon=True) for n in range(len(chunks))]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return out + [data for chunk in results for data in chunk]
