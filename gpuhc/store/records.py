"""What a store record is: node names, history lines, the summary ``gpuhc status`` reads, and
parsing that skips a bad record with a warning naming where it was."""
from __future__ import annotations

import json
import logging
import re
from typing import Any, Dict, Optional, Tuple

from ..errors import GpuhcError
from ..model import SCHEMA_VERSION, Report, Severity, json_repr, valid_ts

log = logging.getLogger("gpuhc.store")

NODE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,254}$")


class StoreError(GpuhcError):
    """The store cannot be used: bad node name, symlink out of the root, no answer in time."""


def check_node_name(node: str) -> str:
    if not isinstance(node, str) or not NODE_NAME.match(node) or ".." in node:
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
_OPTIONAL_TEXT: Dict[str, Any] = {"node": str, "context": str, "job_id": (str, int), "profile": str, "action": str}


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


def checked_summary(summary: Optional[Dict[str, Any]], path: str) -> Optional[Dict[str, Any]]:
    """The summary, or None with a warning naming the file when it cannot be trusted."""
    if summary is None:
        return None
    problem = summary_problem(summary)
    if problem is not None:
        log.warning("%s: skipped a bad summary: %s", path, problem)
        return None
    return summary


def parse(data: bytes, where: str) -> Optional[Dict[str, Any]]:
    try:
        value = json.loads(data)
        if not isinstance(value, dict):
            raise ValueError("not a JSON object")
        return value
    except (ValueError, RecursionError) as exc:     # RecursionError: nested too deep
        log.warning("%s: skipped a corrupt record: %s", where, exc)
        return None


def to_report(record: Dict[str, Any], where: str) -> Optional[Report]:
    try:
        return Report.from_dict(record)
    except (KeyError, TypeError, ValueError, ArithmeticError) as exc:
        missing = "missing field %s" % exc if isinstance(exc, KeyError) else str(exc)
        log.warning("%s: skipped a record: %s", where, missing)
        return None


def parse_many(raw: Dict[str, Optional[bytes]]) -> Dict[str, Dict[str, Any]]:
    """node -> its parsed summary, the lot parsed as one JSON array (twice as fast as one by one);
    {} when any is missing or bad, or a summary is not its node's: the caller then goes file by file."""
    nodes = [node for node, data in raw.items() if data]
    if len(nodes) != len(raw):
        return {}
    try:
        values = json.loads(b"[" + b",".join(raw[n] or b"" for n in nodes) + b"]")
    except (ValueError, RecursionError):
        return {}
    if len(values) != len(nodes) or any(not isinstance(v, dict) or v.get("node") != n for n, v in zip(nodes, values)):
        return {}
    return dict(zip(nodes, values))


def history_stats(summary: Optional[Dict[str, Any]], empty_before: bool) -> Tuple[Optional[int], Optional[float]]:
    """(records, oldest start time) of a history as its summary counts them; None where unknown
    (the next compaction counts exactly)."""
    if empty_before:
        return 0, float("inf")
    history = (summary or {}).get("history") or {}
    count, oldest = history.get("count"), history.get("oldest_ts")
    return (int(count) if isinstance(count, int) else None,
            float(oldest) if isinstance(oldest, (int, float)) else None)
