"""Human-readable output: tables through tabulate (imported only when a table is printed)."""
from __future__ import annotations

from collections import OrderedDict
from typing import Any, List, Sequence

from .model import Finding, Report, Severity
from .text import clean


def table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> str:
    """A plain table; every text cell through text.clean (one line, bounded), whatever it holds."""
    from tabulate import tabulate

    rows = [[clean(c) if isinstance(c, str) else c for c in row] for row in rows]
    return tabulate(rows, headers=[clean(h) for h in headers], tablefmt="plain", disable_numparse=True)


def finding_rows(findings: List[Finding], show_all: bool) -> List[List[str]]:
    """One row per finding worth reading. Unless show_all, the passes of a check fold into one
    row, and checks skipped for the same reason into one row."""
    rows: List[List[str]] = []
    passes: "OrderedDict[str, List[Finding]]" = OrderedDict()
    skips: "OrderedDict[str, List[str]]" = OrderedDict()
    for f in findings:
        if not show_all and f.severity is Severity.PASS:
            passes.setdefault(f.check, []).append(f)
        elif not show_all and f.severity is Severity.SKIP and f.gpu is None:
            skips.setdefault(f.message, []).append(f.check)
        else:
            rows.append([f.severity.value, f.check, f.where(), f.message])
    for check, group in passes.items():
        gpus = sum(1 for f in group if f.gpu is not None)
        message = group[0].message if len(group) == 1 else "%d GPUs ok" % gpus
        rows.append([Severity.PASS.value, check, group[0].where() if len(group) == 1 else "", message])
    for message, checks in skips.items():
        rows.append([Severity.SKIP.value, ",".join(checks) if len(checks) < 3 else "%d checks" % len(checks), "", message])
    return rows


def report_text(report: Report, detection: Any, show_all: bool = False) -> str:
    rows = finding_rows(report.top_findings(), show_all)
    how = " (%s)" % detection.how if detection is not None else ""
    lines = [table(rows, ["SEVERITY", "CHECK", "WHERE", "MESSAGE"]), ""]
    todo = remedies(report.top_findings())
    if todo:
        lines += ["What to do:"] + ["  %s" % clean(line) for line in todo] + [""]
    lines.append("%s: %s  profile %s%s  suite %s  %.2fs" % (report.node, report.overall.value, report.profile, how,
                                                            report.suite, report.ended - report.started))
    return "\n".join(lines)


def remedies(findings: List[Finding]) -> List[str]:
    """'SEVERITY check WHERE: remediation' for the findings that ask for something (MONITOR and
    worse, and a checker ERROR: what to fix so the check can run), most severe first; one line per
    distinct remediation of a check, GPUs gathered."""
    out: "OrderedDict[tuple, List[str]]" = OrderedDict()
    for f in findings:
        if f.remediation and f.severity not in (Severity.PASS, Severity.SKIP):
            out.setdefault((f.severity.value, f.check, f.remediation), []).append(f.where())
    return ["%s %s%s: %s" % (sev, check, " " + ",".join(w for w in where if w) if any(where) else "", text)
            for (sev, check, text), where in out.items()]
