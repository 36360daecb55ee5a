"""The compact per-node metric series: what `gpuhc report` reads instead of full reports.

``nodes/<node>/series.jsonl`` gets one line per report, appended under the node's lock right after the
report's history record (writing.py), and compacted with the history (same age and count limits). A
report is tens of kilobytes; its series line is a few hundred bytes of *envelope* plus, after a tab,
the *detail* (about a kilobyte), so a reader of a whole fleet parses every envelope and only the few
details it needs (the newest record, one per time bucket, the deep runs)::

    {"t":1717000000.0,"c":"prolog","p":"h100-sxm-8","o":"REBOOT","a":"drain","x":[[3,79,1,3]],"w":{"xid":3},"e":"..."}<TAB>{"k":{...},"m":{...}}

Envelope (always parsed; keys left out when empty):

=====  ========================================================================================
t      start time of the report (epoch seconds)
c      context (prolog, epilog, healthcheck, check, sweep, quarantine, bench, nccl)
s      suite, where it is not the context's name
p      profile
o      overall result (PASS, MONITOR, RESET, REBOOT, ISOLATE, ERROR, SKIP)
a      action gpuhc took (drain, held, would-drain, comment, resume, ...)
v      quarantine verdict (RETURN_TO_SERVICE, RESET, REBOOT, REPLACE, INCONCLUSIVE)
x      Xid/SXid events still active: [GPU index (-1: none, an NVSwitch), Xid, count, severity rank]
w      checks whose worst finding is not PASS/SKIP: {check: severity rank} (ERROR -1, MONITOR 1 ...)
e      the evidence line (``SEVERITY check WHERE: message`` of the top finding), for RESET and worse
       and for every verdict
b      1 when the report carries deep figures (gpu_bench, gpu_stress, allreduce_node, dcgm)
=====  ========================================================================================

Detail (parsed on demand): ``k`` every check that ran with its worst severity rank; ``m`` every
numeric metric of the findings as ``"check.metric"``: one number when the node (or every GPU that
reports it) has one value, else a list indexed by GPU (null where a GPU did not report it). Where
several findings carry one metric for one GPU, the most severe finding's value wins. The Xid check's
numbers are in ``x``, not here.

A line that is not valid is skipped with a warning naming the file and line, as history lines are; a
detail that is not valid is read as no metrics, with a warning. A store written before the series
existed gets a node's series from its history at the node's next compaction.
"""
from __future__ import annotations

import json
import logging
import math
import os
from typing import Any, Dict, Iterable, List, Optional, Tuple

from ..model import MAX_TS, MIN_TS, Report, Severity, overall_severity, valid_ts
from .files import MAX_HISTORY_BYTES, atomic_write, open_regular, read, read_or_warn, write_all

log = logging.getLogger("gpuhc.store")

SERIES = "series.jsonl"
MAX_SERIES_LINE = 256 << 10        # bytes of one line: past it, the detail is left out (warning)
DEEP_CHECKS = frozenset(("gpu_bench", "gpu_stress", "allreduce_node", "dcgm"))
EVIDENCE_MAX = 240
CAUSE_FIRST = {"xid": 0, "nvml": 2}      # policy.CAUSE_FIRST (the store sits below policy)


def _number(value: Any) -> Optional[float]:
    if type(value) is int:
        return value
    if type(value) is float and math.isfinite(value):
        return float("%.6g" % value)
    return None


def _check_rank(severities: List[Severity]) -> int:
    if severities and all(s is Severity.SKIP for s in severities):
        return Severity.SKIP.rank
    return overall_severity_rank(severities)


def overall_severity_rank(severities: List[Severity]) -> int:
    top = max((s for s in severities if s.is_tier), key=lambda s: s.rank, default=Severity.PASS)
    if top.unhealthy:
        return top.rank
    if any(s is Severity.ERROR for s in severities):
        return Severity.ERROR.rank
    return top.rank


def evidence(report: Report) -> str:
    """``SEVERITY check WHERE: message`` of the report's top finding (one line, bounded)."""
    findings = report.top_findings()
    if not findings:
        return ""
    # among the most severe, the finding that names a cause first (an Xid explains a lost GPU), as
    # policy.top_finding orders a drain reason
    f = min((f for f in findings if f.severity is findings[0].severity), key=lambda f: CAUSE_FIRST.get(f.check, 1))
    where = f.where()
    text = "%s %s%s: %s" % (f.severity.value, f.check, " " + where if where and where not in f.message else "",
                            f.message)
    text = " ".join(text.split())
    return text if len(text) <= EVIDENCE_MAX else text[:EVIDENCE_MAX - 3] + "..."


def series_record(report: Report) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """(envelope, detail) of one report."""
    overall = overall_severity(report.findings)
    env: Dict[str, Any] = {"t": round(report.started, 3), "c": report.context}
    if report.suite and report.suite != report.context:
        env["s"] = report.suite
    if report.profile:
        env["p"] = report.profile
    env["o"] = overall.value
    if report.action:
        env["a"] = report.action
    if report.verdict:
        env["v"] = report.verdict
    by_check: Dict[str, List[Severity]] = {}
    xids: List[List[int]] = []
    slots: Dict[str, Dict[int, float]] = {}      # key -> {gpu index (-1: the node): value}
    deep = False
    for f in report.top_findings():               # most severe first: its value wins a slot
        by_check.setdefault(f.check, []).append(f.severity)
        if not f.metrics:
            continue
        if f.check == "xid":
            number, count = f.metrics.get("xid"), f.metrics.get("count", 1)
            if type(number) is int:
                xids.append([f.gpu.index if f.gpu else -1, number,
                             int(count) if type(count) in (int, float) and math.isfinite(count) else 1,
                             f.severity.rank])
            continue
        gpu = f.gpu.index if f.gpu is not None else -1
        for name, raw in f.metrics.items():
            value = _number(raw)
            if value is None:
                continue
            deep = deep or f.check in DEEP_CHECKS
            slot = slots.setdefault("%s.%s" % (f.check, name), {})
            if gpu not in slot:
                slot[gpu] = value
            elif gpu < 0 and f.device is not None:
                slot[gpu] = max(slot[gpu], value)     # several devices, one metric: the largest
    if xids:
        env["x"] = sorted(xids)
    ranks = {check: _check_rank(sevs) for check, sevs in by_check.items()}
    worse = {c: r for c, r in ranks.items() if r not in (Severity.PASS.rank, Severity.SKIP.rank)}
    if worse:
        env["w"] = worse
    if overall.unhealthy or report.verdict:
        env["e"] = evidence(report)
    if deep:
        env["b"] = 1
    metrics: Dict[str, Any] = {}
    for key, slot in slots.items():
        gpus = {g: v for g, v in slot.items() if g >= 0}
        if not gpus:
            metrics[key] = slot[-1]
        elif len(set(gpus.values())) == 1:
            metrics[key] = next(iter(gpus.values()))
        else:
            values: List[Optional[float]] = [None] * (max(gpus) + 1)
            for g, v in gpus.items():
                values[g] = v
            metrics[key] = values
    return env, {"k": ranks, "m": metrics}


def series_line(report: Report) -> bytes:
    env, detail = series_record(report)
    head = json.dumps(env, separators=(",", ":"))
    body = json.dumps(detail, separators=(",", ":"))
    line = (head + "\t" + body + "\n").encode()
    if len(line) > MAX_SERIES_LINE:
        log.warning("series of %s: a record of %d bytes: its metrics are left out", report.node, len(line))
        line = (head + "\n").encode()
    return line


# ---- writing (the node's lock held) ----

def append(directory: str, report: Report) -> None:
    """Append the report's series line (the node's lock held, after its history record)."""
    path = os.path.join(directory, SERIES)
    line = series_line(report)
    fd, st = open_regular(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        if st.st_size > 0 and os.pread(fd, 1, st.st_size - 1) != b"\n":
            line = b"\n" + line          # a torn line stays a line of its own (readers skip it, warning)
        write_all(fd, line, path)
    finally:
        os.close(fd)


def compact(directory: str, now: float, max_records: int, max_age: float,
            history: Optional[Iterable[Dict[str, Any]]] = None) -> Tuple[int, int]:
    """Keep the lines of the newest ``max_records`` records younger than ``max_age`` seconds (0: no
    limit), as the history's compaction does; (kept, dropped). With no series file, one is built
    from ``history`` (the records compaction kept). The node's lock held."""
    path = os.path.join(directory, SERIES)
    data = read(path, MAX_HISTORY_BYTES, tail=True)
    if data is None:
        if history is None:
            return 0, 0
        from .records import to_report

        lines = []
        for record in history:
            report = to_report(record, os.path.join(directory, "history.jsonl"))
            if report is not None:
                lines.append((report.started, series_line(report)))
        lines.sort(key=lambda x: x[0])
        if lines:
            atomic_write(path, b"".join(line for _, line in lines))
        return len(lines), 0
    kept: List[Tuple[float, int, bytes]] = []
    total = 0
    for n, raw in enumerate(data.split(b"\n"), 1):
        if not raw.strip():
            continue
        total += 1
        env = _envelope(raw.partition(b"\t")[0], path, n)
        if env is not None:
            kept.append((float(env["t"]), n, raw))
    if max_age > 0:
        kept = [k for k in kept if k[0] >= now - max_age]
    kept.sort()
    if max_records > 0:
        kept = kept[-max_records:]
    if len(kept) < total or not data.endswith(b"\n"):
        atomic_write(path, b"".join(raw + b"\n" for _, _, raw in kept))
    return len(kept), total - len(kept)


# ---- reading ----

class SeriesRecord:
    """One line of a node's series: the envelope's fields, and the detail parsed on first use."""

    __slots__ = ("env", "_raw", "_detail", "_path", "_line", "cause")

    def __init__(self, env: Dict[str, Any], raw: Optional[bytes], path: str, line: int) -> None:
        self.env = env
        self._raw = raw
        self._detail: Optional[Dict[str, Any]] = None
        self._path, self._line = path, line
        # of a prior record (parse) that says the node is held drained: the record that drained it
        self.cause: Optional["SeriesRecord"] = None

    @property
    def t(self) -> float:
        return float(self.env["t"])

    def detail(self) -> Dict[str, Any]:
        """{"k": {check: rank}, "m": {key: value or per-GPU list}}; empty ones for a bad detail."""
        if self._detail is None:
            value: Any = None
            if self._raw:
                try:
                    value = json.loads(self._raw)
                except (ValueError, RecursionError) as exc:
                    log.warning("%s:%d: skipped the metrics of a record: %s", self._path, self._line, exc)
            if not isinstance(value, dict) or not isinstance(value.get("m", {}), dict) \
                    or not isinstance(value.get("k", {}), dict):
                if value is not None:
                    log.warning("%s:%d: skipped the metrics of a record: not an object of k and m", self._path,
                                self._line)
                value = {}
            self._detail = {"k": value.get("k") or {}, "m": value.get("m") or {}}
            self._raw = None
        return self._detail

    @property
    def metrics(self) -> Dict[str, Any]:
        return self.detail()["m"]

    @property
    def checks(self) -> Dict[str, int]:
        return self.detail()["k"]


def _envelope_problem(env: Any) -> Optional[str]:
    if not isinstance(env, dict):
        return "not a JSON object"
    if not valid_ts(env.get("t")):
        return "field t: not a time"
    if not isinstance(env.get("c"), str) or not isinstance(env.get("o"), str):
        return "fields c and o: text"
    return None


def _envelope(raw: bytes, path: str, n: int) -> Optional[Dict[str, Any]]:
    try:
        env = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        log.warning("%s:%d: skipped a corrupt series record: %s", path, n, exc)
        return None
    problem = _envelope_problem(env)
    if problem:
        log.warning("%s:%d: skipped a series record: %s", path, n, problem)
        return None
    return env


def _time_of(raw: bytes) -> Optional[float]:
    """The start time of a line without parsing it (the envelope's first key, as series_line writes
    it); None when it does not look so (the full parse judges)."""
    if raw.startswith(b'{"t":'):
        end = raw.find(b",", 5)
        try:
            return float(raw[5:end])
        except ValueError:
            return None
    return None


def parse(data: bytes, path: str, since: Optional[float] = None) -> Tuple[List[SeriesRecord], Optional[SeriesRecord]]:
    """(the records of a series file's bytes from ``since`` on, oldest first; the newest record before
    ``since``, or None). Lines are in append order, which is time order (a record flushed late from a
    spool comes after newer ones: it is parsed and sorted in); the first line from ``since`` on is found
    by bisection on the times lines start with, and the envelopes from the line before it on are parsed
    as one JSON array (a bad one sends the lot line by line, each bad line named in a warning)."""
    raws = data.split(b"\n")
    if raws and raws[-1].strip():       # no end of line: being written, or torn by a crash
        log.warning("%s:%d: skipped a truncated series record (no end of line)", path, len(raws))
    raws.pop()
    first = 0
    if since is not None:
        lo, hi = 0, len(raws)
        while lo < hi:
            mid = (lo + hi) // 2
            t = _time_of(raws[mid])
            if t is not None and t < since:
                lo = mid + 1
            else:
                hi = mid
        first = max(0, lo - 1)            # the line before: the prior, when it is before since
    numbers = [n for n in range(first, len(raws)) if raws[n]]
    parts = [raws[n].partition(b"\t") for n in numbers]
    heads = [p[0] for p in parts]
    envs: Optional[List[Any]] = []
    try:
        envs = json.loads(b"[" + b",".join(heads) + b"]")
    except (ValueError, RecursionError):
        pass
    out: List[SeriesRecord] = []
    before: Optional[SeriesRecord] = None
    if isinstance(envs, list) and len(envs) == len(heads):
        cut = since if since is not None else -1.0
        for env, part, n in zip(envs, parts, numbers):      # checked as they are taken (_envelope_problem's rules)
            if type(env) is not dict:
                break
            t = env.get("t")
            if (type(t) is not float and type(t) is not int) or not MIN_TS <= t < MAX_TS \
                    or type(env.get("c")) is not str or type(env.get("o")) is not str:
                break
            record = SeriesRecord(env, part[2] if part[1] else None, path, n + 1)
            if t < cut:
                if before is None or t >= before.env["t"]:
                    before = record
            else:
                out.append(record)
        else:
            envs = None                                    # all taken
    if envs is not None and heads:                          # one is bad: line by line, each bad one named
        out, before = [], None
        for head, part, n in zip(heads, parts, numbers):
            env = _envelope(head, path, n + 1)
            if env is None:
                continue
            record = SeriesRecord(env, part[2] if part[1] else None, path, n + 1)
            if since is not None and env["t"] < since:
                if before is None or env["t"] >= before.env["t"]:
                    before = record
                continue
            out.append(record)
    out.sort(key=_start)
    if before is not None and before.env.get("a") == "held":
        before.cause = _drained_by(raws, before._line - 1, path)
    return out, before


CAUSE_SEARCH = 5000          # lines searched back for the record that drained a node held drained


def _drained_by(raws: List[bytes], end: int, path: str) -> Optional[SeriesRecord]:
    """The newest record with action drain among the lines before index ``end`` (a byte search, then one
    parse): why a node that the window finds held drained was drained, though that was before it."""
    for n in range(end - 1, max(-1, end - 1 - CAUSE_SEARCH), -1):
        head, tab, body = raws[n].partition(b"\t")
        if b'"a":"drain"' in head:
            env = _envelope(head, path, n + 1)
            if env is not None and env.get("a") == "drain":
                return SeriesRecord(env, body if tab else None, path, n + 1)
    return None


def _start(record: SeriesRecord) -> float:
    return record.env["t"]


def read_node(directory: str, since: Optional[float] = None
              ) -> Optional[Tuple[List[SeriesRecord], Optional[SeriesRecord]]]:
    """A node's series: (records from ``since`` on, oldest first; the newest before ``since``), or
    None when the node has no series file."""
    path = os.path.join(directory, SERIES)
    data = read_or_warn(path, MAX_HISTORY_BYTES, tail=True)
    if data is None:
        return None if not os.path.lexists(path) else ([], None)
    return parse(data, path, since)


def read_fleet(reader: Any, nodes: Optional[List[str]], since: Optional[float], each: Any,
               timeout: Optional[float] = None) -> List[str]:
    """``each(node, read_node's result)`` for every node of the store (or of ``nodes``), in node order,
    within ``timeout`` seconds (default: the store's read timeout; StoreError past it). Nothing is
    kept here: a fleet's series is read one node at a time. Returns the nodes read."""
    from .reading import bounded

    def work() -> List[str]:
        entries = reader._node_entries()
        if nodes is not None:
            entries = {n: entries[n] for n in nodes if n in entries}
        done = []
        for node in sorted(entries):
            try:
                records = read_node(entries[node], since)
            except OSError as exc:
                log.warning("%s: cannot read: %s", entries[node], exc.strerror or exc)
                continue
            each(node, records)
            done.append(node)
        return done
    return bounded(work, reader.read_timeout if timeout is None else timeout, "store %s" % reader.root)
