"""`gpuhc bench`: the deep checks (gpu_stress, gpu_bench, allreduce_node) on this node, for a node
that is the job's alone (sbatch/benchmark.sbatch, an operator on a drained node). Like `gpuhc check`
it never drains: it prints a per-GPU table and the all-reduce curve, records the report (context
``bench``: the figures `gpuhc stragglers` compares), and exits like `gpuhc check`."""
from __future__ import annotations

import sys
from typing import Dict, List

from ..checks.allreduce_node import size_rows
from ..model import Report, Severity
from .check import Check

COLUMNS = [("stress_tflops", "STRESS TFLOP/S"), ("matmul_tflops", "MATMUL TFLOP/S"), ("hbm_gbps", "HBM GB/S"),
           ("pcie_gbps", "PCIE GB/S"), ("p2p_gbps", "P2P GB/S")]


class Bench(Check):
    def __init__(self) -> None:
        super().__init__("bench")


CONTEXT = Bench()


def progress_to_stderr(line: str) -> None:
    """A progress line of a long workload: stderr, so --json output stays clean."""
    print("gpuhc bench: %s" % line, file=sys.stderr, flush=True)


def gpu_rows(report: Report) -> List[List[str]]:
    """One row per GPU: its figures and its worst deep finding."""
    per: Dict[int, Dict[str, float]] = {}
    worst: Dict[int, Severity] = {}
    for f in report.findings:
        if f.gpu is None or f.check not in ("gpu_stress", "gpu_bench"):
            continue
        per.setdefault(f.gpu.index, {}).update(f.metrics)
        if f.severity.is_tier and f.severity.rank > worst.get(f.gpu.index, Severity.PASS).rank:
            worst[f.gpu.index] = f.severity
    rows = []
    for gpu in sorted(per):
        fig = per[gpu]
        rows.append(["GPU%d" % gpu] + [_num(fig[k]) if k in fig else "-" for k, _ in COLUMNS]
                    + [worst.get(gpu, Severity.PASS).value])
    return rows


def _num(value: float) -> str:
    """A figure with its significant digits (a CPU's 0.012 TFLOP/s as much as a GPU's 790)."""
    return "%.1f" % value if value >= 100 else "%.4g" % value


def allreduce_rows(report: Report) -> List[List[str]]:
    """The all-reduce curve as nccl-tests prints it: size, count, type, time, algbw, busbw."""
    for f in report.findings:
        if f.check == "allreduce_node" and f.metrics:
            return [["%d" % r["size_bytes"], "%d" % (r["size_bytes"] // 4), "float", "%.1f" % r.get("time_us", 0.0),
                     "%.2f" % r.get("algbw_gbps", 0.0), "%.2f" % r.get("busbw_gbps", 0.0)]
                    for r in size_rows(f.metrics)]
    return []


def text(report: Report, detection: object) -> str:
    from ..output import report_text, table

    parts = []
    rows = gpu_rows(report)
    if rows:
        parts += [table(rows, ["GPU"] + [h for _, h in COLUMNS] + ["RESULT"]), ""]
    curve = allreduce_rows(report)
    if curve:
        parts += ["all-reduce across the node's GPUs (nccl-tests' algbw and busbw):",
                  table(curve, ["SIZE(B)", "COUNT", "TYPE", "TIME(us)", "ALGBW(GB/s)", "BUSBW(GB/s)"]), ""]
    parts.append(report_text(report, detection))
    return "\n".join(parts)
