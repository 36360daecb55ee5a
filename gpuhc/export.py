"""``gpuhc export prometheus``: the store's newest results as a node_exporter textfile-collector file.

Families (gauges; one sample per node unless said):

- ``gpuhc_node_severity{node}``, ``gpuhc_check_severity{node,check}``: the overall result and each
  check's worst finding as a number: SKIP -2, ERROR -1, PASS 0, MONITOR 1, RESET 2, REBOOT 3,
  ISOLATE 4 (the model's ranks: alert on ``>= 2``, and on ``== -1`` for checks that could not run).
- ``gpuhc_last_check_timestamp_seconds{node,context}``, ``gpuhc_last_check_duration_seconds{node}``.
- ``gpuhc_findings{node,severity}``: findings of the newest report by severity (every severity, 0 too).
- ``gpuhc_xid_events{node,gpu,device,xid,severity}``: how often each active Xid (or SXid) was logged.
- ``gpuhc_metric_<check>_<name>{node,gpu,device}``: the numbers findings carry (ECC counts, NVLink
  errors, temperatures, ...); ``gpu`` is the GPU index, ``device`` a non-GPU device, "" when none.
  Where several findings of a check carry the same metric for the same GPU, the most severe wins.

Names follow Prometheus' conventions (https://prometheus.io/docs/practices/naming/): the unit in
its base form at the end of the name, ``_total`` on counters. The checks name their numbers for
people (``temperature_c``, ``busbw_gbps@1048576``, ``matmul_tflops_bf16``), so ``metric_name``
renames them: a unit becomes its base unit and the value is scaled (``_c`` -> ``_celsius``, ``_w``
-> ``_watts``, ``gbps`` (GB/s) -> ``_bytes_per_second``, ``tflops`` -> ``_flops``, ``us`` ->
``_seconds``; a port ``rate`` in Gb/s -> ``rate_bytes_per_second``), a message size after ``@``
becomes the label ``size_bytes``, and the hardware's cumulative error counters (ECC, PCIe replays,
NVLink errors, link-down events) are typed ``counter`` with ``_total``. (Before `gpuhc report`'s
Grafana dashboard they were all gauges named as the checks name them, e.g.
``gpuhc_metric_thermal_power_temperature_c``.)
"""
from __future__ import annotations

import functools
import logging
import math
import os
import re
import stat
from collections import OrderedDict
from typing import Dict, List, Optional, Tuple

from . import trust
from .errors import GpuhcError
from .hostlist import expand, fold
from .model import Finding, Report, Severity, overall_severity
from .store import Store, atomic_write
from .text import clean

log = logging.getLogger("gpuhc.export")

SEVERITY_HELP = "SKIP -2, ERROR -1, PASS 0, MONITOR 1, RESET 2, REBOOT 3, ISOLATE 4"
_BAD = re.compile(r"[^a-zA-Z0-9_]+")

def _escape(value: str) -> str:
    value = clean(value)        # one line of plain characters, bounded (the one sanitiser)
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


@functools.lru_cache(maxsize=4096)
def _name(*parts: str) -> str:
    name = "_".join(_BAD.sub("_", p).strip("_") for p in parts if p)
    return name if not name[:1].isdigit() else "_" + name


def _number(value: float) -> str:
    if type(value) is int:
        return str(value)
    x = float(value)      # bool and float
    if math.isnan(x):
        return "NaN"
    if math.isinf(x):
        return "+Inf" if x > 0 else "-Inf"
    return repr(int(x)) if x.is_integer() and abs(x) < 2 ** 53 else repr(x)


# the checks' units -> (base unit, factor): a token anywhere in the name, or the name's last token
UNIT_TOKENS = {"tflops": ("flops", 1e12), "gbps": ("bytes_per_second", 1e9), "us": ("seconds", 1e-6)}
LAST_UNITS = {"c": ("celsius", 1), "w": ("watts", 1), "s": ("seconds", 1)}
RENAMED = {("network", "rate"): ("rate_bytes_per_second", 1e9 / 8),      # an IB port's rate, Gb/s
           ("pcie", "replay_counter"): ("replays", 1)}
COUNTERS = frozenset({
    ("ecc", "volatile_corrected"), ("ecc", "volatile_uncorrected"), ("ecc", "aggregate_corrected"),
    ("ecc", "aggregate_uncorrected"), ("ecc", "aggregate_uncorrected_sram"), ("ecc", "aggregate_uncorrected_dram"),
    ("pcie", "replay_counter"), ("nvlink", "replay_errors"), ("nvlink", "recovery_errors"),
    ("nvlink", "crc_flit_errors"), ("nvlink", "crc_data_errors"), ("network", "link_downed"),
})


@functools.lru_cache(maxsize=4096)
def metric_name(check: str, metric: str) -> Tuple[str, float, str, str]:
    """(family name, factor to base units, "gauge" or "counter", message size or "") of a finding's
    metric, after Prometheus' conventions (see the module's doc)."""
    base, _, size = metric.partition("@")
    name, factor = RENAMED.get((check, base), (base, 1))
    if (check, base) not in RENAMED:
        parts = base.split("_")
        unit = None
        for i, part in enumerate(parts):
            if part in UNIT_TOKENS and len(parts) > 1:
                unit = UNIT_TOKENS[part]
                del parts[i]
                break
        if unit is None and len(parts) > 1 and parts[-1] in LAST_UNITS:
            unit = LAST_UNITS[parts.pop()]
        if unit is not None:
            name, factor = "_".join(parts + [unit[0]]), unit[1]
    kind = "counter" if (check, base) in COUNTERS else "gauge"
    if kind == "counter" and not name.endswith("_total"):
        name += "_total"
    return _name("gpuhc_metric", check, name), factor, kind, size if size.isdigit() else ""


class _Families:
    """Families in order of first use, each a list of rendered samples (the text format wants a
    family's samples together, so they are gathered before anything is written)."""

    def __init__(self) -> None:
        self.families: "OrderedDict[str, Tuple[str, List[str]]]" = OrderedDict()
        self.kinds: Dict[str, str] = {}

    def add(self, name: str, help_text: str, labels: str, value: float, kind: str = "gauge") -> None:
        family = self.families.get(name)
        if family is None:
            family = self.families[name] = (help_text, [])
            self.kinds[name] = kind
        family[1].append("%s{%s} %s" % (name, labels, _number(value)))

    def text(self) -> str:
        out: List[str] = []
        for name, (help_text, samples) in self.families.items():
            out.append("# HELP %s %s" % (name, help_text.replace("\\", "\\\\").replace("\n", "\\n")))
            out.append("# TYPE %s %s" % (name, self.kinds.get(name, "gauge")))
            out.extend(samples)
        return "\n".join(out) + "\n" if out else ""


def _label(key: str, value: str) -> str:
    return '%s="%s"' % (key, _escape(value))


def _check_severity(findings: List[Finding]) -> Severity:
    if findings and all(f.severity is Severity.SKIP for f in findings):
        return Severity.SKIP
    return overall_severity(findings)


SEVERITY_FAMILY_HELP = "Worst finding of each check in the node's newest report: " + SEVERITY_HELP


def _add_report(fam: _Families, node: str, report: Report) -> None:
    n = _label("node", node)
    fam.add("gpuhc_node_severity", "Overall result of the node's newest check: " + SEVERITY_HELP,
            n, report.overall.rank)
    fam.add("gpuhc_last_check_timestamp_seconds", "Start of the node's newest check (Unix time)",
            n + "," + _label("context", report.context), report.started)
    fam.add("gpuhc_last_check_duration_seconds", "Wall time of the node's newest check",
            n, round(max(0.0, report.ended - report.started), 3))
    by_check: "OrderedDict[str, List[Finding]]" = OrderedDict()
    counts = {sev: 0 for sev in Severity}
    for f in report.findings:
        by_check.setdefault(f.check, []).append(f)
        counts[f.severity] += 1
    for check, findings in by_check.items():
        fam.add("gpuhc_check_severity", SEVERITY_FAMILY_HELP, n + "," + _label("check", check),
                _check_severity(findings).rank)
    for sev, found in counts.items():
        fam.add("gpuhc_findings", "Findings in the node's newest report, by severity",
                n + "," + _label("severity", sev.value), found)
    seen = set()                               # (family, labels): the most severe finding's value wins
    xids: "OrderedDict[str, float]" = OrderedDict()
    for f in report.top_findings():
        if not f.metrics:
            continue
        labels = "%s,%s,%s" % (n, _label("gpu", str(f.gpu.index) if f.gpu else ""), _label("device", f.device or ""))
        if f.check == "xid" and isinstance(f.metrics.get("xid"), int):
            # one sample per Xid number and GPU: several Xids on one GPU must not share a label set, and
            # the findings of one Xid with different texts (an Xid 13 burst) add up in one sample
            key = "%s,%s,%s" % (labels, _label("xid", str(f.metrics["xid"])), _label("severity", f.severity.value))
            count = f.metrics.get("count", 1)
            xids[key] = xids.get(key, 0) + (count if isinstance(count, (int, float)) else 1)   # a bad count: one event
            continue
        for metric, value in sorted(f.metrics.items()):
            if isinstance(value, (int, float)):
                name, factor, kind, size = metric_name(f.check, metric)
                these = labels + "," + _label("size_bytes", size) if size else labels
                if (name, these) not in seen:
                    seen.add((name, these))
                    base = metric.partition("@")[0]
                    fam.add(name, "Metric %r carried by the findings of check %r, newest report%s" % (
                        base, f.check, " (base units)" if factor != 1 else ""), these,
                        value * factor if factor != 1 else value, kind)
    for key, count in xids.items():
        fam.add("gpuhc_xid_events", "Active Xid/SXid events of the node's newest report, by GPU (device for "
                "an NVSwitch), Xid number and severity", key, count)


def prometheus_text(reports: Dict[str, Report]) -> str:
    fam = _Families()
    for node in sorted(reports):
        _add_report(fam, node, reports[node])
    return fam.text()


def export_prometheus(cfg: Dict, output: Optional[str] = None, nodelist: Optional[str] = None,
                      slurm: Optional[Dict[str, Dict]] = None) -> str:
    """The textfile (of the nodes of ``nodelist``, else every node); written atomically to ``output``
    when given (then '' is returned). With ``slurm`` (Slurm's view of the nodes, as for status),
    ``gpuhc_node_drained`` too: the newest report of a drained node may be a quick suite's pass."""
    from .status import gpuhc_drain_severity

    nodes = expand(nodelist, "--nodes") if nodelist else None
    fam = _Families()
    seen: List[str] = []

    def add(node: str, report: Report) -> None:
        seen.append(node)
        _add_report(fam, node, report)

    Store.from_config(cfg).latest_all(nodes, each=add)
    missing = sorted(set(nodes or ()) - set(seen))
    if missing:
        # not an error (a node's first export may come before its first result), but a typo in
        # -n would otherwise leave an empty file and no word about it
        log.warning("no result in the store for %s", fold(missing))
    for node in sorted(seen):
        view = (slurm or {}).get(node)
        if view is not None:
            severity = gpuhc_drain_severity(view)
            fam.add("gpuhc_node_drained", "1 while Slurm shows the node drained by gpuhc, with the severity of "
                    "its reason; 0 otherwise (Slurm's view when the file was written)",
                    "%s,%s" % (_label("node", node), _label("severity", severity or "")), 1 if severity else 0)
    text = fam.text()
    if not output:
        return text
    write_output(output, text)
    return ""


def write_output(output: str, text: str) -> None:
    """Write a command's ``--output`` file atomically, where output_target allows it; GpuhcError
    (one line) otherwise."""
    target = output_target(output)
    try:
        atomic_write(target, text.encode())
    except OSError as exc:
        raise GpuhcError("--output %s: cannot write: %s" % (output, exc.strerror or exc)) from None


def output_target(output: str) -> str:
    """The file that ``--output`` names, symlinks resolved (the link is kept, its target replaced)
    where nobody else could have planted them: a link must be root's (or this user's) in a
    directory others cannot write, else GpuhcError (gpuhc/trust.py); also when the target exists
    and is not a regular file: renaming over a device, a FIFO or a directory would replace it, not
    write to it. The file is then written beside its target (O_EXCL, O_NOFOLLOW) and renamed over it."""
    problem = trust.path_problem(output)
    if problem:
        raise GpuhcError("--output %s: refused: %s" % (output, problem))
    target = os.path.realpath(output)
    try:
        st = os.stat(target)
    except FileNotFoundError:
        return target
    except OSError as exc:
        raise GpuhcError("--output %s: cannot write: %s" % (output, exc.strerror or exc)) from None
    if not stat.S_ISREG(st.st_mode):
        what = "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file"
        named = output if target == os.path.abspath(output) else "%s (%s)" % (output, target)
        raise GpuhcError("--output %s: %s: refused" % (named, what))
    return target
