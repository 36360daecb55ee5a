"""The local spool: where a record goes when the store failed or was too slow, and its flush.

``<state_dir>/spool/<node>/<time>-<pid>-<n>.json``, one record each (0600, in directories 0700),
written atomically by the process that gave up on the store; flushed oldest first by the next
write (of any node), under each node's lock, exactly once (see writing.py). The spool is used only
while the state directory is trusted (gpuhc/trust.py), and a spooled file is flushed only when it
is a regular file of root's (or this user's): anything else is set aside with a warning, never
written to the store.
"""
from __future__ import annotations

import logging
import os
import stat
import time
from typing import Dict, List, Optional, Tuple

from .. import trust
from ..model import Report
from .files import (
    HISTORY,
    LOCK,
    MAX_RECORD_BYTES,
    Flock,
    atomic_write,
    contains,
    counter,
    describe,
    read,
    read_history,
    set_aside,
)
from .reading import StoreReader
from .records import StoreError, parse, to_report

log = logging.getLogger("gpuhc.store")
SPOOL_DIR_MODE = 0o700


class Spool(StoreReader):
    """The spool's part of the Store (the root's preparation, append and compaction are the Store's)."""

    def _spool_trusted(self) -> bool:
        """Whether the spool may be flushed: it is trusted (a missing one has nothing to flush)."""
        if not self.spool_dir:
            return False
        problem = trust.directory_problem(self.spool_dir)
        if problem:
            log.warning("spool not used: %s", problem)
        return problem is None

    def _spool_path(self, node: str) -> str:
        return os.path.join(self.spool_dir or "", node, "%020d-%d-%d.json" % (time.time_ns(), os.getpid(), next(counter)))

    def _spool(self, node: str, line: bytes, path: Optional[str] = None) -> str:
        path = path or self._spool_path(node)
        directory = os.path.dirname(path)
        try:
            os.makedirs(directory, SPOOL_DIR_MODE, exist_ok=True)
            problem = trust.directory_problem(directory)
            if problem:
                raise StoreError(problem)
            atomic_write(path, line, mode=0o600)
        except (OSError, StoreError) as exc:
            raise StoreError("cannot spool the result of %s to %s: %s" % (node, directory, describe(exc))) from None
        return path

    def spooled(self) -> List[Tuple[str, str]]:
        """(node, path) of every spooled record, oldest first."""
        out: List[Tuple[str, str, str]] = []
        if not self.spool_dir or not os.path.isdir(self.spool_dir):
            return []
        for node in sorted(os.listdir(self.spool_dir)):
            directory = os.path.join(self.spool_dir, node)
            if node.startswith(".") or not os.path.isdir(directory):
                continue
            out.extend((name, node, os.path.join(directory, name)) for name in os.listdir(directory)
                       if name.endswith(".json") and not name.startswith("."))
        return [(node, path) for _, node, path in sorted(out)]

    def flush_spool(self) -> int:
        """Write every spooled record to the store (bounded by the store timeout); the number written."""
        return self._in_child(self._flush_spool, self.timeout)

    def _flush_spool(self) -> int:
        """Flush what can be flushed; a spooled file that is not a record of root's (or this user's)
        is set aside, never written. Stops at the first failure of the store itself (warning)."""
        written = 0
        entries = self.spooled()
        if not entries or not self._spool_trusted():
            return 0
        try:
            self._prepare_root()
        except (StoreError, OSError) as exc:
            log.warning("spooled results not flushed yet: %s", describe(exc))
            return 0
        refused: Dict[str, Optional[str]] = {}
        for node, path in entries:
            if node not in refused:
                refused[node] = trust.directory_problem(os.path.dirname(path))
                if refused[node]:
                    log.warning("spooled results of %s left in the spool: %s", node, refused[node])
            if refused[node]:
                continue
            entry = _spooled_record(node, path)
            if entry is None:
                continue
            data, report = entry
            try:
                directory = self._node_dir(node, create=True)
            except StoreError as exc:      # this node's directory is refused; the others go on
                log.warning("%s: left in the spool: %s", path, exc)
                continue
            except OSError as exc:
                log.warning("store %s: spooled results not flushed yet: %s", self.root, describe(exc))
                break
            try:
                with Flock(os.path.join(directory, LOCK)):
                    if contains(read_history(os.path.join(directory, HISTORY)), data):
                        self._compact_locked(directory, time.time())   # landed late after all: count it right
                    else:
                        self._append_locked(directory, data, report)
                        written += 1
            except OSError as exc:
                log.warning("store %s: spooled results not flushed yet: %s", self.root, describe(exc))
                break
            try:
                os.unlink(path)
            except FileNotFoundError:      # another run flushed it while this one waited for the lock
                pass
        return written

    # the Store's
    def _prepare_root(self) -> None:
        raise NotImplementedError

    def _append_locked(self, directory: str, line: bytes, report: Report, fsync_dir_too: bool = True) -> None:
        raise NotImplementedError

    def _compact_locked(self, directory: str, now: float) -> Tuple[int, int]:
        raise NotImplementedError


def _spooled_record(node: str, path: str) -> Optional[Tuple[bytes, Report]]:
    """A spooled file's record, or None: gone (another run flushed it), unreadable (left, warning),
    or not a record of root's or this user's (set aside, warning)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    if not stat.S_ISREG(st.st_mode):       # a directory, a link...: never a record
        set_aside(path, "not a regular file")
        return None
    problem = trust.file_problem(path, st)
    if problem:
        set_aside(path, "not written by gpuhc (%s)" % problem.split(": ", 1)[-1])
        return None
    try:
        data = read(path, MAX_RECORD_BYTES)
    except OSError as exc:
        log.warning("%s: left in the spool: cannot read: %s", path, describe(exc))
        return None
    if data is None:
        return None
    record = parse(data, path)
    report = to_report(record, path) if record is not None else None
    if report is None or report.node != node or not data.endswith(b"\n"):
        set_aside(path, "unreadable spooled record")
        return None
    return data, report
