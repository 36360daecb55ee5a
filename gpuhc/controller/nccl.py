"""Multi-node all-reduce (`gpuhc nccl`): what a run is held to, the judgement of one run, its record in the
pair history, and the verdict over many runs turned into node reports and drains.

Pure, and unit-tested without torch or Slurm: ``expected_busbw``, ``judge``, ``group_record``,
``to_result``, ``drain_message``, ``node_reports``, ``verdict_text``. ``conclude`` acts on a verdict:
a convicted node is drained through acting (ownership, breaker) and every node of the run gets a report
(context ``nccl``) in the store. Who calls what:

- a step of `gpuhc nccl` (srun, one rank per GPU; contexts/nccl.py): its rank 0 judges the run
  (``judge``), writes the ``group_record`` to the pair history and prints it for the job's driver;
- the job's driver (`gpuhc nccl --job-bisect`, sbatch/nccl-allreduce.sbatch; contexts/nccl_job.py) and the
  pairwise mode (`gpuhc nccl --pairs`, controller/nccl_pairs.py) turn records into GroupResults
  (``to_result``), let blame.py plan and convict, and ``conclude``.

Thresholds (DESIGN section 6, issue 16): config ``nccl.expect_busbw_gbps`` where set; else the profile's
``busbw_gbps`` for one node and ``internode_busbw_gbps`` for two or more (a GPU figure: none on the CPU).
A run passes when it completed with no wrong element and its bus bandwidth at the judged sizes (on GPUs
every size >= ``nccl.judge_from_bytes``, 1 GiB, the best of them; on the CPU the largest size) is at
least ``thresholds.allreduce_min_fraction`` (90%, nccl-tests' NCCL_TESTS_MIN_BW) of the expected value.
With no expected value only completion and correctness are judged.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

from ..hostlist import fold
from ..model import Finding, Report, Severity
from .blame import GroupResult, Verdict

CHECK = "nccl"
CONTEXT = "nccl"
SUITE = "nccl"
RESULT_TAG = "GPUHC-NCCL-RESULT "       # the line a step's rank 0 prints for its driver: the tag, then JSON
PURPOSES = ("run", "bisect", "pair")


# ---- thresholds and judgement ---------------------------------------------------------------------

def expected_busbw(cfg: Dict[str, Any], profile: Any, nodes: int, on_gpu: bool) -> Tuple[Optional[float], str]:
    """(expected bus bandwidth in GB/s or None, where it comes from) for a run over ``nodes`` nodes."""
    value = cfg["nccl"]["expect_busbw_gbps"]
    if value is not None:
        return float(value), "config nccl.expect_busbw_gbps"
    if not on_gpu or profile is None:
        return None, "no expected figure on the CPU" if not on_gpu else "no profile"
    key = "busbw_gbps" if nodes <= 1 else "internode_busbw_gbps"
    figure = getattr(profile, key, None)
    if figure is None:
        return None, "profile %s sets no %s" % (getattr(profile, "name", "?"), key)
    return float(figure), "profile %s %s (%s)" % (getattr(profile, "name", "?"), key,
                                                  "one node" if nodes <= 1 else "%d nodes" % nodes)


@dataclass
class Judgement:
    passed: bool
    busbw: Optional[float]          # the judged figure, GB/s (None: no figure, the run failed)
    size: Optional[int]             # the size it was measured at
    expected: Optional[float]       # the expected figure (None: none known)
    need: float                     # the fraction of it a pass needs
    why: str                        # one line


def judged(sizes: Sequence[Dict[str, Any]], on_gpu: bool, judge_from: int) -> List[Dict[str, Any]]:
    """The sizes a run is judged at: on GPUs those >= judge_from (the largest when none reaches it), on
    the CPU the largest."""
    if not sizes:
        return []
    largest = max(sizes, key=lambda s: int(s["size_bytes"]))
    if not on_gpu:
        return [largest]
    big = [s for s in sizes if int(s["size_bytes"]) >= judge_from]
    return big or [largest]


def judge(sizes: Sequence[Dict[str, Any]], ok: bool, error: Optional[str], expected: Optional[float],
          need: float, on_gpu: bool, judge_from: int = 1 << 30) -> Judgement:
    """The verdict on one run (pure)."""
    if not ok or not sizes:
        return Judgement(False, None, None, expected, need, "failed: %s" % (error or "no result"))
    wrong = sum(int(s.get("wrong") or 0) for s in sizes)
    best = max(judged(sizes, on_gpu, judge_from), key=lambda s: float(s["busbw_gbps"]))
    busbw, size = float(best["busbw_gbps"]), int(best["size_bytes"])
    shown = "busbw %s GB/s at %s" % (gbps(busbw), size_text(size))
    if wrong:
        return Judgement(False, busbw, size, expected, need, "%s, %d wrong elements" % (shown, wrong))
    if expected is None:
        return Judgement(True, busbw, size, None, need, shown + " (no expected figure)")
    if busbw < expected * need:
        return Judgement(False, busbw, size, expected, need, "%s, below %.0f%% of the expected %s GB/s"
                         % (shown, 100 * need, gbps(expected)))
    return Judgement(True, busbw, size, expected, need, "%s, expected >= %s GB/s" % (shown, gbps(expected * need)))


def gbps(value: Optional[float]) -> str:
    """A bandwidth with its significant digits: 443 for a GPU, 0.0123 for a CPU test."""
    if value is None:
        return "-"
    return "%.0f" % value if value >= 100 else "%.3g" % value


def size_text(n: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return "%g %s" % (n / scale, unit)
    return "%d B" % n


# ---- records ----------------------------------------------------------------------------------------

def group_record(nodes: Iterable[str], judgement: Judgement, *, job_id: Optional[str], ranks: int, backend: str,
                 device: str, sizes: Sequence[Dict[str, Any]], algo: Optional[str], purpose: str = "run",
                 error: Optional[str] = None, torch_version: Optional[str] = None,
                 nccl_version: Optional[str] = None, env: Optional[Dict[str, str]] = None,
                 elapsed_s: Optional[float] = None, when: Optional[float] = None) -> Dict[str, Any]:
    """The pair-history record of one run (gpuhc/store/pairs.py)."""
    names = sorted(set(nodes))
    keep = ("size_bytes", "count", "time_us", "algbw_gbps", "busbw_gbps", "wrong")
    return {
        "time": round(time.time() if when is None else when, 3), "job_id": job_id, "nodes": names,
        "nodelist": fold(names), "ranks": ranks, "backend": backend, "device": device, "algo": algo,
        "purpose": purpose, "passed": judgement.passed, "busbw_gbps": judgement.busbw,
        "size_bytes": judgement.size, "expected_gbps": judgement.expected, "min_fraction": judgement.need,
        "verdict": judgement.why, "error": error,
        "sizes": [{k: s[k] for k in keep if k in s} for s in sizes],
        "torch_version": torch_version, "nccl_version": nccl_version, "env": dict(env or {}),
        "elapsed_s": None if elapsed_s is None else round(elapsed_s, 3),
    }


def to_result(record: Dict[str, Any]) -> GroupResult:
    """A pair-history record as blame's GroupResult."""
    bw = record.get("busbw_gbps")
    return GroupResult(nodes=frozenset(record["nodes"]), passed=bool(record["passed"]),
                       busbw=float(bw) if bw is not None else None, size=record.get("size_bytes"),
                       job_id=record.get("job_id"), time=float(record.get("time") or 0.0))


# ---- verdict -> reports -----------------------------------------------------------------------------

def drain_message(busbw: Optional[float], partners: Sequence[str], threshold: Optional[float]) -> str:
    """``<busbw> GB/s with <partners> (expected >= <value> GB/s)``: the detail of the drain reason
    ``gpuhc: RESET nccl: ...``; a run that gave no figure (hung, failed) says so."""
    what = "%s GB/s" % gbps(busbw) if busbw is not None else "no result (hung or failed)"
    expected = "expected >= %s GB/s" % gbps(threshold) if threshold is not None else "no expected figure"
    return "%s %s (%s)" % (what, "with %s" % fold(partners) if partners else "on one node", expected)


def _threshold(records: Sequence[Dict[str, Any]]) -> Optional[float]:
    for r in records:
        if r.get("expected_gbps") is not None:
            return float(r["expected_gbps"]) * float(r.get("min_fraction") or 1.0)
    return None


def _metrics(record: Dict[str, Any]) -> Dict[str, float]:
    out: Dict[str, float] = {}
    if record.get("busbw_gbps") is not None:
        out["busbw_gbps"] = round(float(record["busbw_gbps"]), 4)
    if record.get("size_bytes") is not None:
        out["allreduce_bytes"] = int(record["size_bytes"])
    out["nodes"] = len(record.get("nodes") or ())
    for s in record.get("sizes") or ():
        for key in ("time_us", "algbw_gbps", "busbw_gbps"):
            if key in s:
                out["%s@%d" % (key, int(s["size_bytes"]))] = round(float(s[key]), 4)
    return out


def node_reports(nodes: Sequence[str], verdict: Verdict, records: Sequence[Dict[str, Any]], *,
                 job_id: Optional[str], started: float, profile: str = "", ended: Optional[float] = None,
                 bisected: bool = True) -> Dict[str, Report]:
    """One report per node of ``nodes`` (context and check ``nccl``), from the verdict over ``records``
    (their pair-history records): RESET for a convicted node (its drain reason's detail), MONITOR for a
    node at one end of a suspect link, PASS for a node that passed (with the figures of its largest
    passing run), ERROR (undecided: never drains) for a node that only failed."""
    ended = time.time() if ended is None else ended
    threshold = _threshold(records)
    by_nodes = sorted(records, key=lambda r: (-len(r["nodes"]), -float(r["time"])))
    out: Dict[str, Report] = {}
    for node in nodes:
        findings: List[Finding] = []
        mine = [r for r in by_nodes if node in r["nodes"] and len(r["nodes"]) >= 2]
        if node in verdict.convicted:
            ev = verdict.convicted[node]
            low = min((r for r in mine if not r["passed"]), key=lambda r: r.get("busbw_gbps") or 0.0, default=None)
            findings.append(Finding(CHECK, Severity.RESET, drain_message(ev.busbw, ev.partners, threshold),
                                    remediation="drain; quarantine the node (gpuhc quarantine): check its NICs "
                                                "(ibstat, EFA counters), cables and PCIe; then run the "
                                                "all-reduce again",
                                    metrics=_metrics(low) if low else {}))
        for (a, b), ev in verdict.suspect_links.items():
            if node in (a, b):
                other = b if node == a else a
                findings.append(Finding(CHECK, Severity.MONITOR, "suspect link with %s: %s" % (
                    other, drain_message(ev.busbw, (other,), threshold)), device="link %s-%s" % (a, b),
                    remediation="both nodes pass with others: check the switch ports and cables between them"))
        if node in verdict.innocent and node not in verdict.convicted:
            good = next((r for r in mine if r["passed"]), None)
            if good is not None:
                findings.append(Finding(CHECK, Severity.PASS, "busbw %s GB/s at %s with %s" % (
                    gbps(good.get("busbw_gbps")), size_text(int(good.get("size_bytes") or 0)),
                    fold(n for n in good["nodes"] if n != node)), metrics=_metrics(good)))
        if not findings:
            failed = next((r for r in mine if not r["passed"]), None)
            with_ = fold(n for n in failed["nodes"] if n != node) if failed else "?"
            detail = (failed.get("error") or failed.get("verdict") or "failed") if failed else "no result"
            findings.append(Finding(CHECK, Severity.ERROR, "all-reduce with %s failed (%s); %s" % (
                with_, detail, "not narrowed down to a node" if bisected else "not bisected"),
                remediation="run sbatch/nccl-allreduce.sbatch over these nodes, or gpuhc nccl --pairs, to find "
                            "the node or link"))
        out[node] = Report(node=node, context=CONTEXT, profile=profile, started=started, ended=ended,
                           findings=findings, job_id=job_id, suite=SUITE)
    return out


def verdict_text(nodes: Sequence[str], verdict: Verdict, records: Sequence[Dict[str, Any]],
                 actions: Optional[Dict[str, str]] = None) -> str:
    """The verdict in a few lines: convicted nodes with their evidence and what was done, suspect links,
    the innocent, the undecided, the failures nothing explains."""
    threshold = _threshold(records)
    actions = actions or {}
    lines = []
    for node, ev in verdict.convicted.items():
        lines.append("convicted: %s: %s%s" % (node, drain_message(ev.busbw, ev.partners, threshold),
                                              " [%s]" % actions[node] if node in actions else ""))
    for (a, b), ev in verdict.suspect_links.items():
        lines.append("suspect link: %s-%s: %s (both pass with others; not drained)"
                     % (a, b, drain_message(ev.busbw, (), threshold).split(" with ", 1)[0]))
    innocent = [n for n in nodes if n in verdict.innocent and n not in verdict.convicted]
    undecided = [n for n in nodes if n not in verdict.innocent and n not in verdict.convicted]
    if innocent:
        lines.append("passed: %s" % fold(innocent))
    if undecided:
        lines.append("undecided: %s" % fold(undecided))
    for s in verdict.unexplained:
        lines.append("unexplained failure: %s" % fold(s))
    return "\n".join(lines)


def runs_table(records: Sequence[Dict[str, Any]]) -> List[List[str]]:
    """One row per run: nodes, ranks, algorithm, busbw, size, result."""
    return [[r.get("nodelist") or fold(r["nodes"]), str(r.get("ranks") or "-"), r.get("algo") or "-",
             gbps(r.get("busbw_gbps")), size_text(int(r["size_bytes"])) if r.get("size_bytes") else "-",
             "PASS" if r["passed"] else "FAIL", (r.get("error") or "")[:80]] for r in records]


RUNS_HEADER = ["NODES", "RANKS", "ALGO", "BUSBW(GB/s)", "AT", "RESULT", "ERROR"]


# ---- acting -----------------------------------------------------------------------------------------

def conclude(cfg: Dict[str, Any], nodes: Sequence[str], verdict: Verdict, records: Sequence[Dict[str, Any]], *,
             job_id: Optional[str], started: float, profile: str = "", bisected: bool = True,
             slurm: Any = "auto", record: bool = True) -> Tuple[Dict[str, Report], Dict[str, str], List[str]]:
    """Act on a verdict: drain each convicted node through acting (ownership, breaker, dry_run), and
    record every node's report. Returns (reports, node -> what was done, warnings). ``slurm``: a Slurm
    backend, None for none, or "auto" (acting.slurm_backend)."""
    from .. import acting, policy
    from ..store import Store

    reports = node_reports(nodes, verdict, records, job_id=job_id, started=started, profile=profile,
                           bisected=bisected)
    done: Dict[str, str] = {}
    notes: List[str] = []
    if verdict.convicted:
        backend = acting.slurm_backend(cfg) if slurm == "auto" else slurm
        for node in verdict.convicted:
            action = acting.decide_and_act(cfg, reports[node], backend)
            if action.kind != policy.NONE:
                reports[node].action = action.kind
            done[node] = "%s%s" % (action.kind, " (%s)" % action.why if action.why and action.kind != policy.DRAIN
                                   else "")
    if record:
        store = Store.from_config(cfg)
        for node, rep in reports.items():
            try:
                store.record(rep)
            except Exception as exc:       # a drain stands without its record; say so
                notes.append("result of %s not recorded: %s" % (node, exc))
    return reports, done, notes
