"""The pair history: every multi-node all-reduce run (a pair, or any group of nodes), one JSON object a
line, kept for blame (gpuhc/controller/blame.py) and for the operator.

Layout under the store's root::

    pairs/history.jsonl      one record a line, appended (one os.write of the whole line, O_APPEND)
    pairs/summary.json       {"count": N, "oldest_ts": T}: when compaction is due, without reading it all
    pairs/.lock              flock: appends and compaction hold it exclusively

A record (``gpuhc nccl``'s rank 0 or the job's driver writes it; see controller/nccl.py group_record):
``nodes`` (names, sorted), ``passed`` (bool), ``time`` (epoch seconds, the run's end), ``job_id``,
``busbw_gbps`` (the judged figure, or null), ``size_bytes`` (the size it was judged at), ``sizes`` (every
size's figures), ``algo``, ``backend``, ``torch_version``, ``nccl_version``, ``env``, ``error``,
``purpose`` (run, bisect, pair). Readers skip a line that is not such a record, with a warning.

Many writers (one per job) share the one file: each append holds the lock, so a compaction cannot lose
it. Compaction keeps the newest ``history.max_records`` x PAIR_RECORDS_FACTOR records younger than
``history.max_age_days``, rewriting to a temporary file renamed over the history, as node history does.
Writes and reads run in a detached child bounded by the store's timeouts (a hung mount never holds a
job); a write that cannot reach the store raises StoreError for the caller to report (the job's log
keeps the figures; the pair history is evidence, not the node's verdict).
"""
from __future__ import annotations

import json
import logging
import math
import os
import time
from typing import Any, Dict, Iterable, List, Optional, Tuple

from . import detach
from .files import (
    FILE_MODE,
    MAX_HISTORY_BYTES,
    Flock,
    atomic_write,
    fsync_dir,
    lines,
    mkdir,
    open_regular,
    read,
    remove_stale_temporaries,
    require_trusted,
    write_all,
)
from .records import StoreError, encode, parse

log = logging.getLogger("gpuhc.store")

PAIRS_DIR = "pairs"
PAIR_HISTORY = "history.jsonl"
PAIR_SUMMARY = "summary.json"
PAIR_LOCK = ".lock"
PAIR_RECORDS_FACTOR = 100          # a fleet's pairs outnumber one node's records
MAX_PAIR_RECORD_BYTES = 1 << 20    # one run's figures are a few kilobytes


def record_problem(record: Any) -> Optional[str]:
    """What makes ``record`` unusable as a pair-history record, or None."""
    if not isinstance(record, dict):
        return "not a JSON object"
    nodes = record.get("nodes")
    if not isinstance(nodes, list) or not nodes or not all(isinstance(n, str) and n for n in nodes):
        return "field nodes: a list of node names"
    if not isinstance(record.get("passed"), bool):
        return "field passed: true or false"
    ts = record.get("time")
    if isinstance(ts, bool) or not isinstance(ts, (int, float)) or not math.isfinite(ts) or ts < 0:
        return "field time: epoch seconds"
    bw = record.get("busbw_gbps")
    if bw is not None and (isinstance(bw, bool) or not isinstance(bw, (int, float)) or not math.isfinite(bw)):
        return "field busbw_gbps: a number or null"
    return None


class PairHistory:
    """The store's pair history. ``root``: the store's root (config ``store``); the other arguments as
    the Store's (timeouts, and the node history's limits, which compaction scales by PAIR_RECORDS_FACTOR).
    A subclass names another directory (SUBDIR) for another history of node groups."""

    SUBDIR = PAIRS_DIR

    def __init__(self, root: str, timeout: float = 2.0, read_timeout: float = 30.0, max_records: int = 1000,
                 max_age_days: float = 90.0, auto_init: bool = True) -> None:
        self.root = os.path.abspath(root)
        self.dir = os.path.join(self.root, self.SUBDIR)
        self.path = os.path.join(self.dir, PAIR_HISTORY)
        self.timeout = float(timeout)
        self.read_timeout = float(read_timeout)
        self.max_records = int(max_records) * PAIR_RECORDS_FACTOR
        self.max_age = float(max_age_days) * 86400.0
        self.auto_init = auto_init

    @classmethod
    def from_config(cls, cfg: Dict[str, Any]) -> "PairHistory":
        from .reading import default_root

        return cls(cfg["store"], timeout=cfg["timeouts"]["store"], read_timeout=cfg["timeouts"]["store_read"],
                   max_records=cfg["history"]["max_records"], max_age_days=cfg["history"]["max_age_days"],
                   auto_init=os.path.abspath(cfg["store"]) == default_root())

    # ---- writing ----

    def append(self, record: Dict[str, Any], timeout: Optional[float] = None) -> None:
        """Append one record (and compact when due); StoreError when it is not a record, or the store
        refused or did not answer within ``timeout`` (default: the store timeout)."""
        problem = record_problem(record)
        if problem:
            raise StoreError("pair history: not a record: %s" % problem)
        line = encode(record)
        if len(line) > MAX_PAIR_RECORD_BYTES:
            raise StoreError("pair history: a record of %d bytes is past the limit of %d" % (len(line), MAX_PAIR_RECORD_BYTES))
        self._call(lambda: self._append(line, float(record["time"])), self.timeout if timeout is None else timeout)

    def _prepare(self) -> None:
        from .writing import Store

        store = Store(self.root, None, timeout=self.timeout, auto_init=self.auto_init)
        store._prepare_root()              # trusted, and carrying the marker (a mount), as for node records
        mkdir(self.dir)
        if os.path.realpath(self.dir) != os.path.join(os.path.realpath(self.root), self.SUBDIR):
            raise StoreError("store %s: %s is not a directory of the store: refused" % (self.root, self.dir))
        require_trusted(self.dir, "store directory %s" % self.dir)

    def _append(self, line: bytes, ts: float) -> None:
        self._prepare()
        with Flock(os.path.join(self.dir, PAIR_LOCK)):
            fd, st = open_regular(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, FILE_MODE)
            try:
                size = st.st_size
                if size > 0 and os.pread(fd, 1, size - 1) != b"\n":
                    os.ftruncate(fd, _last_line_end(fd, size))      # a torn last line (a writer killed mid-write)
                    log.warning("%s: cut a torn last line", self.path)
                    size = os.fstat(fd).st_size
                try:
                    write_all(fd, line, self.path)
                    os.fsync(fd)
                except BaseException:
                    try:
                        os.ftruncate(fd, size)
                    except OSError:
                        pass
                    raise
            finally:
                os.close(fd)
            summary = self._summary() if size else None
            if size == 0:
                summary = {"count": 1, "oldest_ts": ts}
            elif summary is None:
                summary = self._recount()           # missing or bad: counted again (this record included)
            else:
                summary["count"] += 1
                oldest = summary.get("oldest_ts")
                summary["oldest_ts"] = ts if not isinstance(oldest, (int, float)) else min(float(oldest), ts)
            self._write_summary(summary)
            fsync_dir(self.dir)
            if self._due(summary):
                self._compact_locked(time.time())

    def _summary(self) -> Optional[Dict[str, Any]]:
        try:
            data = read(os.path.join(self.dir, PAIR_SUMMARY))
        except OSError:
            return None
        value = parse(data, os.path.join(self.dir, PAIR_SUMMARY)) if data else None
        if not value or not isinstance(value.get("count"), int) or isinstance(value.get("count"), bool):
            return None
        return value

    def _write_summary(self, summary: Dict[str, Any]) -> None:
        atomic_write(os.path.join(self.dir, PAIR_SUMMARY), encode({"count": summary["count"],
                                                                    "oldest_ts": summary.get("oldest_ts")}))

    def _recount(self) -> Dict[str, Any]:
        stamps = [float(r["time"]) for _, r in self._records()]
        return {"count": len(stamps), "oldest_ts": min(stamps) if stamps else None}

    def _due(self, summary: Dict[str, Any]) -> bool:
        slack = max(1, self.max_records // 10)
        over_count = self.max_records > 0 and summary["count"] > self.max_records + slack
        oldest = summary.get("oldest_ts")
        over_age = self.max_age > 0 and oldest is not None and float(oldest) < time.time() - self.max_age * 1.1
        return over_count or over_age

    # ---- compaction ----

    def compact(self, now: Optional[float] = None) -> Tuple[int, int]:
        """Keep the newest records younger than the age limit, at most the count limit; (kept, dropped)."""
        def work() -> Tuple[int, int]:
            self._prepare()
            with Flock(os.path.join(self.dir, PAIR_LOCK)):
                return self._compact_locked(time.time() if now is None else now)
        return self._call(work, self.read_timeout)

    def _compact_locked(self, now: float) -> Tuple[int, int]:
        remove_stale_temporaries(self.dir, now)
        data = read(self.path, MAX_HISTORY_BYTES, tail=True) or b""
        kept: List[Tuple[float, int, bytes]] = []
        total = 0
        for n, raw in enumerate(data.split(b"\n"), 1):
            if not raw.strip():
                continue
            total += 1
            record = parse(raw, "%s:%d" % (self.path, n))
            if record is not None and record_problem(record) is None:
                kept.append((float(record["time"]), n, raw))
        if self.max_age > 0:
            kept = [k for k in kept if k[0] >= now - self.max_age]
        kept.sort()
        if self.max_records > 0:
            kept = kept[-self.max_records:]
        if len(kept) < total or (data and not data.endswith(b"\n")):
            atomic_write(self.path, b"".join(raw + b"\n" for _, _, raw in kept))
        self._write_summary({"count": len(kept), "oldest_ts": kept[0][0] if kept else None})
        return len(kept), total - len(kept)

    # ---- reading ----

    def read(self, since: Optional[float] = None, job_ids: Optional[Iterable[str]] = None,
             nodes: Optional[Iterable[str]] = None, limit: Optional[int] = None) -> List[Dict[str, Any]]:
        """The records, oldest first: ended at or after ``since``; of these jobs (a job id matches its
        steps' records, "123" matches "123" and "123.4"); holding any of ``nodes``; the newest ``limit``.
        A missing history is []; the read is bounded by the store's read timeout."""
        jobs = {str(j) for j in job_ids} if job_ids is not None else None
        wanted = set(nodes) if nodes is not None else None

        def keep(r: Dict[str, Any]) -> bool:
            if since is not None and float(r["time"]) < since:
                return False
            if jobs is not None and str(r.get("job_id") or "").split(".")[0] not in jobs \
                    and str(r.get("job_id") or "") not in jobs:
                return False
            return wanted is None or not wanted.isdisjoint(r["nodes"])

        def work() -> List[Dict[str, Any]]:
            if not os.path.isdir(self.dir):
                return []
            return [r for _, r in self._records() if keep(r)]
        out = self._call(work, self.read_timeout)
        out.sort(key=lambda r: float(r["time"]))
        return out[-limit:] if limit else out

    def _records(self) -> Iterable[Tuple[int, Dict[str, Any]]]:
        for n, record in lines(self.path):
            problem = record_problem(record)
            if problem:
                log.warning("%s:%d: skipped a record: %s", self.path, n, problem)
                continue
            yield n, record

    # ---- bounds ----

    def _call(self, fn: Any, timeout: float) -> Any:
        try:
            return detach.call(fn, timeout)
        except TimeoutError:
            raise StoreError("store %s: pair history: no answer within %g s (hung or slow mount?)"
                             % (self.root, timeout)) from None
        except detach.NotStarted:
            from .reading import bounded

            return bounded(fn, timeout, "store %s" % self.root)
        except OSError as exc:
            raise StoreError("store %s: pair history: %s" % (self.root, exc)) from None


def _last_line_end(fd: int, size: int) -> int:
    end = size
    while end > 0:
        start = max(0, end - (1 << 16))
        chunk = os.pread(fd, end - start, start)
        at = chunk.rfind(b"\n")
        if at >= 0:
            return start + at + 1
        end = start
    return 0


def dumps(record: Dict[str, Any]) -> str:
    """A record as one line of JSON (what a step prints for its driver)."""
    return json.dumps(record, separators=(",", ":"), sort_keys=True)


class BenchmarkHistory(PairHistory):
    """The benchmark jobs' aggregates (sbatch/benchmark.sbatch's `gpuhc bench --collect`): one record a
    job, of the pair history's shape (``nodes``, ``passed``, ``time``, ``job_id``) with the job's
    median figures, each node's, and the slow nodes; under <store>/benchmarks/."""

    SUBDIR = "benchmarks"
