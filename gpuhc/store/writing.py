"""The store's writer: record a report (in a detached child, within the caller's share of the
budget; else into the local spool), append and summarise under the node's lock, compact.

Exactly once, whatever hangs or fails (the cases, in order of the child's steps):

- The parent picks the name its spool file would have *before* it starts the child. The child
  takes the node's lock, and appends only when that spool file does not exist: once the parent
  has spooled, the record is the spool's to write.
- The parent spools when the child has not said "written" within the limit. A child that was
  already past that check then completes its append: the record is in the history *and* the
  spool. Every flush takes the node's lock and appends a spooled record only when the history
  does not already hold that exact line; when it does, it recounts the history (the summary's
  count) and deletes the spool file. So a late success is never doubled.
- A write that fails part-way (a full disk, EIO) is undone under the lock: the history is cut back
  to its size before the append, so a record is never in the history without being counted, and
  its spooled copy is appended once by a later flush. A torn last line (a writer killed mid-write)
  is cut before the next append, with a warning.
- After its own record the child flushes the spool (oldest first), so a record spooled by a
  caller that went on lands as soon as the store answers again.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import socket
import stat
import time
from typing import Any, Dict, Iterator, Optional, Tuple

from .. import trust
from ..localstate import open_lock
from ..model import Report, valid_ts
from . import detach, series
from .files import (
    ACK,
    HISTORY,
    LATEST,
    LOCK,
    MARKER,
    MAX_HISTORY_BYTES,
    SUMMARY,
    Flock,
    atomic_write,
    describe,
    fsync_dir,
    makedirs,
    mkdir,
    open_regular,
    read,
    remove_stale_temporaries,
    require_trusted,
    write_all,
)
from .records import StoreError, check_node_name, encode, history_stats, newest_by_context, parse, summarize
from .spool import SPOOL_DIR_MODE, Spool

log = logging.getLogger("gpuhc.store")


def not_initialised(root: str) -> StoreError:
    return StoreError("store %s: not initialised (no %s marker): is the shared filesystem mounted there? Once it "
                      "is, run `gpuhc store init %s` (once, for the whole cluster)" % (root, MARKER, root))


class Store(Spool):

    # ---- the root and the node directories ----

    def _prepare_root(self) -> None:
        """The root exists, is trusted and carries the marker; the default local store makes both."""
        marker = os.path.join(self.root, MARKER)
        if self.auto_init:
            makedirs(self.root)
        try:
            st = os.lstat(marker)
        except FileNotFoundError:
            st = None
        except NotADirectoryError:
            raise StoreError("store %s: not a directory (check `store:` in the configuration)" % self.root) from None
        require_trusted(self.root, "store %s" % self.root)
        if st is None:
            if not self.auto_init:
                raise not_initialised(self.root)
            write_marker(self.root)
        elif not stat.S_ISREG(st.st_mode):
            raise StoreError("store %s: %s is not a regular file" % (self.root, marker))

    def _make_node_dir(self, path: str) -> str:
        self._prepare_root()
        mkdir(self.nodes_dir)
        self._inside(path)         # before mkdir: never a directory made through a link out of the root
        require_trusted(self.nodes_dir, "store %s" % self.root)      # nor in a directory another user holds
        mkdir(path)
        real = self._inside(path)
        require_trusted(real, "store directory %s" % path)
        return real

    # ---- recording ----

    def record(self, report: Report, timeout: Optional[float] = None) -> str:
        """Store a report: 'stored', or 'spooled' when shared storage failed or was too slow.

        Never takes longer than the store timeout, or ``timeout`` when that is shorter (what is left
        of the caller's budget; with none left the record is spooled at once), plus the local spool
        write. StoreError only when the record could be neither stored nor spooled.
        """
        limit = self.timeout if timeout is None else max(0.0, min(self.timeout, timeout))
        line = encode(report.to_dict())
        node = check_node_name(report.node)
        spool_path = self._spool_path(node) if self.spool_dir else None
        why = "no time left of the run's budget"
        if limit > 0:
            start = time.monotonic()
            try:
                child = detach.Detached(lambda channel: self._write(channel, node, line, report, spool_path, limit))
            except detach.NotStarted as exc:
                why = str(exc)
            else:
                try:
                    message = child.wait({"written", "error", "value"}, limit)
                    if message is not None and message[0] in ("written", "value"):
                        # the spool flush and compaction, within what is left; else it goes on alone
                        done = child.wait({"error", "value"}, limit - (time.monotonic() - start))
                        if done is not None and done[0] == "error":
                            log.warning("store %s: after the write of %s: %s", self.root, node, describe(done[1]))
                        return "stored"
                finally:
                    child.close()
                why = "no answer within %.3g s" % limit if message is None else \
                    describe(message[1]) if message[0] == "error" else "its writer ended without a word"
                why = why[len("store %s: " % self.root):] if why.startswith("store %s: " % self.root) else why
        if spool_path is None:
            raise StoreError("store %s: %s; no state_dir to spool to: result of %s not recorded" % (self.root, why, node))
        self._spool(node, line, spool_path)
        log.warning("store %s: %s; result spooled to %s", self.root, why, spool_path)
        return "spooled"

    def _write(self, channel: detach.Channel, node: str, line: bytes, report: Report, spool_path: Optional[str],
               limit: float) -> None:
        """The child's part: append (unless the parent spooled first), say so, flush, compact."""
        with self._writer_slot(node, limit):
            directory = self._node_dir(node, create=True)
            with Flock(os.path.join(directory, LOCK)):
                if spool_path is None or not os.path.lexists(spool_path):
                    self._append_locked(directory, line, report)
            channel.send("written")
            if self.spool_dir:
                self._flush_spool()
            self._compact_if_due(node)

    @contextlib.contextmanager
    def _writer_slot(self, node: str, limit: float) -> Iterator[None]:
        """One writer child per node at a time (a local flock): while one hangs on a dead mount, the
        next gives up within its limit instead of piling up behind it."""
        fd = -1
        spool = self.spool_dir
        try:
            if spool:
                os.makedirs(spool, SPOOL_DIR_MODE, exist_ok=True)
            usable = trust.directory_problem(spool) is None if spool else False
        except OSError:
            usable = False          # no spool to be had: the write goes on without the slot
        if spool and usable:
            fd = open_lock(os.path.join(spool, ".%s.writer" % node))
            deadline = time.monotonic() + limit
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        os.close(fd)
                        raise StoreError("an earlier write of %s is still waiting for the store (hung mount?)"
                                         % node) from None
                    time.sleep(0.005)
        try:
            yield
        finally:
            if fd >= 0:
                os.close(fd)

    def _append_locked(self, directory: str, line: bytes, report: Report, fsync_dir_too: bool = True) -> None:
        """Append one record and update latest.json and summary.json (the node's lock held). On a
        failure the history is cut back to where it was: the caller spools the record."""
        path = os.path.join(directory, HISTORY)
        fd, st = open_regular(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            size = st.st_size
            if size > 0 and os.pread(fd, 1, size - 1) != b"\n":
                size = _cut_torn_tail(fd, path, size)
            try:
                write_all(fd, line, path)
                os.fsync(fd)
                self._update_files(directory, report, line, size)
            except BaseException:
                try:
                    os.ftruncate(fd, size)
                    os.fsync(fd)
                except OSError:
                    pass
                raise
        finally:
            os.close(fd)
        try:        # the compact metric series (series.py): derived, so a failure is a warning, not a lost record
            series.append(directory, report)
        except OSError as exc:
            log.warning("%s: series record not written: %s", directory, describe(exc))
        if fsync_dir_too:
            fsync_dir(directory)

    def _update_files(self, directory: str, report: Report, line: bytes, size_before: int) -> None:
        current = self._summary_file(directory)       # None when missing, unreadable or bad: rebuilt
        count, oldest = history_stats(current, empty_before=size_before == 0)
        history = {"count": count + 1 if count is not None else None,
                   "oldest_ts": min(oldest, report.started) if oldest is not None else None}
        if current is None and size_before > 0:
            # no summary to compare with: latest.json says whether this record is the newest
            newest = self._latest_file(directory)
            current = summarize(newest) if newest is not None else None
        last = newest_by_context(current, report)
        # the newest by start time; a newest from a clock that ran ahead (later than now on this
        # node's clock, which wrote it) does not hold back every result after the clock was set right
        if current is None or report.started >= float(current["started_ts"]) \
                or float(current["started_ts"]) > time.time():
            atomic_write(os.path.join(directory, LATEST), line)
            current = summarize(report)
        current["history"] = history
        current["last"] = last
        atomic_write(os.path.join(directory, SUMMARY), encode(current))

    # ---- compaction ----

    def _compact_if_due(self, node: str) -> None:
        directory = self._node_dir(node)
        summary = self._summary_file(directory) or {}
        history = summary.get("history") or {}
        count, oldest = history.get("count"), history.get("oldest_ts")
        slack = max(1, self.max_records // 10)
        over_count = self.max_records > 0 and (count is None or count > self.max_records + slack)
        over_age = self.max_age > 0 and (oldest is None or oldest < time.time() - self.max_age * 1.1)
        if over_count or over_age:
            with Flock(os.path.join(directory, LOCK)):
                self._compact_locked(directory, time.time())

    def compact(self, node: str, now: Optional[float] = None) -> Tuple[int, int]:
        """Keep the newest ``max_records`` records younger than ``max_age_days``; (kept, dropped).

        Rewrites history to a temporary file renamed over it, under the node's lock: a concurrent
        append waits for the lock, so none is lost. 0 for either limit means no limit. Bounded by
        the read timeout (a long history takes longer than a write's budget).
        """
        check_node_name(node)

        def work() -> Tuple[int, int]:
            directory = self._node_dir(node)
            with Flock(os.path.join(directory, LOCK)):
                return self._compact_locked(directory, time.time() if now is None else now)
        return self._in_child(work)

    def _compact_locked(self, directory: str, now: float) -> Tuple[int, int]:
        """Compact, and count exactly what stays in the summary (the node's lock held)."""
        path = os.path.join(directory, HISTORY)
        remove_stale_temporaries(directory, now)
        data = read(path, MAX_HISTORY_BYTES, tail=True) or b""
        records = []
        total = 0
        for n, raw in enumerate(data.split(b"\n"), 1):
            if not raw.strip():
                continue
            total += 1
            record = parse(raw, "%s:%d" % (path, n))
            if record is not None and valid_ts(record.get("started_ts")):
                records.append((float(record["started_ts"]), n, raw))
        if self.max_age > 0:
            records = [r for r in records if r[0] >= now - self.max_age]
        records.sort()
        if self.max_records > 0:
            records = records[-self.max_records:]
        if len(records) < total or (data and not data.endswith(b"\n")):
            atomic_write(path, b"".join(raw + b"\n" for _, _, raw in records))
        try:        # the series with the same limits (built from the history where there is none yet)
            series.compact(directory, now, self.max_records, self.max_age,
                           history=(json.loads(raw) for _, _, raw in records))
        except (OSError, ValueError) as exc:
            log.warning("%s: series not compacted: %s", directory, describe(exc))
        summary = self._summary_file(directory)
        if summary is not None:
            summary["history"] = {"count": len(records), "oldest_ts": records[0][0] if records else None}
            atomic_write(os.path.join(directory, SUMMARY), encode(summary))
        return len(records), total - len(records)

    # ---- acknowledgements (gpuhc resume --force) ----

    def acknowledge(self, node: str, by: str = "", when: Optional[float] = None) -> float:
        """Record that an operator acknowledged the node's current findings; the node's next run
        stops counting the events it saw before this time. Returns the time recorded."""
        check_node_name(node)
        when = time.time() if when is None else when
        data = json.dumps({"time": when, "by": by}).encode() + b"\n"

        def work() -> None:
            self._prepare_root()
            atomic_write(os.path.join(self._node_dir(node, create=True), ACK), data)
        self._in_child(work, self.timeout)
        return when


def _cut_torn_tail(fd: int, path: str, size: int) -> int:
    """Cut the history back to its last whole line (a writer killed or failed mid-write left the
    rest; its record is in a spool, or was never counted); the new size."""
    end = size
    while end > 0 and size - end < MAX_HISTORY_BYTES:
        start = max(0, end - (1 << 16))
        chunk = os.pread(fd, end - start, start)
        at = chunk.rfind(b"\n")
        if at >= 0:
            end = start + at + 1
            break
        end = start
    os.ftruncate(fd, end)
    log.warning("%s: cut a torn last line (%d bytes without an end of line, left by a write that failed)",
                path, size - end)
    return end


def write_marker(root: str) -> None:
    body = {"gpuhc_store": 1, "initialised": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "by": socket.gethostname()}
    atomic_write(os.path.join(root, MARKER), encode(body))
    fsync_dir(root)


def init_store(path: str, timeout: float = 30.0) -> str:
    """``gpuhc store init PATH``: make PATH the store (the directory, trusted, and its marker). Run
    once the shared filesystem is mounted; writers refuse a configured store without the marker."""
    root = os.path.abspath(path)

    def work() -> str:
        require_trusted(root, "store %s" % root)       # what exists of it: nothing made under another user's directory
        try:
            makedirs(root)
        except OSError as exc:
            raise StoreError("store %s: cannot create it: %s" % (root, describe(exc))) from None
        if not os.path.isdir(root):
            raise StoreError("store %s: not a directory" % root)
        require_trusted(root, "store %s" % root)
        marker = os.path.join(root, MARKER)
        if os.path.lexists(marker):
            if not os.path.isfile(marker) or os.path.islink(marker):
                raise StoreError("store %s: %s is not a regular file: remove it first" % (root, marker))
            return "store %s: already initialised" % root
        write_marker(root)
        return "store %s: initialised (%s written)" % (root, MARKER)
    try:
        return detach.call(work, timeout)
    except TimeoutError:
        raise StoreError("store %s: no answer within %g s (hung mount?)" % (root, timeout)) from None


def record_safely(cfg: Dict[str, Any], report: Report) -> Optional[str]:
    """Record a report for a command that must not fail because of the store: a warning line, or None.

    Spooling is not a failure (the store logs a warning saying where the record went)."""
    try:
        Store.from_config(cfg).record(report)
        return None
    except Exception as exc:
        return "result not recorded: %s" % describe(exc)
