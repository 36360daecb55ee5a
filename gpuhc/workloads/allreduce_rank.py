"""One rank of the all-reduce sweep with torch.distributed, measured like nccl-tests (issues 13 and 16).

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

The local launcher and the command line (``launch_local``, ``format_table``, ``main``) are in
:mod:`gpuhc.workloads.allreduce_local`; :mod:`gpuhc.workloads.allreduce` re-exports both modules' names.
"""

import dataclasses
import datetime
import inspect
import os
import sys
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
