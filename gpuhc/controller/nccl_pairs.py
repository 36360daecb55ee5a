"""`gpuhc nccl --pairs NODELIST`: the pairwise all-reduce sweep, from the controller.

Rounds of disjoint pairs by the circle method (blame.pair_rounds: n-1 rounds of n/2 pairs cover every
pair once; ``--quick``: the first two rounds, every node with two partners). Each pair is a job of
sbatch/nccl-allreduce.sbatch (``--pair``: the two nodes run once, NCCL_ALGO=Ring, and the job's rank 0
writes the result to the store's pair history), exclusive, with a time limit and a deadline. All are
submitted at once: Slurm runs the disjoint pairs of a round side by side and a node's next pair when
its last ends. Then the pair history of these jobs goes to blame.convict, and the verdict is acted on
as a job's bisection is (controller/nccl.py conclude): a node failing with partners that pass with
others is drained, a pair failing while both pass elsewhere is a suspect link (shown, not drained).

Never touches a GPU: it plans, submits, waits and judges.
"""
from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from ..errors import GpuhcError
from ..hostlist import expand, fold
from . import nccl as nccl_control
from .blame import Bisection, Verdict, convict, pair_rounds

QUICK_ROUNDS = 2
POLL_S = 2.0


def default_script() -> str:
    here = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    return os.path.join(here, "sbatch", "nccl-allreduce.sbatch")


@dataclass
class PairJob:
    nodes: Tuple[str, ...]
    round: int
    job_id: Optional[str] = None
    state: str = ""
    error: str = ""


@dataclass
class PairsOutcome:
    nodes: List[str]
    jobs: List[PairJob]
    records: List[Dict[str, Any]] = field(default_factory=list)
    verdict: Optional[Verdict] = None
    actions: Dict[str, str] = field(default_factory=dict)
    notes: List[str] = field(default_factory=list)
    dry_run: bool = False

    @property
    def exit_code(self) -> int:
        if self.dry_run:
            return 0
        if not self.records:
            return 3
        v = self.verdict
        if v is not None and (v.convicted or v.suspect_links or v.unexplained):
            return 1
        return 0 if all(r["passed"] for r in self.records) and len(self.records) == len(self.jobs) else 1

    def to_dict(self) -> Dict[str, Any]:
        v = self.verdict
        return {
            "nodes": self.nodes, "dry_run": self.dry_run,
            "jobs": [{"nodes": list(j.nodes), "round": j.round, "job_id": j.job_id, "state": j.state,
                      "error": j.error} for j in self.jobs],
            "records": self.records,
            "convicted": {n: {"partners": list(e.partners), "busbw_gbps": e.busbw} for n, e in v.convicted.items()}
            if v else {},
            "suspect_links": [list(link) for link in v.suspect_links] if v else [],
            "innocent": sorted(v.innocent) if v else [],
            "undecided": sorted(v.undecided) if v else [],
            "actions": self.actions, "notes": self.notes, "exit_code": self.exit_code,
        }


def plan(nodes: Sequence[str], quick: bool = False) -> List[PairJob]:
    """The pair jobs, round by round (pure)."""
    rounds = pair_rounds(nodes, QUICK_ROUNDS if quick else None)
    return [PairJob((a, b), i + 1) for i, pairs in enumerate(rounds) for a, b in pairs]


def job_spec(cfg: Dict[str, Any], job: PairJob, script: str, args: Sequence[str], ntasks_per_node: Optional[int],
             now: float) -> Any:
    from ..backends.slurm import JobSpec

    conf = cfg["nccl"]
    return JobSpec(script=script, args=["--pair"] + list(args), name="gpuhc-nccl-pair", nodelist=list(job.nodes),
                   nodes=len(job.nodes), ntasks_per_node=ntasks_per_node, exclusive=True,
                   time_limit=max(1, int(-(-float(conf["time_limit"]) // 60))),
                   deadline=int(now + float(conf["deadline"])), partition=conf["partition"], output=conf["output"])


def pairs(cfg: Dict[str, Any], nodelist: str, quick: bool = False, device: Optional[str] = None,
          ntasks_per_node: Optional[int] = None, sizes: Optional[str] = None, dry_run: bool = False,
          slurm: Any = None, progress: Optional[Callable[[str], None]] = None) -> PairsOutcome:
    """Submit the pair jobs, wait for them, judge and act (see the module's doc)."""
    if progress is None:
        def progress(line: str) -> None:
            print("gpuhc nccl: %s" % line, file=sys.stderr, flush=True)
    nodes = list(dict.fromkeys(expand(nodelist, "--pairs")))
    if len(nodes) < 2:
        raise GpuhcError("--pairs: at least two nodes, got %r" % nodelist)
    jobs = plan(nodes, quick)
    outcome = PairsOutcome(nodes, jobs, dry_run=dry_run)
    if dry_run:
        return outcome
    script = cfg["nccl"]["script"] or default_script()
    if not os.path.isfile(script):
        raise GpuhcError("nccl.script: %s not found (the pair jobs' batch script)" % script)
    if slurm is None:
        from ..acting import slurm_backend

        slurm = slurm_backend(cfg)
        if slurm is None:
            raise GpuhcError("no Slurm to submit the pair jobs to (slurm.backend: none, or Slurm not configured here)")
    from ..store import PairHistory

    args: List[str] = []
    if device:
        args += ["--device", device]
    if sizes:
        args += ["--sizes", sizes]
    started = time.time()
    history = PairHistory.from_config(cfg)
    outcome.records = run_jobs(cfg, slurm, jobs, script, args, ntasks_per_node, history, progress, outcome.notes)
    results = [nccl_control.to_result(r) for r in outcome.records]
    if not any(not r.passed for r in results):
        outcome.verdict = convict(results) if results else None
    else:
        # failures: blame's planner asks for more runs (a suspect beside partners that passed, a pair
        # again) until its rule convicts or clears; no check run of the whole list (verify=False)
        planner = Bisection(nodes, results, verify=False)
        while True:
            groups = planner.next_groups()
            if not groups:
                break
            number = max(j.round for j in outcome.jobs) + 1
            more = [PairJob(tuple(g), number) for g in groups]
            outcome.jobs.extend(more)
            progress("round %d: %s" % (number, "  ".join(fold(g) for g in groups)))
            records = run_jobs(cfg, slurm, more, script, args, ntasks_per_node, history, progress, outcome.notes)
            outcome.records.extend(records)
            for r in records:
                planner.record(nccl_control.to_result(r))
            if not records:
                break                    # nothing came back: asking again would ask the same
        outcome.verdict = planner.verdict()
    if outcome.verdict is None:
        return outcome
    _, outcome.actions, notes = nccl_control.conclude(cfg, nodes, outcome.verdict, outcome.records, job_id=None,
                                           started=started, slurm=slurm)
    outcome.notes += notes
    return outcome


def run_jobs(cfg: Dict[str, Any], slurm: Any, jobs: List[PairJob], script: str, args: Sequence[str],
             ntasks_per_node: Optional[int], history: Any, progress: Callable[[str], None],
             notes: List[str]) -> List[Dict[str, Any]]:
    """Submit the jobs at once, wait for them, and return their records from the pair history."""
    from ..backends.slurm import SlurmError
    from ..store import StoreError

    now = time.time()
    for job in jobs:
        try:
            job.job_id = slurm.submit(job_spec(cfg, job, script, args, ntasks_per_node, now))
            job.state = "PENDING"
        except SlurmError as exc:
            job.error = str(exc)
            job.state = "NOT SUBMITTED"
            progress("%s: not submitted: %s" % (fold(job.nodes), exc))
    submitted = [j for j in jobs if j.job_id]
    if not submitted:
        return []
    progress("%d jobs submitted (round %s)" % (len(submitted), ", ".join(sorted({str(j.round) for j in submitted}))))
    wait(slurm, submitted, float(cfg["nccl"]["pairs_wait"]), progress)
    try:
        records = history.read(job_ids=[str(j.job_id) for j in submitted], since=now - 60)
    except StoreError as exc:
        raise GpuhcError("pair history unreadable: %s" % exc) from None
    out = []
    for job in submitted:
        mine = [r for r in records if str(r.get("job_id") or "").split(".")[0] == job.job_id
                and frozenset(r["nodes"]) == frozenset(job.nodes)]
        if mine:
            out.append(mine[-1])
        else:
            notes.append("%s (job %s, %s): no result in the pair history" % (fold(job.nodes), job.job_id,
                                                                            job.state or "?"))
    return out


def wait(slurm: Any, jobs: List[PairJob], limit: float, progress: Callable[[str], None]) -> None:
    """Until every job has finished (or left Slurm's memory), at most ``limit`` s; the rest are cancelled."""
    from ..backends.slurm import SlurmError

    deadline = time.monotonic() + limit
    left = {j.job_id: j for j in jobs}
    while left:
        try:
            seen = {info.job_id: info for info in slurm.jobs(ids=list(left))}
        except SlurmError as exc:
            progress("warning: jobs unreadable: %s" % exc)
            seen = None
        if seen is not None:
            for jid, job in list(left.items()):
                info = seen.get(jid)
                if info is None or info.finished:
                    job.state = info.state if info is not None else "ENDED"
                    progress("pair %s: job %s %s" % (fold(job.nodes), jid, job.state))
                    del left[jid]
                else:
                    job.state = info.state
        if not left:
            return
        if time.monotonic() > deadline:
            for jid, job in left.items():
                try:
                    slurm.cancel(jid)
                except SlurmError:
                    pass
                job.state = "CANCELLED (nccl.pairs_wait)"
                progress("pair %s: job %s cancelled after nccl.pairs_wait" % (fold(job.nodes), jid))
            return
        time.sleep(POLL_S)


def text(outcome: PairsOutcome) -> str:
    from ..output import table

    rows = []
    by_job = {str(r.get("job_id") or "").split(".")[0]: r for r in outcome.records}
    for job in outcome.jobs:
        r = by_job.get(job.job_id or "")
        rows.append([str(job.round), fold(job.nodes), job.job_id or "-", job.state or "-",
                     nccl_control.gbps(r.get("busbw_gbps")) if r else "-",
                     ("PASS" if r["passed"] else "FAIL") if r else "-", (r.get("error") or "")[:60] if r else job.error])
    parts = [table(rows, ["ROUND", "NODES", "JOB", "STATE", "BUSBW(GB/s)", "RESULT", "ERROR"])]
    if outcome.dry_run:
        parts.append("(dry run: nothing submitted)")
    elif outcome.verdict is not None:
        parts += ["", nccl_control.verdict_text(outcome.nodes, outcome.verdict, outcome.records, outcome.actions)
                  or "nothing decided"]
    for note in outcome.notes:
        parts.append("note: %s" % note)
    return "\n".join(parts)
