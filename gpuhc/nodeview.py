"""``gpuhc show NODE`` and ``gpuhc history NODE``: one node's newest report, and its results
newest first. The fleet view (``gpuhc status``) and its health rules are gpuhc/status.py."""
from __future__ import annotations

import json
import re
import time
from typing import Any, Dict, Mapping, Optional

from .errors import GpuhcError
from .model import Report, Severity
from .status import _duration, _local, _slurm_words, gpuhc_drain_severity
from .store import Store, StoreError, check_node_name

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str, option: str = "--since") -> float:
    m = _DURATION.match(text or "")
    if not m:
        raise GpuhcError("%s %r: expected a duration such as 30m, 2h, 7d (units s, m, h, d, w)" % (option, text))
    return float(m.group(1)) * _UNITS[m.group(2)]


def _known(store: Store, node: str) -> None:
    check_node_name(node)
    if not store.exists(node):
        raise StoreError("no result for node %r in the store %s" % (node, store.root))


def show_text(cfg: Dict[str, Any], node: str, as_json: bool = False,
              slurm: Optional[Mapping[str, Any]] = None) -> str:
    """What ``gpuhc show NODE`` prints: the newest report with every finding; with ``slurm`` (the
    node's entry of Slurm's view) the node's state and reason too. When the node is drained by
    gpuhc and the newest report is not the one that drained it (an epilog's quick suite passed
    since), the draining report's findings are named as well: they are why it is drained."""
    from .output import report_text

    store = Store.from_config(cfg)
    _known(store, node)
    report = store.latest(node)
    if report is None:
        raise StoreError("no readable result for node %r in the store %s" % (node, store.root))
    drained = gpuhc_drain_severity(slurm) is not None if slurm else report.action == "held"
    cause = None
    if drained and report.action != "drain":
        cause = next((r for r in store.history(node) if r.action == "drain"), None)
    if as_json:
        doc = report.to_dict()
        if slurm:
            doc["slurm"] = {"state": "+".join(_slurm_words(slurm)).lower(), "reason": slurm.get("reason") or ""}
        if cause is not None:
            doc["drained_by"] = cause.to_dict()
        return json.dumps(doc, indent=2)
    head = "%s  checked %s (%s ago)  context %s  job %s%s" % (
        report.node, _local(report.started), _duration(time.time() - report.started), report.context,
        report.job_id or "-", "  action %s" % report.action if report.action else "")
    if slurm:
        head += "\nSlurm: %s%s" % ("+".join(_slurm_words(slurm)).lower() or "-",
                                   "  reason: %s" % slurm["reason"] if slurm.get("reason") else "")
    if cause is not None:
        head += "\ndrained by the %s run of %s%s: %s" % (
            cause.context, _local(cause.started), " (job %s)" % cause.job_id if cause.job_id else "",
            _findings_summary(cause, None))
    return head + "\n\n" + report_text(report, None, show_all=True)


def _findings_summary(report: Report, check: Optional[str], most: int = 3) -> str:
    findings = [f for f in report.top_findings() if check is None or f.check == check]
    notable = [f for f in findings if f.severity not in (Severity.PASS, Severity.SKIP)]
    if not notable:
        return "%s %s" % (findings[0].severity.value, check) if check and findings else "-"
    parts = ["%s %s%s: %s" % (f.severity.value, f.check, " " + f.where() if f.where() else "", f.message)
             for f in notable[:most]]
    more = " (+%d more)" % (len(notable) - most) if len(notable) > most else ""
    return "; ".join(parts) + more


def history_text(cfg: Dict[str, Any], node: str, since: Optional[str] = None, check: Optional[str] = None,
                 as_json: bool = False, now: Optional[float] = None) -> str:
    """What ``gpuhc history NODE`` prints: the node's reports, newest first."""
    from . import checks
    from .output import table

    now = time.time() if now is None else now
    cutoff = now - parse_duration(since) if since is not None else None
    if check is not None and check not in checks.names():
        raise GpuhcError("--check: unknown check %r (known: %s)" % (check, ", ".join(checks.names())))
    store = Store.from_config(cfg)
    _known(store, node)
    reports = store.history(node, since=cutoff, check=check)
    if as_json:
        docs = [r.to_dict() for r in reports]
        if check is not None:          # as the text does: that check's findings (overall stays the report's)
            for doc in docs:
                doc["findings"] = [f for f in doc["findings"] if f.get("check") == check]
        return json.dumps(docs, indent=2)
    if not reports:
        return "no results for %s%s%s" % (node, " since %s" % since if since else "",
                                          " with check %s" % check if check else "")
    rows = [(_local(r.started), r.context, r.job_id or "-", r.overall.value, _findings_summary(r, check))
            for r in reports]
    return table(rows, ["TIME", "CONTEXT", "JOBID", "OVERALL", "FINDINGS"])
