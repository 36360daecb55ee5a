"""All-reduce sweep with torch.distributed, measured like nccl-tests (issues 13 and 16).

`run()` is one rank: it joins the group, and for each size runs `warmup` then `iters` in-place
float32 sum all-reduces, each preceded by a barrier (so every timed iteration starts with all
ranks present and measures the collective, not the skew of the previous one), and checks the
result. For each size:
    time   = mean over the timed iterations of this rank's time, then averaged over the ranks
             (nccl-tests' default); CUDA events on a GPU, time.perf_counter on the CPU
    algbw  = size_bytes / time / 1e9                 (GB/s)
    busbw  = algbw * 2 (n - 1) / n,  n = ranks       (nccl-tests' all-reduce bus bandwidth: what
             each rank's link carries in a ring; comparable across rank counts)
    wrong  = elements differing from the expected sum, over all ranks (each rank contributes
             rank+1, so the sum is n(n+1)/2, exact in float32)

Hangs become failures within the limit, three ways:
1. torch's own timeouts: init_process_group(timeout=timeout_s). With gloo that timeout bounds the
   rendezvous (the TCP store) and every collective: a missing peer raises "Timed out waiting
   ...ms" after timeout_s. With NCCL it is the ProcessGroupNCCL watchdog's limit (with torch's
   default TORCH_NCCL_ASYNC_ERROR_HANDLING the communicator is aborted and the process torn down).
2. The error is caught and returned: ok=False, error and failed_step name what failed.
3. A last resort for a hang that nothing above ends (a rank stuck outside torch, a CUDA kernel
   that never completes, an event synchronize that never returns): a watchdog thread arms a
   deadline of timeout_s + grace around each step (init, each barrier, each all-reduce, the
   teardown) and os._exit(WATCHDOG_EXIT) the process past it, after one line on stderr.
   os._exit skips cleanup on purpose: a hung process cannot be trusted to clean up.
So a rank never outlives (steps it completes) + timeout_s + grace for the step that hangs.

Fault injection for the tests and the simulated nodes: `delay_hook` adds seconds (a number, or a
callable(size_bytes, iteration) -> seconds) inside each timed all-reduce of this rank, so the
whole group's collective really slows as with a slow node; `hang=True` makes this rank stop
before its first timed all-reduce (its peers are then inside it and time out).

`launch_local()` spawns `world` ranks of this module on 127.0.0.1 (gloo on the CPU, or NCCL with
one rank per GPU) for the tests and for a one-node run:
    python -m gpuhc.workloads.allreduce --launch-local 2 [--backend gloo] [--sizes 4096,1048576]
"""

import argparse
import dataclasses
import datetime
import inspect
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Union

from . import _common as common

WATCHDOG_EXIT = 124          # exit status of a rank ended by its watchdog (as timeout(1))
DTYPE_BYTES = 4              # float32

DEFAULT_SIZES = {
    "nccl": [(1 << 20) << k for k in range(14)],             # 1 MiB .. 8 GiB, doubling
    "gloo": [4096 << (2 * k) for k in range(6)],            # 4 KiB .. 4 MiB, x4
}


@dataclasses.dataclass
class SizeResult(common.Result):
    size_bytes: int
    count: int
    dtype: str
    redop: str
    time_us: float          # mean timed iteration, averaged over the ranks
    algbw_gbps: float
    busbw_gbps: float
    wrong: int              # wrong elements, summed over the ranks
    rank_time_us: float     # this rank's mean
    rank_time_us_min: float
    rank_time_us_max: float
    iters: int


@dataclasses.dataclass
class AllReduceRun(common.Result):
    rank: int
    world: int
    backend: str
    device: str
    ok: bool                # every size completed with no wrong element
    error: Optional[str]    # what failed ("" / None when ok)
    failed_step: Optional[str]
    sizes: List[SizeResult]
    elapsed_s: float
    delay_s: float          # the delay this rank added per collective (0 if a callable / none)
    torch_version: str
    nccl_version: Optional[str]
    env: dict               # NCCL_* and TORCH_NCCL_* settings seen by this rank
    timeout_s: float

    @classmethod
    def from_dict(cls, d):
        d = dict(d)
        d["sizes"] = [SizeResult(**s) for s in d.get("sizes", [])]
        return cls(**d)


def bus_factor(world):
    """nccl-tests' all-reduce bus bandwidth factor 2(n-1)/n."""
    return 2.0 * (world - 1) / world if world > 0 else 0.0


class _Watchdog:
    """os._exit(WATCHDOG_EXIT) if one step runs past its deadline. arm() per step, stop() at the end."""

    def __init__(self, rank, grace_s):
        self.rank = rank
        self.grace_s = grace_s
        self._lock = threading.Lock()
        self._deadline = None
        self._step = None
        self._limit = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="gpuhc-allreduce-watchdog", daemon=True)
        self._thread.start()

    def arm(self, step, limit_s):
        with self._lock:
            self._step, self._limit = step, limit_s + self.grace_s
            self._deadline = time.monotonic() + self._limit

    def stop(self):
        self._stop.set()

    def _loop(self):
        while not self._stop.wait(0.05):
            with self._lock:
                late = self._deadline is not None and time.monotonic() > self._deadline
                step, limit = self._step, self._limit
            if late:
                try:
                    sys.stderr.write("allreduce rank %d: watchdog: %s did not finish within %.1f s; exiting (%d)\n"
                                     % (self.rank, step, limit, WATCHDOG_EXIT))
                    sys.stderr.flush()
                finally:
                    os._exit(WATCHDOG_EXIT)


def _nccl_env():
    return {k: v for k, v in sorted(os.environ.items()) if k.startswith(("NCCL_", "TORCH_NCCL_"))}


def _default_device(backend, rank):
    if backend != "nccl":
        return "cpu"
    t = common.torch()
    local = int(os.environ.get("LOCAL_RANK", os.environ.get("SLURM_LOCALID", rank)))
    return "cuda:%d" % (local % max(1, t.cuda.device_count()))


def run(rank: int, world: int, backend: str = "nccl", sizes: Optional[List[int]] = None, warmup: int = 5,
        iters: int = 20, timeout_s: float = 120.0, init_method: str = "env://",
        delay_hook: Union[None, float, Callable[[int, int], float]] = None, hang: bool = False,
        device: Optional[str] = None, progress: Optional[Callable[[str], None]] = None,
        watchdog: bool = True, watchdog_grace_s: Optional[float] = None) -> AllReduceRun:
    """One rank of the all-reduce sweep. Returns this rank's AllReduceRun (group figures per size,
    the same on every rank); never raises for a failure of the group (ok=False, error says it)."""
    t = common.torch()
    import torch.distributed as dist
    t_start = time.perf_counter()
    sizes = list(sizes or DEFAULT_SIZES.get(backend, DEFAULT_SIZES["gloo"]))
    device = device or _default_device(backend, rank)
    grace = float(watchdog_grace_s if watchdog_grace_s is not None else max(5.0, 0.1 * timeout_s))
    wd = _Watchdog(rank, grace) if watchdog else None
    delay_s = float(delay_hook) if isinstance(delay_hook, (int, float)) else 0.0
    nccl_version = None
    if backend == "nccl":
        try:
            nccl_version = ".".join(str(x) for x in t.cuda.nccl.version())
        except Exception:
            pass
    res = AllReduceRun(rank=rank, world=world, backend=backend, device=str(device), ok=False, error=None,
                       failed_step=None, sizes=[], elapsed_s=0.0, delay_s=delay_s, torch_version=t.__version__,
                       nccl_version=nccl_version, env=_nccl_env(), timeout_s=float(timeout_s))
    step = "init"

    def arm(name, limit=timeout_s):
        nonlocal step
        step = name
        if wd is not None:
            wd.arm("rank %d %s" % (rank, name), limit)

    def delay(size, i):
        d = delay_hook(size, i) if callable(delay_hook) else delay_hook
        if d:
            time.sleep(float(d))

    initialized = False
    try:
        arm("init")
        dev = common.to_device(device)
        kwargs: Dict[str, Any] = dict(backend=backend, init_method=init_method, rank=rank, world_size=world,
                                      timeout=datetime.timedelta(seconds=timeout_s))
        if dev.type == "cuda":
            t.cuda.set_device(dev)
            if "device_id" in inspect.signature(dist.init_process_group).parameters:
                kwargs["device_id"] = dev      # eager NCCL init, bound to this GPU (torch >= 2.3)
        dist.init_process_group(**kwargs)
        initialized = True
        barrier_kw: Dict[str, Any] = {"device_ids": [dev.index]} if backend == "nccl" else {}
        hung = False
        with common.on_device(dev):
            for size in sizes:
                count = max(1, int(size) // DTYPE_BYTES)
                nbytes = count * DTYPE_BYTES
                buf = t.empty(count, dtype=t.float32, device=dev)
                expected = world * (world + 1) / 2.0
                timer = common.Timer(dev)
                times = []
                for i in range(warmup + iters):
                    buf.fill_(rank + 1)
                    arm("barrier before all_reduce of %d B" % nbytes)
                    dist.barrier(**barrier_kw)
                    if hang and not hung and i == warmup:
                        hung = True
                        arm("all_reduce of %d B (this rank simulates a hang)" % nbytes)
                        while True:            # the watchdog ends this process
                            time.sleep(1.0)
                    arm("all_reduce of %d B" % nbytes)
                    timer.start()
                    delay(nbytes, i)
                    dist.all_reduce(buf, op=dist.ReduceOp.SUM)
                    timer.stop()
                    dt = timer.elapsed_s()
                    if i >= warmup:
                        times.append(dt)
                wrong = int((buf != expected).sum())
                mean = sum(times) / len(times)
                # group figures: time averaged over the ranks (nccl-tests), wrong summed
                arm("result exchange after %d B" % nbytes)
                stats = t.tensor([mean, float(wrong)], dtype=t.float64, device=dev)
                dist.all_reduce(stats, op=dist.ReduceOp.SUM)
                group_time = float(stats[0]) / world
                algbw = nbytes / group_time / 1e9
                sr = SizeResult(size_bytes=nbytes, count=count, dtype="float", redop="sum", time_us=group_time * 1e6,
                                algbw_gbps=algbw, busbw_gbps=algbw * bus_factor(world), wrong=int(stats[1]),
                                rank_time_us=mean * 1e6, rank_time_us_min=min(times) * 1e6,
                                rank_time_us_max=max(times) * 1e6, iters=len(times))
                res.sizes.append(sr)
                if rank == 0:
                    common.say(progress, "allreduce: %d ranks %12d B  %10.1f us  algbw %8.3f  busbw %8.3f GB/s%s"
                               % (world, nbytes, sr.time_us, sr.algbw_gbps, sr.busbw_gbps,
                                  "  %d WRONG" % sr.wrong if sr.wrong else ""))
                del buf
        bad = [s for s in res.sizes if s.wrong]
        res.ok = not bad
        if bad:
            res.error = "wrong results at %s" % ", ".join("%d B (%d elements)" % (s.size_bytes, s.wrong) for s in bad)
            res.failed_step = "check of %d B" % bad[0].size_bytes
    except Exception as e:              # a failed group is a result, not a crash
        res.ok = False
        res.error = "%s: %s" % (type(e).__name__, " ".join(str(e).split())[:500])
        res.failed_step = step
    finally:
        if initialized:
            arm("destroy_process_group", 0.0)
            try:
                dist.destroy_process_group()
            except Exception:
                pass
        if wd is not None:
            wd.stop()
    res.elapsed_s = time.perf_counter() - t_start
    if rank == 0 and not res.ok:
        common.say(progress, "allreduce: FAILED at %s: %s" % (res.failed_step, res.error))
    return res


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


# ---- local launcher ---------------------------------------------------------------------------

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


if __name__ == "__main__":
    sys.exit(main())
