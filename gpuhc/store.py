"""The result store: every report of every node, on shared storage, read by status/show/history/export.

Layout under the root (``store:`` in config)::

    nodes/<node>/latest.json     the newest report (Report.to_dict()), replaced by atomic rename
    nodes/<node>/summary.json    a few hundred bytes about the newest report, all ``gpuhc status`` reads
    nodes/<node>/history.jsonl   every report, one JSON object a line, appended; compacted by age and count
    nodes/<node>/.lock           flock: writers of the node hold it exclusively while they write

Writers: one per node file by design (a node writes its own results). A record is appended with one
``os.write`` of the whole line on an ``O_APPEND`` descriptor, then latest.json and summary.json are
replaced (temporary file in the same directory, fsync, ``os.replace``) when the record is the
newest. Compaction rewrites history to a temporary file and renames it, under the same lock, so it
cannot lose an append. Directories are created 0755 and files 0644 (users read, only the writer,
root on a cluster, writes), the lock 0600 (whoever can open it can flock it and hold every writer);
a node directory that resolves outside the root is refused and the files are opened with ``O_NOFOLLOW``.

A write to shared storage never holds the caller past ``timeouts.store``: it runs in a daemon
thread; when that thread fails (read-only mount, EIO, EACCES) or does not finish in time, the record
goes to a local spool (``<state_dir>/spool/<node>/<time>-<pid>-<n>.json``, atomic) and the caller
goes on. Every later write first flushes the spool, oldest first; a spooled record is appended
unless the history already holds the same line (so a slow write that landed after all is not
doubled), and its file is deleted only once written. Reads are bounded by ``timeouts.store_read``.

Readers skip a corrupt or truncated record with a warning naming the file and line.
"""
from __future__ import annotations

import errno
import fcntl
import itertools
import json
import logging
import os
import re
import stat
import threading
import time
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

from .bounded import Overtime, call_within
from .errors import GpuhcError
from .localstate import LOCK_MODE, NOFOLLOW, open_mode
from .model import SCHEMA_VERSION, Report, Severity, json_repr, valid_ts

log = logging.getLogger("gpuhc.store")

DIR_MODE = 0o755
FILE_MODE = 0o644
LATEST, SUMMARY, HISTORY, LOCK = "latest.json", "summary.json", "history.jsonl", ".lock"
ACK = "ack.json"     # an operator's acknowledgement: findings seen before its time no longer drain
_NODE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,254}$")
_counter = itertools.count()


class StoreError(GpuhcError):
    """The store cannot be used: bad node name, symlink out of the root, no answer in time."""


def check_node_name(node: str) -> str:
    if not isinstance(node, str) or not _NODE_NAME.match(node) or ".." in node:
        raise StoreError("invalid node name %r (letters, digits, '.', '_', '-'; no '/' or '..')" % (node,))
    return node


def encode(record: Dict[str, Any]) -> bytes:
    """One history line: compact JSON and a newline."""
    return (json.dumps(record, separators=(",", ":")) + "\n").encode()


def summarize(report: Report) -> Dict[str, Any]:
    """What ``gpuhc status`` needs of a report; ``top`` is the finding that sets the overall result."""
    overall = report.overall
    top = None
    if overall not in (Severity.PASS, Severity.SKIP):
        finding = next((f for f in report.findings if f.severity is overall), report.top_findings()[0])
        top = {"check": finding.check, "severity": finding.severity.value, "where": finding.where(),
               "message": finding.message}
    return {"schema_version": SCHEMA_VERSION, "node": report.node, "started_ts": round(report.started, 3),
            "context": report.context, "job_id": report.job_id, "profile": report.profile,
            "overall": overall.value, "action": report.action, "top": top}


def newest_by_context(previous: Optional[Dict[str, Any]], report: Report) -> Dict[str, float]:
    """The summary's ``last``: context -> start time of the node's newest report of that context
    (`gpuhc sweep` reads when each node was last deep-checked from it), carried over from the
    previous summary (``previous``: None when there is none) and brought up to ``report``."""
    last: Dict[str, float] = {}
    if previous is not None:
        old = previous.get("last")
        if isinstance(old, dict):
            last.update({c: float(t) for c, t in old.items()
                         if isinstance(c, str) and isinstance(t, (int, float)) and valid_ts(t)})
        context, ts = previous.get("context"), previous.get("started_ts")
        if isinstance(context, str) and isinstance(ts, (int, float)) and valid_ts(ts) \
                and ts > last.get(context, float("-inf")):
            last[context] = float(ts)
    if report.started > last.get(report.context, float("-inf")):
        last[report.context] = round(report.started, 3)
    return last


_SEVERITIES = frozenset(s.value for s in Severity)
_OPTIONAL_TEXT = {"node": str, "context": str, "job_id": (str, int), "profile": str, "action": str}


def summary_problem(summary: Any) -> Optional[str]:
    """What is wrong with a parsed summary.json (a field missing, of the wrong type, a time out of
    range), or None when every reader can trust it. The one check of a summary, for readers and writer."""
    if not isinstance(summary, dict):
        return "not a JSON object"
    for key in ("overall", "started_ts"):
        if key not in summary:
            return "missing field %s" % key
    overall = summary["overall"]
    if not isinstance(overall, str) or overall not in _SEVERITIES:
        return "field overall: %s is not a severity" % json_repr(overall)
    if not valid_ts(summary["started_ts"]):
        return "field started_ts: %s is not a time" % json_repr(summary["started_ts"])
    for key, types in _OPTIONAL_TEXT.items():
        value = summary.get(key)
        if value is not None and (not isinstance(value, types) or isinstance(value, bool)):
            return "field %s: %s is not a string" % (key, json_repr(value))
    top = summary.get("top")
    if top is not None:
        if not isinstance(top, dict):
            return "field top: %s is not an object" % json_repr(top)
        for key in ("check", "severity", "where", "message"):
            if top.get(key) is not None and not isinstance(top[key], str):
                return "field top.%s: %s is not a string" % (key, json_repr(top[key]))
    last = summary.get("last")
    if last is not None and (not isinstance(last, dict) or not all(valid_ts(t) for t in last.values())):
        return "field last: %s is not an object of times" % json_repr(last)
    history = summary.get("history")
    if history is not None:
        if not isinstance(history, dict):
            return "field history: %s is not an object" % json_repr(history)
        count, oldest = history.get("count"), history.get("oldest_ts")
        if count is not None and (type(count) is not int or count < 0):
            return "field history.count: %s is not a count" % json_repr(count)
        if oldest is not None and not (valid_ts(oldest)):
            return "field history.oldest_ts: %s is not a time" % json_repr(oldest)
    return None


def _summary(summary: Optional[Dict[str, Any]], path: str) -> Optional[Dict[str, Any]]:
    """The summary, or None with a warning naming the file when it cannot be trusted."""
    if summary is None:
        return None
    problem = summary_problem(summary)
    if problem is not None:
        log.warning("%s: skipped a bad summary: %s", path, problem)
        return None
    return summary


# ---------------------------------------------------------------------------------------------
# Low-level file operations (no timeouts here; callers run them inside a bounded thread)

def _mkdir(path: str) -> None:
    try:
        os.mkdir(path, DIR_MODE)
    except FileExistsError:
        return
    os.chmod(path, DIR_MODE)    # not what the umask left


def _makedirs(path: str) -> None:
    if not os.path.isdir(path):
        _makedirs(os.path.dirname(path))
        _mkdir(path)


def _write_all(fd: int, data: bytes, path: str) -> None:
    """One write() of the whole buffer; a short write is an error (the caller spools)."""
    n = os.write(fd, data)
    if n != len(data):
        raise OSError(errno.EIO, "short write (%d of %d bytes)" % (n, len(data)), path)


def atomic_write(path: str, data: bytes, sync: bool = True) -> None:
    """Temporary file beside ``path``, fsync, rename over it: readers see the old or the new file."""
    directory, name = os.path.split(path)
    tmp = os.path.join(directory, ".%s.%d.%d.tmp" % (name, os.getpid(), next(_counter)))
    fd = open_mode(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    try:
        try:
            _write_all(fd, data, tmp)
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


def _read(path: str) -> Optional[bytes]:
    """The whole file, or None when it does not exist. Does not follow a symlink."""
    try:
        fd = os.open(path, os.O_RDONLY | NOFOLLOW)
    except FileNotFoundError:
        return None
    try:
        data = os.read(fd, 1 << 16)
        if len(data) < 1 << 16:
            return data          # a short read is the end of a regular file: small files take one read
        chunks = [data]
        while True:
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)
    finally:
        os.close(fd)


def _read_or_warn(path: str) -> Optional[bytes]:
    """For readers: the file, or None with a warning when it cannot be read (a symlink, EIO...)."""
    try:
        return _read(path)
    except OSError as exc:
        log.warning("%s: cannot read: %s", path, _describe(exc))
        return None


def _parse(data: bytes, where: str) -> Optional[Dict[str, Any]]:
    try:
        value = json.loads(data)
        if not isinstance(value, dict):
            raise ValueError("not a JSON object")
        return value
    except (ValueError, RecursionError) as exc:     # RecursionError: nested too deep
        log.warning("%s: skipped a corrupt record: %s", where, exc)
        return None


def _report(record: Dict[str, Any], where: str) -> Optional[Report]:
    try:
        return Report.from_dict(record)
    except (KeyError, TypeError, ValueError, ArithmeticError) as exc:
        missing = "missing field %s" % exc if isinstance(exc, KeyError) else str(exc)
        log.warning("%s: skipped a record: %s", where, missing)
        return None


def _lines(path: str) -> Iterator[Tuple[int, Dict[str, Any]]]:
    """(line number, record) for every readable line of a history file."""
    data = _read_or_warn(path)
    if not data:
        return
    lines = data.split(b"\n")
    last = len(lines) - 1
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        if n - 1 == last:   # no newline at the end: torn by a crash, or being written now
            log.warning("%s:%d: skipped a truncated record (no end of line)", path, n)
            continue
        record = _parse(line, "%s:%d" % (path, n))
        if record is not None:
            yield n, record


class _Flock:
    def __init__(self, path: str) -> None:
        self.path = path

    def __enter__(self) -> "_Flock":
        self.fd = open_mode(self.path, os.O_RDWR | os.O_CREAT, LOCK_MODE)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX)
        except BaseException:
            os.close(self.fd)
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        os.close(self.fd)     # releases the lock


# ---------------------------------------------------------------------------------------------
# Bounded execution

class _Job:
    """fn() in a daemon thread; ``written`` is set by the thread once the record is safely stored."""

    def __init__(self, fn: Callable[["_Job"], Any], name: str) -> None:
        self.fn = fn
        self.cancelled = False
        self.written = threading.Event()
        self.settled = threading.Event()     # written, failed, or finished
        self.error: Optional[BaseException] = None
        self.value: Any = None
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.value = self.fn(self)
        except BaseException as exc:
            self.error = exc
        finally:
            self.settled.set()


def bounded(fn: Callable[[], Any], timeout: float, what: str) -> Any:
    """fn() with a time limit; StoreError when it has not returned in time (hung mount)."""
    try:
        return call_within(fn, timeout, "gpuhc-store-read")
    except Overtime:
        raise StoreError("%s: no answer within %g s (hung or slow mount?)" % (what, timeout)) from None


# ---------------------------------------------------------------------------------------------

class Store:
    def __init__(self, root: str, state_dir: Optional[str] = None, timeout: float = 2.0, read_timeout: float = 30.0,
                 max_records: int = 1000, max_age_days: float = 90.0) -> None:
        # no filesystem call here: a hung mount must only ever be touched inside a bounded thread
        self.root = os.path.abspath(root)
        self.nodes_dir = os.path.join(self.root, "nodes")
        self.spool_dir = os.path.join(os.path.abspath(state_dir), "spool") if state_dir else None
        self._real_root: Optional[str] = None
        self.timeout = float(timeout)
        self.read_timeout = float(read_timeout)
        self.max_records = int(max_records)
        self.max_age = float(max_age_days) * 86400.0

    @classmethod
    def from_config(cls, cfg: Dict[str, Any]) -> "Store":
        return cls(cfg["store"], cfg["state_dir"], timeout=cfg["timeouts"]["store"],
                   read_timeout=cfg["timeouts"]["store_read"], max_records=cfg["history"]["max_records"],
                   max_age_days=cfg["history"]["max_age_days"])

    # ---- paths ----

    def _inside(self, path: str) -> str:
        """The real path of ``path``; StoreError when it resolves outside the store's root."""
        if self._real_root is None:
            self._real_root = os.path.realpath(self.root)
        real = os.path.realpath(path)
        if not real.startswith(self._real_root + os.sep):
            raise StoreError("%s: resolves to %s, outside the store %s: refused" % (path, real, self.root))
        return real

    def _node_dir(self, node: str, create: bool = False) -> str:
        check_node_name(node)
        path = os.path.join(self.nodes_dir, node)
        if create:
            _makedirs(self.nodes_dir)
            self._inside(path)         # before mkdir: never a directory made through a link out of the root
            _mkdir(path)
        return self._inside(path)

    def _bounded_read(self, fn: Callable[[], Any]) -> Any:
        return bounded(fn, self.read_timeout, "store %s" % self.root)

    # ---- writing ----

    def record(self, report: Report, timeout: Optional[float] = None) -> str:
        """Store a report: 'stored', or 'spooled' when shared storage failed or was too slow.

        Never takes longer than the store timeout, or ``timeout`` when that is shorter (what is left
        of the caller's budget; at least 0.1 s), plus the local spool write. StoreError only when
        the record could be neither stored nor spooled.
        """
        limit = self.timeout if timeout is None else max(0.1, min(self.timeout, timeout))
        record = report.to_dict()
        line = encode(record)
        node = check_node_name(report.node)

        def work(job: _Job) -> None:
            if self.spool_dir:
                self._flush_spool()
            self._append(node, line, report, job)
            job.written.set()
            self._compact_if_due(node)

        start = time.monotonic()
        job = _Job(work, "gpuhc-store-write")
        job.settled.wait(limit)
        if job.written.is_set():
            job.thread.join(max(0.0, limit - (time.monotonic() - start)))   # compaction, within budget
            if job.error is not None:
                log.warning("store %s: compaction of %s failed: %s", self.root, node, job.error)
            return "stored"
        job.cancelled = True
        why = ("no answer within %.3g s" % limit) if job.error is None else _describe(job.error)
        if not self.spool_dir:
            raise StoreError("store %s: %s; no state_dir to spool to: result of %s not recorded" % (self.root, why, node))
        path = self._spool(node, line)
        log.warning("store %s: %s; result spooled to %s", self.root, why, path)
        return "spooled"

    def _append(self, node: str, line: bytes, report: Report, job: Optional[_Job]) -> None:
        directory = self._node_dir(node, create=True)
        with _Flock(os.path.join(directory, LOCK)):
            if job is not None and job.cancelled:      # the caller gave up and spooled it: the flush writes it
                return
            self._append_locked(directory, line, report)

    def _append_locked(self, directory: str, line: bytes, report: Report, fsync_dir: bool = True) -> None:
        path = os.path.join(directory, HISTORY)
        fd = open_mode(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, FILE_MODE)
        try:
            size = os.fstat(fd).st_size
            torn = size > 0 and os.pread(fd, 1, size - 1) != b"\n"
            # a torn last line (a crash mid-write) must not swallow this record: start a new line
            _write_all(fd, b"\n" + line if torn else line, path)
            os.fsync(fd)
        finally:
            os.close(fd)
        current = self._summary_file(directory)       # None when missing, unreadable or bad: rebuilt
        count, oldest = _history_stats(current, empty_before=size == 0)
        history = {"count": count + 1 if count is not None else None,
                   "oldest_ts": min(oldest, report.started) if oldest is not None else None}
        if current is None and size > 0:
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
        if fsync_dir:
            _fsync_dir(directory)

    def _summary_file(self, directory: str) -> Optional[Dict[str, Any]]:
        """The node's summary; None (with a warning) when it is missing, unreadable or bad: the
        writer then rebuilds it rather than failing every write of the node."""
        path = os.path.join(directory, SUMMARY)
        data = _read_or_warn(path)
        return _summary(_parse(data, path), path) if data else None

    # ---- spool ----

    def _spool(self, node: str, line: bytes) -> str:
        directory = os.path.join(self.spool_dir, node)
        try:
            os.makedirs(directory, 0o700, exist_ok=True)
            path = os.path.join(directory, "%020d-%d-%d.json" % (time.time_ns(), os.getpid(), next(_counter)))
            atomic_write(path, line)
        except OSError as exc:
            raise StoreError("cannot spool the result of %s to %s: %s" % (node, directory, _describe(exc))) from None
        return path

    def spooled(self) -> List[Tuple[str, str]]:
        """(node, path) of every spooled record, oldest first."""
        out: List[Tuple[str, str, str]] = []
        if not self.spool_dir or not os.path.isdir(self.spool_dir):
            return []
        for node in sorted(os.listdir(self.spool_dir)):
            directory = os.path.join(self.spool_dir, node)
            if not os.path.isdir(directory):
                continue
            out.extend((name, node, os.path.join(directory, name)) for name in os.listdir(directory)
                       if name.endswith(".json") and not name.startswith("."))
        return [(node, path) for _, node, path in sorted(out)]

    def flush_spool(self) -> int:
        """Write every spooled record to the store (bounded by the store timeout); the number written."""
        return bounded(self._flush_spool, self.timeout, "store %s" % self.root)

    def _flush_spool(self) -> int:
        written = 0
        for node, path in self.spooled():
            try:
                st = os.lstat(path)
            except FileNotFoundError:  # another process flushed it
                continue
            if not stat.S_ISREG(st.st_mode):       # a directory, a link...: never a record
                _set_aside(path, "not a regular file")
                continue
            try:
                data = _read(path)
            except OSError as exc:     # this one stays; the others, and the caller's write, go on
                log.warning("%s: left in the spool: cannot read: %s", path, _describe(exc))
                continue
            if data is None:          # another process flushed it
                continue
            record = _parse(data, path)
            report = _report(record, path) if record is not None else None
            if report is None or report.node != node or not data.endswith(b"\n"):
                _set_aside(path, "unreadable spooled record")
                continue
            try:
                directory = self._node_dir(node, create=True)
            except StoreError as exc:      # this node's directory is refused; the others go on
                log.warning("%s: left in the spool: %s", path, exc)
                continue
            with _Flock(os.path.join(directory, LOCK)):
                if not _contains(os.path.join(directory, HISTORY), data):
                    self._append_locked(directory, data, report)
                    written += 1
            try:
                os.unlink(path)
            except FileNotFoundError:      # another run flushed it while this one waited for the lock
                pass
        return written

    # ---- compaction ----

    def _compact_if_due(self, node: str) -> None:
        summary = self._summary_file(self._node_dir(node)) or {}
        history = summary.get("history") or {}
        count, oldest = history.get("count"), history.get("oldest_ts")
        slack = max(1, self.max_records // 10)
        over_count = self.max_records > 0 and (count is None or count > self.max_records + slack)
        over_age = self.max_age > 0 and (oldest is None or oldest < time.time() - self.max_age * 1.1)
        if over_count or over_age:
            self._compact(node, time.time())

    def compact(self, node: str, now: Optional[float] = None) -> Tuple[int, int]:
        """Keep the newest ``max_records`` records younger than ``max_age_days``; (kept, dropped).

        Rewrites history to a temporary file renamed over it, under the node's lock: a concurrent
        append waits for the lock, so none is lost. 0 for either limit means no limit. Bounded by
        the read timeout (a long history takes longer than a write's budget).
        """
        return self._bounded_read(lambda: self._compact(node, time.time() if now is None else now))

    def _compact(self, node: str, now: float) -> Tuple[int, int]:
        directory = self._node_dir(node)
        path = os.path.join(directory, HISTORY)
        with _Flock(os.path.join(directory, LOCK)):
            _remove_stale_temporaries(directory, now)
            data = _read(path) or b""
            records = []
            total = 0
            for n, line in enumerate(data.split(b"\n"), 1):
                if not line.strip():
                    continue
                total += 1
                record = _parse(line, "%s:%d" % (path, n))
                if record is not None and valid_ts(record.get("started_ts")):
                    records.append((float(record["started_ts"]), n, line))
            if self.max_age > 0:
                records = [r for r in records if r[0] >= now - self.max_age]
            records.sort()
            if self.max_records > 0:
                records = records[-self.max_records:]
            if len(records) < total:
                atomic_write(path, b"".join(line + b"\n" for _, _, line in records))
            summary = self._summary_file(directory)
            if summary is not None:
                summary["history"] = {"count": len(records), "oldest_ts": records[0][0] if records else None}
                atomic_write(os.path.join(directory, SUMMARY), encode(summary))
            return len(records), total - len(records)

    # ---- reading (each public read bounded by the read timeout) ----

    def nodes(self) -> List[str]:
        return self._bounded_read(lambda: sorted(self._node_entries()))

    def _node_entries(self) -> Dict[str, str]:
        """node -> its directory, skipping names that are not node names and links out of the root."""
        out: Dict[str, str] = {}
        if not os.path.isdir(self.nodes_dir):
            return out
        self._inside(self.nodes_dir)
        with os.scandir(self.nodes_dir) as entries:
            for entry in entries:
                if not _NODE_NAME.match(entry.name) or ".." in entry.name:
                    continue
                if entry.is_symlink():
                    try:
                        out[entry.name] = self._node_dir(entry.name)
                    except StoreError as exc:
                        log.warning("%s", exc)
                elif entry.is_dir():
                    out[entry.name] = entry.path
        return out

    def latest(self, node: str) -> Optional[Report]:
        return self._bounded_read(lambda: self._latest(self._node_dir(node)))

    def _latest_file(self, directory: str) -> Optional[Report]:
        """The report of latest.json; None (with a warning) when missing, unreadable or bad."""
        path = os.path.join(directory, LATEST)
        data = _read_or_warn(path)
        record = _parse(data, path) if data else None
        return _report(record, path) if record is not None else None

    def _latest(self, directory: str) -> Optional[Report]:
        report = self._latest_file(directory)
        if report is None and os.path.exists(os.path.join(directory, HISTORY)):
            newest = self._history(directory, None, None)   # latest.json lost or corrupt: the history has it
            report = newest[0] if newest else None
        return report

    def latest_all(self, nodes: Optional[List[str]] = None,
                   each: Optional[Callable[[str, Report], None]] = None) -> Dict[str, Report]:
        """node -> its newest report, for every node (or those of ``nodes`` the store has), in node
        order. With ``each``, each (node, report) goes to it instead (nothing is kept: a whole fleet's
        reports take gigabytes) and {} is returned."""
        def read() -> Dict[str, Report]:
            out = {}
            entries = self._node_entries()
            if nodes is not None:
                entries = {n: entries[n] for n in nodes if n in entries}
            for node in sorted(entries):
                report = self._latest(entries[node])
                if report is None:
                    continue
                if each is not None:
                    each(node, report)
                else:
                    out[node] = report
            return out
        return self._bounded_read(read)

    def summaries(self) -> Dict[str, Dict[str, Any]]:
        """node -> summary of its newest report: one small file per node (what status reads)."""
        def read() -> Dict[str, Dict[str, Any]]:
            entries = self._node_entries()
            paths = {node: os.path.join(directory, SUMMARY) for node, directory in entries.items()}
            raw = dict(zip(paths, _read_many(list(paths.values()))))
            parsed = _parse_many(raw)
            out = {}
            for node, data in raw.items():
                summary = parsed.get(node)
                if summary is None and data:
                    summary = _parse(data, paths[node])      # names the bad file in its warning
                summary = _summary(summary, paths[node])     # so does a bad field
                if summary is None:       # missing, truncated or bad: from the newest readable report
                    report = self._latest(entries[node])
                    summary = summarize(report) if report is not None else None
                if summary is not None:
                    out[node] = summary
            return out
        return self._bounded_read(read)

    def history(self, node: str, since: Optional[float] = None, check: Optional[str] = None) -> List[Report]:
        """The node's reports, newest first; ``since`` an epoch time; ``check`` only reports where it ran."""
        return self._bounded_read(lambda: self._history(self._node_dir(node), since, check))

    def _history(self, directory: str, since: Optional[float], check: Optional[str]) -> List[Report]:
        path = os.path.join(directory, HISTORY)
        out = []
        for n, record in _lines(path):
            ts = record.get("started_ts")
            if since is not None and valid_ts(ts) and ts < since:   # a bad time: _report skips it, warning
                continue
            report = _report(record, "%s:%d" % (path, n))
            if report is None or (check and not any(f.check == check for f in report.findings)):
                continue
            out.append(report)
        out.sort(key=lambda r: r.started, reverse=True)
        return out

    def exists(self, node: str) -> bool:
        return self._bounded_read(lambda: os.path.isdir(self._node_dir(node)))

    # ---- acknowledgements (gpuhc resume --force) ----

    def acknowledge(self, node: str, by: str = "", when: Optional[float] = None) -> float:
        """Record that an operator acknowledged the node's current findings; the node's next run
        stops counting the events it saw before this time. Returns the time recorded."""
        when = time.time() if when is None else when
        data = json.dumps({"time": when, "by": by}).encode() + b"\n"
        bounded(lambda: atomic_write(os.path.join(self._node_dir(node, create=True), ACK), data),
                self.timeout, "store %s" % self.root)
        return when

    def ack_time(self, node: str) -> Optional[float]:
        """Time of the node's latest acknowledgement, or None."""
        def read() -> Optional[float]:
            path = os.path.join(self._node_dir(node), ACK)
            raw = _read(path)
            record = _parse(raw, path) if raw else None
            return float(record["time"]) if record and "time" in record else None
        return bounded(read, self.timeout, "store %s" % self.root)


def _read_many(paths: List[str], probe: int = 256, slow_s: float = 30e-6, threads: int = 16) -> List[Optional[bytes]]:
    """Every file (None where unreadable), in order. Read one after another while that is fast (the
    page cache); when the first ``probe`` files take longer than ``slow_s`` each (a cold cache, NFS),
    the rest is read by 16 threads, whose waits overlap (0.67 s -> 0.43 s for 10,000 cold files)."""
    start = time.monotonic()
    out = [_read_or_warn(p) for p in paths[:probe]]
    rest = paths[probe:]
    if not rest or time.monotonic() - start < slow_s * probe:
        return out + [_read_or_warn(p) for p in rest]
    size = -(-len(rest) // threads)
    chunks = [rest[i:i + size] for i in range(0, len(rest), size)]
    results: List[List[Optional[bytes]]] = [[] for _ in chunks]

    def read(n: int) -> None:
        results[n] = [_read_or_warn(p) for p in chunks[n]]
    # daemon threads, not a ThreadPoolExecutor: the interpreter waits for an executor's threads at
    # exit, and one stuck on a hung mount would hold the process past its read timeout
    workers = [threading.Thread(target=read, args=(n,), daemon=True) for n in range(len(chunks))]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return out + [data for chunk in results for data in chunk]


def _parse_many(raw: Dict[str, Optional[bytes]]) -> Dict[str, Dict[str, Any]]:
    """node -> its parsed summary, the lot parsed as one JSON array (twice as fast as one by one);
    {} when any is missing or bad, or a summary is not its node's: the caller then goes file by file."""
    nodes = [node for node, data in raw.items() if data]
    if len(nodes) != len(raw):
        return {}
    try:
        values = json.loads(b"[" + b",".join(raw[n] for n in nodes) + b"]")
    except (ValueError, RecursionError):
        return {}
    if len(values) != len(nodes) or any(not isinstance(v, dict) or v.get("node") != n for n, v in zip(nodes, values)):
        return {}
    return dict(zip(nodes, values))


def _history_stats(summary: Optional[Dict[str, Any]], empty_before: bool) -> Tuple[Optional[int], Optional[float]]:
    """(records, oldest start time) of a history as its summary counts them; None where unknown
    (the next compaction counts exactly)."""
    if empty_before:
        return 0, float("inf")
    history = (summary or {}).get("history") or {}
    count, oldest = history.get("count"), history.get("oldest_ts")
    return (int(count) if isinstance(count, int) else None,
            float(oldest) if isinstance(oldest, (int, float)) else None)


def _set_aside(path: str, why: str) -> None:
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
            log.warning("%s: %s, left in the spool: cannot set it aside: %s", path, why, _describe(exc))
            return
        log.warning("%s: %s, set aside as %s", path, why, target)
        return
    log.warning("%s: %s, left in the spool: too many set aside already", path, why)


def _contains(path: str, line: bytes) -> bool:
    data = _read(path)
    if not data:
        return False
    return data.startswith(line) or (b"\n" + line) in data


def _fsync_dir(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    except OSError:
        pass     # some filesystems refuse fsync on a directory
    finally:
        os.close(fd)


def _remove_stale_temporaries(directory: str, now: float) -> None:
    """Temporary files a killed writer left behind (older than an hour)."""
    for name in os.listdir(directory):
        if name.startswith(".") and name.endswith(".tmp"):
            path = os.path.join(directory, name)
            try:
                if os.lstat(path).st_mtime < now - 3600:
                    os.unlink(path)
            except OSError:
                pass


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return "%s%s" % (exc.strerror, ": %s" % exc.filename if exc.filename else "")
    return str(exc) or type(exc).__name__


def record_safely(cfg: Dict[str, Any], report: Report) -> Optional[str]:
    """Record a report for a command that must not fail because of the store: a warning line, or None.

    Spooling is not a failure (the store logs a warning saying where the record went)."""
    try:
        Store.from_config(cfg).record(report)
        return None
    except Exception as exc:
        return "result not recorded: %s" % _describe(exc)
