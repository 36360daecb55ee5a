"""`gpuhc nccl --job-bisect`: the driver of sbatch/nccl-allreduce.sbatch, on the job's first node.

It runs the all-reduce over all the job's nodes as one srun step (`gpuhc nccl --step` on every rank).
When that fails, it narrows the failure down inside its own allocation: blame.Bisection (pure, in
controller/blame.py) proposes rounds of disjoint node groups (halves; then each suspect of a failing group
of four or fewer beside nodes that passed, which is leave-one-out's evidence, padded with passing nodes),
the driver runs each round's groups side by side as ``srun -w GROUP -N len(GROUP)`` steps, reads each
step's record from the line its rank 0 prints (a step that printed none - rank 0 hung or crashed - is a
failure with no figure, recorded in the pair history here), and records them into the plan, which
reuses every result already measured. Groups of two nodes run with NCCL_ALGO=Ring. It stops when the plan
is done, the round budget is spent, or ``nccl.budget`` seconds would be passed by another round.

Then the verdict (blame's rule: a node fails with partners that pass elsewhere, or leaving it out makes
its group pass) is acted on (controller/nccl.py conclude): a convicted node is drained ``gpuhc: RESET
nccl: ...`` under the ownership and breaker rules; every node gets its report; a suspect link is shown and
recorded, never drained. Exit 0 when the whole group passed at first, 1 otherwise.

With ``pair`` (the pair jobs of `gpuhc nccl --pairs`) the group runs once, with Ring, and nothing is
concluded here: the controller judges the pairs together.
"""
from __future__ import annotations

import glob
import os
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Sequence

from ..controller import nccl as nccl_control
from ..errors import GpuhcError
from ..hostlist import expand, fold


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def tasks_per_node(explicit: Optional[int], env: Dict[str, str], device: str) -> int:
    """Ranks per node: --ntasks-per-node, else the job's (sbatch --ntasks-per-node), else one per GPU of
    this node (one on the CPU)."""
    if explicit:
        return int(explicit)
    value = (env.get("SLURM_NTASKS_PER_NODE") or "").split("(")[0]
    if value.isdigit() and int(value) > 0:
        return int(value)
    if device == "cpu":
        return 1
    return max(1, len(glob.glob("/dev/nvidia[0-9]*")))


class Driver:
    def __init__(self, cfg: Dict[str, Any], nodes: Sequence[str], job_id: str, ntasks: int, device: str,
                 base_command: Sequence[str], sizes: Optional[str] = None,
                 out: Callable[[str], None] = print, err: Optional[Callable[[str], None]] = None) -> None:
        self.cfg = cfg
        self.nodes = list(nodes)
        self.job_id = job_id
        self.ntasks = ntasks
        self.device = device
        self.base = list(base_command)
        self.sizes = sizes
        self.out = out
        self.err = err if err is not None else _stderr
        self.records: List[Dict[str, Any]] = []
        self.steps = 0

    def argv(self, group: Sequence[str], purpose: str) -> List[str]:
        from ..backends.slurm_steps import srun_argv

        cmd = self.base + ["nccl", "--step", "--device", self.device, "--purpose", purpose]
        if len(group) == 2:
            cmd += ["--algo", "Ring"]        # on two nodes a tree can exceed the network and hide a bad link
        if self.sizes:
            cmd += ["--sizes", self.sizes]
        return srun_argv(group, self.ntasks, cmd)

    def run_round(self, groups: Sequence[Sequence[str]], purpose: str, prefix: bool = True) -> List[Dict[str, Any]]:
        """Run the groups side by side (one srun step each) and return their records, in order."""
        from ..backends.slurm_steps import run_steps

        labels = [fold(g) for g in groups]

        def relay(i: int, line: str, is_err: bool) -> None:
            if line.startswith(nccl_control.RESULT_TAG):
                return
            text = "[%s] %s" % (labels[i], line) if prefix else line
            (self.err if is_err else self.out)(text)

        conf = self.cfg["nccl"]
        # a rank never outlives each step's timeout plus the watchdog's grace; srun is a last bound
        limit = float(conf["budget"])
        started = time.time()
        results = run_steps([self.argv(g, purpose) for g in groups], relay, limit_s=limit)
        self.steps += len(groups)
        records = []
        for group, res in zip(groups, results):
            record = None
            for line in reversed(res.stdout):
                if line.startswith(nccl_control.RESULT_TAG):
                    try:
                        import json

                        record = json.loads(line[len(nccl_control.RESULT_TAG):])
                    except ValueError:
                        record = None
                    break
            if record is None or sorted(record.get("nodes") or []) != sorted(group):
                record = self.no_result(group, res, purpose, started)
            records.append(record)
        self.records.extend(records)
        return records

    def no_result(self, group: Sequence[str], res: Any, purpose: str, started: float) -> Dict[str, Any]:
        """A step whose rank 0 printed no record (hung past its watchdog, crashed, never started): a failure
        of the group with no figure, recorded in the pair history here."""
        from ..store import PairHistory, StoreError

        why = "cancelled after %.0f s" % res.elapsed_s if res.cancelled else \
            "srun exited %s with no result from rank 0" % res.returncode
        need = float(self.cfg["thresholds"]["allreduce_min_fraction"])
        expected = self.cfg["nccl"]["expect_busbw_gbps"]
        judgement = nccl_control.Judgement(False, None, None, float(expected) if expected is not None else None, need,
                                "failed: %s" % why)
        record = nccl_control.group_record(group, judgement, job_id=self.job_id, ranks=len(group) * self.ntasks,
                                backend="nccl" if self.device == "cuda" else "gloo", device=self.device, sizes=[],
                                algo="Ring" if len(group) == 2 else None, purpose=purpose, error=why,
                                elapsed_s=time.time() - started)
        try:
            PairHistory.from_config(self.cfg).append(record)
        except (StoreError, OSError) as exc:
            self.err("gpuhc nccl: warning: pair history not written: %s" % exc)
        return record


def job_bisect(cfg: Dict[str, Any], device: Optional[str] = None, ntasks_per_node: Optional[int] = None,
               bisect: Optional[bool] = None, pair: bool = False, sizes: Optional[str] = None,
               base_command: Optional[Sequence[str]] = None, env: Optional[Dict[str, str]] = None,
               out: Callable[[str], None] = print) -> int:
    """The driver (see the module's doc). Returns the exit code."""
    from ..controller.blame import Bisection, Evidence, Verdict, convict
    from .nccl import choose_device

    env = dict(os.environ) if env is None else env
    job_id = env.get("SLURM_JOB_ID")
    nodelist = env.get("SLURM_JOB_NODELIST")
    if not job_id or not nodelist:
        raise GpuhcError("gpuhc nccl --job-bisect runs inside a batch job (SLURM_JOB_ID, SLURM_JOB_NODELIST): "
                         "sbatch -N K sbatch/nccl-allreduce.sbatch")
    nodes = expand(nodelist, "SLURM_JOB_NODELIST")
    conf = cfg["nccl"]
    dev = choose_device(device or conf["device"], bool(cfg.get("simulate")))
    ntasks = tasks_per_node(ntasks_per_node, env, dev)
    bisect = conf["bisect"] if bisect is None else bisect
    base = list(base_command) if base_command else [sys.executable, "-m", "gpuhc"]
    driver = Driver(cfg, nodes, job_id, ntasks, dev, base, sizes=sizes, out=out)
    started = time.time()
    clock = time.monotonic()
    out("gpuhc nccl: job %s: all-reduce over %s (%d nodes, %d ranks each, %s)"
        % (job_id, fold(nodes), len(nodes), ntasks, dev))
    first = driver.run_round([nodes], "pair" if pair else "run", prefix=False)[0]
    if pair:
        return 0 if first["passed"] else 1
    rounds = 0
    if first["passed"] or len(nodes) < 2:
        if len(nodes) == 1:
            res = nccl_control.to_result(first)
            verdict = Verdict(convicted={} if first["passed"] else {nodes[0]: Evidence((res,), (), res.busbw, res.size)},
                              suspect_links={}, innocent=frozenset(nodes) if first["passed"] else frozenset(),
                              undecided=frozenset(), unexplained=())
        else:
            verdict = convict([nccl_control.to_result(first)])
    elif not bisect:
        verdict = convict([nccl_control.to_result(first)])
        out("gpuhc nccl: the group failed; not bisected (nccl.bisect false or --no-bisect)")
    else:
        out("\n== the group failed: bisecting inside the job's allocation ==")
        plan = Bisection(nodes, [nccl_control.to_result(first)])
        budget = float(conf["budget"])
        last = time.monotonic() - clock
        while True:
            elapsed = time.monotonic() - clock
            if elapsed + last > budget:
                out("gpuhc nccl: stopping: another round would pass nccl.budget (%g s)" % budget)
                break
            groups = plan.next_groups()
            if not groups:
                break
            rounds += 1
            out("-- round %d: %s" % (rounds, "  ".join(fold(g) for g in groups)))
            t0 = time.monotonic()
            for record in driver.run_round(groups, "bisect"):
                plan.record(nccl_control.to_result(record))
                out("-- %s: %s" % (record["nodelist"], "PASS" if record["passed"] else "FAIL: %s" % record["verdict"]))
            last = time.monotonic() - t0
        verdict = plan.verdict()
    from ..output import table

    if len(driver.records) > 1:
        out("\n== %d runs in %d rounds of bisection ==" % (len(driver.records), rounds))
        out(table(nccl_control.runs_table(driver.records), nccl_control.RUNS_HEADER))
    _, done, notes = nccl_control.conclude(cfg, nodes, verdict, driver.records, job_id=job_id, started=started,
                                bisected=bisect and not first["passed"])
    out("\n== verdict ==")
    out(nccl_control.verdict_text(nodes, verdict, driver.records, done) or "nothing decided")
    for note in notes:
        out("gpuhc nccl: warning: %s" % note)
    return 0 if first["passed"] else 1
