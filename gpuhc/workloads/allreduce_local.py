"""The all-reduce sweep's local launcher and command line (issues 13 and 16).

`launch_local()` spawns `world` ranks of gpuhc.workloads.allreduce on 127.0.0.1 (gloo on the CPU, or NCCL with
one rank per GPU) for the tests and for a one-node run:
    python -m gpuhc.workloads.allreduce --launch-local 2 [--backend gloo] [--sizes 4096,1048576]

Each rank is :func:`gpuhc.workloads.allreduce_rank.run` in its own process (``python -m
gpuhc.workloads.allreduce --rank R ...``): it bounds itself, as that module says; :func:`launch_local` gathers
the ranks' JSON results into a :class:`LocalRun`, and :func:`format_table` prints any of them as nccl-tests does.
"""

import argparse
import dataclasses
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from typing import Callable, List, Optional

from . import _common as common
from .allreduce_rank import WATCHDOG_EXIT, AllReduceRun, SizeResult, run


def format_table(results) -> str:
    """nccl-tests' all_reduce_perf layout (in-place columns only). results: an AllReduceRun, a
    LocalRun, or a list of SizeResult / dicts."""
    if isinstance(results, LocalRun):
        results = results.sizes
    elif isinstance(results, AllReduceRun):
        results = results.sizes
    rows = [r if isinstance(r, SizeResult) else SizeResult(**r) for r in results]
    out = ["#%11s  %12s  %8s  %6s  %9s  %7s  %7s  %6s" % ("size", "count", "type", "redop", "time", "algbw", "busbw",
                                                           "#wrong"),
           "#%11s  %12s  %8s  %6s  %9s  %7s  %7s  %6s" % ("(B)", "(elements)", "", "", "(us)", "(GB/s)", "(GB/s)", "")]
    for r in rows:
        out.append("%12d  %12d  %8s  %6s  %9.1f  %7.2f  %7.2f  %6d" % (
            r.size_bytes, r.count, r.dtype, r.redop, r.time_us, r.algbw_gbps, r.busbw_gbps, r.wrong))
    if rows:
        out.append("# Avg bus bandwidth    : %g" % (sum(r.busbw_gbps for r in rows) / len(rows)))
    return "\n".join(out)

@dataclasses.dataclass
class LocalRun(common.Result):
    ok: bool
    world: int
    backend: str
    ranks: List[Optional[AllReduceRun]]    # None for a rank that returned nothing (killed, crashed)
    returncodes: List[Optional[int]]
    errors: List[str]                     # one line per failed rank
    elapsed_s: float

    @property
    def sizes(self) -> List[SizeResult]:
        """The group's figures: those of the first rank that returned any."""
        for r in self.ranks:
            if r is not None and r.sizes:
                return r.sizes
        return []


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_local(world: int, backend: str = "gloo", sizes: Optional[List[int]] = None, warmup: int = 5,
                 iters: int = 20, timeout_s: float = 120.0, delays: Optional[dict] = None,
                 hang_rank: Optional[int] = None, devices: Optional[List[str]] = None, port: Optional[int] = None,
                 watchdog_grace_s: Optional[float] = None, wait_s: Optional[float] = None,
                 progress: Optional[Callable[[str], None]] = None) -> LocalRun:
    """Run `world` ranks as separate processes on this machine (127.0.0.1, a free port): gloo on
    the CPU, or NCCL with rank r on cuda:r (devices overrides). delays: {rank: seconds added per
    collective}; hang_rank: that rank hangs at its first timed all-reduce. Each rank bounds itself
    (see the module doc); wait_s, if given, is a last bound after which the ranks still running are
    killed. Rank 0's progress lines are passed to progress as they come."""
    delays = delays or {}
    port = port or free_port()
    init = "tcp://127.0.0.1:%d" % port
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    tmp = tempfile.mkdtemp(prefix="gpuhc-allreduce-")
    procs, outs, errs = [], [], []
    t0 = time.perf_counter()
    for r in range(world):
        cmd = [sys.executable, "-m", "gpuhc.workloads.allreduce", "--rank", str(r), "--world", str(world),
               "--backend", backend, "--init-method", init, "--warmup", str(warmup), "--iters", str(iters),
               "--timeout", str(timeout_s), "--json"]
        if sizes:
            cmd += ["--sizes", ",".join(str(int(s)) for s in sizes)]
        if delays.get(r):
            cmd += ["--delay", str(float(delays[r]))]
        if hang_rank == r:
            cmd += ["--hang"]
        if devices:
            cmd += ["--device", devices[r]]
        elif backend == "nccl":
            cmd += ["--device", "cuda:%d" % r]
        if watchdog_grace_s is not None:
            cmd += ["--grace", str(watchdog_grace_s)]
        out = open(os.path.join(tmp, "rank%d.out" % r), "w+")
        err = open(os.path.join(tmp, "rank%d.err" % r), "w+")
        outs.append(out)
        errs.append(err)
        procs.append(subprocess.Popen(cmd, stdout=out, stderr=err, env=env, stdin=subprocess.DEVNULL))
    pos = 0
    killed = set()
    try:
        while True:
            if progress is not None:
                errs[0].flush()
                with open(errs[0].name) as f:
                    f.seek(pos)
                    chunk = f.read()
                    complete = chunk[:chunk.rfind("\n") + 1]
                    pos += len(complete.encode())
                for line in complete.splitlines():
                    if line.startswith("allreduce"):
                        progress(line)
            if all(p.poll() is not None for p in procs):
                break
            if wait_s is not None and time.perf_counter() - t0 > wait_s:
                for r, p in enumerate(procs):
                    if p.poll() is None:
                        p.kill()
                        killed.add(r)
                for p in procs:
                    p.wait()
                break
            time.sleep(0.05)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    ranks, errors = [], []
    for r, (p, out, err) in enumerate(zip(procs, outs, errs)):
        out.seek(0)
        err.seek(0)
        text, etext = out.read(), err.read()
        out.close()
        err.close()
        res = None
        for line in reversed(text.splitlines()):
            if line.startswith("{"):
                try:
                    res = AllReduceRun.from_dict(json.loads(line))
                except (ValueError, TypeError):
                    pass
                break
        ranks.append(res)
        tail = " ".join(etext.strip().splitlines()[-1:])[:300]
        if r in killed:
            errors.append("rank %d: killed after %.0f s (launch_local's wait_s)" % (r, wait_s or 0))
        elif res is None:
            why = "ended by its watchdog" if p.returncode == WATCHDOG_EXIT else "exited %s" % p.returncode
            errors.append("rank %d: %s with no result%s" % (r, why, (": " + tail) if tail else ""))
        elif not res.ok:
            errors.append("rank %d: %s: %s" % (r, res.failed_step, res.error))
    for name in os.listdir(tmp):
        os.unlink(os.path.join(tmp, name))
    os.rmdir(tmp)
    return LocalRun(ok=not errors and all(r is not None and r.ok for r in ranks), world=world, backend=backend,
                    ranks=ranks, returncodes=[p.returncode for p in procs], errors=errors,
                    elapsed_s=time.perf_counter() - t0)


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m gpuhc.workloads.allreduce",
                                 description="torch.distributed all-reduce sweep (one rank, or --launch-local N)")
    ap.add_argument("--rank", type=int, default=int(os.environ.get("RANK", 0)))
    ap.add_argument("--world", type=int, default=int(os.environ.get("WORLD_SIZE", 1)))
    ap.add_argument("--backend", default="gloo")
    ap.add_argument("--init-method", default="env://")
    ap.add_argument("--sizes", default="", help="comma-separated sizes in bytes")
    ap.add_argument("--warmup", type=int, default=None)
    ap.add_argument("--iters", type=int, default=None)
    ap.add_argument("--timeout", type=float, default=60.0)
    ap.add_argument("--delay", type=float, default=0.0, help="seconds added to each collective of this rank")
    ap.add_argument("--hang", action="store_true", help="this rank hangs at its first timed all-reduce")
    ap.add_argument("--device", default=None)
    ap.add_argument("--grace", type=float, default=None, help="watchdog grace beyond --timeout")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--launch-local", type=int, default=0, metavar="N", help="run N ranks on this machine")
    a = ap.parse_args(argv)
    sizes = [int(x) for x in a.sizes.split(",") if x.strip()] or None
    if a.launch_local:
        lr = launch_local(a.launch_local, backend=a.backend, sizes=sizes,
                          warmup=2 if a.warmup is None else a.warmup, iters=a.iters or 5, timeout_s=a.timeout,
                          watchdog_grace_s=a.grace, progress=common.stderr_progress)
        if a.json:
            print(json.dumps(lr.as_dict()))
        else:
            print(format_table(lr.sizes))
            for e in lr.errors:
                print("# " + e)
        return 0 if lr.ok else 1
    res = run(a.rank, a.world, backend=a.backend, sizes=sizes, warmup=5 if a.warmup is None else a.warmup,
              iters=a.iters or 20, timeout_s=a.timeout, init_method=a.init_method, delay_hook=a.delay or None,
              hang=a.hang, device=a.device, progress=common.stderr_progress, watchdog_grace_s=a.grace)
    if a.json:
        print(json.dumps(res.as_dict()), flush=True)
    elif a.rank == 0:
        print(format_table(res))
    return 0 if res.ok else 1

