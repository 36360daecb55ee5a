"""Human-readable output: tables through tabulate (imported only when a table is printed)."""
from __future__ import annotations

from collections import OrderedDict
from typing import Any, List, Sequence

from .model import Finding, Report, Severity


def table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> str:
    from tabulate import tabulate

    return tabulate(rows, headers=headers, tablefmt="plain", disable_numparse=True)


def finding_rows(findings: List[Finding], show_all: bool) -> List[List[str]]:
    """One row per finding worth reading; passes and skips of a check folded into one row unless show_all."""
    rows: List[List[str]] = []
    folded: "OrderedDict[str, List[Finding]]" = OrderedDict()
    for f in findings:
        if not show_all and f.severity in (Severity.PASS, Severity.SKIP):
            folded.setdefault(f.check, []).append(f)
            continue
        rows.append([f.severity.value, f.check, f.where(), f.message])
    for check, group in folded.items():
        if len(group) == 1:
            f = group[0]
            rows.append([f.severity.value, check, f.where(), f.message])
        else:
            sev = Severity.PASS if any(f.severity is Severity.PASS for f in group) else Severity.SKIP
            gpus = sum(1 for f in group if f.gpu is not None)
            rows.append([sev.value, check, "", "%d GPUs ok" % gpus if gpus else "ok"])
    return rows


def report_text(report: Report, detection: Any, show_all: bool = False) -> str:
    rows = finding_rows(report.top_findings(), show_all)
    how = " (%s)" % detection.how if detection is not None else ""
    lines = [table(rows, ["SEVERITY", "CHECK", "WHERE", "MESSAGE"]), ""]
    lines.append("%s: %s  profile %s%s  suite %s  %.2fs" % (report.node, report.overall.value, report.profile, how,
                                                            report.suite, report.ended - report.started))
    return "\n".join(lines)
