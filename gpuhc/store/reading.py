"""The store's readers: where things are, whether the store can be believed, and the reads.

The reads of one node (``latest``, ``history``, ``exists``, ``ack_time``; the Slurm contexts make
these) run in a detached child (detach.py) bounded by the read timeout; the fleet's reads
(``nodes``, ``summaries``, ``latest_all``: status, export) in a bounded daemon thread of the
caller. A node whose files cannot be read (a FIFO, a device, EIO) is skipped with a warning: one
bad node never takes the fleet view down.
"""
from __future__ import annotations

import logging
import os
import stat
from typing import Any, Callable, Dict, List, Optional, Set

from ..bounded import Overtime, call_within
from ..model import Report, valid_ts
from . import detach
from .files import ACK, HISTORY, LATEST, MARKER, SUMMARY, lines, read, read_many, read_or_warn, require_trusted
from .records import NODE_NAME, StoreError, check_node_name, checked_summary, parse, parse_many, summarize, to_report

log = logging.getLogger("gpuhc.store")
_warned: Set[str] = set()


def bounded(fn: Callable[[], Any], timeout: float, what: str) -> Any:
    """fn() in a daemon thread with a time limit; StoreError when it has not returned in time."""
    try:
        return call_within(fn, timeout, "gpuhc-store-read")
    except Overtime:
        raise StoreError("%s: no answer within %g s (hung or slow mount?)" % (what, timeout)) from None


def default_root() -> str:
    """The store of a config that names none: a local directory, which initialises itself."""
    from ..config import defaults

    return os.path.abspath(defaults()["store"])


class StoreReader:
    def __init__(self, root: str, state_dir: Optional[str] = None, timeout: float = 2.0, read_timeout: float = 30.0,
                 max_records: int = 1000, max_age_days: float = 90.0, auto_init: bool = True) -> None:
        # no filesystem call here: a hung mount must only ever be touched by a child or a bounded thread
        self.root = os.path.abspath(root)
        self.nodes_dir = os.path.join(self.root, "nodes")
        self.spool_dir = os.path.join(os.path.abspath(state_dir), "spool") if state_dir else None
        self._real_root: Optional[str] = None
        self.timeout = float(timeout)
        self.read_timeout = float(read_timeout)
        self.max_records = int(max_records)
        self.max_age = float(max_age_days) * 86400.0
        # False for a configured shared store: it must carry the marker of `gpuhc store init`
        self.auto_init = auto_init

    @classmethod
    def from_config(cls, cfg: Dict[str, Any]):
        return cls(cfg["store"], cfg["state_dir"], timeout=cfg["timeouts"]["store"],
                   read_timeout=cfg["timeouts"]["store_read"], max_records=cfg["history"]["max_records"],
                   max_age_days=cfg["history"]["max_age_days"],
                   auto_init=os.path.abspath(cfg["store"]) == default_root())

    # ---- paths and trust ----

    def _inside(self, path: str) -> str:
        """The real path of ``path``; StoreError when it resolves outside the store's root."""
        if self._real_root is None:
            self._real_root = os.path.realpath(self.root)
        real = os.path.realpath(path)
        if not real.startswith(self._real_root + os.sep):
            raise StoreError("%s: resolves to %s, outside the store %s: refused" % (path, real, self.root))
        return real

    def _check_root(self) -> bool:
        """For readers: False when there is no store yet; StoreError when ``store:`` names something
        that is not a directory, or one another user could write (the results would be forged)."""
        try:
            st = os.stat(self.root)
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise StoreError("store %s: cannot be read: %s" % (self.root, exc.strerror or exc)) from None
        if not stat.S_ISDIR(st.st_mode):
            raise StoreError("store %s: not a directory (check `store:` in the configuration)" % self.root)
        # the nodes directory too (and so everything above it): whoever can write there can forge a node
        require_trusted(self.nodes_dir if os.path.lexists(self.nodes_dir) else self.root, "store %s" % self.root)
        if not self.auto_init and not os.path.isfile(os.path.join(self.root, MARKER)) and self.root not in _warned:
            _warned.add(self.root)
            log.warning("store %s: no %s marker: not initialised, or the shared filesystem is not mounted there "
                        "(results may be missing; once it is mounted: gpuhc store init %s)", self.root, MARKER, self.root)
        return True

    def _node_dir(self, node: str, create: bool = False) -> str:
        check_node_name(node)
        path = os.path.join(self.nodes_dir, node)
        if create:
            return self._make_node_dir(path)
        self._check_root()
        return self._inside(path)

    def _make_node_dir(self, path: str) -> str:
        raise NotImplementedError       # the writer's (writing.Store)

    def _in_child(self, fn: Callable[[], Any], timeout: Optional[float] = None) -> Any:
        """fn() in a detached child within the read timeout: a hung mount holds neither this call
        nor, later, the exit of this process. Where no child can be started (no processes left),
        in a bounded thread."""
        limit = self.read_timeout if timeout is None else timeout
        try:
            return detach.call(fn, limit)
        except TimeoutError:
            raise StoreError("store %s: no answer within %g s (hung or slow mount?)" % (self.root, limit)) from None
        except detach.NotStarted:
            return bounded(fn, limit, "store %s" % self.root)

    def _bounded_read(self, fn: Callable[[], Any]) -> Any:
        return bounded(fn, self.read_timeout, "store %s" % self.root)

    # ---- the fleet (a bounded thread) ----

    def nodes(self) -> List[str]:
        return self._bounded_read(lambda: sorted(self._node_entries()))

    def _node_entries(self) -> Dict[str, str]:
        """node -> its directory, skipping names that are not node names and links out of the root."""
        out: Dict[str, str] = {}
        if not self._check_root() or not os.path.lexists(self.nodes_dir):
            return out
        if not os.path.isdir(self.nodes_dir):
            raise StoreError("store %s: %s is not a directory" % (self.root, self.nodes_dir))
        self._inside(self.nodes_dir)
        with os.scandir(self.nodes_dir) as entries:
            for entry in entries:
                if not NODE_NAME.match(entry.name) or ".." in entry.name:
                    continue
                try:
                    if entry.is_symlink():
                        out[entry.name] = self._inside(entry.path)
                    elif entry.is_dir():
                        out[entry.name] = entry.path
                except (StoreError, OSError) as exc:
                    log.warning("%s", exc)
        return out

    def latest_all(self, nodes: Optional[List[str]] = None,
                   each: Optional[Callable[[str, Report], None]] = None) -> Dict[str, Report]:
        """node -> its newest report, for every node (or those of ``nodes`` the store has), in node
        order. With ``each``, each (node, report) goes to it instead (nothing is kept: a whole fleet's
        reports take gigabytes) and {} is returned."""
        def work() -> Dict[str, Report]:
            out = {}
            entries = self._node_entries()
            if nodes is not None:
                entries = {n: entries[n] for n in nodes if n in entries}
            for node in sorted(entries):
                report = self._latest_or_warn(entries[node])
                if report is None:
                    continue
                if each is not None:
                    each(node, report)
                else:
                    out[node] = report
            return out
        return self._bounded_read(work)

    def summaries(self) -> Dict[str, Dict[str, Any]]:
        """node -> summary of its newest report: one small file per node (what status reads)."""
        def work() -> Dict[str, Dict[str, Any]]:
            entries = self._node_entries()
            paths = {node: os.path.join(directory, SUMMARY) for node, directory in entries.items()}
            raw = dict(zip(paths, read_many(list(paths.values()))))
            parsed = parse_many(raw)
            out = {}
            for node, data in raw.items():
                summary = parsed.get(node)
                if summary is None and data:
                    summary = parse(data, paths[node])        # names the bad file in its warning
                summary = checked_summary(summary, paths[node])   # so does a bad field
                if summary is None:       # missing, truncated or bad: from the newest readable report
                    report = self._latest_or_warn(entries[node])
                    summary = summarize(report) if report is not None else None
                if summary is not None:
                    out[node] = summary
            return out
        return self._bounded_read(work)

    def _latest_or_warn(self, directory: str) -> Optional[Report]:
        try:
            return self._latest(directory)
        except OSError as exc:          # this node's directory cannot be read: the others go on
            log.warning("%s: cannot read: %s", directory, exc.strerror or exc)
            return None

    # ---- one node (a detached child) ----

    def latest(self, node: str) -> Optional[Report]:
        check_node_name(node)
        return self._in_child(lambda: self._latest(self._node_dir(node)))

    def history(self, node: str, since: Optional[float] = None, check: Optional[str] = None) -> List[Report]:
        """The node's reports, newest first; ``since`` an epoch time; ``check`` only reports where it ran."""
        check_node_name(node)
        return self._in_child(lambda: self._history(self._node_dir(node), since, check))

    def exists(self, node: str) -> bool:
        check_node_name(node)
        return self._in_child(lambda: os.path.isdir(self._node_dir(node)))

    def ack_time(self, node: str) -> Optional[float]:
        """Time of the node's latest acknowledgement (``gpuhc resume --force``), or None."""
        check_node_name(node)

        def work() -> Optional[float]:
            path = os.path.join(self._node_dir(node), ACK)
            raw = read(path)
            record = parse(raw, path) if raw else None
            return float(record["time"]) if record and "time" in record else None
        return self._in_child(work, self.timeout)

    # ---- the files of one node ----

    def _latest_file(self, directory: str) -> Optional[Report]:
        """The report of latest.json; None (with a warning) when missing, unreadable or bad."""
        path = os.path.join(directory, LATEST)
        data = read_or_warn(path)
        record = parse(data, path) if data else None
        return to_report(record, path) if record is not None else None

    def _latest(self, directory: str) -> Optional[Report]:
        report = self._latest_file(directory)
        if report is None and os.path.lexists(os.path.join(directory, HISTORY)):
            newest = self._history(directory, None, None)   # latest.json lost or corrupt: the history has it
            report = newest[0] if newest else None
        return report

    def _history(self, directory: str, since: Optional[float], check: Optional[str]) -> List[Report]:
        path = os.path.join(directory, HISTORY)
        out = []
        for n, record in lines(path):
            ts = record.get("started_ts")
            if since is not None and isinstance(ts, (int, float)) and valid_ts(ts) and ts < since:   # a bad time: to_report skips it, warning
                continue
            report = to_report(record, "%s:%d" % (path, n))
            if report is None or (check and not any(f.check == check for f in report.findings)):
                continue
            out.append(report)
        out.sort(key=lambda r: r.started, reverse=True)
        return out

    def _summary_file(self, directory: str) -> Optional[Dict[str, Any]]:
        """The node's summary; None (with a warning) when it is missing, unreadable or bad: the
        writer then rebuilds it rather than failing every write of the node."""
        path = os.path.join(directory, SUMMARY)
        data = read_or_warn(path)
        return checked_summary(parse(data, path), path) if data else None

