"""`gpuhc nccl`: one rank of a multi-node all-reduce, run by srun (one task per GPU; on the CPU one per
node, gloo), measured like nccl-tests by the engine (gpuhc/workloads/allreduce.py).

Slurm gives the layout: ``SLURM_PROCID`` (rank), ``SLURM_NTASKS`` (ranks), ``SLURM_LOCALID`` (the GPU),
``SLURM_STEP_NODELIST`` (else ``SLURM_JOB_NODELIST``): the rendezvous is on its first node (where Slurm
puts rank 0), at a port derived from the job and step ids (``MASTER_ADDR``/``MASTER_PORT`` override
both), so parallel steps of one job never meet. The engine bounds init and every collective by
``nccl.timeout``: a hung peer ends the run as a failure of the group within it.

On a simulated node (config ``simulate:``), the node's scenario ``deep.nccl`` makes its ranks add
``delay_s`` to each collective or hang in it: the real collective of the whole group slows or hangs,
as with a bad node.

Rank 0 judges the run (controller/nccl.py judge: the expected bus bandwidth of the profile or
config, for the node count), prints the table nccl-tests prints, appends the group's record to the
pair history, and, run on its own, records each node's report (PASS, or an undecided ERROR: one run
cannot say which node is to blame; sbatch/nccl-allreduce.sbatch bisects). Run by the job's driver
(``--step``) it prints its record on one line for the driver instead, which concludes.
"""
from __future__ import annotations

import glob
import json
import os
import sys
import time
import zlib
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple

from ..controller import nccl as nccl_control
from ..errors import GpuhcError

PORT_BASE = 20000
PORT_SPAN = 20000


@dataclass
class Layout:
    rank: int
    world: int
    local_rank: int
    nodes: List[str]             # the step's nodes, rank 0's first
    job_id: Optional[str]
    step_id: Optional[str]
    master_addr: str
    master_port: int

    @property
    def run_id(self) -> Optional[str]:
        if not self.job_id:
            return None
        return "%s.%s" % (self.job_id, self.step_id) if self.step_id else self.job_id


def _number(text: Optional[str]) -> int:
    if text and text.isdigit():
        return int(text)
    return zlib.crc32((text or "").encode())


def rendezvous_port(job_id: Optional[str], step_id: Optional[str]) -> int:
    """A port from the job and step ids: the steps of a job, and jobs next to each other, differ."""
    return PORT_BASE + (_number(job_id) * 61 + _number(step_id)) % PORT_SPAN


def slurm_layout(env: Optional[Dict[str, str]] = None, resolve: Optional[Callable[[str], str]] = None) -> Layout:
    """The rank's place in the run from Slurm's environment; GpuhcError outside srun."""
    from ..hostlist import expand

    env = dict(os.environ) if env is None else env
    if "SLURM_PROCID" not in env:
        raise GpuhcError("gpuhc nccl runs under srun, one task per GPU (SLURM_PROCID is not set): "
                         "sbatch -N K sbatch/nccl-allreduce.sbatch runs it across K nodes")
    try:
        rank = int(env["SLURM_PROCID"])
        world = int(env.get("SLURM_STEP_NUM_TASKS") or env.get("SLURM_NTASKS") or 1)
        local = int(env.get("SLURM_LOCALID") or 0)
    except ValueError as exc:
        raise GpuhcError("Slurm's task environment is not numbers: %s" % exc) from None
    nodelist = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or env.get("SLURMD_NODENAME") or ""
    nodes = expand(nodelist, "SLURM_STEP_NODELIST") if nodelist else []
    if not nodes:
        raise GpuhcError("no node list in Slurm's environment (SLURM_STEP_NODELIST, SLURM_JOB_NODELIST)")
    job, step = env.get("SLURM_JOB_ID"), env.get("SLURM_STEP_ID")
    if env.get("MASTER_ADDR"):
        addr = env["MASTER_ADDR"]
    elif resolve is not None:
        addr = resolve(nodes[0])
    else:
        from ..backends.slurm_steps import node_address

        addr = node_address(nodes[0])
    port = int(env["MASTER_PORT"]) if (env.get("MASTER_PORT") or "").isdigit() else rendezvous_port(job, step)
    return Layout(rank, world, local, nodes, job, step, addr, port)


def choose_device(wanted: str, simulated: bool) -> str:
    """cuda or cpu: ``auto`` is cuda where the node has NVIDIA devices (and is not simulated)."""
    if wanted in ("cuda", "cpu"):
        return wanted
    return "cuda" if not simulated and glob.glob("/dev/nvidia[0-9]*") else "cpu"


def scenario_fault(cfg: Dict[str, Any], node: str, simulate: Optional[str]) -> Tuple[float, bool]:
    """(delay per collective, hang) of a simulated node; (0, False) on real hardware."""
    target = simulate or cfg.get("simulate")
    if not target:
        return 0.0, False
    from .. import scenario
    from ..backends.sim import SimDeep

    return SimDeep(scenario.load(target, node)).nccl_fault()


def parse_sizes(text: Optional[str]) -> Optional[List[int]]:
    if not text:
        return None
    try:
        sizes = [int(x) for x in text.replace(" ", "").split(",") if x]
    except ValueError:
        raise GpuhcError("--sizes: bytes, comma-separated (4096,1048576), not %r" % text) from None
    if not sizes or any(s < 4 for s in sizes):
        raise GpuhcError("--sizes: every size at least 4 bytes (one float32), got %r" % text)
    return sizes


def detect_profile(cfg: Dict[str, Any], node: str, simulate: Optional[str], on_gpu: bool) -> Any:
    """The node's profile (for the expected bandwidth when config sets none): config, Slurm feature,
    instance type (a scenario's, or the cloud's), GPU model and count as torch sees them."""
    from .. import profiles as profile_file

    profiles = profile_file.load(cfg.get("profiles"))
    target = simulate or cfg.get("simulate")

    def features() -> List[str]:
        if not cfg["detect"]["slurm_features"]:
            return []
        from ..backends.slurm_cli import node_features

        return node_features(node, timeout=5.0)

    def instance_type() -> Optional[str]:
        if target:
            from .. import scenario

            return (scenario.load(target, node).node or {}).get("instance_type")
        if not cfg["detect"]["cloud_metadata"]:
            return None
        from ..backends.host import LocalHost

        return LocalHost().instance_type(float(cfg["detect"]["cloud_timeout"]))

    def gpu_model() -> Optional[Tuple[str, int]]:
        if not on_gpu:
            return None
        from ..workloads import _common as workload_common

        t = workload_common.torch()
        return (t.cuda.get_device_name(0), t.cuda.device_count()) if t.cuda.is_available() else None

    try:
        return profile_file.detect(profiles, forced=cfg.get("profile"), features=features, instance_type=instance_type,
                        gpu_model=gpu_model).profile
    except Exception:
        return None


def progress_to_stderr(line: str) -> None:
    print("gpuhc nccl: %s" % line, file=sys.stderr, flush=True)


def run_rank(cfg: Dict[str, Any], device: Optional[str] = None, sizes: Optional[List[int]] = None,
             algo: Optional[str] = None, purpose: str = "run", step: bool = False, simulate: Optional[str] = None,
             node: Optional[str] = None, env: Optional[Dict[str, str]] = None,
             out: Callable[[str], None] = print) -> Tuple[Optional[Dict[str, Any]], int]:
    """One rank: run the sweep; rank 0 judges, prints, records. (rank 0's record or None, exit code)."""
    from ..session import node_name
    from ..workloads import allreduce as allreduce_workload

    conf = cfg["nccl"]
    if int(conf["iters"]) < 1:
        raise GpuhcError("nccl.iters: at least 1 timed iteration, got %s" % conf["iters"])
    layout = slurm_layout(env)
    node = node_name(node)
    simulated = bool(simulate or cfg.get("simulate"))
    dev = choose_device(device or conf["device"], simulated)
    backend = "nccl" if dev == "cuda" else "gloo"
    sizes = sizes or [int(s) for s in conf["sizes"]] or list(allreduce_workload.DEFAULT_SIZES[backend])
    if algo:
        os.environ["NCCL_ALGO"] = algo          # read by NCCL at init: set before it
    delay, hang = scenario_fault(cfg, node, simulate)
    started = time.time()
    res = allreduce_workload.run(layout.rank, layout.world, backend=backend, sizes=sizes, warmup=int(conf["warmup"]),
                iters=int(conf["iters"]), timeout_s=float(conf["timeout"]),
                init_method="tcp://%s:%d" % (layout.master_addr, layout.master_port),
                delay_hook=delay or None, hang=hang, device="cpu" if dev == "cpu" else None,
                progress=progress_to_stderr if layout.rank == 0 else None)
    if layout.rank != 0:
        if not res.ok:
            progress_to_stderr("rank %d on %s: %s: %s" % (layout.rank, node, res.failed_step, res.error))
        return None, 0 if res.ok else 1
    on_gpu = dev == "cuda"
    nnodes = len(layout.nodes)
    profile = None if conf["expect_busbw_gbps"] is not None else detect_profile(cfg, node, simulate, on_gpu)
    expected, source = nccl_control.expected_busbw(cfg, profile, nnodes, on_gpu)
    need = float(cfg["thresholds"]["allreduce_min_fraction"])
    sizes_out = [s.as_dict() for s in res.sizes]
    judgement = nccl_control.judge(sizes_out, res.ok, res.error, expected, need, on_gpu, int(conf["judge_from_bytes"]))
    record = nccl_control.group_record(layout.nodes, judgement, job_id=layout.run_id, ranks=layout.world, backend=backend,
                            device=res.device, sizes=sizes_out, algo=algo or os.environ.get("NCCL_ALGO"),
                            purpose=purpose, error=res.error, torch_version=res.torch_version,
                            nccl_version=res.nccl_version, env=res.env, elapsed_s=res.elapsed_s)
    out(header(layout, backend, res, expected, source, need))
    out(allreduce_workload.format_table(res))
    out("# %s all-reduce over %s (%d ranks): %s" % ("PASS" if judgement.passed else "FAIL", record["nodelist"],
                                                   layout.world, judgement.why))
    from ..store import PairHistory, StoreError

    if nnodes >= 2:
        try:
            PairHistory.from_config(cfg).append(record)
        except (StoreError, OSError) as exc:
            progress_to_stderr("warning: pair history not written: %s" % exc)
    if step:
        out(nccl_control.RESULT_TAG + json.dumps(record, separators=(",", ":")))
    else:
        conclude_alone(cfg, layout, record, started, profile)
    return record, 0 if judgement.passed else 1


def conclude_alone(cfg: Dict[str, Any], layout: Layout, record: Dict[str, Any], started: float, profile: Any) -> None:
    """A run on its own (not a step of the job's driver): every node's report from this one run. A
    group that passed clears every node; a group that failed names no node (ERROR, undecided), except a
    run on one node, which is that node's own."""
    from ..controller.blame import Evidence, Verdict, convict

    nodes = layout.nodes
    if len(nodes) == 1 and not record["passed"]:
        result = nccl_control.to_result(record)
        verdict = Verdict(convicted={nodes[0]: Evidence((result,), (), result.busbw, result.size)},
                          suspect_links={}, innocent=frozenset(), undecided=frozenset(), unexplained=())
    elif len(nodes) == 1:
        verdict = Verdict(convicted={}, suspect_links={}, innocent=frozenset(nodes), undecided=frozenset(),
                          unexplained=())
    else:
        verdict = convict([nccl_control.to_result(record)])
    reports, done, notes = nccl_control.conclude(cfg, nodes, verdict, [record], job_id=layout.job_id, started=started,
                                      profile=getattr(profile, "name", "") or "", bisected=False)
    for node, what in done.items():
        progress_to_stderr("%s: %s" % (node, what))
    for note in notes:
        progress_to_stderr("warning: %s" % note)


def header(layout: Layout, backend: str, res: Any, expected: Optional[float], source: str, need: float) -> str:
    """nccl-tests' preamble: who runs where, the versions, what is expected, the NCCL_* settings."""
    from ..hostlist import fold

    lines = ["# gpuhc nccl: all-reduce, %d ranks on %d nodes (%s), %s on %s, job %s" % (
        layout.world, len(layout.nodes), fold(layout.nodes), backend, res.device, layout.run_id or "-"),
        "# torch %s%s" % (res.torch_version, ", NCCL %s" % res.nccl_version if res.nccl_version else ""),
        "# expected busbw: %s" % ("%s GB/s, pass at >= %s GB/s (%s)" % (nccl_control.gbps(expected), nccl_control.gbps(expected * need), source)
                                  if expected is not None else source)]
    for key, value in sorted((res.env or {}).items()):
        lines.append("# %s=%s" % (key, value))
    return "\n".join(lines)
